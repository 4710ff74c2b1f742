//! Prometheus metrics at `/metrics`, and the access log. Every request the
//! listener serves is counted (`switchboard_requests_total`) by transport
//! (`grpc`, `grpc-web`, `rest`, `http`), RPC (the full gRPC method, for REST
//! the method its route calls; `other` for anything else, so a client
//! cannot invent label values), HTTP status and gRPC status, and gets one
//! access line (target `switchboard::access`; `log_level =
//! "info,switchboard::access=off"` turns them off) when it is counted. A
//! gRPC call whose status comes in its trailers (every native gRPC answer
//! but a trailers-only one, and a gRPC-Web one before tonic-web folds the
//! trailers into its body) is counted when they pass, inside tonic-web, so
//! a status sent after a stream's messages is the one counted; a caller that
//! goes away first counts as CANCELLED. Durations
//! (`switchboard_request_duration_seconds`) run until the response starts,
//! so a stream counts its setup; `event.duration` in the access line runs
//! until the request is counted. Reply streams open now are
//! `switchboard_open_streams` by kind (`grpc`, `grpc-web`, `sse`, `ndjson`,
//! `websocket`).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::header;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard_rest::router::MatchedRpc;

use crate::grpc_request::SingleMessageMethods;

/// Requests served, by transport, RPC and status.
const REQUESTS: &str = "switchboard_requests_total";
/// Time until the response started, by transport and RPC.
const DURATION: &str = "switchboard_request_duration_seconds";
/// Reply streams open now, by kind.
const OPEN_STREAMS: &str = "switchboard_open_streams";

/// The process's Prometheus recorder. One per process: every app built in
/// it (tests build many) reports into the same registry.
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(DURATION.to_owned()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ],
            )
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full("switchboard_reply_first_token_seconds".to_owned()),
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            )
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full("switchboard_redis_bus_lag_seconds".to_owned()),
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0,
                ],
            )
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full("switchboard_engine_call_duration_seconds".to_owned()),
                &[
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                ],
            )
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full("switchboard_job_duration_seconds".to_owned()),
                &[
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                ],
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only its own");
        }
        describe();
        handle
    })
}

/// The help text and unit of every metric family Switchboard exports,
/// wherever in the code it is recorded: the catalogue `/metrics` shows as
/// `# HELP` lines (the README's table says the same).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "Requests served, by transport, RPC, HTTP status and gRPC status; a gRPC call counted when its status is sent"
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "Time from a request's arrival until its response started, by transport and RPC"
    );
    describe_gauge!(OPEN_STREAMS, "Reply streams open now, by kind");
    describe_gauge!(
        "switchboard_jobs",
        "Jobs in the jobs table by state, read every 5 s"
    );
    describe_gauge!(
        "switchboard_jobs_oldest_due_age_seconds",
        Unit::Seconds,
        "How long the job that has waited longest for a worker has been due (0 when none waits)"
    );
    describe_counter!(
        "switchboard_jobs_total",
        "Job attempts finished, by kind and outcome (succeeded, retrying, dead)"
    );
    describe_histogram!(
        "switchboard_job_duration_seconds",
        Unit::Seconds,
        "Duration of one job attempt, by kind"
    );
    describe_counter!(
        "switchboard_scheduled_runs_total",
        "Scheduled job runs, by task and outcome"
    );
    describe_counter!(
        "switchboard_replies_total",
        "Reply attempts, by engine and outcome"
    );
    describe_histogram!(
        "switchboard_reply_first_token_seconds",
        Unit::Seconds,
        "From an attempt's engine call to its first text, by engine"
    );
    describe_gauge!(
        "switchboard_engine_breaker_state",
        "The engine's circuit breaker: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        "switchboard_engine_calls_total",
        "Engine calls (one per reply attempt), by engine and outcome"
    );
    describe_histogram!(
        "switchboard_engine_call_duration_seconds",
        Unit::Seconds,
        "From an engine call to its end, by engine"
    );
    describe_counter!(
        "switchboard_engine_tokens_total",
        "Tokens the engine reported, by engine and direction (input: the prompt, output: the reply)"
    );
    describe_gauge!(
        "switchboard_db_connections",
        "The database pool's connections, by state (in_use, idle), read every 5 s"
    );
    describe_histogram!(
        "switchboard_redis_bus_lag_seconds",
        Unit::Seconds,
        "From a reply event's publish on the Redis bus to its arrival here (across hosts, their clocks' difference included)"
    );
    describe_gauge!(
        "switchboard_redis_subscribed",
        "1 while the Redis subscription (reply event, cache invalidation) is up, 0 while it is lost"
    );
    describe_counter!(
        "switchboard_redis_resubscriptions_total",
        "Redis subscriptions restored after they were lost, by subscription"
    );
    describe_gauge!(
        "switchboard_ready",
        "1 while the instance is ready (its /readyz answers 200), 0 while it is not or shuts down"
    );
    describe_gauge!(
        "switchboard_database_up",
        "1 while the database takes writes, 0 while it does not (checked every few seconds)"
    );
    describe_gauge!(
        "switchboard_db_pool_acquire_seconds",
        Unit::Seconds,
        "How long taking a database pool connection took at the last sample (every 5 s): the wait while every connection is in use"
    );
    describe_gauge!(
        "switchboard_db_connections_max",
        "The database pool's ceiling (database_max_connections)"
    );
}

/// Installs the recorder (once per process).
pub(crate) fn install() {
    let _ = handle();
}

/// `GET /metrics` in the Prometheus text format.
pub(crate) fn routes() -> Router {
    let handle = handle().clone();
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}

/// The gRPC methods served, the only values the `rpc` label takes besides
/// `other`.
#[derive(Debug, Clone)]
pub(crate) struct KnownRpcs(std::sync::Arc<HashSet<String>>);

impl KnownRpcs {
    pub(crate) fn new(methods: impl IntoIterator<Item = String>) -> Self {
        Self(std::sync::Arc::new(methods.into_iter().collect()))
    }
}

/// The labels of a call, and when it began: put in the request's
/// extensions by [`record`] for [`count_grpc_call`].
#[derive(Debug, Clone)]
struct Call {
    transport: &'static str,
    rpc: String,
    started: Instant,
}

/// On a gRPC response whose count and access line wait for its end
/// (its status comes in the trailers).
#[derive(Debug, Clone, Copy)]
struct CountedAtEnd;

/// Counts and times one request and writes its access line; a gRPC call
/// answered with trailers is counted at its end, by [`count_grpc_call`].
pub(crate) async fn record(known: KnownRpcs, mut request: Request, next: Next) -> Response {
    // Touch the recorder so counts start with the first request.
    let _ = handle();
    let started = Instant::now();
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let transport = if content_type.starts_with("application/grpc-web") {
        "grpc-web"
    } else if content_type.starts_with("application/grpc") {
        "grpc"
    } else {
        "http"
    };
    let path = request.uri().path().to_owned();
    if transport != "http" {
        let rpc = if known.0.contains(&path) {
            path.clone()
        } else {
            "other".to_owned()
        };
        request.extensions_mut().insert(Call {
            transport,
            rpc,
            started,
        });
    }
    let response = next.run(request).await;

    let matched = response.extensions().get::<MatchedRpc>().copied();
    let (transport, rpc) = match matched {
        Some(MatchedRpc(binding)) => ("rest", binding.grpc_method.to_owned()),
        None if transport != "http" && known.0.contains(&path) => (transport, path),
        None => (transport, "other".to_owned()),
    };
    crate::trace::record_response(
        transport,
        (rpc != "other").then_some(rpc.as_str()),
        matched.map(|MatchedRpc(binding)| (binding.http_method, binding.template)),
        response.status(),
        response.headers(),
    );
    let elapsed = started.elapsed();
    metrics::histogram!(DURATION, "transport" => transport, "rpc" => rpc.clone())
        .record(elapsed.as_secs_f64());
    if response.extensions().get::<CountedAtEnd>().is_some() {
        return response;
    }
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let call = Call {
        transport,
        rpc,
        started,
    };
    let route = matched.map(|MatchedRpc(binding)| binding.template);
    finish(
        &call,
        route,
        response.status().as_u16(),
        grpc_status.as_deref(),
    );
    match stream_kind(&response) {
        Some(kind) => response.map(|body| {
            Body::new(Observed {
                inner: body,
                call: None,
                _open: Some(OpenStreamGuard::new(kind)),
            })
        }),
        None => response,
    }
}

/// The kind of reply stream a REST answer is, if it is one.
fn stream_kind(response: &Response) -> Option<&'static str> {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())?;
    if content_type.starts_with("text/event-stream") {
        Some("sse")
    } else if content_type.starts_with("application/x-ndjson") {
        Some("ndjson")
    } else {
        None
    }
}

/// Counts a finished request and writes its access line (in the request's
/// span: its id, method, path, user and trace).
fn finish(call: &Call, route: Option<&str>, status: u16, grpc_status: Option<&str>) {
    metrics::counter!(
        REQUESTS,
        "transport" => call.transport,
        "rpc" => call.rpc.clone(),
        "status" => status.to_string(),
        "grpc_status" => grpc_status.unwrap_or("").to_owned()
    )
    .increment(1);
    tracing::info!(
        target: "switchboard::access",
        {
        switchboard.transport = call.transport,
        switchboard.rpc = call.rpc.as_str(),
        http.route = route,
        http.response.status_code = status,
        rpc.grpc.status_code = grpc_status,
        event.duration = u64::try_from(call.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        },
        "request"
    );
}

/// Inside tonic-web, for every gRPC and gRPC-Web call: an answer that
/// carries its status in its headers (trailers-only) is left to [`record`];
/// any other is counted when its trailers come, with their `grpc-status`,
/// or as CANCELLED (1) if the caller goes away first. A stream of replies
/// also counts as open in `switchboard_open_streams` while it lasts.
pub(crate) async fn count_grpc_call(
    methods: SingleMessageMethods,
    request: Request,
    next: Next,
) -> Response {
    let call = request.extensions().get::<Call>().cloned();
    let streams = methods.streams(request.uri().path());
    let response = next.run(request).await;
    let Some(call) = call else {
        return response;
    };
    if response.headers().contains_key("grpc-status") {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts.extensions.insert(CountedAtEnd);
    let status = parts.status.as_u16();
    let body = Observed {
        inner: body,
        call: Some((call.clone(), status)),
        _open: streams.then(|| OpenStreamGuard::new(call.transport)),
    };
    Response::from_parts(parts, Body::new(body))
}

/// A response body watched until it ends: a gRPC answer's `call` is
/// counted when its trailers pass (or as CANCELLED when it is dropped
/// first), and a reply stream counts as open while its guard lives.
struct Observed {
    inner: Body,
    /// A gRPC call and its HTTP status, until counted.
    call: Option<(Call, u16)>,
    /// A reply stream's place in `switchboard_open_streams` (`grpc`,
    /// `grpc-web`, `sse`, `ndjson`; the WebSocket counts itself).
    _open: Option<OpenStreamGuard>,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let grpc_status = trailers
                        .get("grpc-status")
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned);
                    self.count(grpc_status.as_deref());
                }
            }
            // Ended without trailers: a gRPC answer with no status.
            Poll::Ready(None) => self.count(None),
            Poll::Ready(Some(Err(_))) => self.count(Some(CANCELLED)),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Observed {
    fn count(&mut self, grpc_status: Option<&str>) {
        if let Some((call, status)) = self.call.take() {
            finish(&call, None, status, grpc_status);
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // The caller went away before the status was sent.
        self.count(Some(CANCELLED));
    }
}

/// The gRPC status of a call its caller gave up on.
const CANCELLED: &str = "1";

/// One open reply stream of `kind` in `switchboard_open_streams`, for as
/// long as the guard lives.
pub(crate) struct OpenStreamGuard(&'static str);

impl OpenStreamGuard {
    /// Counts a stream of `kind` as open.
    pub(crate) fn new(kind: &'static str) -> Self {
        metrics::gauge!(OPEN_STREAMS, "kind" => kind).increment(1.0);
        Self(kind)
    }
}

impl Drop for OpenStreamGuard {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_STREAMS, "kind" => self.0).decrement(1.0);
    }
}
