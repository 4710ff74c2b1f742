//! Logs and traces of the process: the log lines on stderr (text, or JSON
//! with ECS names, see [`crate::ecs`]; filtered by `log_level`) and, when
//! an OTLP endpoint is configured (table `telemetry`, or the standard
//! `OTEL_*` variables), spans exported to an
//! OpenTelemetry collector over gRPC or HTTP/protobuf in batches.
//!
//! The two have their own filters: `log_level = "warn"` quiets the logs,
//! not the traces. Spans go to the exporter from Switchboard's own crates at
//! INFO and above (requests, jobs, engine calls, the statements worth
//! seeing); the libraries' own spans stay out.

use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::EnvResourceDetector;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use switchboard_core::Config;
use switchboard_core::config::{LogFormat, OtlpProtocol, TelemetryConfig};
use tracing::Level;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::ecs::EcsFormat;

/// What [`init`] installed; [`Telemetry::shutdown`] sends the spans still
/// buffered before the process exits.
#[must_use = "call shutdown before exiting, or buffered spans are lost"]
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub(crate) async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The batch processor's thread does the export; waiting for it
        // must not hold up a runtime thread the export may need.
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = result {
            eprintln!("switchboard: the last spans could not be exported: {error}");
        }
    }
}

/// Installs the process's logging and, if configured, tracing. Call once,
/// inside the Tokio runtime (the exporters' connections live on it).
///
/// # Errors
///
/// An invalid `log_level`, or an exporter that cannot be built from the
/// configuration.
pub(crate) fn init(config: &Config) -> anyhow::Result<Telemetry> {
    install(config, true)
}

/// Installs the process's logging only, for the commands that run to an
/// end at once (`migrate`, `user create`, …): they export no traces.
///
/// # Errors
///
/// An invalid `log_level`.
pub(crate) fn init_logs(config: &Config) -> anyhow::Result<()> {
    install(config, false).map(|_| ())
}

/// Installs logging, and tracing if `traces` and configured.
fn install(config: &Config, traces: bool) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&config.log_level).context("invalid log_level")?;
    // Lines are formatted where they happen and written by a thread of
    // their own, as many at a time as are waiting (one write for a burst,
    // not one per line; at once when there is one). Nothing is dropped: a
    // full queue makes the logging thread wait.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("switchboard-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let logs = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(EcsFormat {
                service_name: config.telemetry.service_name.clone(),
            })
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    };
    let provider = if traces {
        tracer_provider(&config.telemetry)?
    } else {
        None
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("switchboard"))
            .with_threads(false)
            // A target prefix: every `switchboard_*` crate.
            .with_filter(Targets::new().with_target("switchboard", Level::INFO))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .context("a logger was already installed")?;
    *LOG_WRITER.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard);
    if let Some(provider) = &provider {
        switchboard_core::telemetry::enable();
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing::info!(
            endpoint = %traces_endpoint(&config.telemetry).unwrap_or_default(),
            protocol = ?config.telemetry.otlp_protocol,
            "exporting traces over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

/// Log lines queued for the writing thread at most.
const LOG_QUEUE_LINES: usize = 16_384;

/// The writing thread of the log; dropping it writes out what is queued.
static LOG_WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Writes out the log lines still queued. Call before the process ends;
/// later lines are not written.
pub(crate) fn flush_logs() {
    let guard = LOG_WRITER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    drop(guard);
}

/// Ends the process with `code` once the queued log lines are written.
pub(crate) fn exit(code: i32) -> ! {
    flush_logs();
    std::process::exit(code)
}

/// Whether the standard variables turn the SDK or the trace exporter off.
fn disabled_by_environment() -> bool {
    let var = |name| std::env::var(name).unwrap_or_default().to_ascii_lowercase();
    var("OTEL_SDK_DISABLED") == "true" || var("OTEL_TRACES_EXPORTER") == "none"
}

/// Where spans are sent, or `None` when tracing is off.
fn traces_endpoint(telemetry: &TelemetryConfig) -> Option<String> {
    if disabled_by_environment() {
        return None;
    }
    if let Some(url) = &telemetry.otlp_traces_endpoint {
        return Some(url.clone());
    }
    let base = telemetry.otlp_endpoint.as_deref()?;
    Some(match telemetry.otlp_protocol {
        OtlpProtocol::Grpc => base.to_owned(),
        // The specification's rule: the signal's path is added to the base.
        OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
    })
}

/// The tracer provider exporting to the configured collector, or `None`
/// when none is configured.
fn tracer_provider(telemetry: &TelemetryConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = traces_endpoint(telemetry) else {
        return Ok(None);
    };
    let exporter = match telemetry.otlp_protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(RuntimeHttpClient::new()?)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build(),
    }
    .context("cannot build the OTLP trace exporter")?;
    let resource = Resource::builder_empty()
        .with_attributes(
            telemetry
                .resource_attributes
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", uuid::Uuid::now_v7().to_string()),
            KeyValue::new("process.pid", i64::from(std::process::id())),
        ])
        .with_detector(Box::new(EnvResourceDetector::new()))
        .with_service_name(telemetry.service_name.clone())
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler(telemetry))
            .with_resource(resource)
            .build(),
    ))
}

/// The sampler named by the configuration (validated when it was loaded).
fn sampler(telemetry: &TelemetryConfig) -> Sampler {
    let ratio = telemetry.sampler_arg;
    match telemetry.sampler.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    }
}

/// The HTTP client of the OTLP/HTTP exporter: the async reqwest client the
/// rest of the binary uses, its requests run on the Tokio runtime. The
/// batch processor calls it from its own thread, where no runtime is
/// entered; spawning onto the runtime's handle lets it use the runtime's
/// connections all the same (and needs no second, blocking HTTP stack).
#[derive(Debug)]
struct RuntimeHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl RuntimeHttpClient {
    /// A client on the current runtime.
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("cannot build the OTLP HTTP client")?,
            runtime: tokio::runtime::Handle::try_current()
                .context("the OTLP exporter needs the Tokio runtime")?,
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for RuntimeHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move {
                let request = reqwest::Request::try_from(request)?;
                let response = client.execute(request).await?;
                let mut answer = http::Response::builder().status(response.status());
                if let Some(headers) = answer.headers_mut() {
                    *headers = response.headers().clone();
                }
                let body = response.bytes().await?;
                Ok::<_, opentelemetry_http::HttpError>(answer.body(body)?)
            })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_endpoint_gets_the_signal_path_and_a_traces_endpoint_is_used_as_it_is() {
        let mut telemetry = TelemetryConfig {
            otlp_endpoint: Some("http://collector:4318/".to_owned()),
            ..TelemetryConfig::default()
        };
        assert_eq!(
            traces_endpoint(&telemetry).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        telemetry.otlp_protocol = OtlpProtocol::Grpc;
        assert_eq!(
            traces_endpoint(&telemetry).as_deref(),
            Some("http://collector:4318/")
        );
        telemetry.otlp_traces_endpoint = Some("https://traces.example/ingest".to_owned());
        assert_eq!(
            traces_endpoint(&telemetry).as_deref(),
            Some("https://traces.example/ingest")
        );
        assert_eq!(
            traces_endpoint(&TelemetryConfig::default()),
            None,
            "off by default"
        );
    }
}
