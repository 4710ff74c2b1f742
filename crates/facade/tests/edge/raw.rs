//! Calls with the bytes exactly as a hostile or broken client sends them:
//! gRPC and gRPC-Web bodies framed by hand, and HTTP/1.1 written on a bare
//! TCP socket, so a test can send what no well-behaved client library would.

use switchboard_testkit::grpc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::TestApp;

/// What a gRPC or gRPC-Web call was answered with, how a gRPC body travels,
/// and its framing: the test kit's, shared with every suite.
pub(crate) use switchboard_testkit::grpc::{GrpcStatus as GrpcAnswer, Wire, frame};
/// Sends `body` (already framed; base64-encoded here for gRPC-Web text
/// unless `encoded`) to the gRPC `method` with `headers` and returns the
/// status as [`grpc::read_response`] reads it (a missing one fails).
pub(crate) async fn grpc_call(
    app: &TestApp,
    wire: Wire,
    method: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> GrpcAnswer {
    use base64::Engine as _;
    let body = match wire {
        Wire::GrpcWebText => base64::engine::general_purpose::STANDARD
            .encode(body)
            .into_bytes(),
        _ => body,
    };
    grpc_call_encoded(app, wire, method, headers, body).await
}

/// As [`grpc_call`], with the body sent exactly as given.
pub(crate) async fn grpc_call_encoded(
    app: &TestApp,
    wire: Wire,
    method: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> GrpcAnswer {
    let client = match wire {
        Wire::Grpc => reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("an h2c client"),
        _ => reqwest::Client::new(),
    };
    let mut header_map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        header_map.append(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            value.parse().expect("a header value"),
        );
    }
    let response = grpc::request(&client, wire, &app.url(method))
        .headers(header_map)
        .body(body)
        .send()
        .await
        .expect("the call is sent");
    assert_eq!(
        response.status(),
        200,
        "gRPC answers 200 whatever the status"
    );
    grpc::read_response(response, wire).await.status
}

/// Writes `head` (an HTTP/1.1 request head, without the blank line) on a
/// fresh TCP connection, then reads the first response head the server
/// sends, within 10 seconds (`None` if none comes).
pub(crate) async fn first_response_head(app: &TestApp, head: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(app.address)
        .await
        .expect("a TCP connection");
    stream
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .expect("the head is written");
    let read = async {
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let n = stream.read(&mut buffer).await.ok()?;
            if n == 0 {
                return None;
            }
            received.extend_from_slice(&buffer[..n]);
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(String::from_utf8_lossy(&received[..end]).into_owned());
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}
