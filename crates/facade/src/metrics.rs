//! Prometheus metrics at `/metrics`: every request the listener serves is
//! counted and timed by transport (`grpc`, `grpc-web`, `rest`, `http`), RPC
//! (the full gRPC method, for REST the method its route calls; `other` for
//! anything else, so a client cannot invent label values) and status (the
//! HTTP status, and for gRPC the `grpc-status` when a call fails before its
//! first message; a status sent in trailers after messages is not seen here).
//! Durations run until the response starts, so a stream counts its setup.
//!
//! The same middleware writes the access log: one INFO line per request
//! (target `switchboard::access`; `log_level = "info,switchboard::access=off"`
//! turns it off) with the transport, RPC, route, statuses and duration
//! (`event.duration`, in nanoseconds, to the response's start).

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard_rest::router::MatchedRpc;

/// Requests served, by transport, RPC and status.
const REQUESTS: &str = "switchboard_requests_total";
/// Time until the response started, by transport and RPC.
const DURATION: &str = "switchboard_request_duration_seconds";

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
        handle
    })
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

/// Counts and times one request.
pub(crate) async fn record(known: KnownRpcs, request: Request, next: Next) -> Response {
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
    let status = response.status().as_u16().to_string();
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .unwrap_or(if transport.starts_with("grpc") && status == "200" {
            "0"
        } else {
            ""
        })
        .to_owned();
    metrics::counter!(REQUESTS, "transport" => transport, "rpc" => rpc.clone(), "status" => status, "grpc_status" => grpc_status.clone())
        .increment(1);
    let elapsed = started.elapsed();
    // The access line, in the request's span (its id, method, path, user).
    tracing::info!(
        target: "switchboard::access",
        {
        switchboard.transport = transport,
        switchboard.rpc = rpc.as_str(),
        http.route = matched.map(|MatchedRpc(binding)| binding.template),
        http.response.status_code = response.status().as_u16(),
        rpc.grpc.status_code = (!grpc_status.is_empty()).then_some(grpc_status.as_str()),
        event.duration = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        },
        "request"
    );
    metrics::histogram!(DURATION, "transport" => transport, "rpc" => rpc)
        .record(elapsed.as_secs_f64());
    response
}
