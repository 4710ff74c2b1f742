//! Health: `/healthz` answers while the process runs; `/readyz` answers 200
//! only while the database answers. grpc.health.v1 asks the same question on
//! every `Check` for the whole server (`""`) and for each served service, and
//! `Watch` reports each change of that answer.

use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::Stream;
use serde_json::json;
use switchboard_core::db::Database;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The services a health check may name; `""` is the server as a whole.
const SERVICES: &[&str] = &["", "switchboard.v1.ChatService"];

/// How often `Watch` checks again.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// The readiness of the server, shared by the HTTP and gRPC health checks.
#[derive(Debug, Clone)]
pub struct HealthState {
    database: Database,
}

impl HealthState {
    /// Health of a server whose readiness is the database's.
    pub fn new(database: Database) -> Self {
        Self { database }
    }

    /// Whether the server can serve requests now.
    ///
    /// # Errors
    /// Why it cannot, for logs.
    pub async fn check(&self) -> Result<(), String> {
        self.database
            .ping()
            .await
            .map_err(|error| error.to_string())
    }

    async fn serving_status(&self) -> ServingStatus {
        match self.check().await {
            Ok(()) => ServingStatus::Serving,
            Err(error) => {
                tracing::warn!(%error, "not ready");
                ServingStatus::NotServing
            }
        }
    }

    pub(crate) fn grpc_service(&self) -> HealthServer<HealthState> {
        HealthServer::new(self.clone())
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
        let status = self.serving_status().await;
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
        let health = self.clone();
        let stream = futures::stream::unfold((health, None), move |(health, last)| async move {
            loop {
                let status = if known {
                    health.serving_status().await
                } else {
                    ServingStatus::ServiceUnknown
                };
                if Some(status) != last {
                    let response = HealthCheckResponse {
                        status: status as i32,
                    };
                    return Some((Ok(response), (health, Some(status))));
                }
                tokio::time::sleep(WATCH_INTERVAL).await;
            }
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// `/healthz` and `/readyz`.
pub(crate) fn routes(health: HealthState) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .with_state(health)
}

async fn ready(State(health): State<HealthState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    match health.serving_status().await {
        ServingStatus::Serving => (StatusCode::OK, axum::Json(json!({ "status": "ready" }))),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({ "status": "unavailable", "reason": "the database does not answer" }),
            ),
        ),
    }
}
