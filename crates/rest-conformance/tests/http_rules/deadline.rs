//! `grpc-timeout` is the call's deadline on REST as on gRPC: a unary call
//! that overruns it is a 504 DEADLINE_EXCEEDED, a stream that overruns it
//! ends with a DEADLINE_EXCEEDED error event.

use std::time::Duration;

use crate::app::{Reply, TestApp, book};

#[tokio::test]
async fn grpc_timeout_is_the_deadline_of_a_unary_call() {
    let reply = TestApp::new()
        .call_with(
            "POST",
            "/v1/sleep",
            r#"{"millis": 10000}"#,
            &[("grpc-timeout", "50m")],
        )
        .await;
    let status = reply.expect(504);
    assert_eq!(status["code"], 4);
    assert_eq!(status["message"], "deadline exceeded");
}

#[tokio::test]
async fn call_within_its_grpc_timeout_completes() {
    let reply = TestApp::new()
        .call_with(
            "POST",
            "/v1/sleep",
            r#"{"millis": 1}"#,
            &[("grpc-timeout", "10S")],
        )
        .await;
    assert_eq!(reply.expect(200)["millis"], 1);
}

/// Sends a stream request with `grpc-timeout`, failing the test if the
/// response does not end within a few seconds.
async fn stream_with_timeout(query: &str, timeout: &str) -> Reply {
    let app = TestApp::new();
    let uri = format!("/v1/shelves/s1/books:stream?{query}");
    let headers = [("grpc-timeout", timeout)];
    let call = app.call_with("GET", &uri, "", &headers);
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the response ends")
}

#[tokio::test]
async fn grpc_timeout_ends_a_stream_with_an_error_event_at_once() {
    let reply = stream_with_timeout("count=3&intervalMs=60000", "100m").await;
    assert_eq!(reply.status, 200);
    let error = r#"{"code":4,"message":"deadline exceeded","details":[]}"#;
    assert_eq!(
        reply.text,
        format!("data: {}\n\nevent: error\ndata: {error}\n\n", book(1))
    );
}

#[tokio::test]
async fn stream_that_ends_within_its_grpc_timeout_ends_cleanly() {
    let reply = stream_with_timeout("count=1", "300m").await;
    assert_eq!(reply.text, format!("data: {}\n\n", book(1)));
}
