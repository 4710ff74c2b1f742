//! Health: `/healthz` answers 200 while the process runs and 503 once it is
//! shutting down; `/readyz` answers 200 only while the database answers and
//! the server is not shutting down, and
//! reports the engine's circuit breaker (`closed`, `open`, `half_open`)
//! without failing on it: an open circuit stops new messages (SendMessage
//! answers UNAVAILABLE), not reads, so the instance stays in rotation.
//! grpc.health.v1 gives the same answer for the whole server (`""`) and for
//! `switchboard.v1.ChatService`. One background task checks every few
//! seconds and `Watch` streams read its result, so watchers cost the
//! database nothing; when shutdown begins every watcher is told NOT_SERVING
//! and its stream ends, so load balancers stop sending and no watch holds
//! the drain open.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::Stream;
use serde_json::json;
use switchboard_core::chat::{EngineStatus, ReportedState};
use switchboard_core::db::Database;
use tokio::sync::watch;

use crate::drain::Drain;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The services a health check may name; `""` is the server as a whole.
const SERVICES: &[&str] = &["", "switchboard.v1.ChatService"];

/// How often the background task checks the database.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The readiness of the server, shared by the HTTP and gRPC health checks.
#[derive(Debug, Clone)]
pub struct HealthState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    database: Database,
    engine: EngineStatus,
    drain: Drain,
    status: watch::Sender<ServingStatus>,
}

impl HealthState {
    /// Health of a server whose readiness is the database's, and which stops
    /// being ready once `drain` begins. Starts the background check, which
    /// ends when the last clone of the state is dropped; call it inside a
    /// tokio runtime.
    pub fn new(database: Database, engine: EngineStatus, drain: Drain) -> Self {
        let inner = Arc::new(Inner {
            database,
            engine,
            drain,
            status: watch::Sender::new(ServingStatus::Unknown),
        });
        tokio::spawn(check_periodically(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Checks now, publishes the outcome to watchers, and returns it.
    async fn refresh(&self) -> ServingStatus {
        refresh(&self.inner).await.0
    }

    pub(crate) fn grpc_service(&self) -> HealthServer<HealthState> {
        HealthServer::new(self.clone())
    }
}

/// Checks readiness now and publishes it; with the reason when not ready.
async fn refresh(inner: &Inner) -> (ServingStatus, Option<String>) {
    let (status, reason) = if inner.drain.is_draining() {
        (ServingStatus::NotServing, Some("shutting down".to_owned()))
    } else {
        let writable = inner.database.check_writable().await;
        metrics::gauge!("switchboard_database_up").set(if writable.is_ok() { 1.0 } else { 0.0 });
        match writable {
            Ok(()) => (ServingStatus::Serving, None),
            Err(error) => {
                tracing::warn!(%error, "not ready: the database cannot take writes");
                let reason = match error {
                    switchboard_core::Error::Unavailable(reason) => reason,
                    other => other.public_message(),
                };
                (ServingStatus::NotServing, Some(reason))
            }
        }
    };
    let ready = if status == ServingStatus::Serving {
        1.0
    } else {
        0.0
    };
    metrics::gauge!("switchboard_ready").set(ready);
    inner.status.send_if_modified(|current| {
        let changed = *current != status;
        *current = status;
        changed
    });
    (status, reason)
}

async fn check_periodically(inner: Weak<Inner>) {
    let mut draining = match inner.upgrade() {
        Some(inner) => inner.drain.draining(),
        None => return,
    };
    loop {
        match inner.upgrade() {
            Some(inner) => refresh(&inner).await,
            None => return,
        };
        tokio::select! {
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = draining.changed() => {}
        }
    }
}

#[tonic::async_trait]
impl Health for HealthState {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let service = &request.get_ref().service;
        if !SERVICES.contains(&service.as_str()) {
            return Err(tonic::Status::not_found(format!(
                "unknown service {service:?}"
            )));
        }
        let status = self.refresh().await;
        Ok(tonic::Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send>>;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let known = SERVICES.contains(&request.get_ref().service.as_str());
        let mut statuses = self.inner.status.subscribe();
        let mut draining = self.inner.drain.draining();
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let response = |status: ServingStatus| {
                Ok(HealthCheckResponse {
                    status: status as i32,
                })
            };
            if !known {
                let _ = sender.send(response(ServingStatus::ServiceUnknown)).await;
                tokio::select! {
                    _ = draining.wait_for(|draining| *draining) => {}
                    () = sender.closed() => {}
                }
                return;
            }
            let mut sent = ServingStatus::Unknown;
            loop {
                let draining_now = *draining.borrow_and_update();
                let status = if draining_now {
                    ServingStatus::NotServing
                } else {
                    *statuses.borrow_and_update()
                };
                if status != sent && status != ServingStatus::Unknown {
                    if sender.send(response(status)).await.is_err() {
                        return; // the client went away
                    }
                    sent = status;
                }
                if draining_now {
                    return; // told NOT_SERVING; the drain need not wait for it
                }
                tokio::select! {
                    changed = statuses.changed() => if changed.is_err() { return },
                    changed = draining.changed() => if changed.is_err() { return },
                    () = sender.closed() => return,
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

/// `/healthz` and `/readyz`.
pub(crate) fn routes(health: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .with_state(health)
}

/// Liveness. It fails during the drain too, not only readiness: the process
/// is going away, so an orchestrator or load balancer that checks only
/// `/healthz` also stops sending to it (the listener stays open, so the
/// check gets an answer, not a refused connection); nothing restarts a
/// process for a failing liveness check within its termination grace.
async fn live(State(health): State<HealthState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    if health.inner.drain.is_draining() {
        return shutting_down();
    }
    (StatusCode::OK, axum::Json(json!({ "status": "ok" })))
}

fn shutting_down() -> (StatusCode, axum::Json<serde_json::Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({ "status": "unavailable", "reason": "shutting down" })),
    )
}

async fn ready(State(health): State<HealthState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    if health.inner.drain.is_draining() {
        return shutting_down();
    }
    let engine = &health.inner.engine;
    let state = engine.state();
    let mut report = json!({ "name": engine.engine(), "breaker": state.as_str() });
    if let ReportedState::Open { until } = state {
        report["retryAt"] = json!(until.to_rfc3339());
    }
    match refresh(&health.inner).await {
        (ServingStatus::Serving, _) => (
            StatusCode::OK,
            axum::Json(json!({ "status": "ready", "engine": report })),
        ),
        (_, reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "unavailable",
                "reason": reason.unwrap_or_else(|| "the database does not answer".to_owned()),
                "engine": report,
            })),
        ),
    }
}
