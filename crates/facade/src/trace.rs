//! The server span of every request, whatever the transport: it continues
//! a caller's W3C `traceparent`/`tracestate` (native gRPC, gRPC-Web, REST,
//! SSE and the WebSocket upgrade all carry them as HTTP headers) and, when
//! tracing is on, carries OpenTelemetry's semantic-convention attributes:
//! `rpc.*` for gRPC calls, `http.*` for every request, the RPC a REST route
//! called, the user once authenticated and the status, including a gRPC
//! status sent in trailers after a stream's messages.
//!
//! When tracing is off the span is the plain `request` span the logs carry
//! (method, path, request id, the user once known), with none of the extra
//! fields.

use std::time::Duration;

use http::{HeaderMap, Request, StatusCode};
use switchboard_core::telemetry;
use tracing::Span;
use tracing::field::Empty;

/// The span of `request`, a child of the caller's trace context if it sent
/// one.
pub(crate) fn request_span<B>(request: &Request<B>) -> Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !telemetry::enabled() {
        return tracing::info_span!(
            "request",
            method = %request.method(),
            path = request.uri().path(),
            request_id,
            user.id = Empty,
        );
    }
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %request.method(),
        url.path = request.uri().path(),
        http.route = Empty,
        http.response.status_code = Empty,
        network.protocol.version = ?request.version(),
        request_id,
        switchboard.transport = Empty,
        switchboard.rpc = Empty,
        rpc.system = Empty,
        rpc.service = Empty,
        rpc.method = Empty,
        rpc.grpc.status_code = Empty,
        user.id = Empty,
    );
    telemetry::continue_remote(&span, |name| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    });
    span
}

/// Records on the current request span what the request turned out to be:
/// its `transport` (`grpc`, `grpc-web`, `rest`, `http`), the gRPC method
/// `rpc` it called (if any), the REST `route` template it matched, and the
/// response's HTTP status and any `grpc-status` in its headers.
pub(crate) fn record_response(
    transport: &str,
    rpc: Option<&str>,
    route: Option<(&str, &str)>,
    status: StatusCode,
    headers: &HeaderMap,
) {
    let span = Span::current();
    if !telemetry::enabled() || span.is_disabled() {
        return;
    }
    span.record("switchboard.transport", transport);
    span.record("http.response.status_code", status.as_u16());
    if let Some(rpc) = rpc {
        span.record("switchboard.rpc", rpc);
    }
    match (route, rpc) {
        (Some((method, template)), _) => {
            span.record("http.route", template);
            telemetry::rename(&span, format!("{method} {template}"));
        }
        (None, Some(rpc)) if transport.starts_with("grpc") => {
            let name = rpc.trim_start_matches('/');
            let (service, method) = name.split_once('/').unwrap_or((name, ""));
            telemetry::rename(&span, name.to_owned());
            span.record("rpc.system", "grpc");
            span.record("rpc.service", service);
            span.record("rpc.method", method);
        }
        _ => {}
    }
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    record_grpc_status(&span, headers);
}

/// At the end of a response body: a `grpc-status` sent in trailers (after
/// a stream's messages) is the call's status.
pub(crate) fn on_end_of_stream(trailers: Option<&HeaderMap>, _duration: Duration, span: &Span) {
    if let Some(trailers) = trailers
        && telemetry::enabled()
    {
        record_grpc_status(span, trailers);
    }
}

/// Records a `grpc-status` in `headers` on `span`; the server-side error
/// codes (OpenTelemetry's list for gRPC servers) mark the span an error.
fn record_grpc_status(span: &Span, headers: &HeaderMap) {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
    else {
        return;
    };
    span.record("rpc.grpc.status_code", code);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "ERROR");
    }
}
