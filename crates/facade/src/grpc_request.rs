//! What a gRPC request must be before tonic decodes it, checked in front of
//! every gRPC service (behind gRPC-Web's translation, so both wires are
//! held to it), and tonic's own refusals of malformed input said in the
//! API's words.
//!
//! A method that takes one request message (unary and server-streaming;
//! the descriptor sets say which) must get exactly one: tonic decodes the
//! first and ignores the rest, so a second message would be silently
//! dropped and the client never know which one counted. Such a body is
//! read whole (at most [`DEFAULT_BODY_LIMIT`] plus its frame header) and
//! its frames counted; the bodies of client-streaming methods (server
//! reflection) stream through unread.
//!
//! tonic and tonic-web report malformed input as INTERNAL in their own
//! words (`failed to decode Protobuf message: …`, `tonic-web: Invalid
//! symbol 33, offset 0.`); [`in_our_words`] turns those into
//! INVALID_ARGUMENT with a sentence about the request.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use prost::Message as _;
use switchboard_rest::router::DEFAULT_BODY_LIMIT;
use tonic::{Code, Status};

/// The length prefix of each gRPC message: a flag byte and a 4-byte length.
const FRAME_HEADER: usize = 5;

/// How many request messages a method takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    /// One message and one answer.
    Unary,
    /// One message, and a stream of answers.
    OneThenStream,
}

/// The methods served that take exactly one request message, by path
/// (`/package.Service/Method`).
#[derive(Debug, Clone)]
pub(crate) struct SingleMessageMethods(Arc<HashMap<String, Takes>>);

impl SingleMessageMethods {
    /// The methods of every service in `descriptor_sets` (encoded
    /// `FileDescriptorSet`s) whose client side does not stream.
    pub(crate) fn from_descriptor_sets(descriptor_sets: &[&[u8]]) -> Self {
        let mut methods = HashMap::new();
        for encoded in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*encoded)
                .expect("the generated descriptor sets are valid");
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        if method.client_streaming() {
                            continue;
                        }
                        let takes = if method.server_streaming() {
                            Takes::OneThenStream
                        } else {
                            Takes::Unary
                        };
                        let path = if package.is_empty() {
                            format!("/{}/{}", service.name(), method.name())
                        } else {
                            format!("/{package}.{}/{}", service.name(), method.name())
                        };
                        methods.insert(path, takes);
                    }
                }
            }
        }
        Self(Arc::new(methods))
    }
}

impl SingleMessageMethods {
    /// Whether the method at `path` answers with a stream.
    pub(crate) fn streams(&self, path: &str) -> bool {
        self.0.get(path) == Some(&Takes::OneThenStream)
    }
}

/// The middleware (see the module comment).
pub(crate) async fn check(methods: SingleMessageMethods, request: Request, next: Next) -> Response {
    let Some(takes) = methods.0.get(request.uri().path()).copied() else {
        // A stream of requests goes through as it comes, its read errors
        // (gRPC-Web's decoding) in our words.
        let (parts, body) = request.into_parts();
        let body = Body::new(body.map_err(|error| in_our_words(Status::from_error(error.into()))));
        return respond(next.run(Request::from_parts(parts, body)).await);
    };
    let limit = DEFAULT_BODY_LIMIT + FRAME_HEADER;
    let announced = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return too_large().into_http();
    }
    let (parts, body) = request.into_parts();
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return too_large().into_http();
        }
        Err(error) => return in_our_words(Status::from_error(error)).into_http(),
    };
    if let Err(status) = one_message(&bytes, takes) {
        return status.into_http();
    }
    respond(
        next.run(Request::from_parts(parts, Body::from(bytes)))
            .await,
    )
}

fn too_large() -> Status {
    Status::resource_exhausted(format!(
        "the request message is larger than {DEFAULT_BODY_LIMIT} bytes"
    ))
}

/// Checks that `body` holds exactly one whole length-prefixed message.
#[allow(clippy::result_large_err)]
fn one_message(body: &Bytes, takes: Takes) -> Result<(), Status> {
    let mut rest = body.clone();
    let mut messages = 0usize;
    while rest.has_remaining() {
        if rest.remaining() < FRAME_HEADER {
            return Err(Status::invalid_argument(
                "the request body ends inside a message's 5-byte length prefix",
            ));
        }
        rest.advance(1);
        let length = rest.get_u32() as usize;
        if rest.remaining() < length {
            return Err(Status::invalid_argument(format!(
                "the request body ends inside a message: its length prefix says {length} bytes, \
                 {} follow",
                rest.remaining()
            )));
        }
        rest.advance(length);
        messages += 1;
    }
    if messages == 1 {
        return Ok(());
    }
    Err(Status::invalid_argument(match takes {
        Takes::Unary => "a unary call must carry exactly one message",
        Takes::OneThenStream => "this server-streaming call must carry exactly one request message",
    }))
}

/// A response whose trailers-only status is one of tonic's refusals of
/// malformed input, answered in our words instead.
fn respond(response: Response) -> Response {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() == Code::Ok {
        return response;
    }
    let ours = in_our_words(status.clone());
    if ours.code() == status.code() && ours.message() == status.message() {
        return response;
    }
    ours.into_http()
}

/// tonic's and tonic-web's refusals of malformed input as INVALID_ARGUMENT
/// in the API's words; any other status as it is.
fn in_our_words(status: Status) -> Status {
    let message = status.message();
    if status.code() != Code::Internal {
        return status;
    }
    if let Some(problem) = message.strip_prefix("tonic-web: ") {
        return if problem.starts_with("Invalid") || problem.contains("base64") {
            Status::invalid_argument(
                "the grpc-web-text body is not valid base64 (the standard alphabet, padded)",
            )
        } else {
            Status::invalid_argument("the gRPC-Web request body could not be read")
        };
    }
    if message.starts_with("failed to decode Protobuf message") {
        return Status::invalid_argument(
            "the request message is not valid protobuf for this method",
        );
    }
    if message == "Missing request message." {
        return Status::invalid_argument("a unary call must carry exactly one message");
    }
    if message == "Unexpected EOF decoding stream." {
        return Status::invalid_argument("the request body ends inside a message");
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(lengths: &[u32]) -> Bytes {
        let mut body = Vec::new();
        for length in lengths {
            body.push(0);
            body.extend_from_slice(&length.to_be_bytes());
            body.extend(std::iter::repeat_n(7u8, *length as usize));
        }
        body.into()
    }

    #[test]
    fn exactly_one_whole_message_passes() {
        assert!(one_message(&frames(&[3]), Takes::Unary).is_ok());
        assert!(one_message(&frames(&[0]), Takes::Unary).is_ok());
        for body in [frames(&[]), frames(&[1, 1]), frames(&[0, 0, 0])] {
            let refused = one_message(&body, Takes::Unary).unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument);
        }
        let truncated = frames(&[9]).slice(..8);
        assert_eq!(
            one_message(&truncated, Takes::Unary).unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn every_api_method_takes_one_message_and_reflection_streams() {
        let methods = SingleMessageMethods::from_descriptor_sets(&[
            switchboard_proto::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ]);
        assert_eq!(
            methods
                .0
                .get("/switchboard.v1.ChatService/CreateConversation"),
            Some(&Takes::Unary)
        );
        assert_eq!(
            methods.0.get("/switchboard.v1.ChatService/StreamReply"),
            Some(&Takes::OneThenStream)
        );
        assert!(
            !methods
                .0
                .contains_key("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
        );
    }
}
