//! Server streaming over HTTP: Server-Sent Events by default, NDJSON by
//! `Accept`; an error mid-stream is written as an error event or line after
//! the messages before it, never swallowed into a silent 200; an error before
//! the stream starts is an ordinary status response.

use std::time::Duration;

use crate::app::{TestApp, book};

const STREAM: &str = "/v1/shelves/s1/books:stream";

#[tokio::test]
async fn stream_is_server_sent_events_by_default() {
    let reply = TestApp::new().get(&format!("{STREAM}?count=2")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    assert_eq!(
        reply.text,
        format!("data: {}\n\ndata: {}\n\n", book(1), book(2))
    );
}

#[tokio::test]
async fn stream_is_server_sent_events_when_accepted() {
    let reply = TestApp::new()
        .call_with(
            "GET",
            &format!("{STREAM}?count=1"),
            "",
            &[("accept", "text/event-stream")],
        )
        .await;
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    assert_eq!(reply.text, format!("data: {}\n\n", book(1)));
}

#[tokio::test]
async fn stream_is_ndjson_when_accepted() {
    let reply = TestApp::new()
        .call_with(
            "GET",
            &format!("{STREAM}?count=2"),
            "",
            &[("accept", "application/x-ndjson")],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/x-ndjson");
    assert_eq!(
        reply.text,
        format!("{{\"result\":{}}}\n{{\"result\":{}}}\n", book(1), book(2))
    );
}

#[tokio::test]
async fn error_mid_stream_is_an_sse_error_event() {
    let reply = TestApp::new()
        .get(&format!("{STREAM}?count=1&failWith=shelf%20collapsed"))
        .await;
    let error = r#"{"code":10,"message":"shelf collapsed","details":[]}"#;
    assert_eq!(
        reply.text,
        format!("data: {}\n\nevent: error\ndata: {error}\n\n", book(1))
    );
}

#[tokio::test]
async fn error_mid_stream_is_an_ndjson_error_line() {
    let uri = format!("{STREAM}?count=1&failWith=shelf%20collapsed");
    let reply = TestApp::new()
        .call_with("GET", &uri, "", &[("accept", "application/x-ndjson")])
        .await;
    let error = r#"{"code":10,"message":"shelf collapsed","details":[]}"#;
    assert_eq!(
        reply.text,
        format!("{{\"result\":{}}}\n{{\"error\":{error}}}\n", book(1))
    );
}

#[tokio::test]
async fn error_before_the_stream_is_a_status_response() {
    let reply = TestApp::new()
        .get("/v1/shelves/missing/books:stream?count=1")
        .await;
    assert_eq!(reply.error(404), "no shelf shelves/missing");
}

#[tokio::test]
async fn invalid_stream_request_is_a_400_before_the_stream() {
    let reply = TestApp::new().get(&format!("{STREAM}?count=101")).await;
    assert_eq!(reply.error(400), "count: must be at most 100 (got 101)");
}

#[tokio::test]
async fn error_ends_the_response_at_once() {
    let app = TestApp::new();
    let uri = format!("{STREAM}?count=0&failWith=gone&intervalMs=60000");
    let call = app.get(&uri);
    let reply = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the response ends at the error");
    assert_eq!(
        reply.text,
        "event: error\ndata: {\"code\":10,\"message\":\"gone\",\"details\":[]}\n\n"
    );
}
