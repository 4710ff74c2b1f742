//! Switchboard's configuration: one typed struct, loaded once from built-in
//! defaults, then an optional TOML file, then the environment (later sources
//! win), and validated before anything binds a port or opens a database.
//!
//! Every key can be set in the file (`engine.token_delay_ms = 0`) or through
//! an environment variable named `SWITCHBOARD_` + the key in upper case, with
//! `__` between nested keys (`SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0`). The
//! database URL is also read from the conventional `DATABASE_URL`
//! (`SWITCHBOARD_DATABASE_URL` wins when both are set).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Deserializer};

use crate::jobs::RetryPolicy;

/// The file read when [`Config::load`] is given no path, if it exists in the
/// current directory.
pub const DEFAULT_CONFIG_FILE: &str = "switchboard.toml";

/// The prefix of every Switchboard environment variable.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Switchboard's whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Key `listen`: the address the HTTP/gRPC listener binds.
    /// Default `127.0.0.1:8080`; variable `SWITCHBOARD_LISTEN`.
    pub listen: SocketAddr,
    /// Key `data_dir`: the directory of local state (the default SQLite
    /// database lives here). Created on start if missing.
    /// Default `./data`; variable `SWITCHBOARD_DATA_DIR`.
    pub data_dir: PathBuf,
    /// Key `database_url`: where conversations are stored. Unset means the
    /// SQLite file `<data_dir>/switchboard.db`; `postgres://…` or
    /// `postgresql://…` selects PostgreSQL; `sqlite:…` names another SQLite
    /// database. Never printed: Debug shows it redacted.
    /// Default none; variables `DATABASE_URL` or `SWITCHBOARD_DATABASE_URL`
    /// (the latter wins).
    pub database_url: Option<Secret<String>>,
    /// Key `database_max_connections`: size of the database connection pool,
    /// at least 1. Default `10`; variable `SWITCHBOARD_DATABASE_MAX_CONNECTIONS`.
    pub database_max_connections: u32,
    /// Key `database_sqlite_max_bytes`: a cap on the size of the SQLite
    /// database (`PRAGMA max_page_count`, in 4 KiB pages). A write that
    /// would grow it past the cap fails with UNAVAILABLE and readiness
    /// reports the database not writable, as on a full disk. Default none;
    /// variable `SWITCHBOARD_DATABASE_SQLITE_MAX_BYTES`.
    pub database_sqlite_max_bytes: Option<u64>,
    /// Key `database_integrity_check_secs`: how long start-up waits for
    /// SQLite's `PRAGMA quick_check` (a damaged file stops the start; a
    /// check still running then finishes in the background and logs what it
    /// found). `0` skips the check. Default `10`; variable
    /// `SWITCHBOARD_DATABASE_INTEGRITY_CHECK_SECS`.
    pub database_integrity_check_secs: u64,
    /// Key `cors_allowed_origins`: origins browsers may call from. Empty turns
    /// CORS off; `["*"]` allows any origin. In the environment, a
    /// comma-separated list. Default `[]`; variable
    /// `SWITCHBOARD_CORS_ALLOWED_ORIGINS` (e.g. `http://a,http://b`).
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub cors_allowed_origins: Vec<String>,
    /// Key `trusted_proxies`: addresses of reverse proxies and load
    /// balancers whose `X-Forwarded-For` header is believed. A request from
    /// one of them is attributed (in sign-in throttling and audit events) to
    /// the nearest address in the header that is not itself a trusted proxy;
    /// from anyone else the header is ignored. In the environment, a
    /// comma-separated list. Default `[]`; variable `SWITCHBOARD_TRUSTED_PROXIES`.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub trusted_proxies: Vec<String>,
    /// Key `shutdown_grace_secs`: how long shutdown waits for open requests
    /// and replies being generated before it stops them.
    /// Default `30`; variable `SWITCHBOARD_SHUTDOWN_GRACE_SECS`.
    pub shutdown_grace_secs: u64,
    /// Key `shutdown_drain_delay_secs`: on SIGTERM, the least time the
    /// listener stays open, answering health checks with 503 and refusing
    /// new work, even when nothing is in flight, so that load balancers see
    /// the failing check before the port closes. Capped by
    /// `shutdown_grace_secs`; SIGINT (Ctrl-C at a terminal) does not wait
    /// for it. Default `5`; variable `SWITCHBOARD_SHUTDOWN_DRAIN_DELAY_SECS`.
    pub shutdown_drain_delay_secs: u64,
    /// Key `log_format`: `text` for people, `json` for log collectors.
    /// Default `text`; variable `SWITCHBOARD_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// Key `log_level`: a tracing filter such as `info` or
    /// `switchboard_core=debug,info`. Default `info`; variable
    /// `SWITCHBOARD_LOG_LEVEL`.
    pub log_level: String,
    /// Key `redis_url`: a Redis server (`redis://…`). When set, live reply
    /// events travel between instances through it, and it carries the job
    /// queue unless `amqp_url` is set too. Never printed.
    /// Default none; variables `REDIS_URL` or `SWITCHBOARD_REDIS_URL`.
    pub redis_url: Option<Secret<String>>,
    /// Key `amqp_url`: a RabbitMQ server (`amqp://…`) to carry the job
    /// queue. Never printed. Default none; variables `AMQP_URL` or
    /// `SWITCHBOARD_AMQP_URL`.
    pub amqp_url: Option<Secret<String>>,
    /// Table `queue`: jobs, workers and retries.
    pub queue: QueueConfig,
    /// Table `schedules`: the scheduled maintenance jobs.
    pub schedules: SchedulesConfig,
    /// Table `engine`: the reply engine.
    pub engine: EngineConfig,
    /// Table `auth`: accounts, tokens, sign-in limits and identity providers.
    pub auth: AuthConfig,
    /// Table `telemetry`: traces exported over OTLP.
    pub telemetry: TelemetryConfig,
}

/// Traces exported to an OpenTelemetry collector over OTLP (table
/// `telemetry`). Off unless an endpoint is configured, and then costing
/// nothing: no span beyond the logs' own is made and no trace context is
/// stored. The standard OpenTelemetry variables set these keys and win over
/// the file; `SWITCHBOARD_TELEMETRY__*` wins over both. `OTEL_SDK_DISABLED=true`
/// or `OTEL_TRACES_EXPORTER=none` turns tracing off whatever is configured,
/// `OTEL_EXPORTER_OTLP_HEADERS` (and `_TRACES_HEADERS`) add headers to each
/// export, and `OTEL_RESOURCE_ATTRIBUTES` adds resource attributes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// Key `telemetry.otlp_endpoint`: the collector's base URL, such as
    /// `http://collector:4318` for HTTP (`/v1/traces` is added) or
    /// `http://collector:4317` for gRPC. Unset: tracing is off. Default
    /// none; variable `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// Key `telemetry.otlp_traces_endpoint`: the full URL traces are sent
    /// to, used as it is; wins over `otlp_endpoint`. Default none; variable
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    pub otlp_traces_endpoint: Option<String>,
    /// Key `telemetry.otlp_protocol`: `http/protobuf` or `grpc`. Default
    /// `http/protobuf` (the specification's); variables
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`
    /// (the latter wins).
    pub otlp_protocol: OtlpProtocol,
    /// Key `telemetry.service_name`: the `service.name` resource attribute.
    /// Default `switchboard`; variable `OTEL_SERVICE_NAME`.
    pub service_name: String,
    /// Key `telemetry.sampler`: `always_on`, `always_off`, `traceidratio`,
    /// `parentbased_always_on`, `parentbased_always_off` or
    /// `parentbased_traceidratio`. Default `parentbased_always_on`;
    /// variable `OTEL_TRACES_SAMPLER`.
    pub sampler: String,
    /// Key `telemetry.sampler_arg`: the ratio (0 to 1) of the
    /// `traceidratio` samplers. Default `1`; variable
    /// `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler_arg: f64,
    /// Key `telemetry.resource_attributes`: more resource attributes (such
    /// as `deployment.environment.name`); `OTEL_RESOURCE_ATTRIBUTES` wins
    /// over them. Default none.
    pub resource_attributes: std::collections::BTreeMap<String, String>,
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (`POST /v1/traces`).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// The OTLP gRPC service.
    #[serde(rename = "grpc")]
    Grpc,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_traces_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            service_name: "switchboard".to_owned(),
            sampler: "parentbased_always_on".to_owned(),
            sampler_arg: 1.0,
            resource_attributes: std::collections::BTreeMap::new(),
        }
    }
}

/// The standard OpenTelemetry variables and the keys they set, in the
/// order they are merged (a later one wins).
const OTEL_VARIABLES: [(&str, &str); 7] = [
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "telemetry.otlp_traces_endpoint",
    ),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "telemetry.otlp_protocol"),
    (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "telemetry.otlp_protocol",
    ),
    ("OTEL_SERVICE_NAME", "telemetry.service_name"),
    ("OTEL_TRACES_SAMPLER", "telemetry.sampler"),
    ("OTEL_TRACES_SAMPLER_ARG", "telemetry.sampler_arg"),
];

/// Configuration of identity and access (table `auth`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Key `auth.issuer`: the `iss` of the access tokens this server signs
    /// (usually its public URL). Default `switchboard`; variable
    /// `SWITCHBOARD_AUTH__ISSUER`.
    pub issuer: String,
    /// Key `auth.audience`: the `aud` of the access tokens this server signs
    /// and requires. Default `switchboard`; variable `SWITCHBOARD_AUTH__AUDIENCE`.
    pub audience: String,
    /// Key `auth.signing_algorithm`: `EdDSA` (Ed25519) or `RS256`, for keys
    /// generated from now on. Default `EdDSA`; variable
    /// `SWITCHBOARD_AUTH__SIGNING_ALGORITHM`.
    pub signing_algorithm: String,
    /// Key `auth.access_token_ttl_secs`: lifetime of an access token.
    /// Default `900`; variable `SWITCHBOARD_AUTH__ACCESS_TOKEN_TTL_SECS`.
    pub access_token_ttl_secs: u64,
    /// Key `auth.refresh_token_ttl_secs`: lifetime of a session and its
    /// refresh tokens. Default `2592000` (30 days); variable
    /// `SWITCHBOARD_AUTH__REFRESH_TOKEN_TTL_SECS`.
    pub refresh_token_ttl_secs: u64,
    /// Key `auth.allow_registration`: whether anyone may create an account
    /// with Register. Default `true`; variable `SWITCHBOARD_AUTH__ALLOW_REGISTRATION`.
    pub allow_registration: bool,
    /// Key `auth.require_totp_for_admins`: an admin without a second factor
    /// may only manage their own account (to enrol one) until they have one.
    /// Default `false`; variable `SWITCHBOARD_AUTH__REQUIRE_TOTP_FOR_ADMINS`.
    pub require_totp_for_admins: bool,
    /// Key `auth.password_min_length`: shortest accepted password, in
    /// characters. Default `12`; variable `SWITCHBOARD_AUTH__PASSWORD_MIN_LENGTH`.
    pub password_min_length: usize,
    /// Key `auth.login_attempts_per_account`: sign-in attempts one account
    /// may receive from one client address in a burst, refilled by one
    /// every `login_attempt_refill_secs`. An address that spends it is held
    /// back; the owner, from another address, is not. Default `5`;
    /// variable `SWITCHBOARD_AUTH__LOGIN_ATTEMPTS_PER_ACCOUNT`.
    pub login_attempts_per_account: u32,
    /// Key `auth.login_attempts_per_account_ceiling`: sign-in attempts one
    /// account may receive from all addresses together in a burst, so
    /// guesses spread over many addresses stay slow too. Default `50`;
    /// variable `SWITCHBOARD_AUTH__LOGIN_ATTEMPTS_PER_ACCOUNT_CEILING`.
    pub login_attempts_per_account_ceiling: u32,
    /// Key `auth.login_attempts_per_address`: sign-in attempts one client
    /// address may make in a burst. Default `20`; variable
    /// `SWITCHBOARD_AUTH__LOGIN_ATTEMPTS_PER_ADDRESS`.
    pub login_attempts_per_address: u32,
    /// Key `auth.login_attempt_refill_secs`: one more attempt is allowed
    /// in each of the three buckets (account and address, account, address)
    /// every this many seconds. Default `60`;
    /// variable `SWITCHBOARD_AUTH__LOGIN_ATTEMPT_REFILL_SECS`.
    pub login_attempt_refill_secs: u64,
    /// Key `auth.credential_recheck_secs`: how often the credential of an
    /// open stream (StreamReply on every transport, the WebSocket) is
    /// checked again, so that a stream of a session that ended, a key that
    /// was revoked or an account that was disabled stops. At least 1.
    /// Default `30`; variable `SWITCHBOARD_AUTH__CREDENTIAL_RECHECK_SECS`.
    pub credential_recheck_secs: u64,
    /// Key `auth.oidc_providers`: OpenID Connect providers, an array of
    /// tables with `id`, `issuer`, `client_id`, `client_secret`, and
    /// optionally `display_name`, `scopes`, `audience` (the `aud` of its
    /// access tokens; without it they are not accepted as bearer tokens),
    /// `role_claim` (such as `realm_access.roles` or `groups`) and `role_map`
    /// (claim value → `user` | `operator` | `admin`). Default none.
    pub oidc_providers: Vec<crate::identity::oidc::OidcProviderConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "switchboard".to_owned(),
            audience: "switchboard".to_owned(),
            signing_algorithm: "EdDSA".to_owned(),
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            allow_registration: true,
            require_totp_for_admins: false,
            password_min_length: 12,
            login_attempts_per_account: 5,
            login_attempts_per_account_ceiling: 50,
            login_attempts_per_address: 20,
            login_attempt_refill_secs: 60,
            credential_recheck_secs: 30,
            oidc_providers: Vec::new(),
        }
    }
}

/// Which core chatbot engine answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The built-in development engine (offline, deterministic).
    #[default]
    Dev,
    /// An engine implementing `proto/switchboard/engine/v1/engine.proto`.
    Grpc,
    /// An OpenAI-compatible `/v1/chat/completions` endpoint.
    Openai,
}

/// Configuration of a gRPC engine (table `engine.grpc`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct GrpcEngineSettings {
    /// Key `engine.grpc.endpoint`: `http://host:port` of the engine.
    pub endpoint: String,
    /// Key `engine.grpc.bearer_token`: sent as `authorization: Bearer …`.
    /// Never printed.
    pub bearer_token: Option<Secret<String>>,
    /// Table `engine.grpc.metadata`: free-form strings sent with every call
    /// (`GenerateRequest.metadata`), such as a model or persona name.
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The default `engine.openai.context_budget_chars`: about 6 000 tokens
/// of English.
pub const DEFAULT_CONTEXT_BUDGET_CHARS: usize = 24_000;

/// Configuration of an OpenAI-compatible engine (table `engine.openai`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct OpenAiEngineSettings {
    /// Key `engine.openai.base_url`: the API root including `/v1`, such as
    /// `http://127.0.0.1:11434/v1` (Ollama) or `https://api.openai.com/v1`.
    pub base_url: String,
    /// Key `engine.openai.model`: the model name sent with each request.
    pub model: String,
    /// Key `engine.openai.api_key`: sent as `Authorization: Bearer …`.
    /// Never printed.
    pub api_key: Option<Secret<String>>,
    /// Key `engine.openai.system_prompt`: sent first, if set.
    pub system_prompt: Option<String>,
    /// Key `engine.openai.context_budget_chars`: the most characters of
    /// history sent; the newest messages that fit are sent (about four
    /// characters per token in English). Default 24000.
    pub context_budget_chars: usize,
}

impl Default for OpenAiEngineSettings {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            model: String::new(),
            api_key: None,
            system_prompt: None,
            context_budget_chars: DEFAULT_CONTEXT_BUDGET_CHARS,
        }
    }
}

/// Configuration of the reply engine (table `engine`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Key `engine.kind`: `dev`, `grpc` or `openai`.
    /// Default `dev`; variable `SWITCHBOARD_ENGINE__KIND`.
    pub kind: EngineKind,
    /// Table `engine.grpc`: the gRPC engine (when `kind = "grpc"`).
    pub grpc: GrpcEngineSettings,
    /// Table `engine.openai`: the OpenAI-compatible engine (when `kind = "openai"`).
    pub openai: OpenAiEngineSettings,
    /// Table `engine.resilience`: concurrency limit, timeouts, retries and
    /// circuit breaker around every engine call (keys
    /// `max_concurrent_calls`, `queue_timeout_ms`, `call_timeout_ms`,
    /// `reply_deadline_ms`, `max_retries`, `backoff_base_ms`,
    /// `backoff_max_ms`, `failure_threshold`, `open_for_ms`).
    pub resilience: crate::chat::ResilienceConfig,
    /// Key `engine.token_delay_ms`: pause of the development engine before
    /// each token, in milliseconds; 0 answers at once.
    /// Default `25`; variable `SWITCHBOARD_ENGINE__TOKEN_DELAY_MS`.
    pub token_delay_ms: u64,
    /// Key `engine.max_concurrent_replies`: replies generated at the same time
    /// by this process, at least 1; more wait their turn.
    /// Default `64`; variable `SWITCHBOARD_ENGINE__MAX_CONCURRENT_REPLIES`.
    pub max_concurrent_replies: usize,
}

/// Which transport carries job ids to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// RabbitMQ if `amqp_url` is set, else Redis if `redis_url` is set,
    /// else the database.
    #[default]
    Auto,
    /// The `jobs` table of the application database (SQLite or PostgreSQL).
    Database,
    /// Redis streams (needs `redis_url`).
    Redis,
    /// RabbitMQ (needs `amqp_url`).
    Amqp,
}

/// Configuration of the job queue (table `queue`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// Key `queue.backend`: `auto`, `database`, `redis` or `amqp`.
    /// Default `auto`; variable `SWITCHBOARD_QUEUE__BACKEND`.
    pub backend: QueueBackend,
    /// Key `queue.lease_secs`: how long a worker holds a job (and its reply)
    /// without renewing; a killed worker's job is taken again after it.
    /// Default `10`; variable `SWITCHBOARD_QUEUE__LEASE_SECS`.
    pub lease_secs: u64,
    /// Key `queue.poll_interval_ms`: how often an idle worker of the
    /// database backend looks for jobs enqueued by another process.
    /// Default `250`; variable `SWITCHBOARD_QUEUE__POLL_INTERVAL_MS`.
    pub poll_interval_ms: u64,
    /// Key `queue.prefix`: the prefix of Redis keys and RabbitMQ queues.
    /// Default `switchboard`; variable `SWITCHBOARD_QUEUE__PREFIX`.
    pub prefix: String,
    /// Table `queue.generate_reply`: retries of reply jobs (keys
    /// `max_attempts`, `backoff_base_ms`, `backoff_max_ms`; defaults 5,
    /// 1000, 60000).
    pub generate_reply: RetryPolicy,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            backend: QueueBackend::Auto,
            lease_secs: 10,
            poll_interval_ms: 250,
            prefix: "switchboard".to_owned(),
            generate_reply: RetryPolicy::default(),
        }
    }
}

/// Configuration of the scheduled jobs (table `schedules`). Expressions are
/// cron with seconds: `sec min hour day-of-month month day-of-week`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SchedulesConfig {
    /// Key `schedules.purge_expired_sessions`: when expired sessions,
    /// refresh tokens and sign-in states are deleted.
    /// Default `0 */10 * * * *` (every ten minutes).
    pub purge_expired_sessions: String,
    /// Key `schedules.apply_retention`: when conversations idle longer than
    /// `retention_days` are deleted. Default `0 30 3 * * *` (03:30 UTC daily).
    pub apply_retention: String,
    /// Key `schedules.retention_days`: conversations not updated for this
    /// many days are deleted; 0 keeps them for ever.
    /// Default `0`; variable `SWITCHBOARD_SCHEDULES__RETENTION_DAYS`.
    pub retention_days: u32,
    /// Key `schedules.purge_jobs`: when finished jobs older than
    /// `keep_jobs_days` are deleted (dead letters are kept).
    /// Default `0 0 4 * * *` (04:00 UTC daily).
    pub purge_jobs: String,
    /// Key `schedules.keep_jobs_days`: how long succeeded jobs stay for
    /// GetJob. Default `7`.
    pub keep_jobs_days: u32,
}

impl Default for SchedulesConfig {
    fn default() -> Self {
        Self {
            purge_expired_sessions: "0 */10 * * * *".to_owned(),
            apply_retention: "0 30 3 * * *".to_owned(),
            retention_days: 0,
            purge_jobs: "0 0 4 * * *".to_owned(),
            keep_jobs_days: 7,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which database a [`Config`] selects.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// A SQLite database: a connection URL (`sqlite:…`) or a file path.
    Sqlite(SqliteLocation),
    /// A PostgreSQL server, by URL.
    Postgres(Secret<String>),
}

/// Where a SQLite database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteLocation {
    /// A file path (the default `<data_dir>/switchboard.db`).
    File(PathBuf),
    /// A `sqlite:` URL as given in `database_url`.
    Url(String),
}

impl fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(location) => f.debug_tuple("Sqlite").field(location).finish(),
            Self::Postgres(_) => f.write_str("Postgres([redacted])"),
        }
    }
}

/// A value that must never appear in logs: its `Debug` prints `[redacted]`.
/// Read it with [`Secret::expose`], only where it is used.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret value itself.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type; figment's
    /// message names the key and the source.
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value has the right type but cannot be used.
    #[error("invalid configuration key `{key}`: {message}")]
    Invalid {
        /// The key, as written in the TOML file (`engine.token_delay_ms`).
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The longest interval or grace a setting may name: a day. Far beyond
/// any sensible value, and far from where adding it to a clock overflows.
const MAX_INTERVAL_SECS: u64 = 86_400;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_max_connections: 10,
            database_sqlite_max_bytes: None,
            database_integrity_check_secs: 10,
            cors_allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            shutdown_grace_secs: 30,
            shutdown_drain_delay_secs: 5,
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
            redis_url: None,
            amqp_url: None,
            queue: QueueConfig::default(),
            schedules: SchedulesConfig::default(),
            engine: EngineConfig::default(),
            auth: AuthConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: EngineKind::Dev,
            grpc: GrpcEngineSettings::default(),
            openai: OpenAiEngineSettings::default(),
            resilience: crate::chat::ResilienceConfig::default(),
            token_delay_ms: 25,
            max_concurrent_replies: 64,
        }
    }
}

/// The standard OpenTelemetry variables that are set, under the keys they
/// set (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` after the generic one, so it
/// wins).
fn otel_variables() -> figment::providers::Serialized<figment::value::Dict> {
    let mut telemetry = figment::value::Dict::new();
    for (variable, key) in OTEL_VARIABLES {
        if let Ok(value) = std::env::var(variable)
            && !value.trim().is_empty()
        {
            let key = key.trim_start_matches("telemetry.");
            let value = match value.trim().parse::<f64>() {
                Ok(ratio) if key == "sampler_arg" => figment::value::Value::from(ratio),
                _ => figment::value::Value::from(value.trim().to_owned()),
            };
            telemetry.insert(key.to_owned(), value);
        }
    }
    let mut root = figment::value::Dict::new();
    if !telemetry.is_empty() {
        root.insert("telemetry".to_owned(), telemetry.into());
    }
    figment::providers::Serialized::defaults(root)
}

impl Config {
    /// Loads the configuration: defaults, then the TOML `file` (or
    /// `switchboard.toml` in the current directory when `file` is `None` and
    /// that file exists), then the environment; and validates it.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Load`] if a named file is missing or unreadable or a
    /// value has the wrong type; [`ConfigError::Invalid`] if a value is out of
    /// range (see [`Config::validate`]).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = Self::figment(file).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// The figment that [`Config::load`] extracts from: useful to report
    /// where a value came from.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::new();
        match file {
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => {
                let default = Path::new(DEFAULT_CONFIG_FILE);
                if default.is_file() {
                    figment = figment.merge(Toml::file_exact(default));
                }
            }
        }
        figment
            .merge(Env::raw().only(&["DATABASE_URL", "REDIS_URL", "AMQP_URL"]))
            .merge(otel_variables())
            .merge(Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// Returns the configuration with the command line's values in place of
    /// the loaded ones, where given: flags win over file and environment.
    pub fn with_overrides(mut self, listen: Option<SocketAddr>, data_dir: Option<PathBuf>) -> Self {
        if let Some(listen) = listen {
            self.listen = listen;
        }
        if let Some(data_dir) = data_dir {
            self.data_dir = data_dir;
        }
        self
    }

    /// Checks the values that the types alone do not constrain.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first bad key: an unknown
    /// database URL scheme or an in-memory SQLite URL, a pool or concurrency limit of 0, an empty log
    /// level, or a CORS origin that is neither `*` nor an http(s) origin.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        let telemetry = &self.telemetry;
        for (key, url) in [
            ("telemetry.otlp_endpoint", &telemetry.otlp_endpoint),
            (
                "telemetry.otlp_traces_endpoint",
                &telemetry.otlp_traces_endpoint,
            ),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return invalid(key, "must be an http:// or https:// URL");
            }
        }
        const SAMPLERS: [&str; 6] = [
            "always_on",
            "always_off",
            "traceidratio",
            "parentbased_always_on",
            "parentbased_always_off",
            "parentbased_traceidratio",
        ];
        if !SAMPLERS.contains(&telemetry.sampler.as_str()) {
            return invalid(
                "telemetry.sampler",
                &format!("unknown sampler; use one of {}", SAMPLERS.join(", ")),
            );
        }
        if !(0.0..=1.0).contains(&telemetry.sampler_arg) {
            return invalid("telemetry.sampler_arg", "must be a ratio from 0 to 1");
        }
        if let Some(url) = &self.database_url {
            let url = url.expose();
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                // The URL may hold a password: name only its scheme.
                let scheme = url.split_once(':').map_or("(none)", |(scheme, _)| scheme);
                return invalid(
                    "database_url",
                    &format!(
                        "unsupported scheme `{scheme}`: use postgres://, postgresql:// or sqlite:"
                    ),
                );
            }
        }
        if let DatabaseTarget::Sqlite(SqliteLocation::Url(url)) = self.database_target()
            && (url.contains(":memory:") || url.contains("mode=memory"))
        {
            // Each pooled connection would open its own empty database.
            return invalid(
                "database_url",
                "in-memory SQLite is not supported; name a file (sqlite:path/to/file.db)",
            );
        }
        if self.database_max_connections == 0 {
            return invalid("database_max_connections", "must be at least 1");
        }
        if self.engine.max_concurrent_replies == 0 {
            return invalid("engine.max_concurrent_replies", "must be at least 1");
        }
        match self.engine.kind {
            EngineKind::Grpc if self.engine.grpc.endpoint.is_empty() => {
                return invalid(
                    "engine.grpc.endpoint",
                    "is required when engine.kind = \"grpc\"",
                );
            }
            EngineKind::Openai if self.engine.openai.base_url.is_empty() => {
                return invalid(
                    "engine.openai.base_url",
                    "is required when engine.kind = \"openai\"",
                );
            }
            EngineKind::Openai if self.engine.openai.model.is_empty() => {
                return invalid(
                    "engine.openai.model",
                    "is required when engine.kind = \"openai\"",
                );
            }
            _ => {}
        }
        if let Err(err) = self.engine.resilience.validate() {
            return invalid("engine.resilience", &err.to_string());
        }
        match self.queue.backend {
            QueueBackend::Redis if self.redis_url.is_none() => {
                return invalid("queue.backend", "`redis` needs redis_url (REDIS_URL)");
            }
            QueueBackend::Amqp if self.amqp_url.is_none() => {
                return invalid("queue.backend", "`amqp` needs amqp_url (AMQP_URL)");
            }
            _ => {}
        }
        for proxy in &self.trusted_proxies {
            if proxy.parse::<std::net::IpAddr>().is_err() {
                return invalid(
                    "trusted_proxies",
                    &format!("`{proxy}` is not an IP address"),
                );
            }
        }
        if !matches!(self.auth.signing_algorithm.as_str(), "EdDSA" | "RS256") {
            return invalid("auth.signing_algorithm", "must be EdDSA or RS256");
        }
        if self.auth.access_token_ttl_secs == 0 || self.auth.refresh_token_ttl_secs == 0 {
            return invalid(
                "auth.access_token_ttl_secs",
                "token lifetimes must be at least 1 second",
            );
        }
        if !(1..=MAX_INTERVAL_SECS).contains(&self.auth.credential_recheck_secs) {
            return invalid(
                "auth.credential_recheck_secs",
                "must be from 1 to 86400 (a day)",
            );
        }
        if self.shutdown_grace_secs > MAX_INTERVAL_SECS {
            return invalid("shutdown_grace_secs", "must be at most 86400 (a day)");
        }
        if self.auth.password_min_length < 8 {
            return invalid("auth.password_min_length", "must be at least 8");
        }
        if let Err(error) =
            crate::identity::oidc::OidcProviderConfig::validate_all(&self.auth.oidc_providers)
        {
            return invalid("auth.oidc_providers", &error.to_string());
        }
        if self.log_level.trim().is_empty() {
            return invalid("log_level", "must not be empty (try `info`)");
        }
        for origin in &self.cors_allowed_origins {
            if origin == "*" {
                if self.cors_allowed_origins.len() > 1 {
                    return invalid(
                        "cors_allowed_origins",
                        "`*` allows every origin and cannot be combined with others",
                    );
                }
            } else if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return invalid(
                    "cors_allowed_origins",
                    &format!("`{origin}` is not an origin such as https://chat.example.com"),
                );
            }
        }
        Ok(())
    }

    /// The database this configuration selects.
    pub fn database_target(&self) -> DatabaseTarget {
        match &self.database_url {
            None => {
                DatabaseTarget::Sqlite(SqliteLocation::File(self.data_dir.join("switchboard.db")))
            }
            Some(url) if url.expose().starts_with("sqlite:") => {
                DatabaseTarget::Sqlite(SqliteLocation::Url(url.expose().clone()))
            }
            Some(url) => DatabaseTarget::Postgres(url.clone()),
        }
    }
}

/// Accepts a list, or one string of comma-separated items (the form an
/// environment variable gives).
fn list_or_comma_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(list) => list,
        ListOrString::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[cfg(test)]
// figment's `Jail` closures must return `figment::Error`, which is large.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn the_standard_opentelemetry_variables_win_over_the_file_and_lose_to_ours() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "switchboard.toml",
                "[telemetry]\notlp_endpoint = \"http://file:4318\"\nservice_name = \"from-file\"\n\
                 sampler = \"always_off\"\n[telemetry.resource_attributes]\n\
                 \"deployment.environment.name\" = \"staging\"\n",
            )?;
            let config = Config::load(None).unwrap();
            assert_eq!(
                config.telemetry.otlp_endpoint.as_deref(),
                Some("http://file:4318")
            );
            assert_eq!(config.telemetry.otlp_protocol, OtlpProtocol::HttpProtobuf);
            assert_eq!(config.telemetry.sampler, "always_off");
            assert_eq!(
                config.telemetry.resource_attributes["deployment.environment.name"],
                "staging"
            );

            jail.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
            jail.set_env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
            jail.set_env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc");
            jail.set_env("OTEL_SERVICE_NAME", "chat-api");
            jail.set_env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio");
            jail.set_env("OTEL_TRACES_SAMPLER_ARG", "0.25");
            let config = Config::load(None).unwrap();
            let telemetry = &config.telemetry;
            assert_eq!(
                telemetry.otlp_endpoint.as_deref(),
                Some("http://collector:4317")
            );
            assert_eq!(
                telemetry.otlp_protocol,
                OtlpProtocol::Grpc,
                "the traces variable wins"
            );
            assert_eq!(telemetry.service_name, "chat-api");
            assert_eq!(telemetry.sampler, "parentbased_traceidratio");
            assert!((telemetry.sampler_arg - 0.25).abs() < f64::EPSILON);

            jail.set_env("SWITCHBOARD_TELEMETRY__SERVICE_NAME", "ours");
            assert_eq!(Config::load(None).unwrap().telemetry.service_name, "ours");
            Ok(())
        });
    }

    #[test]
    fn a_wrong_sampler_ratio_or_endpoint_is_refused_by_key() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            for (variable, value, key) in [
                ("OTEL_TRACES_SAMPLER", "sometimes", "telemetry.sampler"),
                ("OTEL_TRACES_SAMPLER_ARG", "1.5", "telemetry.sampler_arg"),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "collector:4317",
                    "telemetry.otlp_endpoint",
                ),
            ] {
                jail.set_env(variable, value);
                match Config::load(None) {
                    Err(ConfigError::Invalid { key: refused, .. }) => assert_eq!(refused, key),
                    other => panic!("{variable}={value}: {other:?}"),
                }
                jail.set_env(variable, "");
            }
            jail.set_env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
            assert!(Config::load(None).is_err(), "http/json is not offered");
            Ok(())
        });
    }

    #[test]
    fn defaults_without_file_or_environment() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            assert_eq!(Config::load(None).unwrap(), Config::default());
            Ok(())
        });
    }

    #[test]
    fn environment_wins_over_file_and_nests_with_double_underscore() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "switchboard.toml",
                "listen = \"0.0.0.0:9000\"\nlog_format = \"json\"\n[engine]\ntoken_delay_ms = 5\n",
            )?;
            jail.set_env("SWITCHBOARD_ENGINE__TOKEN_DELAY_MS", "0");
            jail.set_env("SWITCHBOARD_CORS_ALLOWED_ORIGINS", "http://a, http://b");
            let config = Config::load(None).unwrap();
            assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
            assert_eq!(config.log_format, LogFormat::Json);
            assert_eq!(config.engine.token_delay_ms, 0);
            assert_eq!(config.cors_allowed_origins, ["http://a", "http://b"]);
            Ok(())
        });
    }

    #[test]
    fn database_url_from_either_variable_and_never_printed() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("DATABASE_URL", "postgres://me:hunter2@db/app");
            let config = Config::load(None).unwrap();
            assert!(matches!(
                config.database_target(),
                DatabaseTarget::Postgres(_)
            ));
            assert!(!format!("{config:?}").contains("hunter2"));
            jail.set_env("SWITCHBOARD_DATABASE_URL", "sqlite:other.db");
            let config = Config::load(None).unwrap();
            assert_eq!(
                config.database_target(),
                DatabaseTarget::Sqlite(SqliteLocation::Url("sqlite:other.db".into()))
            );
            Ok(())
        });
    }

    #[test]
    fn invalid_values_name_their_key() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("DATABASE_URL", "mysql://root:secret@db/app");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("database_url") && !err.contains("secret"),
                "{err}"
            );
            jail.set_env("DATABASE_URL", "sqlite::memory:");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("in-memory"), "{err}");
            jail.set_env("DATABASE_URL", "sqlite:x.db");
            jail.set_env("SWITCHBOARD_ENGINE__MAX_CONCURRENT_REPLIES", "0");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("engine.max_concurrent_replies"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn queues_and_engines_are_chosen_and_checked() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("REDIS_URL", "redis://:hunter2@127.0.0.1:6379");
            jail.set_env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
            jail.set_env("SWITCHBOARD_QUEUE__GENERATE_REPLY__MAX_ATTEMPTS", "7");
            let config = Config::load(None).unwrap();
            assert_eq!(
                config.redis_url.unwrap().expose(),
                "redis://:hunter2@127.0.0.1:6379"
            );
            assert!(config.amqp_url.is_some());
            assert_eq!(config.queue.generate_reply.max_attempts, 7);
            assert_eq!(
                config.queue.generate_reply.backoff_base_ms, 1000,
                "the rest keep their defaults"
            );
            jail.clear_env();
            jail.set_env("SWITCHBOARD_QUEUE__BACKEND", "redis");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("queue.backend") && err.contains("REDIS_URL"),
                "{err}"
            );
            jail.clear_env();
            jail.set_env("SWITCHBOARD_ENGINE__KIND", "grpc");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("engine.grpc.endpoint"), "{err}");
            jail.set_env("SWITCHBOARD_ENGINE__KIND", "openai");
            jail.set_env(
                "SWITCHBOARD_ENGINE__OPENAI__BASE_URL",
                "http://127.0.0.1:11434/v1",
            );
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("engine.openai.model"), "{err}");
            jail.set_env("SWITCHBOARD_ENGINE__OPENAI__MODEL", "llama3");
            jail.set_env("SWITCHBOARD_ENGINE__OPENAI__API_KEY", "sk-secret");
            let config = Config::load(None).unwrap();
            assert_eq!(config.engine.kind, EngineKind::Openai);
            assert!(
                !format!("{config:?}").contains("sk-secret"),
                "secrets stay out of Debug"
            );
            jail.set_env("SWITCHBOARD_ENGINE__RESILIENCE__FAILURE_THRESHOLD", "0");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("engine.resilience"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_named_file_must_exist() {
        Jail::expect_with(|_| {
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn flags_override_loaded_values() {
        let config = Config::default().with_overrides(Some("127.0.0.1:1".parse().unwrap()), None);
        assert_eq!(config.listen.port(), 1);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
    }
}
