//! Domain errors as gRPC statuses: the code comes from the core's one error
//! table, invalid arguments carry a google.rpc.BadRequest field violation,
//! and internal errors are logged here and reach the client only as
//! "internal error".

use switchboard_core::Error;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The gRPC status of a domain error. Used by every RPC of every service.
pub fn status_from(err: Error) -> Status {
    let code = Code::from_i32(err.grpc_code());
    match err {
        Error::InvalidArgument { field, message } => {
            // The same "field: problem" form the generated guards give.
            let text = format!("{field}: {message}");
            let details = ErrorDetails::with_bad_request_violation(field, message);
            Status::with_error_details(code, text, details)
        }
        Error::ResourceExhausted { retry_after_secs } => {
            let text = err.to_string();
            let details = ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(
                retry_after_secs,
            )));
            Status::with_error_details(code, text, details)
        }
        Error::Internal(source) => {
            tracing::error!(error = %source, "internal error");
            Status::new(code, "internal error")
        }
        other => Status::new(code, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_arguments_name_the_field_in_details() {
        let status = status_from(Error::invalid_argument("page_token", "malformed"));
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad_request = status
            .get_details_bad_request()
            .expect("BadRequest details");
        assert_eq!(bad_request.field_violations[0].field, "page_token");
    }

    #[test]
    fn internal_errors_keep_their_details_out_of_the_status() {
        let status = status_from(Error::internal("connection string postgres://secret"));
        assert_eq!(
            (status.code(), status.message()),
            (Code::Internal, "internal error")
        );
    }
}
