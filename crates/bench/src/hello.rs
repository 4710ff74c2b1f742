//! The stack's own limit, for the http section of `scripts/bench.sh`: a
//! bare tonic hello-world server (`helloworld.Greeter/SayHello`, the same
//! tonic as Switchboard's, no middleware, no authentication, no storage),
//! driven by the same h2load command as the signed-in GetConversation.
//!
//! The service is written out by hand in the shape tonic's code generator
//! gives (a `tower::Service` routing one path to `tonic::server::Grpc` with
//! the prost codec), so the bench needs no build script.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

/// `helloworld.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `helloworld.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The unary method `SayHello`.
struct SayHello;

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFuture<tonic::Response<HelloReply>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        Box::pin(async move {
            Ok(tonic::Response::new(HelloReply {
                message: format!("Hello {}", request.into_inner().name),
            }))
        })
    }
}

/// The `helloworld.Greeter` service.
#[derive(Debug, Clone, Copy)]
pub struct Greeter;

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = "helloworld.Greeter";
}

impl<B> tower::Service<http::Request<B>> for Greeter
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() == "/helloworld.Greeter/SayHello" {
            return Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(SayHello, request).await)
            });
        }
        Box::pin(async move { Ok(tonic::Status::unimplemented("only SayHello").into_http()) })
    }
}

/// Serves [`Greeter`] on `listen` until the process is stopped.
///
/// # Errors
///
/// The listener's error (the address is taken, …).
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(Greeter)
        .serve(listen)
        .await?;
    Ok(())
}
