//! [`GrpcEngine`]: a reply engine reached over gRPC through Switchboard's
//! engine contract (`proto/switchboard/engine/v1/engine.proto`, which also
//! documents what each status code means to Switchboard).

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::future;
use std::sync::Arc;

use futures::{StreamExt, TryFutureExt, TryStreamExt};
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use switchboard_core::chat::{EngineEvent, EngineRequest, EngineStream, ReplyEngine, Role, Usage};
use switchboard_core::{Error, Result};

use crate::pb;
use crate::pb::chat_engine_client::ChatEngineClient;

/// The longest piece of an engine's status message quoted in an error.
const MAX_QUOTED_CHARS: usize = 300;

/// How to reach a gRPC engine.
#[derive(Clone, Default)]
pub struct GrpcEngineConfig {
    /// The engine's URL, `http://host:port` (HTTP/2 without TLS).
    pub endpoint: String,
    /// Sent as `authorization: Bearer <token>` on every call, if set.
    pub bearer_token: Option<String>,
    /// Passed to the engine on every call as `GenerateRequest.metadata`
    /// (a model or persona name, say).
    pub metadata: HashMap<String, String>,
}

impl fmt::Debug for GrpcEngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcEngineConfig")
            .field("endpoint", &self.endpoint)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "[redacted]"),
            )
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// A [`ReplyEngine`] that calls `switchboard.engine.v1.ChatEngine/Generate`.
///
/// The channel connects lazily, on the first call, and reconnects by itself
/// after the engine restarts; clones share it. Dropping a reply's stream
/// resets the HTTP/2 stream, which cancels the call on the engine's side.
#[derive(Clone)]
pub struct GrpcEngine {
    client: ChatEngineClient<Channel>,
    authorization: Option<AsciiMetadataValue>,
    metadata: Arc<HashMap<String, String>>,
}

impl fmt::Debug for GrpcEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcEngine").finish_non_exhaustive()
    }
}

impl GrpcEngine {
    /// An engine client for `config`. It does not connect yet, so an
    /// engine that is down does not stop Switchboard from starting. Must be
    /// called inside a Tokio runtime.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] on field `endpoint` if it is not an
    /// `http://` URL, or on `bearer_token` if the token cannot be sent in a
    /// header.
    pub fn new(config: GrpcEngineConfig) -> Result<Self> {
        if !config.endpoint.starts_with("http://") {
            return Err(Error::invalid_argument(
                "endpoint",
                "must be an http:// URL (HTTP/2 without TLS; put a TLS proxy in between if needed)",
            ));
        }
        let endpoint = Endpoint::from_shared(config.endpoint)
            .map_err(|e| Error::invalid_argument("endpoint", e.to_string()))?;
        let authorization = config
            .bearer_token
            .map(|token| MetadataValue::try_from(format!("Bearer {token}")))
            .transpose()
            .map_err(|_| Error::invalid_argument("bearer_token", "must be visible ASCII"))?;
        Ok(Self {
            client: ChatEngineClient::new(endpoint.connect_lazy()),
            authorization,
            metadata: Arc::new(config.metadata),
        })
    }

    fn grpc_request(&self, request: EngineRequest) -> tonic::Request<pb::GenerateRequest> {
        let history = request
            .history
            .into_iter()
            .map(|message| pb::Turn {
                role: match message.role {
                    Role::User => pb::Role::User,
                    Role::Assistant => pb::Role::Assistant,
                }
                .into(),
                content: message.content,
            })
            .collect();
        let mut grpc_request = tonic::Request::new(pb::GenerateRequest {
            conversation_id: request.conversation_id,
            reply_id: request.reply_id,
            attempt: request.attempt,
            history,
            metadata: self.metadata.as_ref().clone(),
        });
        if let Some(authorization) = &self.authorization {
            grpc_request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        for (name, value) in &request.trace_fields {
            if let (Ok(name), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
                value.parse(),
            ) {
                grpc_request.metadata_mut().insert(name, value);
            }
        }
        grpc_request
    }
}

impl ReplyEngine for GrpcEngine {
    fn generate(&self, request: EngineRequest) -> EngineStream {
        let mut client = self.client.clone();
        let grpc_request = self.grpc_request(request);
        async move {
            let responses = client.generate(grpc_request).await?.into_inner();
            // A response with no event set is from a newer contract: skip it.
            Ok(responses.try_filter_map(|response| future::ready(Ok(response.event))))
        }
        .try_flatten_stream()
        .map_ok(EngineEvent::from)
        .map_err(engine_error)
        .boxed()
    }

    fn name(&self) -> &'static str {
        "grpc"
    }
}

impl From<pb::generate_response::Event> for EngineEvent {
    fn from(event: pb::generate_response::Event) -> Self {
        match event {
            pb::generate_response::Event::Delta(text) => Self::Delta(text),
            pb::generate_response::Event::Usage(usage) => Self::Usage(Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            }),
        }
    }
}

/// The domain error for a status the engine answered (or tonic made up for
/// a transport failure), following the table in engine.proto.
fn engine_error(status: tonic::Status) -> Error {
    let message = quoted(status.message());
    match status.code() {
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled => Error::Unavailable(format!(
            "the gRPC chatbot engine is unavailable ({:?}: {message})",
            status.code()
        )),
        // tonic reports a connection that broke mid-call as UNKNOWN or
        // INTERNAL with the transport error as source; a status the engine
        // sent itself has no source.
        Code::Unknown | Code::Internal if status.source().is_some() => Error::Unavailable(format!(
            "the connection to the gRPC chatbot engine broke ({message})"
        )),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            Error::FailedPrecondition(format!(
                "the gRPC chatbot engine refused the request: {message}"
            ))
        }
        code => Error::internal(format!(
            "the gRPC chatbot engine failed with {code:?}: {message}"
        )),
    }
}

/// `text` cut to [`MAX_QUOTED_CHARS`], to keep a chatty engine's messages
/// out of the way.
fn quoted(text: &str) -> String {
    let mut chars = text.chars();
    let mut quote: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    if chars.next().is_some() {
        quote.push('…');
    }
    quote
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_retryable_or_permanent_errors() {
        for status in [
            tonic::Status::unavailable("down"),
            tonic::Status::resource_exhausted("busy"),
            tonic::Status::deadline_exceeded("slow"),
            tonic::Status::aborted("conflict"),
        ] {
            assert!(matches!(engine_error(status), Error::Unavailable(_)));
        }
        let refused = engine_error(tonic::Status::invalid_argument("too long"));
        assert!(matches!(&refused, Error::FailedPrecondition(m) if m.ends_with("too long")));
        let unauthenticated = engine_error(tonic::Status::unauthenticated("bad token"));
        assert!(matches!(unauthenticated, Error::Internal(_)));
        assert!(matches!(
            engine_error(tonic::Status::unknown("engine bug")),
            Error::Internal(_)
        ));
    }

    #[test]
    fn a_broken_connection_is_retryable() {
        let broken = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection reset");
        let status = tonic::Status::from_error(Box::new(broken));
        assert_eq!(status.code(), Code::Unknown);
        assert!(matches!(engine_error(status), Error::Unavailable(_)));
    }

    #[test]
    fn long_messages_are_cut() {
        let message = quoted(&"x".repeat(1000));
        assert_eq!(message.chars().count(), MAX_QUOTED_CHARS + 1);
    }

    #[tokio::test]
    async fn only_plain_http_endpoints_are_accepted() {
        let config = |endpoint: &str| GrpcEngineConfig {
            endpoint: endpoint.into(),
            ..GrpcEngineConfig::default()
        };
        assert!(GrpcEngine::new(config("http://127.0.0.1:1")).is_ok());
        for bad in ["https://engine:443", "engine:50051", ""] {
            let err = GrpcEngine::new(config(bad)).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { field, .. } if field == "endpoint"));
        }
    }
}
