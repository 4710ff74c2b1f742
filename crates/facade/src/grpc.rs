//! The gRPC side of the listener: the guarded ChatService, grpc.health.v1,
//! and server reflection v1 and v1alpha, with gRPC-Web translated in front
//! and `grpc-timeout` enforced as the call's deadline.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use switchboard_api::ChatApi;
use switchboard_proto::v1;
use switchboard_rest::transcode::parse_grpc_timeout;

use crate::health::HealthState;

/// The gRPC services as an axum router, gRPC-Web included.
pub(crate) fn router(chat: Arc<ChatApi>, health: &HealthState) -> Router {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchboard_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the generated descriptor set is valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchboard_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the generated descriptor set is valid");
    tonic::service::Routes::new(v1::chat_service_grpc(chat))
        .add_service(health.grpc_service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router()
        .layer(middleware::from_fn(deadline))
        .layer(tonic_web::GrpcWebLayer::new())
}

/// Ends a call with `DEADLINE_EXCEEDED` when its `grpc-timeout` passes
/// before the response starts (tonic's own server does this; its axum
/// routes do not).
async fn deadline(request: Request, next: Next) -> Response {
    let timeout = request
        .headers()
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout);
    match timeout {
        None => next.run(request).await,
        Some(timeout) => match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => tonic::Status::deadline_exceeded("deadline exceeded")
                .into_http::<axum::body::Body>(),
        },
    }
}
