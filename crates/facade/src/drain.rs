//! [`Drain`]: the shutdown of a listener, shared by [`crate::serve`], the
//! health checks, the reply streams and the binary.
//!
//! Shutdown has two moments. When it begins ([`Drain::begin`], on SIGTERM
//! or SIGINT) `/readyz` and `/healthz` answer 503 and grpc.health.v1
//! NOT_SERVING, every new request that is not a health check or `/metrics`
//! is refused with UNAVAILABLE ("the server is shutting down"), and the
//! listener stays open, so load balancers see a failing check rather than a
//! refused connection. Requests and streams already under way go on, and so
//! does the work the binary registers with [`Drain::track`] (its job
//! workers). When the grace runs out, [`crate::serve`] ends the reply
//! streams still open ([`Drain::streams_ending`]) with UNAVAILABLE, a
//! status at a message boundary that clients resume from, and stops once
//! nothing is in flight.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderValue, header};
use switchboard_core::shutdown::{Shutdown, ShutdownSignal};
use tokio::sync::watch;

/// What a refused request is told.
pub(crate) const SHUTTING_DOWN: &str = "the server is shutting down";

/// The shutdown of one listener. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    /// True once shutdown began.
    draining: watch::Sender<bool>,
    /// Begun once the grace ran out: open streams end.
    ending: Shutdown,
    /// Requests, streams and tracked work under way.
    in_flight: watch::Sender<usize>,
}

impl Drain {
    /// Begins the shutdown: health checks fail and new requests are
    /// refused from now on, while open ones finish.
    pub fn begin(&self) {
        self.0.draining.send_replace(true);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        *self.0.draining.borrow()
    }

    /// Registers work the drain waits for (up to the grace) before the
    /// listener closes, such as job workers finishing their jobs; it is
    /// done when the returned guard is dropped.
    pub fn track(&self) -> InFlight {
        self.0.in_flight.send_modify(|n| *n += 1);
        InFlight(self.clone())
    }

    /// Requested when the grace has run out and open streams must end.
    pub fn streams_ending(&self) -> ShutdownSignal {
        self.0.ending.signal()
    }

    /// Whether shutdown has begun, as a channel to wait on.
    pub(crate) fn draining(&self) -> watch::Receiver<bool> {
        self.0.draining.subscribe()
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn begun(&self) {
        let mut draining = self.draining();
        // The sender lives in `self`, so this cannot fail.
        let _ = draining.wait_for(|draining| *draining).await;
    }

    /// Ends the streams still open: the grace has run out.
    pub(crate) fn end_streams(&self) {
        self.0.ending.begin();
    }

    /// Resolves once nothing is in flight.
    pub(crate) async fn idle(&self) {
        let mut in_flight = self.0.in_flight.subscribe();
        let _ = in_flight.wait_for(|n| *n == 0).await;
    }
}

/// Work under way that the drain waits for; done when dropped.
#[derive(Debug)]
pub struct InFlight(Drain);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A request's place in the drain, in its extensions: a WebSocket session
/// takes it along when it upgrades, so the drain waits for the socket too.
#[derive(Debug, Clone)]
pub(crate) struct Tracked {
    _place: Arc<InFlight>,
}

/// Whether a request only asks about the process (it is answered during
/// the drain, and not waited for).
fn is_health_check(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
        || path.starts_with("/grpc.health.v1.Health/")
}

/// A layer of [`crate::app`] and [`crate::worker_app`], inside CORS and the
/// request id: during the drain, refuses new
/// requests (health checks excepted) with UNAVAILABLE, and asks HTTP/1.1
/// clients to close their connections; counts every other request as in
/// flight until its response body has been sent.
pub(crate) async fn gate(State(drain): State<Drain>, mut request: Request, next: Next) -> Response {
    let http1 = request.version() < http::Version::HTTP_2;
    if is_health_check(request.uri().path()) {
        let mut response = next.run(request).await;
        if http1 && drain.is_draining() {
            close_after(&mut response);
        }
        return response;
    }
    if drain.is_draining() {
        let status = tonic::Status::unavailable(SHUTTING_DOWN);
        let mut response = if crate::is_grpc(&request) {
            let mut response = status.into_http::<Body>();
            // A trailers-only answer reads the same in gRPC-Web, given its
            // content type: the caller's own (`application/grpc-web…`).
            if let Some(web) = request
                .headers()
                .get(header::CONTENT_TYPE)
                .filter(|v| v.as_bytes().starts_with(b"application/grpc-web"))
            {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, web.clone());
            }
            response
        } else {
            switchboard_rest::error::status_response(&status)
        };
        if http1 {
            close_after(&mut response);
        }
        return response;
    }
    let tracked = Tracked {
        _place: Arc::new(drain.track()),
    };
    request.extensions_mut().insert(tracked.clone());
    let mut response = next.run(request).await;
    if http1 && drain.is_draining() {
        close_after(&mut response);
    }
    response.map(|body| {
        Body::new(TrackedBody {
            inner: body,
            _tracked: tracked,
        })
    })
}

/// Asks an HTTP/1.1 client to close the connection after this response
/// (HTTP/2 connections get GOAWAY when the listener stops).
fn close_after(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// A response body that holds its request's place in the drain until it
/// has been sent (or dropped), trailers included.
struct TrackedBody {
    inner: Body,
    _tracked: Tracked,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
