//! Switchboard's HTTP edge: one listener that serves native gRPC (h2c),
//! gRPC-Web, the generated REST routes, Swagger UI and the OpenAPI document,
//! gRPC server reflection (v1 and v1alpha), grpc.health.v1, `/healthz`,
//! `/readyz` and `/metrics`. [`app`] builds the router, so tests drive it in-process; [`serve`]
//! runs it on a listener until its [`Drain`] begins, then drains it within
//! the grace period, answering health checks until it stops.
//!
//! Every request passes the same edge layers whatever its transport: the
//! caller is authenticated here ([`auth`]) and recorded in the request
//! extensions, and the generated service guards apply each method's access
//! rule from the proto, then check input, before any method runs. The public
//! keys of issued tokens are served at `/.well-known/jwks.json`, and replies
//! stream over a WebSocket at `/v1/ws` ([`ws`]) under StreamReply's rule.
//! Every open stream checks its caller's credential again every
//! [`Edge::credential_recheck`] and ends when it no longer holds.

mod auth;
mod drain;
mod grpc;
mod grpc_request;
mod health;
mod metrics;
mod trace;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::{HeaderName, HeaderValue, Method, header};
use switchboard_api::{AuditApi, AuthApi, ChatApi, JobApi, UserApi};
use switchboard_app::Services;
use switchboard_core::chat::{Chat, EngineStatus};
use switchboard_core::config::Config;
use switchboard_core::db::Database;
use switchboard_core::identity::Identity;
use switchboard_core::jobs::Jobs;
use switchboard_proto::v1;
use switchboard_rest::RestRouter;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

pub use drain::{Drain, InFlight};
pub use health::HealthState;

/// What the edge serves: the domain services and the settings it reads.
#[derive(Debug, Clone)]
pub struct Edge {
    /// The chat domain.
    pub chat: Arc<Chat>,
    /// Accounts, sign-in and the audit trail; authenticates every request.
    pub identity: Arc<Identity>,
    /// Jobs and dead letters, for operators.
    pub jobs: Arc<Jobs>,
    /// The database, pinged by readiness checks.
    pub database: Database,
    /// Whether the engine takes calls; shown by readiness.
    pub engine: EngineStatus,
    /// Browser origins allowed by CORS (empty: CORS off; `*`: any).
    pub cors_allowed_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// How often an open stream (StreamReply on any transport, the
    /// WebSocket) checks its credential again (`auth.credential_recheck_secs`).
    pub credential_recheck: Duration,
    /// Set when shutdown begins: readiness fails and health watchers are
    /// told NOT_SERVING, while open requests finish.
    pub drain: Drain,
}

impl Edge {
    /// The edge of running services, with the settings of `config`.
    pub fn new(services: &Services, config: &Config) -> Self {
        Self {
            chat: services.chat(),
            identity: services.identity(),
            jobs: services.jobs(),
            database: services.database().clone(),
            engine: services.engine_status().clone(),
            cors_allowed_origins: config.cors_allowed_origins.clone(),
            // Validated when the configuration was loaded.
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .filter_map(|proxy| proxy.parse().ok())
                .collect(),
            credential_recheck: Duration::from_secs(config.auth.credential_recheck_secs),
            drain: Drain::default(),
        }
    }
}

/// The API services, each shared by its gRPC server and its REST routes.
#[derive(Debug, Clone)]
pub(crate) struct Apis {
    pub(crate) chat: Arc<ChatApi>,
    pub(crate) auth: Arc<AuthApi>,
    pub(crate) users: Arc<UserApi>,
    pub(crate) audit: Arc<AuditApi>,
    pub(crate) jobs: Arc<JobApi>,
}

/// Installs the process's Prometheus recorder now. Call it before the
/// services start: a value recorded before the recorder exists (a gauge
/// set once at start, such as a closed circuit breaker) is lost. Building
/// [`app`] or [`worker_app`] installs it too.
pub fn install_metrics_recorder() {
    metrics::install();
}

/// What a `switchboard worker` process serves for operators when asked to
/// listen: `/healthz`, `/readyz` (the database, and the engine's circuit
/// breaker as this worker sees it) and `/metrics` (jobs run, their
/// durations, replies, first-token latency, the breaker's state). Its
/// health checks fail once `drain` begins.
pub fn worker_app(services: &Services, drain: Drain) -> Router {
    let health = HealthState::new(
        services.database().clone(),
        services.engine_status().clone(),
        drain.clone(),
    );
    health::routes(health)
        .merge(metrics::routes())
        .layer(axum::middleware::from_fn_with_state(
            drain.clone(),
            drain::gate,
        ))
}

/// The whole application router: gRPC and gRPC-Web, REST, docs and health.
pub fn app(edge: Edge) -> Router {
    let apis = Apis {
        chat: Arc::new(
            ChatApi::new(edge.chat.clone()).with_streams_ending(edge.drain.streams_ending()),
        ),
        auth: Arc::new(AuthApi::new(edge.identity.clone())),
        users: Arc::new(UserApi::new(edge.identity.clone())),
        audit: Arc::new(AuditApi::new(edge.identity.clone())),
        jobs: Arc::new(JobApi::new(edge.jobs.clone())),
    };
    let health = HealthState::new(
        edge.database.clone(),
        edge.engine.clone(),
        edge.drain.clone(),
    );

    let grpc = grpc::router(&apis, &health);
    let rest = RestRouter::new(
        [
            v1::chat_service_rest_routes(apis.chat.clone()),
            v1::auth_service_rest_routes(apis.auth.clone()),
            v1::user_service_rest_routes(apis.users.clone()),
            v1::audit_service_rest_routes(apis.audit.clone()),
            v1::job_service_rest_routes(apis.jobs.clone()),
        ]
        .concat(),
    );
    let known_rpcs = metrics::KnownRpcs::new(
        v1::ACCESS_POLICY
            .iter()
            .map(|policy| policy.method.to_owned())
            .chain(
                [
                    "/grpc.health.v1.Health/Check",
                    "/grpc.health.v1.Health/Watch",
                ]
                .map(str::to_owned),
            ),
    );
    let openapi = openapi_document(&edge.identity);
    let docs = SwaggerUi::new("/docs")
        .external_url_unchecked("/openapi.json", openapi)
        .config(
            utoipa_swagger_ui::Config::from("/openapi.json")
                // The public validator badge would call out to the internet.
                .validator_url("none")
                .try_it_out_enabled(true)
                .display_request_duration(true),
        );

    let mut app = Router::new()
        .merge(grpc)
        .merge(docs)
        .merge(health::routes(health))
        .merge(metrics::routes())
        .route("/v1/ws", {
            let chat = edge.chat.clone();
            let drain = edge.drain.clone();
            axum::routing::get(move |request: axum::extract::Request| {
                ws::upgrade(chat.clone(), drain.clone(), request)
            })
        })
        .route(
            "/.well-known/jwks.json",
            axum::routing::get(auth::jwks).with_state(edge.identity.clone()),
        )
        // tonic's router brings a gRPC "unimplemented" fallback; ours keeps
        // that answer for gRPC callers and gives every other path to REST.
        .fallback(move |request: axum::extract::Request| {
            let rest = rest.clone();
            async move {
                if is_grpc(&request) {
                    let status = tonic::Status::unimplemented(format!(
                        "unknown method {}",
                        request.uri().path()
                    ));
                    return status.into_http::<axum::body::Body>();
                }
                rest.handle(request).await
            }
        })
        .layer(axum::middleware::from_fn_with_state(
            auth::AuthState {
                identity: edge.identity.clone(),
                trusted_proxies: edge.trusted_proxies.clone().into(),
                credential_recheck: edge.credential_recheck,
            },
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn(move |request, next| {
            metrics::record(known_rpcs.clone(), request, next)
        }))
        // Inside CORS, the request id and tracing, so a request refused
        // during shutdown still reaches a browser as a 503 with its id;
        // before authentication, so a refusal costs no credential check.
        .layer(axum::middleware::from_fn_with_state(
            edge.drain.clone(),
            drain::gate,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(trace::request_span)
                .on_eos(trace::on_end_of_stream),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(UuidRequestId));
    if let Some(cors) = cors_layer(&edge.cors_allowed_origins) {
        app = app.layer(cors);
    }
    app
}

/// The generated OpenAPI document, with an OpenID Connect security scheme
/// for each configured provider added beside the bearer and API-key schemes,
/// and offered by every operation that needs credentials.
fn openapi_document(identity: &Identity) -> serde_json::Value {
    let mut document: serde_json::Value = serde_json::from_str(switchboard_proto::OPENAPI_JSON)
        .expect("the generated OpenAPI document is valid JSON");
    let providers = identity.identity_providers();
    if providers.is_empty() {
        return document;
    }
    for provider in &providers {
        document["components"]["securitySchemes"][format!("oidc_{}", provider.id)] = serde_json::json!({
            "type": "openIdConnect",
            "openIdConnectUrl": format!(
                "{}/.well-known/openid-configuration",
                provider.issuer.trim_end_matches('/')
            ),
            "description": format!("Sign in with {}; its access tokens are accepted as bearer tokens.", provider.display_name),
        });
    }
    if let Some(paths) = document["paths"].as_object_mut() {
        for operation in paths
            .values_mut()
            .filter_map(|path| path.as_object_mut())
            .flat_map(|path| path.values_mut())
        {
            if let Some(security) = operation.get_mut("security").and_then(|s| s.as_array_mut())
                && !security.is_empty()
            {
                for provider in &providers {
                    security.push(serde_json::json!({ format!("oidc_{}", provider.id): [] }));
                }
            }
        }
    }
    document
}

/// Whether a request is a gRPC or gRPC-Web call (by its content type).
pub(crate) fn is_grpc(request: &axum::extract::Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// Gives each request without an `x-request-id` a fresh UUID v7.
#[derive(Debug, Clone, Copy)]
struct UuidRequestId;

impl MakeRequestId for UuidRequestId {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// A handler that panicked answers 500 with a google.rpc.Status body; the
/// panic is logged, the connection and the server live on.
fn panic_response(
    panic: Box<dyn std::any::Any + Send + 'static>,
) -> http::Response<axum::body::Body> {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "a request handler panicked");
    switchboard_rest::error::status_response(&tonic::Status::internal("internal error"))
}

/// The CORS policy for browser callers of gRPC-Web and REST, or `None` when
/// no origin is configured.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    let request_headers = [
        header::CONTENT_TYPE,
        header::AUTHORIZATION,
        header::ACCEPT,
        HeaderName::from_static("x-api-key"),
        HeaderName::from_static("x-grpc-web"),
        HeaderName::from_static("x-user-agent"),
        HeaderName::from_static("grpc-timeout"),
        HeaderName::from_static("last-event-id"),
    ];
    let exposed = [
        HeaderName::from_static("grpc-status"),
        HeaderName::from_static("grpc-message"),
        HeaderName::from_static("grpc-status-details-bin"),
        header::RETRY_AFTER,
    ];
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(request_headers)
            .expose_headers(exposed)
            .max_age(Duration::from_secs(3600)),
    )
}

/// How long the streams ended at the end of the grace get to send their
/// last frame, and connections to close, before they are dropped.
const LAST_FRAMES: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` (HTTP/1.1 and h2c on the same port) until
/// `drain` begins. Then the listener stays open: health checks answer 503,
/// new requests are refused with UNAVAILABLE, and the requests, streams and
/// [tracked](Drain::track) work under way go on for at most `grace`. Reply
/// streams still open then end with UNAVAILABLE; once nothing is in flight
/// (or [`LAST_FRAMES`] later) the listener closes, HTTP/2 connections get
/// GOAWAY, and this returns: within `grace` plus at most two seconds.
///
/// # Errors
/// The listener's I/O error, if serving fails.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    drain: Drain,
    grace: Duration,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    // `app` carries the drain's gate (see `app` and `worker_app`): it
    // refuses new work during the drain and counts every admitted request
    // until its whole body has been sent.
    // Without TCP_NODELAY each small write (an SSE event, a gRPC message)
    // waits for the client's delayed ACK: about 40 ms per event.
    let listener = listener.tap_io(|stream| {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
    });
    // axum stops accepting when this resolves, so it resolves only once the
    // drain has nothing left to wait for: until then the port stays open
    // and answers health checks.
    let drained = {
        let drain = drain.clone();
        async move {
            drain.begun().await;
            let deadline = tokio::time::Instant::now() + grace;
            tokio::select! {
                () = drain.idle() => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(grace_secs = grace.as_secs(), "requests or streams still open after the grace period; ending them");
                    drain.end_streams();
                    let _ = tokio::time::timeout(LAST_FRAMES, drain.idle()).await;
                }
            }
        }
    };
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(drained);
    let server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = server => result,
        () = async {
            // Connections that ignore GOAWAY or `Connection: close` do not
            // hold the process past the grace.
            drain.begun().await;
            tokio::time::sleep(grace + 2 * LAST_FRAMES).await;
        } => {
            tracing::warn!("connections still open after the grace period; closing them");
            Ok(())
        }
    }
}
