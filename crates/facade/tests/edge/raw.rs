//! Calls with the bytes exactly as a hostile or broken client sends them:
//! gRPC and gRPC-Web bodies framed by hand, and HTTP/1.1 written on a bare
//! TCP socket, so a test can send what no well-behaved client library would.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::TestApp;

/// What a gRPC or gRPC-Web call was answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrpcAnswer {
    pub(crate) code: i32,
    pub(crate) message: String,
}

/// How a gRPC body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// Native gRPC over h2c.
    Grpc,
    /// gRPC-Web, binary, over HTTP/1.1.
    GrpcWeb,
    /// gRPC-Web, base64 text, over HTTP/1.1.
    GrpcWebText,
}

impl Wire {
    pub(crate) const ALL: [Wire; 3] = [Wire::Grpc, Wire::GrpcWeb, Wire::GrpcWebText];
}

/// One length-prefixed gRPC message frame around `message`.
pub(crate) fn frame(message: &[u8]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(message.len() as u32);
    body.put_slice(message);
    body.to_vec()
}

/// Sends `body` (already framed; base64-encoded here for gRPC-Web text
/// unless `encoded`) to the gRPC `method` with `headers` and returns the
/// status: from the headers of a trailers-only answer, else from the
/// trailer frame of a gRPC-Web body; a native answer with a message is 0.
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
    let content_type = match wire {
        Wire::Grpc => "application/grpc",
        Wire::GrpcWeb => "application/grpc-web+proto",
        Wire::GrpcWebText => "application/grpc-web-text",
    };
    let mut request = client
        .post(app.url(method))
        .header("content-type", content_type)
        .body(body);
    request = match wire {
        Wire::Grpc => request.header("te", "trailers"),
        _ => request.header("x-grpc-web", "1"),
    };
    let mut header_map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        header_map.append(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            value.parse().expect("a header value"),
        );
    }
    let response = request
        .headers(header_map)
        .send()
        .await
        .expect("the call is sent");
    assert_eq!(
        response.status(),
        200,
        "gRPC answers 200 whatever the status"
    );
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap_or_default().to_owned())
    };
    if let Some(code) = header("grpc-status") {
        return GrpcAnswer {
            code: code.parse().expect("a numeric grpc-status"),
            message: percent_decode(&header("grpc-message").unwrap_or_default()),
        };
    }
    let body = response.bytes().await.unwrap_or_default();
    let body = if wire == Wire::GrpcWebText {
        use base64::Engine as _;
        // Each chunk the server wrote is padded base64 of its own.
        let text = String::from_utf8_lossy(&body).into_owned();
        let mut decoded = Vec::new();
        for piece in text.split_inclusive('=') {
            let piece = piece.trim_matches('=');
            if piece.is_empty() {
                continue;
            }
            let padded = format!("{piece}{}", "=".repeat((4 - piece.len() % 4) % 4));
            decoded.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(padded)
                    .unwrap_or_default(),
            );
        }
        decoded.into()
    } else {
        body
    };
    let text = String::from_utf8_lossy(&body);
    let trailer = |name: &str| {
        text.lines().find_map(|line| {
            line.split_once(&format!("{name}:"))
                .map(|(_, value)| value.trim().to_owned())
        })
    };
    match trailer("grpc-status") {
        Some(code) => GrpcAnswer {
            code: code.parse().unwrap_or(2),
            message: percent_decode(&trailer("grpc-message").unwrap_or_default()),
        },
        None => GrpcAnswer {
            code: 0,
            message: String::new(),
        },
    }
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
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
