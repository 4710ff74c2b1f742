//! JSON log lines with Elastic Common Schema field names (`log_format =
//! "json"`), one object per line: `@timestamp`, `log.level`, `log.logger`
//! (the target), `message`, `service.name`, `trace.id` and `span.id` of the
//! current span when tracing is on, then the fields of the spans the event
//! is in (outermost first, so an inner span's value wins) and of the event
//! itself. The request span's fields become `http.request.id`,
//! `http.request.method` and `url.path`; an `error` field becomes
//! `error.message`. Filebeat, Logstash or an Elasticsearch ingest pipeline
//! take the lines as they are (`deploy/logging/`).

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The ECS event format; span fields must be recorded with [`JsonFields`].
#[derive(Debug, Clone)]
pub(crate) struct EcsFormat {
    /// The `service.name` of every line.
    pub(crate) service_name: String,
}

impl<S> FormatEvent<S, JsonFields> for EcsFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert(
            "@timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert(
            "log.level".into(),
            metadata.level().as_str().to_ascii_lowercase().into(),
        );
        line.insert("log.logger".into(), metadata.target().into());
        line.insert("service.name".into(), self.service_name.as_str().into());
        if let Some((trace_id, span_id)) = switchboard_core::telemetry::current_ids() {
            line.insert("trace.id".into(), trace_id.into());
            line.insert("span.id".into(), span_id.into());
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    for (name, value) in fields {
                        line.insert(ecs_name(&name), value);
                    }
                }
            }
        }
        let mut fields = EventFields(Map::new());
        event.record(&mut fields);
        for (name, value) in fields.0 {
            line.insert(ecs_name(&name), value);
        }
        line.entry("message").or_insert_with(|| "".into());
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// The ECS name of a field Switchboard's code names otherwise.
fn ecs_name(name: &str) -> String {
    match name {
        "request_id" => "http.request.id",
        "method" => "http.request.method",
        "path" => "url.path",
        "error" => "error.message",
        other => other,
    }
    .to_owned()
}

/// An event's fields as JSON values.
struct EventFields(Map<String, Value>);

impl Visit for EventFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_is_one_object_with_ecs_names_and_the_spans_fields() {
        let lines = Lines::default();
        let writer = lines.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(EcsFormat {
                service_name: "switchboard-test".into(),
            })
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                method = "GET",
                path = "/v1/x",
                request_id = "r-1"
            );
            let _entered = span.enter();
            tracing::warn!(error = "it broke", attempts = 3_u32, "a \"quoted\" message");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "a \"quoted\" message");
        assert_eq!(line["log.level"], "warn");
        assert_eq!(line["service.name"], "switchboard-test");
        assert_eq!(line["http.request.id"], "r-1");
        assert_eq!(line["http.request.method"], "GET");
        assert_eq!(line["url.path"], "/v1/x");
        assert_eq!(line["error.message"], "it broke");
        assert_eq!(line["attempts"], 3);
        assert!(line["@timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(line.get("trace.id").is_none(), "tracing is off");
    }
}
