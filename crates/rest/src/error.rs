//! Errors over HTTP: every failure is a JSON body shaped like
//! google.rpc.Status (`code`, `message`, `details`), with the HTTP status that
//! grpc-gateway and Envoy's transcoder give each gRPC code. Every HTTP
//! answer carrying a gRPC status (REST, a refused WebSocket upgrade, the
//! drain's refusals) takes its HTTP status from [`http_status`].

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::{ErrorDetail, StatusExt};

/// The HTTP status for a gRPC status code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status code"),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The google.rpc.Status JSON of a status: its code, message and the error
/// details it carries (bad request field violations, error info, retry info,
/// resource info, precondition failures), each with its `@type`.
pub fn status_json(status: &tonic::Status) -> Value {
    let details: Vec<Value> = status
        .get_error_details_vec()
        .into_iter()
        .filter_map(|detail| detail_json(&detail))
        .collect();
    json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": details,
    })
}

fn detail_json(detail: &ErrorDetail) -> Option<Value> {
    const PREFIX: &str = "type.googleapis.com/google.rpc.";
    Some(match detail {
        ErrorDetail::BadRequest(bad) => json!({
            "@type": format!("{PREFIX}BadRequest"),
            "fieldViolations": bad.field_violations.iter().map(|v| json!({
                "field": v.field,
                "description": v.description,
            })).collect::<Vec<_>>(),
        }),
        ErrorDetail::ErrorInfo(info) => json!({
            "@type": format!("{PREFIX}ErrorInfo"),
            "reason": info.reason,
            "domain": info.domain,
            "metadata": info.metadata,
        }),
        ErrorDetail::RetryInfo(retry) => json!({
            "@type": format!("{PREFIX}RetryInfo"),
            "retryDelay": retry.retry_delay.map(|d| format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())),
        }),
        ErrorDetail::ResourceInfo(info) => json!({
            "@type": format!("{PREFIX}ResourceInfo"),
            "resourceType": info.resource_type,
            "resourceName": info.resource_name,
            "owner": info.owner,
            "description": info.description,
        }),
        ErrorDetail::PreconditionFailure(failure) => json!({
            "@type": format!("{PREFIX}PreconditionFailure"),
            "violations": failure.violations.iter().map(|v| json!({
                "type": v.r#type,
                "subject": v.subject,
                "description": v.description,
            })).collect::<Vec<_>>(),
        }),
        _ => return None,
    })
}

/// A gRPC status as an HTTP response: the mapped status code and the
/// google.rpc.Status JSON body. Server errors are logged with their message;
/// the client sees the message the service chose to give.
pub fn status_response(status: &tonic::Status) -> Response {
    let http = http_status(status.code());
    if http.is_server_error() {
        tracing::warn!(code = ?status.code(), message = status.message(), "request failed");
    }
    let mut response = (http, axum::Json(status_json(status))).into_response();
    if status.code() == Code::Unauthenticated {
        // RFC 6750 §3: a 401 names the scheme the client should use.
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    if status.code() == Code::ResourceExhausted
        && let Some(delay) = status
            .get_error_details()
            .retry_info()
            .and_then(|retry| retry.retry_delay)
    {
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, secs.into());
    }
    response
}

/// An `INVALID_ARGUMENT` status naming the field at fault, with a
/// google.rpc.BadRequest field violation in its details.
pub fn invalid_field(field: &str, description: &str) -> tonic::Status {
    let message = if field.is_empty() {
        description.to_owned()
    } else {
        format!("{field}: {description}")
    };
    tonic::Status::with_error_details(
        Code::InvalidArgument,
        message,
        tonic_types::ErrorDetails::with_bad_request_violation(field, description),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_the_standard_http_status() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn invalid_field_carries_a_bad_request_detail() {
        let json = status_json(&invalid_field("conversation.title", "too long"));
        assert_eq!(json["code"], 3);
        assert_eq!(json["message"], "conversation.title: too long");
        assert_eq!(
            json["details"][0]["@type"],
            "type.googleapis.com/google.rpc.BadRequest"
        );
        assert_eq!(
            json["details"][0]["fieldViolations"][0]["field"],
            "conversation.title"
        );
    }
}
