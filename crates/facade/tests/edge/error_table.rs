//! The one error table, door by door: every kind of domain error, turned
//! into a gRPC status as every RPC turns it (`switchboard_api::status_from`),
//! is answered over gRPC with the table's `grpc-status` and over REST with
//! the table's HTTP status and google.rpc.Status `code` (the JSON a
//! WebSocket error frame carries too).

use std::collections::HashSet;

use http_body_util::BodyExt;
use serde_json::Value;
use switchboard_core::Error;

/// An error of the kind after `previous`'s (the first kind for `None`), or
/// `None` after the last. The match has no wildcard: a new kind of error
/// does not compile until it has its place in this chain.
fn next_kind(previous: Option<&Error>) -> Option<Error> {
    Some(match previous {
        None => Error::NotFound {
            what: "conversation",
        },
        Some(Error::NotFound { .. }) => Error::invalid_argument("title", "must not be empty"),
        Some(Error::InvalidArgument { .. }) => {
            Error::FailedPrecondition("the reply has finished".to_owned())
        }
        Some(Error::FailedPrecondition(_)) => Error::AlreadyExists("that address".to_owned()),
        Some(Error::AlreadyExists(_)) => {
            Error::Unavailable("the database is unavailable; try again".to_owned())
        }
        Some(Error::Unavailable(_)) => Error::Unauthenticated("sign in".to_owned()),
        Some(Error::Unauthenticated(_)) => Error::PermissionDenied("for admins".to_owned()),
        Some(Error::PermissionDenied(_)) => Error::ResourceExhausted {
            retry_after_secs: 7,
        },
        Some(Error::ResourceExhausted { .. }) => Error::internal("disk on fire"),
        Some(Error::Internal(_)) => return None,
    })
}

/// One error of every kind, in the chain's order.
fn one_of_every_kind() -> Vec<Error> {
    let mut kinds = Vec::new();
    let mut next = next_kind(None);
    while let Some(error) = next {
        next = next_kind(Some(&error));
        kinds.push(error);
    }
    kinds
}

/// `NotFound` as `NOT_FOUND`: the name google.rpc.Code gives tonic's code.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (index, letter) in format!("{code:?}").chars().enumerate() {
        if letter.is_uppercase() && index > 0 {
            name.push('_');
        }
        name.push(letter.to_ascii_uppercase());
    }
    name
}

#[tokio::test]
async fn every_kind_of_error_is_answered_with_the_tables_codes_over_grpc_and_rest() {
    let kinds = one_of_every_kind();
    let distinct: HashSet<_> = kinds.iter().map(std::mem::discriminant).collect();
    assert_eq!(distinct.len(), kinds.len(), "each kind once: {kinds:?}");
    for error in kinds {
        let kind = format!("{error:?}");
        let table = error.status_codes();
        let status = switchboard_api::status_from(error);
        assert_eq!(code_name(status.code()), table.grpc_name, "{kind}");

        let grpc = status.clone().into_http::<tonic::body::Body>();
        let grpc_status = grpc.headers()["grpc-status"].to_str().unwrap();
        assert_eq!(grpc_status, table.grpc.to_string(), "{kind}: gRPC");

        let rest = switchboard_rest::error::status_response(&status);
        assert_eq!(rest.status().as_u16(), table.http, "{kind}: REST status");
        let body = rest.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], table.grpc, "{kind}: REST body {body}");
    }
}
