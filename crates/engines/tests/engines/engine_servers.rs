//! Engines that speak the real protocols, in process on `127.0.0.1:0`: a
//! tonic `ChatEngine` server ([`spawn_grpc_engine`]) and an axum server
//! answering OpenAI-style server-sent events ([`spawn_openai_engine`]).
//! Tests steer them with a script and read what they saw ([`Seen`]),
//! including whether a response stream was dropped before its end (the
//! client went away).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::{Value, json};
use switchboard_core::chat::{EngineRequest, Message, MessageStatus, Role};
use switchboard_engines::pb;
use switchboard_engines::pb::chat_engine_server::{ChatEngine, ChatEngineServer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// What a test server saw.
#[derive(Default)]
pub(crate) struct Seen {
    calls: AtomicU32,
    authorization: Mutex<Vec<Option<String>>>,
    traceparent: Mutex<Vec<Option<String>>>,
    /// Notified when a response stream is dropped before its end.
    closed_early: Notify,
}

impl Seen {
    /// How many calls reached the server.
    pub(crate) fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The `authorization` header of each call.
    pub(crate) fn authorization(&self) -> Vec<Option<String>> {
        self.authorization.lock().unwrap().clone()
    }

    /// The `traceparent` header (or metadata) of each call.
    pub(crate) fn traceparent(&self) -> Vec<Option<String>> {
        self.traceparent.lock().unwrap().clone()
    }

    /// Waits until a response stream was dropped before its end; panics
    /// after five seconds.
    pub(crate) async fn wait_closed_early(&self) {
        tokio::time::timeout(Duration::from_secs(5), self.closed_early.notified())
            .await
            .expect("the server never saw the client go away");
    }

    fn record_call(&self, authorization: Option<&str>, traceparent: Option<&str>) -> u32 {
        let authorization = authorization.map(str::to_owned);
        self.authorization.lock().unwrap().push(authorization);
        let traceparent = traceparent.map(str::to_owned);
        self.traceparent.lock().unwrap().push(traceparent);
        self.calls.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Tells [`Seen`] if it is dropped before [`EndGuard::ended`].
struct EndGuard {
    seen: Arc<Seen>,
    ended: Cell<bool>,
}

impl EndGuard {
    fn new(seen: &Arc<Seen>) -> Self {
        Self {
            seen: Arc::clone(seen),
            ended: Cell::new(false),
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.ended.get() {
            self.seen.closed_early.notify_one();
        }
    }
}

/// A request with `turns` as history (role, content), oldest first.
/// A `traceparent` the engine clients must pass on.
pub(crate) const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// [`request`] in a trace: the engine call must carry [`TRACEPARENT`].
pub(crate) fn traced_request(turns: &[(Role, &str)]) -> EngineRequest {
    EngineRequest {
        trace_fields: vec![("traceparent".to_owned(), TRACEPARENT.to_owned())],
        ..request(turns)
    }
}

pub(crate) fn request(turns: &[(Role, &str)]) -> EngineRequest {
    let now = chrono::Utc::now();
    let history = turns
        .iter()
        .enumerate()
        .map(|(i, (role, content))| Message {
            id: format!("m{i}"),
            conversation_id: "conv-1".into(),
            role: *role,
            content: (*content).into(),
            status: MessageStatus::Complete,
            created_at: now,
            updated_at: now,
        })
        .collect();
    EngineRequest {
        conversation_id: "conv-1".into(),
        reply_id: "reply-1".into(),
        attempt: 1,
        history,
        trace_fields: Vec::new(),
    }
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// A URL where nothing listens.
pub(crate) async fn dead_url() -> String {
    let (listener, url) = listen().await;
    drop(listener);
    url
}

// ---------------------------------------------------------------- gRPC ----

/// How the gRPC test engine answers every call.
#[derive(Clone)]
pub(crate) struct GrpcScript {
    /// The reply's pieces.
    pub(crate) tokens: Vec<&'static str>,
    /// Sent after the last token of a complete reply.
    pub(crate) usage: Option<(u32, u32)>,
    /// The first this many calls fail with UNAVAILABLE before any token.
    pub(crate) unavailable_first: u32,
    /// Every call fails with INVALID_ARGUMENT "prompt too long".
    pub(crate) refuse: bool,
    /// Fail with UNAVAILABLE after this many tokens.
    pub(crate) fail_after: Option<usize>,
    /// Go silent forever after this many tokens.
    pub(crate) stall_after: Option<usize>,
    /// Pause before each token.
    pub(crate) token_delay: Duration,
}

impl Default for GrpcScript {
    fn default() -> Self {
        Self {
            tokens: vec!["Hello", ",", " world"],
            usage: Some((7, 3)),
            unavailable_first: 0,
            refuse: false,
            fail_after: None,
            stall_after: None,
            token_delay: Duration::ZERO,
        }
    }
}

/// A running gRPC test engine.
pub(crate) struct TestGrpcEngine {
    /// Its `http://127.0.0.1:port` URL.
    pub(crate) url: String,
    /// What it saw.
    pub(crate) seen: Arc<Seen>,
    /// The requests it received.
    pub(crate) requests: Arc<Mutex<Vec<pb::GenerateRequest>>>,
}

struct ScriptedGrpcEngine {
    script: GrpcScript,
    seen: Arc<Seen>,
    requests: Arc<Mutex<Vec<pb::GenerateRequest>>>,
}

type ResponseStream = BoxStream<'static, Result<pb::GenerateResponse, tonic::Status>>;

#[tonic::async_trait]
impl ChatEngine for ScriptedGrpcEngine {
    type GenerateStream = ResponseStream;

    async fn generate(
        &self,
        request: tonic::Request<pb::GenerateRequest>,
    ) -> Result<tonic::Response<ResponseStream>, tonic::Status> {
        let text = |name| {
            request
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let call = self
            .seen
            .record_call(text("authorization"), text("traceparent"));
        self.requests.lock().unwrap().push(request.into_inner());
        let script = &self.script;
        if call <= script.unavailable_first {
            return Err(tonic::Status::unavailable("warming up"));
        }
        if script.refuse {
            return Err(tonic::Status::invalid_argument("prompt too long"));
        }
        use pb::generate_response::Event;
        let cut = script.fail_after.or(script.stall_after);
        let tokens = script.tokens.iter().take(cut.unwrap_or(usize::MAX));
        let mut events: VecDeque<Result<Event, tonic::Status>> = tokens
            .map(|token| Ok(Event::Delta((*token).into())))
            .collect();
        match (script.fail_after, script.stall_after, script.usage) {
            (Some(_), _, _) => events.push_back(Err(tonic::Status::unavailable("engine crashed"))),
            (None, None, Some((prompt_tokens, completion_tokens))) => {
                events.push_back(Ok(Event::Usage(pb::Usage {
                    prompt_tokens,
                    completion_tokens,
                })))
            }
            _ => {}
        }
        let stalls = script.stall_after.is_some();
        let delay = script.token_delay;
        let guard = EndGuard::new(&self.seen);
        let responses = stream::unfold((events, guard), move |(mut events, guard)| async move {
            tokio::time::sleep(delay).await;
            match events.pop_front() {
                Some(event) => {
                    let response = event.map(|event| pb::GenerateResponse { event: Some(event) });
                    Some((response, (events, guard)))
                }
                None if stalls => std::future::pending().await,
                None => {
                    guard.ended.set(true);
                    None
                }
            }
        });
        Ok(tonic::Response::new(responses.boxed()))
    }
}

/// Starts a gRPC engine that follows `script`.
pub(crate) async fn spawn_grpc_engine(script: GrpcScript) -> TestGrpcEngine {
    let (listener, url) = listen().await;
    let seen = Arc::new(Seen::default());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let engine = ScriptedGrpcEngine {
        script,
        seen: Arc::clone(&seen),
        requests: Arc::clone(&requests),
    };
    let server = Server::builder()
        .add_service(ChatEngineServer::new(engine))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    TestGrpcEngine {
        url,
        seen,
        requests,
    }
}

// -------------------------------------------------------------- OpenAI ----

/// One answer of the OpenAI test server; each call takes the next one, and
/// the last one repeats.
#[derive(Clone)]
pub(crate) enum OpenAiAnswer {
    /// `body`, written `piece` bytes at a time with a pause between pieces.
    Stream { body: String, piece: usize },
    /// `body`, then the connection breaks.
    StreamThenDrop { body: String },
    /// `body`, then silence until the client goes.
    StreamThenStall { body: String },
    /// An error status with a body.
    Status { status: u16, body: String },
    /// A token every 10 ms, for ever.
    Endless,
}

/// The server-sent events of a reply made of `tokens`, shaped like
/// OpenAI's: a role-only first chunk, a keep-alive comment, one chunk per
/// token, a finish chunk, a usage chunk, and `[DONE]` if `done`.
pub(crate) fn sse_reply(tokens: &[&str], usage: Option<(u32, u32)>, done: bool) -> String {
    let mut body = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    body.push_str(": keep-alive\n\n");
    for token in tokens {
        body.push_str(&chunk(json!({"content": token}), Value::Null));
    }
    body.push_str(&chunk(json!({}), json!("stop")));
    if let Some((prompt, completion)) = usage {
        let data = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        });
        body.push_str(&format!("data: {data}\r\n\r\n"));
    }
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    body
}

/// One `chat.completion.chunk` event.
fn chunk(delta: Value, finish: Value) -> String {
    let data = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null,
    });
    format!("data: {data}\n\n")
}

/// A running OpenAI-compatible test server.
pub(crate) struct TestOpenAi {
    /// Its base URL, `http://127.0.0.1:port/v1`.
    pub(crate) base_url: String,
    /// What it saw.
    pub(crate) seen: Arc<Seen>,
    /// The JSON bodies it received.
    pub(crate) bodies: Arc<Mutex<Vec<Value>>>,
}

#[derive(Clone)]
struct OpenAiState {
    answers: Arc<Mutex<VecDeque<OpenAiAnswer>>>,
    seen: Arc<Seen>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

/// Starts an OpenAI-compatible server giving `answers` in turn.
pub(crate) async fn spawn_openai_engine(answers: Vec<OpenAiAnswer>) -> TestOpenAi {
    let (listener, url) = listen().await;
    let state = OpenAiState {
        answers: Arc::new(Mutex::new(answers.into())),
        seen: Arc::new(Seen::default()),
        bodies: Arc::new(Mutex::new(Vec::new())),
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    TestOpenAi {
        base_url: format!("{url}/v1"),
        seen: state.seen,
        bodies: state.bodies,
    }
}

async fn chat_completions(
    axum::extract::State(state): axum::extract::State<OpenAiState>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let text = |name| headers.get(name).and_then(|value| value.to_str().ok());
    state
        .seen
        .record_call(text(header::AUTHORIZATION.as_str()), text("traceparent"));
    state.bodies.lock().unwrap().push(body);
    let answer = {
        let mut answers = state.answers.lock().unwrap();
        match answers.len() {
            0 => panic!("no answer scripted"),
            1 => answers[0].clone(),
            _ => answers.pop_front().unwrap(),
        }
    };
    let (pieces, ending): (Vec<Bytes>, Ending) = match answer {
        OpenAiAnswer::Status { status, body } => {
            let status = StatusCode::from_u16(status).unwrap();
            return (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
        OpenAiAnswer::Stream { body, piece } => (split(body, piece), Ending::Complete),
        OpenAiAnswer::StreamThenDrop { body } => (split(body, 64), Ending::Drop),
        OpenAiAnswer::StreamThenStall { body } => (split(body, 64), Ending::Stall),
        OpenAiAnswer::Endless => (Vec::new(), Ending::Endless),
    };
    let guard = EndGuard::new(&state.seen);
    let body = stream::unfold(
        (VecDeque::from(pieces), guard),
        move |(mut pieces, guard)| async move {
            // Separate writes, so the client reads the pieces separately.
            tokio::time::sleep(Duration::from_millis(2)).await;
            if let Some(piece) = pieces.pop_front() {
                return Some((Ok(piece), (pieces, guard)));
            }
            match ending {
                Ending::Complete => {
                    guard.ended.set(true);
                    None
                }
                Ending::Drop => {
                    guard.ended.set(true);
                    let broken = std::io::Error::other("engine crashed");
                    Some((Err(broken), (pieces, guard)))
                }
                Ending::Stall => std::future::pending().await,
                Ending::Endless => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let tick = chunk(json!({"content": "tick "}), Value::Null);
                    Some((Ok(Bytes::from(tick)), (pieces, guard)))
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

#[derive(Clone, Copy)]
enum Ending {
    Complete,
    Drop,
    Stall,
    Endless,
}

/// `body` cut into pieces of `size` bytes, regardless of line and character
/// boundaries.
fn split(body: String, size: usize) -> Vec<Bytes> {
    body.as_bytes()
        .chunks(size)
        .map(Bytes::copy_from_slice)
        .collect()
}
