//! `switchboard probe URL`: synthetic monitoring from the outside. One run
//! checks `/readyz`, then signs in with a probe API key and runs a whole
//! chat turn over REST (the reply followed as Server-Sent Events) and one
//! over native gRPC (SendMessage, then StreamReply), and deletes the
//! conversation it made. Each step is timed; the first that fails ends the
//! run, named with its latency and reason, and the exit status is 1.
//!
//! With `--every 30s --listen ADDR` it probes for ever and serves its own
//! Prometheus metrics at `ADDR/metrics`: `switchboard_probe_up` (1 when the
//! last run passed), `switchboard_probe_step_success` and
//! `switchboard_probe_step_duration_seconds` by step (the last run's), and
//! `switchboard_probe_runs_total` by outcome. Release gates and alerts read
//! those.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use switchboard_proto::v1::chat_service_client::ChatServiceClient;
use switchboard_proto::v1::{SendMessageRequest, StreamReplyRequest, reply_event};

/// The steps of one run, in order.
const STEPS: [&str; 7] = [
    "readyz",
    "rest_create_conversation",
    "rest_send_message",
    "rest_stream_reply",
    "grpc_send_message",
    "grpc_stream_reply",
    "rest_delete_conversation",
];

/// What to probe and how.
#[derive(Debug, Clone)]
pub(crate) struct ProbeOptions {
    /// The server's base URL, such as `http://127.0.0.1:8080`.
    pub(crate) url: String,
    /// The probe account's API key, sent as a bearer token.
    pub(crate) api_key: String,
    /// The longest any one step may take.
    pub(crate) timeout: Duration,
    /// Probe for ever, this often; `None`: once.
    pub(crate) every: Option<Duration>,
    /// Where to serve the probe's metrics (with `every`).
    pub(crate) listen: Option<SocketAddr>,
}

/// How one step went.
#[derive(Debug, Clone)]
struct StepResult {
    step: &'static str,
    took: Duration,
    error: Option<String>,
}

/// Runs the probe: once (exit status 1 when a step fails) or for ever.
///
/// # Errors
///
/// A failed step of a single run, or a metrics address that cannot be bound.
pub(crate) async fn run(options: ProbeOptions) -> anyhow::Result<()> {
    let Some(every) = options.every else {
        let results = probe_once(&options).await;
        print_results(&results);
        if let Some(failed) = results.iter().find(|result| result.error.is_some()) {
            bail!(
                "probe failed at step {} after {} ms: {}",
                failed.step,
                failed.took.as_millis(),
                failed.error.as_deref().unwrap_or_default()
            );
        }
        return Ok(());
    };
    let state = Arc::new(Mutex::new(ProbeMetrics::default()));
    if let Some(address) = options.listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let state = state.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let text = state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .render();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        text,
                    )
                }
            }),
        );
        eprintln!("probe metrics at http://{}/metrics", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let results = probe_once(&options).await;
        print_results(&results);
        state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(&results);
    }
}

/// One run: the steps in order, up to the first that fails.
async fn probe_once(options: &ProbeOptions) -> Vec<StepResult> {
    let mut probe = Probe::new(options);
    let mut results = Vec::new();
    for step in STEPS {
        let started = Instant::now();
        let outcome = tokio::time::timeout(options.timeout, probe.step(step)).await;
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(format!("{error:#}")),
            Err(_) => Some(format!(
                "no answer within {} ms",
                options.timeout.as_millis()
            )),
        };
        let failed = error.is_some();
        results.push(StepResult {
            step,
            took: started.elapsed(),
            error,
        });
        if failed {
            break;
        }
    }
    results
}

fn print_results(results: &[StepResult]) {
    for result in results {
        match &result.error {
            None => println!(
                "ok    {:<26} {:>6} ms",
                result.step,
                result.took.as_millis()
            ),
            Some(error) => println!(
                "FAIL  {:<26} {:>6} ms  {error}",
                result.step,
                result.took.as_millis()
            ),
        }
    }
}

/// The state one run carries from step to step.
struct Probe {
    url: String,
    api_key: String,
    http: reqwest::Client,
    conversation: Option<String>,
    reply: Option<String>,
}

impl Probe {
    fn new(options: &ProbeOptions) -> Self {
        Self {
            url: options.url.trim_end_matches('/').to_owned(),
            api_key: options.api_key.clone(),
            http: reqwest::Client::new(),
            conversation: None,
            reply: None,
        }
    }

    async fn step(&mut self, step: &str) -> anyhow::Result<()> {
        match step {
            "readyz" => {
                let response = self.http.get(format!("{}/readyz", self.url)).send().await?;
                let status = response.status();
                if !status.is_success() {
                    bail!(
                        "/readyz answered {status}: {}",
                        response.text().await.unwrap_or_default()
                    );
                }
                Ok(())
            }
            "rest_create_conversation" => {
                let created = self
                    .rest(
                        reqwest::Method::POST,
                        "/v1/conversations",
                        Some(json!({"title": "probe"})),
                    )
                    .await?;
                let id = created["id"]
                    .as_str()
                    .context("no conversation id in the answer")?;
                self.conversation = Some(id.to_owned());
                Ok(())
            }
            "rest_send_message" => {
                let cid = self.conversation()?;
                let sent = self
                    .rest(
                        reqwest::Method::POST,
                        &format!("/v1/conversations/{cid}/messages"),
                        Some(json!({"content": "probe: are you there?"})),
                    )
                    .await?;
                let reply = sent["reply"]["id"]
                    .as_str()
                    .context("no reply id in the answer")?;
                self.reply = Some(reply.to_owned());
                Ok(())
            }
            "rest_stream_reply" => self.rest_stream_reply().await,
            "grpc_send_message" => self.grpc_send_message().await,
            "grpc_stream_reply" => self.grpc_stream_reply().await,
            "rest_delete_conversation" => {
                let cid = self.conversation()?;
                self.rest(
                    reqwest::Method::DELETE,
                    &format!("/v1/conversations/{cid}"),
                    None,
                )
                .await?;
                Ok(())
            }
            other => bail!("unknown step {other}"),
        }
    }

    fn conversation(&self) -> anyhow::Result<String> {
        self.conversation.clone().context("no conversation yet")
    }

    fn reply(&self) -> anyhow::Result<String> {
        self.reply.clone().context("no reply yet")
    }

    /// A REST call with the probe's key; the answer's JSON, or its status
    /// and body as the error.
    async fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.api_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{path} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Follows the reply as Server-Sent Events until its `done` (a reply
    /// with text) or its `error`.
    async fn rest_stream_reply(&self) -> anyhow::Result<()> {
        let (cid, reply) = (self.conversation()?, self.reply()?);
        let response = self
            .http
            .get(format!(
                "{}/v1/conversations/{cid}/messages/{reply}:stream",
                self.url
            ))
            .bearer_auth(&self.api_key)
            .header("accept", "text/event-stream")
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "the stream answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        let mut body = response.bytes_stream();
        let mut pending = String::new();
        while let Some(chunk) = body.next().await {
            pending.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let Some(data) = line.trim_end().strip_prefix("data:") else {
                    continue;
                };
                let event: Value = serde_json::from_str(data.trim())?;
                if let Some(done) = event.get("done") {
                    if done["content"].as_str().is_none_or(str::is_empty) {
                        bail!("the reply ended with no text");
                    }
                    return Ok(());
                }
                if let Some(error) = event.get("error") {
                    bail!(
                        "the reply failed: {} {}",
                        error["code"].as_str().unwrap_or("?"),
                        error["message"].as_str().unwrap_or("")
                    );
                }
            }
        }
        bail!("the stream ended before the reply was done")
    }

    /// A native gRPC client (h2c) whose calls carry the probe's key.
    async fn grpc(&self) -> anyhow::Result<ChatServiceClient<tonic::transport::Channel>> {
        let channel = tonic::transport::Endpoint::from_shared(self.url.clone())?
            .connect()
            .await
            .context("cannot connect over gRPC")?;
        Ok(ChatServiceClient::new(channel))
    }

    fn grpc_request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {}", self.api_key).parse()?);
        Ok(request)
    }

    async fn grpc_send_message(&mut self) -> anyhow::Result<()> {
        let request = self.grpc_request(SendMessageRequest {
            conversation_id: self.conversation()?,
            content: "probe: and over gRPC?".to_owned(),
        })?;
        let sent = self.grpc().await?.send_message(request).await?.into_inner();
        let reply = sent.reply.context("no reply in the answer")?;
        self.reply = Some(reply.id);
        Ok(())
    }

    async fn grpc_stream_reply(&self) -> anyhow::Result<()> {
        let request = self.grpc_request(StreamReplyRequest {
            conversation_id: self.conversation()?,
            message_id: self.reply()?,
            after_seq: 0,
        })?;
        let mut events = self.grpc().await?.stream_reply(request).await?.into_inner();
        while let Some(event) = events.next().await {
            match event?.kind {
                Some(reply_event::Kind::Done(message)) if !message.content.is_empty() => {
                    return Ok(());
                }
                Some(reply_event::Kind::Done(_)) => bail!("the reply ended with no text"),
                Some(reply_event::Kind::Error(error)) => {
                    bail!("the reply failed: {} {}", error.code, error.message)
                }
                _ => {}
            }
        }
        bail!("the stream ended before the reply was done")
    }
}

/// The probe's own metrics: the last run's, and how many runs ended how.
#[derive(Debug, Default)]
struct ProbeMetrics {
    last: Vec<StepResult>,
    runs: BTreeMap<&'static str, u64>,
}

impl ProbeMetrics {
    fn record(&mut self, results: &[StepResult]) {
        let outcome = if results.iter().any(|result| result.error.is_some()) {
            "failure"
        } else {
            "success"
        };
        *self.runs.entry(outcome).or_default() += 1;
        self.last = results.to_vec();
    }

    /// The Prometheus text format.
    fn render(&self) -> String {
        let mut text = String::new();
        let passed = !self.last.is_empty()
            && self.last.iter().all(|result| result.error.is_none())
            && self.last.len() == STEPS.len();
        let _ = writeln!(
            text,
            "# HELP switchboard_probe_up 1 when the last probe run passed every step"
        );
        let _ = writeln!(text, "# TYPE switchboard_probe_up gauge");
        let _ = writeln!(text, "switchboard_probe_up {}", u8::from(passed));
        let _ = writeln!(
            text,
            "# HELP switchboard_probe_step_success 1 when the step passed in the last run, 0 when it failed or was not reached"
        );
        let _ = writeln!(text, "# TYPE switchboard_probe_step_success gauge");
        for step in STEPS {
            let ok = self
                .last
                .iter()
                .any(|result| result.step == step && result.error.is_none());
            let _ = writeln!(
                text,
                "switchboard_probe_step_success{{step=\"{step}\"}} {}",
                u8::from(ok)
            );
        }
        let _ = writeln!(
            text,
            "# HELP switchboard_probe_step_duration_seconds How long the step took in the last run"
        );
        let _ = writeln!(text, "# TYPE switchboard_probe_step_duration_seconds gauge");
        for result in &self.last {
            let _ = writeln!(
                text,
                "switchboard_probe_step_duration_seconds{{step=\"{}\"}} {}",
                result.step,
                result.took.as_secs_f64()
            );
        }
        let _ = writeln!(
            text,
            "# HELP switchboard_probe_runs_total Probe runs, by outcome"
        );
        let _ = writeln!(text, "# TYPE switchboard_probe_runs_total counter");
        for outcome in ["success", "failure"] {
            let _ = writeln!(
                text,
                "switchboard_probe_runs_total{{outcome=\"{outcome}\"}} {}",
                self.runs.get(outcome).copied().unwrap_or(0)
            );
        }
        text
    }
}

/// A duration such as `30s`, `500ms`, `2m` or `1h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: write 500ms, 30s, 2m or 1h"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    if duration.is_zero() {
        return Err("the duration must be above zero".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_their_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn the_metrics_say_which_step_failed() {
        let mut metrics = ProbeMetrics::default();
        metrics.record(&[
            StepResult {
                step: "readyz",
                took: Duration::from_millis(3),
                error: None,
            },
            StepResult {
                step: "rest_create_conversation",
                took: Duration::from_millis(7),
                error: Some("500".into()),
            },
        ]);
        let text = metrics.render();
        assert!(text.contains("switchboard_probe_up 0\n"), "{text}");
        assert!(text.contains("switchboard_probe_step_success{step=\"readyz\"} 1\n"));
        assert!(
            text.contains("switchboard_probe_step_success{step=\"rest_create_conversation\"} 0\n")
        );
        assert!(text.contains("switchboard_probe_step_success{step=\"grpc_stream_reply\"} 0\n"));
        assert!(text.contains("switchboard_probe_runs_total{outcome=\"failure\"} 1\n"));
    }
}
