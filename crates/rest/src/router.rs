//! The REST router: matches a request against every generated binding,
//! transcodes it into the request message, calls the same service trait
//! method gRPC calls, and writes the response as proto3 JSON — or, for a
//! server-streaming method, as Server-Sent Events or newline-delimited JSON
//! chosen by `Accept`. An error before the first message is an ordinary JSON
//! error response; an error mid-stream is sent as an `error` event (SSE) or
//! an `{"error": …}` line (NDJSON), never as a silent 200.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tonic::metadata::MetadataMap;

use crate::binding::HttpBinding;
use crate::error::{status_json, status_response};
use crate::policy::{Caller, authorize};
use crate::transcode::{decode_request, match_path, parse_grpc_timeout};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Handler = Arc<dyn Fn(Call) -> BoxFuture<Response> + Send + Sync>;

/// A request matched to a binding, ready to be decoded and dispatched.
struct Call {
    binding: &'static HttpBinding,
    captured: Vec<String>,
    query: Option<String>,
    body: Bytes,
    metadata: MetadataMap,
    extensions: http::Extensions,
    deadline: Option<Duration>,
    format: StreamFormat,
    /// The `Last-Event-ID` header of an EventSource that reconnects.
    last_event_id: Option<String>,
}

impl Call {
    #[allow(clippy::result_large_err)]
    fn into_request<Req: DeserializeOwned>(self) -> Result<tonic::Request<Req>, tonic::Status> {
        let message = decode_request(
            self.binding,
            self.captured,
            self.query.as_deref(),
            &self.body,
            self.last_event_id.as_deref(),
        )?;
        Ok(tonic::Request::from_parts(
            self.metadata,
            self.extensions,
            message,
        ))
    }
}

/// How a server stream is written over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamFormat {
    /// `text/event-stream`: one `data:` event per message.
    ServerSentEvents,
    /// `application/x-ndjson`: one `{"result": …}` line per message.
    NdJson,
}

impl StreamFormat {
    fn from_accept(accept: Option<&HeaderValue>) -> Self {
        let accept = accept.and_then(|value| value.to_str().ok()).unwrap_or("");
        if !accept.contains("text/event-stream")
            && (accept.contains("application/x-ndjson") || accept.contains("application/json"))
        {
            StreamFormat::NdJson
        } else {
            StreamFormat::ServerSentEvents
        }
    }
}

/// Put in the extensions of every response to a matched route: the binding
/// it matched, so metrics, traces and logs name the RPC (its full gRPC
/// method) whatever the transport, and the route by its template, without
/// a label per URL.
#[derive(Debug, Clone, Copy)]
pub struct MatchedRpc(pub &'static HttpBinding);

/// One binding and the code that calls its method.
#[derive(Clone)]
pub struct Route {
    binding: &'static HttpBinding,
    handler: Handler,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("binding", self.binding)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// A route to a unary method.
    pub fn unary<Req, Res, F, Fut>(binding: &'static HttpBinding, call: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Res: Serialize + Send + 'static,
        F: Fn(tonic::Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<Res>, tonic::Status>> + Send + 'static,
    {
        let call = Arc::new(call);
        let handler: Handler = Arc::new(move |request: Call| {
            let call = call.clone();
            Box::pin(async move {
                let response_body = request.binding.response_body;
                let deadline = request.deadline;
                let request = match request.into_request::<Req>() {
                    Ok(request) => request,
                    Err(status) => return status_response(&status),
                };
                let outcome = match deadline {
                    Some(deadline) => tokio::time::timeout(deadline, call(request))
                        .await
                        .unwrap_or_else(|_| {
                            Err(tonic::Status::deadline_exceeded("deadline exceeded"))
                        }),
                    None => call(request).await,
                };
                match outcome {
                    Ok(response) => json_response(&response.into_inner(), response_body),
                    Err(status) => status_response(&status),
                }
            })
        });
        Self { binding, handler }
    }

    /// A route to a server-streaming method.
    pub fn server_streaming<Req, Item, S, F, Fut>(binding: &'static HttpBinding, call: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Item: Serialize + Send + 'static,
        S: Stream<Item = Result<Item, tonic::Status>> + Send + 'static,
        F: Fn(tonic::Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<S>, tonic::Status>> + Send + 'static,
    {
        let call = Arc::new(call);
        let handler: Handler = Arc::new(move |request: Call| {
            let call = call.clone();
            Box::pin(async move {
                let format = request.format;
                let binding = request.binding;
                let resuming = request.last_event_id.is_some();
                let deadline = request.deadline.map(|d| tokio::time::Instant::now() + d);
                let request = match request.into_request::<Req>() {
                    Ok(request) => request,
                    Err(status) => return status_response(&status),
                };
                let stream = match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, call(request))
                        .await
                        .unwrap_or_else(|_| {
                            Err(tonic::Status::deadline_exceeded("deadline exceeded"))
                        }),
                    None => call(request).await,
                };
                match stream {
                    Ok(response) => {
                        let items = until_deadline(response.into_inner(), deadline);
                        stream_response(items, format, binding.event_id, resuming).await
                    }
                    Err(status) => status_response(&status),
                }
            })
        });
        Self { binding, handler }
    }

    /// The binding this route serves.
    pub fn binding(&self) -> &'static HttpBinding {
        self.binding
    }
}

/// Ends a stream with `DEADLINE_EXCEEDED` once the call's deadline passes.
/// A stream that ends first ends the response then; nothing waits for the
/// deadline.
fn until_deadline<S, Item>(
    stream: S,
    deadline: Option<tokio::time::Instant>,
) -> Pin<Box<dyn Stream<Item = Result<Item, tonic::Status>> + Send>>
where
    S: Stream<Item = Result<Item, tonic::Status>> + Send + 'static,
    Item: Send + 'static,
{
    let Some(deadline) = deadline else {
        return Box::pin(stream);
    };
    let state = Some((
        Box::pin(stream),
        Box::pin(tokio::time::sleep_until(deadline)),
    ));
    Box::pin(futures::stream::unfold(state, |state| async move {
        let (mut stream, mut expiry) = state?;
        tokio::select! {
            item = stream.next() => item.map(|item| (item, Some((stream, expiry)))),
            () = &mut expiry => {
                let status = tonic::Status::deadline_exceeded("deadline exceeded");
                Some((Err(status), None))
            }
        }
    }))
}

/// The items of a stream up to and including its first error. Nothing is
/// polled after the error, so the response ends at once (rather than when
/// the method's stream next yields) and the method's stream is dropped.
fn through_first_error<S, Item>(stream: S) -> impl Stream<Item = Result<Item, tonic::Status>> + Send
where
    S: Stream<Item = Result<Item, tonic::Status>> + Send + 'static,
    Item: Send + 'static,
{
    futures::stream::unfold(Some(Box::pin(stream)), |state| async move {
        let mut stream = state?;
        let item = stream.next().await?;
        let rest = if item.is_err() { None } else { Some(stream) };
        Some((item, rest))
    })
}

fn json_response<Res: Serialize>(message: &Res, response_body: Option<&'static str>) -> Response {
    let encoded = match response_body {
        None => serde_json::to_vec(message),
        Some(field) => serde_json::to_value(message)
            .map(|mut value| value.get_mut(field).map(Value::take).unwrap_or(Value::Null))
            .and_then(|value| serde_json::to_vec(&value)),
    };
    match encoded {
        Ok(bytes) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(error) => status_response(&tonic::Status::internal(format!(
            "the response could not be encoded as JSON: {error}"
        ))),
    }
}

/// A server stream as SSE or NDJSON. `event_id` names the field of each
/// message that is its SSE `id`. An EventSource that reconnects (`resuming`)
/// to a stream with nothing left gets 204, which tells it not to reconnect
/// again.
async fn stream_response<S, Item>(
    items: S,
    format: StreamFormat,
    event_id: Option<&'static str>,
    resuming: bool,
) -> Response
where
    S: Stream<Item = Result<Item, tonic::Status>> + Send + 'static,
    Item: Serialize + Send + 'static,
{
    // The first error ends the stream: it is written, then nothing follows.
    let mut items = Box::pin(through_first_error(items));
    match format {
        StreamFormat::ServerSentEvents => {
            let first = if resuming {
                match items.next().await {
                    Some(first) => Some(first),
                    None => return StatusCode::NO_CONTENT.into_response(),
                }
            } else {
                None
            };
            let events = futures::stream::iter(first).chain(items).map(move |item| {
                Ok::<_, Infallible>(match item.map(|message| serde_json::to_value(&message)) {
                    Ok(Ok(json)) => sse_event(&json, event_id),
                    Ok(Err(error)) => error_event(&tonic::Status::internal(error.to_string())),
                    Err(status) => error_event(&status),
                })
            });
            Sse::new(events)
                .keep_alive(KeepAlive::default())
                .into_response()
        }
        StreamFormat::NdJson => {
            let lines = items.map(|item| {
                let line = match item {
                    Ok(message) => match serde_json::to_value(&message) {
                        Ok(value) => json!({ "result": value }),
                        Err(error) => json!({ "error": status_json(&tonic::Status::internal(error.to_string())) }),
                    },
                    Err(status) => json!({ "error": status_json(&status) }),
                };
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                Ok::<_, Infallible>(Bytes::from(bytes))
            });
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-ndjson"),
                )],
                Body::from_stream(lines),
            )
                .into_response()
        }
    }
}

/// One message as an SSE event, with its `id` when the binding names one.
fn sse_event(json: &Value, event_id: Option<&'static str>) -> Event {
    let event = Event::default().data(json.to_string());
    let id = event_id.and_then(|field| match json.get(field)? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    });
    match id {
        // An id never holds a line break (the spec forbids it; axum panics).
        Some(id) if !id.contains(['\n', '\r', '\0']) => event.id(id),
        _ => event,
    }
}

fn error_event(status: &tonic::Status) -> Event {
    Event::default()
        .event("error")
        .data(status_json(status).to_string())
}

/// Every REST route of the API, matched in one place.
#[derive(Debug, Clone, Default)]
pub struct RestRouter {
    routes: Arc<Vec<Route>>,
    body_limit: usize,
}

/// The largest request body the router reads by default: 4 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 4 << 20;

impl RestRouter {
    /// A router over `routes`. Routes with a custom verb are tried first, so
    /// `/v1/items/{id}:cancel` is never taken for `/v1/items/{id}`.
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Self {
        let mut routes: Vec<Route> = routes.into_iter().collect();
        routes.sort_by_key(|route| route.binding.verb.is_none());
        Self {
            routes: Arc::new(routes),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Sets the largest request body read; a larger one is refused with 413.
    pub fn with_body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// The bindings served, in matching order.
    pub fn bindings(&self) -> impl Iterator<Item = &'static HttpBinding> + '_ {
        self.routes.iter().map(|route| route.binding)
    }

    /// Serves one request: 404 when no template matches the path, 405 when
    /// one matches but not with this method, otherwise the method's answer.
    pub async fn handle(&self, request: http::Request<Body>) -> Response {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        // HEAD is answered as GET; the server sends the headers only.
        let method = if parts.method == Method::HEAD {
            "GET"
        } else {
            parts.method.as_str()
        };
        let mut allowed: Vec<&'static str> = Vec::new();
        let mut matched = None;
        for route in self.routes.iter() {
            let Some(captured) = match_path(route.binding, path) else {
                continue;
            };
            if route.binding.http_method == method {
                matched = Some((route, captured));
                break;
            }
            allowed.push(route.binding.http_method);
        }
        let Some((route, captured)) = matched else {
            return no_route(&parts.method, path, &allowed);
        };
        // Access first, as the generated guard does, but before the body is
        // read or decoded: a caller refused access gets 401/403 whatever it
        // sent. (The guard checks again; both read the same rule.)
        if let Some(policy) = route.binding.policy
            && let Err(status) = authorize(parts.extensions.get::<Caller>(), policy)
        {
            let mut response = status_response(&status);
            response.extensions_mut().insert(MatchedRpc(route.binding));
            return response;
        }
        // A body announced larger than the limit is refused before a byte
        // of it is read: hyper answers `Expect: 100-continue` with
        // `100 Continue` when the body is first polled, so refusing later
        // would invite the client to send it all.
        let announced = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        if announced.is_some_and(|length| length > self.body_limit as u64) {
            let mut response = self.too_large();
            response.extensions_mut().insert(MatchedRpc(route.binding));
            return response;
        }
        let body = match http_body_util::Limited::new(body, self.body_limit)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return self.too_large();
            }
            Err(error) => {
                tracing::debug!(%error, "a request body could not be read");
                let status = tonic::Status::invalid_argument("the request body could not be read");
                return status_response(&status);
            }
        };
        if !body.iter().all(u8::is_ascii_whitespace)
            && !is_json(parts.headers.get(header::CONTENT_TYPE))
        {
            // Only JSON is read. Refusing other types also keeps browsers from
            // sending "simple" cross-site requests (text/plain, forms) that
            // skip the CORS preflight.
            let status = tonic::Status::invalid_argument(
                "the request body must be JSON: send `content-type: application/json`",
            );
            return with_status(status_response(&status), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        let deadline = parts
            .headers
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        let format = StreamFormat::from_accept(parts.headers.get(header::ACCEPT));
        let last_event_id = parts
            .headers
            .get("last-event-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let call = Call {
            binding: route.binding,
            captured,
            query: parts.uri.query().map(str::to_owned),
            body,
            metadata: MetadataMap::from_headers(parts.headers),
            extensions: parts.extensions,
            deadline,
            format,
            last_event_id,
        };
        let mut response = (route.handler)(call).await;
        response.extensions_mut().insert(MatchedRpc(route.binding));
        response
    }

    /// 413, with a RESOURCE_EXHAUSTED google.rpc.Status naming the limit.
    fn too_large(&self) -> Response {
        let status = tonic::Status::resource_exhausted(format!(
            "the request body is larger than {} bytes",
            self.body_limit
        ));
        with_status(status_response(&status), StatusCode::PAYLOAD_TOO_LARGE)
    }

    /// The router as an axum router that answers every path it is given;
    /// use it as the fallback of the application router.
    pub fn into_axum(self) -> axum::Router {
        axum::Router::new().fallback(move |request: http::Request<Body>| {
            let router = self.clone();
            async move { router.handle(request).await }
        })
    }
}

/// Whether a request's `content-type` is JSON: `application/json`, a
/// `+json` type, or none at all (a client that labels nothing is taken to
/// send JSON).
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(value) = content_type else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn with_status(mut response: Response, status: StatusCode) -> Response {
    *response.status_mut() = status;
    response
}

fn no_route(method: &Method, path: &str, allowed: &[&'static str]) -> Response {
    if allowed.is_empty() {
        return status_response(&tonic::Status::not_found(format!(
            "no route for {} {}",
            crate::proto_json::excerpt(method.as_str()),
            crate::proto_json::excerpt(path)
        )));
    }
    let mut response = with_status(
        status_response(&tonic::Status::unimplemented(format!(
            "{} is not allowed on {}; allowed: {}",
            crate::proto_json::excerpt(method.as_str()),
            crate::proto_json::excerpt(path),
            allowed.join(", ")
        ))),
        StatusCode::METHOD_NOT_ALLOWED,
    );
    if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}
