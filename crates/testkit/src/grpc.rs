//! gRPC and gRPC-Web as a hand-written client sees them: requests framed by
//! hand ([`frame`], [`request`]) and answers read off the wire
//! ([`read_response`]) — the status from the headers of a trailers-only
//! answer, from native gRPC's HTTP/2 trailers, or from gRPC-Web's trailer
//! frame at the end of the body (base64 text for `grpc-web-text`).
//!
//! A missing or unparsable `grpc-status` is a failure, never read as OK.

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt as _;

/// How a gRPC body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Native gRPC over h2c.
    Grpc,
    /// gRPC-Web, binary, over HTTP/1.1.
    GrpcWeb,
    /// gRPC-Web, base64 text, over HTTP/1.1.
    GrpcWebText,
}

impl Wire {
    /// Every wire.
    pub const ALL: [Wire; 3] = [Wire::Grpc, Wire::GrpcWeb, Wire::GrpcWebText];

    /// The request's `content-type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Wire::Grpc => "application/grpc",
            Wire::GrpcWeb => "application/grpc-web+proto",
            Wire::GrpcWebText => "application/grpc-web-text",
        }
    }
}

/// What a call ended with: its `grpc-status` and the percent-decoded
/// `grpc-message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    /// The status code (0: OK).
    pub code: i32,
    /// The message, empty when none was sent.
    pub message: String,
}

/// A whole answer: the messages it carried, in order, and its status.
#[derive(Debug, Clone)]
pub struct GrpcResponse {
    /// The payload of each message frame.
    pub messages: Vec<Bytes>,
    /// How the call ended.
    pub status: GrpcStatus,
}

/// One frame of a gRPC body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A message's payload.
    Message(Bytes),
    /// gRPC-Web's trailer frame, read as a status.
    Trailers(GrpcStatus),
}

/// One length-prefixed, uncompressed gRPC message frame around `message`.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let length = u32::try_from(message.len()).expect("a message shorter than 4 GiB");
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0);
    body.extend_from_slice(&length.to_be_bytes());
    body.extend_from_slice(message);
    body
}

/// A POST of a gRPC call to `url` over `wire`: its content type, and `te:
/// trailers` (native) or `x-grpc-web: 1` (gRPC-Web). Native gRPC needs a
/// `client` that speaks HTTP/2 (h2c with prior knowledge).
pub fn request(client: &reqwest::Client, wire: Wire, url: &str) -> reqwest::RequestBuilder {
    let request = client.post(url).header("content-type", wire.content_type());
    match wire {
        Wire::Grpc => request.header("te", "trailers"),
        Wire::GrpcWeb | Wire::GrpcWebText => request.header("x-grpc-web", "1"),
    }
}

/// Reads the whole answer to a call sent over `wire`.
///
/// # Panics
///
/// When the body cannot be read, a frame is cut short, or no numeric
/// `grpc-status` comes in the headers, the trailers or the trailer frame.
pub async fn read_response(response: reqwest::Response, wire: Wire) -> GrpcResponse {
    let url = response.url().to_string();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap_or_default().to_owned())
    };
    // A trailers-only answer (an error before any message) carries the
    // status in the headers.
    if let Some(code) = header("grpc-status") {
        return GrpcResponse {
            messages: Vec::new(),
            status: GrpcStatus {
                code: parse_code(&code, &url),
                message: percent_decode(&header("grpc-message").unwrap_or_default()),
            },
        };
    }
    let collected = http::Response::from(response)
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|error| panic!("the answer of {url} is read: {error}"));
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    let body = match wire {
        Wire::GrpcWebText => decode_text(&body),
        Wire::Grpc | Wire::GrpcWeb => body,
    };
    let mut frames = FrameReader::default();
    frames.push(&body);
    let mut messages = Vec::new();
    let mut status = None;
    while let Some(frame) = frames.next_frame() {
        match frame {
            Frame::Message(message) => messages.push(message),
            Frame::Trailers(trailer) => status = Some(trailer),
        }
    }
    assert!(
        frames.is_empty(),
        "{url} answered with a frame cut short: {} bytes left",
        frames.buffer.len()
    );
    // Native gRPC sends the status in HTTP/2 trailers.
    let status = match (trailers, status) {
        (Some(trailers), _) => {
            let value = |name: &str| {
                trailers
                    .get(name)
                    .map(|value| value.to_str().unwrap_or_default().to_owned())
            };
            let code = value("grpc-status")
                .unwrap_or_else(|| panic!("no grpc-status in the trailers of {url}"));
            GrpcStatus {
                code: parse_code(&code, &url),
                message: percent_decode(&value("grpc-message").unwrap_or_default()),
            }
        }
        (None, Some(status)) => status,
        (None, None) => panic!("no grpc-status from {url}"),
    };
    GrpcResponse { messages, status }
}

/// Splits a gRPC body into frames as its bytes arrive, for reading a
/// stream while it runs.
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: BytesMut,
}

impl FrameReader {
    /// Appends bytes that arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if it has arrived.
    ///
    /// # Panics
    ///
    /// On a trailer frame without a numeric `grpc-status`.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.buffer.len() < 5 {
            return None;
        }
        let length = u32::from_be_bytes(self.buffer[1..5].try_into().expect("four bytes")) as usize;
        if self.buffer.len() < 5 + length {
            return None;
        }
        let flag = self.buffer.get_u8();
        self.buffer.advance(4);
        let payload = self.buffer.split_to(length).freeze();
        Some(if flag & 0x80 == 0 {
            Frame::Message(payload)
        } else {
            Frame::Trailers(parse_trailers(&payload))
        })
    }

    /// Whether no byte is left over after the whole frames.
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }
}

/// The status in a gRPC-Web trailer frame's `name: value` lines (names in
/// any case).
///
/// # Panics
///
/// Without a numeric `grpc-status`.
pub fn parse_trailers(block: &[u8]) -> GrpcStatus {
    let text = String::from_utf8_lossy(block);
    let value = |wanted: &str| {
        text.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case(wanted)
                .then(|| value.trim().to_owned())
        })
    };
    let code = value("grpc-status").unwrap_or_else(|| panic!("no grpc-status in {text:?}"));
    GrpcStatus {
        code: parse_code(&code, "the trailer frame"),
        message: percent_decode(&value("grpc-message").unwrap_or_default()),
    }
}

/// A `grpc-status` value as a number.
fn parse_code(code: &str, source: &str) -> i32 {
    code.trim()
        .parse()
        .unwrap_or_else(|_| panic!("grpc-status {code:?} from {source} is not a number"))
}

/// A `grpc-message` as text: it is percent-encoded on the wire.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The bytes of a `grpc-web-text` body: each chunk the server wrote is
/// padded base64 of its own, so the text is decoded piece by piece.
fn decode_text(body: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(body);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_as_they_arrive() {
        let trailers = b"grpc-status: 3\r\nGrpc-Message: bad%20input\r\n";
        let mut body = frame(b"one");
        body.push(0x80);
        body.extend_from_slice(&(trailers.len() as u32).to_be_bytes());
        body.extend_from_slice(trailers);
        let mut reader = FrameReader::default();
        reader.push(&body[..6]);
        assert_eq!(reader.next_frame(), None, "a frame cut short waits");
        reader.push(&body[6..]);
        assert_eq!(
            reader.next_frame(),
            Some(Frame::Message(Bytes::from_static(b"one")))
        );
        assert_eq!(
            reader.next_frame(),
            Some(Frame::Trailers(GrpcStatus {
                code: 3,
                message: "bad input".into()
            }))
        );
        assert!(reader.is_empty());
    }

    #[test]
    #[should_panic(expected = "no grpc-status")]
    fn trailers_without_a_status_are_a_failure() {
        parse_trailers(b"grpc-message: hello\r\n");
    }

    #[test]
    fn text_bodies_are_decoded_chunk_by_chunk() {
        let first = base64::engine::general_purpose::STANDARD.encode(b"ab");
        let second = base64::engine::general_purpose::STANDARD.encode(b"cdef");
        assert_eq!(
            &decode_text(format!("{first}{second}").as_bytes())[..],
            b"abcdef"
        );
    }
}
