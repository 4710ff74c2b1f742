//! The access rule of each method, enforced by the generated guard before
//! the request is validated or the service runs.

use std::sync::Arc;

use switchboard_rest::policy::{Caller, Grants};

use crate::app::TestApp;

/// A caller who may read books and nothing else.
#[derive(Debug)]
struct BookReader;

impl Grants for BookReader {
    fn allows(&self, permission: &str) -> bool {
        permission == "books.read"
    }
    fn allows_undeclared(&self) -> bool {
        false
    }
}

fn reader() -> Option<Caller> {
    Some(Caller::Authenticated(Arc::new(BookReader)))
}

#[tokio::test]
async fn public_method_answers_an_anonymous_caller() {
    let app = TestApp::new();
    let reply = app.call_as(None, "GET", "/v1/books/b1", "", &[]).await;
    assert_eq!(reply.expect(200)["name"], "b1");
}

#[tokio::test]
async fn anonymous_caller_is_a_401_with_a_bearer_challenge() {
    let app = TestApp::new();
    let reply = app
        .call_as(
            Some(Caller::Anonymous),
            "GET",
            "/v1/shelves/s1/books",
            "",
            &[],
        )
        .await;
    assert!(reply.error(401).contains("sign in"));
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn refused_credentials_are_a_401_even_with_bad_input() {
    // Access is decided before the body is read or validated: a caller
    // without valid credentials learns nothing about the input rules.
    let app = TestApp::new();
    for body in ["{}", "{not json", r#"{"book": 5}"#] {
        let reply = app
            .call_as(
                Some(Caller::Refused),
                "POST",
                "/v1/shelves/s1/books",
                body,
                &[],
            )
            .await;
        assert!(reply.error(401).contains("invalid"), "{body}");
    }
    // A body of the wrong media type: still 401, not 415.
    let reply = app
        .call_as(
            Some(Caller::Anonymous),
            "POST",
            "/v1/shelves/s1/books",
            "title=x",
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    reply.error(401);
}

#[tokio::test]
async fn permission_decides_for_a_signed_in_caller() {
    let app = TestApp::new();
    let listed = app
        .call_as(reader(), "GET", "/v1/shelves/s1/books", "", &[])
        .await;
    assert_eq!(listed.expect(200)["parent"], "shelves/s1");
    let created = app
        .call_as(
            reader(),
            "POST",
            "/v1/shelves/s1/books",
            r#"{"title":"x"}"#,
            &[],
        )
        .await;
    assert!(created.error(403).contains("books.write"));
}

#[tokio::test]
async fn method_without_a_rule_is_for_administrators_only() {
    let app = TestApp::new();
    let reply = app
        .call_as(reader(), "DELETE", "/v1/shelves/s1/books/b1", "", &[])
        .await;
    assert!(reply.error(403).contains("administrators"));
}
