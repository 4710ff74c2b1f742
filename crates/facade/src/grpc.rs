//! The gRPC side of the listener: the guarded API services, grpc.health.v1,
//! and server reflection v1 and v1alpha, with gRPC-Web translated in front,
//! `grpc-timeout` enforced as the call's deadline, and each request held to
//! its method's one message ([`grpc_request`]).

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use switchboard_proto::v1;
use switchboard_rest::router::DEFAULT_BODY_LIMIT;
use switchboard_rest::transcode::parse_grpc_timeout;
use tonic::codec::CompressionEncoding;

use crate::Apis;
use crate::grpc_request::{self, SingleMessageMethods};
use crate::health::HealthState;

/// The gRPC services as an axum router, gRPC-Web included.
pub(crate) fn router(apis: &Apis, health: &HealthState) -> Router {
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the generated descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the generated descriptor sets are valid");
    let single_message = SingleMessageMethods::from_descriptor_sets(&[
        switchboard_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);
    // gzip both ways: requests may come compressed, and answers are
    // compressed for callers that say (grpc-accept-encoding) they take it.
    macro_rules! gzip {
        ($service:expr) => {
            $service
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(DEFAULT_BODY_LIMIT)
        };
    }
    tonic::service::Routes::new(gzip!(v1::chat_service_grpc(apis.chat.clone())))
        .add_service(gzip!(v1::auth_service_grpc(apis.auth.clone())))
        .add_service(gzip!(v1::user_service_grpc(apis.users.clone())))
        .add_service(gzip!(v1::audit_service_grpc(apis.audit.clone())))
        .add_service(gzip!(v1::job_service_grpc(apis.jobs.clone())))
        .add_service(health.grpc_service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router()
        // Inside the deadline, so a body that is slow to come counts
        // against it.
        .layer(middleware::from_fn({
            let single_message = single_message.clone();
            move |request, next| grpc_request::check(single_message.clone(), request, next)
        }))
        .layer(middleware::from_fn(deadline))
        // Inside tonic-web, where every answer ends in HTTP trailers: a
        // status sent after a stream's messages is counted as it is.
        .layer(middleware::from_fn(move |request, next| {
            crate::metrics::count_grpc_call(single_message.clone(), request, next)
        }))
        .layer(tonic_web::GrpcWebLayer::new())
}

/// Reflection over every service on the port: the API, health, and
/// reflection itself in both versions (each version's builder only adds its
/// own descriptors by default).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchboard_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
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
