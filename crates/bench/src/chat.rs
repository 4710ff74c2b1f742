//! `chat`: simulated users talking to a running server, the way a chat
//! client does.
//!
//! Each of `users` users gets a conversation of their own, then, once every
//! user has one, they all start together and take `turns` turns each, one
//! after the other: `POST /v1/conversations/{cid}/messages` (SendMessage,
//! which stores the message and queues the reply job), then
//! `GET …/messages/{mid}:stream` as Server-Sent Events, read until `done`.
//! First-token latency runs from sending the POST to the first `delta`
//! event; the turn lasts until `done`. A turn that answers a non-2xx status,
//! streams an `error` event, ends without `done` or outlasts the turn
//! timeout is counted as an error and the user goes on with the next turn.
//!
//! Requests go over HTTP/1.1 with keep-alive by default (what a browser's
//! `fetch` and `EventSource` use over `http://`): one shared client whose
//! pool ends up with about one connection per user, reused turn after turn.
//! `--h2c` speaks HTTP/2 with prior knowledge instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use serde::Serialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::sse::SseReader;
use crate::stats::{Percentiles, round};

/// How long a turn waits, after `done`, for the server to end the stream.
const DRAIN_AFTER_DONE: Duration = Duration::from_secs(1);

/// How many error messages are kept for the report's stderr lines.
const ERRORS_SHOWN: usize = 5;

/// What the `chat` subcommand runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatOptions {
    /// The server, such as http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub base_url: String,
    /// A bearer access token of a user (Register or Login answers one).
    #[arg(long, env = "SWITCHBOARD_BENCH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Simulated users at once, each with a conversation of their own.
    #[arg(long, default_value_t = 16)]
    pub users: usize,
    /// Turns per user, one after the other.
    #[arg(long, default_value_t = 20)]
    pub turns: usize,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    pub h2c: bool,
    /// Give up on a turn after this many seconds (counted as an error).
    #[arg(long, default_value_t = 60)]
    pub turn_timeout_secs: u64,
}

/// What a `chat` run measured: the one JSON line it prints.
#[derive(Debug, Clone, Serialize)]
pub struct ChatReport {
    /// Turns that ended with `done`.
    pub turns: usize,
    /// From the moment every user started to the end of the last turn.
    pub seconds: f64,
    /// `turns / seconds`.
    pub turns_per_s: f64,
    /// From sending the message to the first `delta` event.
    pub first_token_ms: Option<Percentiles>,
    /// From sending the message to the `done` event.
    pub turn_ms: Option<Percentiles>,
    /// Turns that failed; the run succeeded only if this is 0.
    pub errors: usize,
    /// Simulated users.
    pub users: usize,
    /// Turns each user took (`users × turns_per_user` = `turns + errors`).
    pub turns_per_user: usize,
    /// The load generator's own CPU time (user + system, all threads) over
    /// the measured turns, divided by the turns that ended with `done`, in
    /// milliseconds: it shares the cores with the server, so its cost is
    /// part of every figure.
    pub client_cpu_ms_per_turn: Option<f64>,
    /// `HTTP/1.1` or `h2c`.
    pub http: &'static str,
    /// The first few errors, for the operator; not printed in the JSON.
    #[serde(skip)]
    pub error_samples: Vec<String>,
}

/// Runs the simulated users and gathers their timings.
///
/// # Errors
///
/// Only when the HTTP client cannot be built; a failing turn or user is
/// counted in [`ChatReport::errors`] instead.
pub async fn run(options: &ChatOptions) -> anyhow::Result<ChatReport> {
    let builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(options.users.max(1));
    let builder = if options.h2c {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    let client = builder.build().context("cannot build the HTTP client")?;
    let user = User {
        client,
        base_url: options.base_url.trim_end_matches('/').to_owned(),
        token: options.token.clone(),
        turns: options.turns,
        turn_timeout: Duration::from_secs(options.turn_timeout_secs.max(1)),
    };
    let user = Arc::new(user);
    // One more party than users: this task, which takes the start time.
    let start = Arc::new(Barrier::new(options.users + 1));
    let tasks: Vec<_> = (0..options.users)
        .map(|index| tokio::spawn(Arc::clone(&user).converse(index, Arc::clone(&start))))
        .collect();
    start.wait().await;
    let started = Instant::now();
    let cpu_before = own_cpu_seconds();
    let mut first_tokens = Vec::new();
    let mut turn_times = Vec::new();
    let mut errors = 0;
    let mut error_samples = Vec::new();
    for task in tasks {
        let outcome = task.await.context("a simulated user panicked")?;
        first_tokens.extend(outcome.turns.iter().map(|turn| turn.first_token));
        turn_times.extend(outcome.turns.iter().map(|turn| turn.done));
        errors += outcome.errors.len();
        for error in outcome.errors {
            if error_samples.len() < ERRORS_SHOWN {
                error_samples.push(error);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let turns = turn_times.len();
    let client_cpu_ms_per_turn = match (cpu_before, own_cpu_seconds()) {
        (Some(before), Some(after)) if turns > 0 => {
            Some(round((after - before) * 1000.0 / turns as f64, 3))
        }
        _ => None,
    };
    Ok(ChatReport {
        turns,
        seconds: round(seconds, 3),
        turns_per_s: round(turns as f64 / seconds, 1),
        first_token_ms: Percentiles::of(&first_tokens),
        turn_ms: Percentiles::of(&turn_times),
        errors,
        users: options.users,
        turns_per_user: options.turns,
        client_cpu_ms_per_turn,
        http: if options.h2c { "h2c" } else { "HTTP/1.1" },
        error_samples,
    })
}

/// What every simulated user shares: the client and the run's settings.
struct User {
    client: reqwest::Client,
    base_url: String,
    token: String,
    turns: usize,
    turn_timeout: Duration,
}

/// One user's turns and errors.
#[derive(Default)]
struct Outcome {
    turns: Vec<TurnTimes>,
    errors: Vec<String>,
}

/// The timings of one successful turn, from sending the message.
struct TurnTimes {
    first_token: Duration,
    done: Duration,
}

impl User {
    /// Creates the user's conversation, waits for every other user, then
    /// takes the turns.
    async fn converse(self: Arc<Self>, index: usize, start: Arc<Barrier>) -> Outcome {
        let conversation = self.create_conversation(index).await;
        // Every user reaches the barrier, even one that failed, or the run
        // would never start.
        start.wait().await;
        let mut outcome = Outcome::default();
        let conversation = match conversation {
            Ok(id) => id,
            Err(err) => {
                let error = format!("user {index}: cannot create a conversation: {err:#}");
                outcome.errors = vec![error; self.turns];
                return outcome;
            }
        };
        for turn in 0..self.turns {
            match tokio::time::timeout(self.turn_timeout, self.turn(&conversation, turn)).await {
                Ok(Ok(times)) => outcome.turns.push(times),
                Ok(Err(err)) => outcome
                    .errors
                    .push(format!("user {index}, turn {turn}: {err:#}")),
                Err(_) => outcome.errors.push(format!(
                    "user {index}, turn {turn}: no `done` within {:?}",
                    self.turn_timeout
                )),
            }
        }
        outcome
    }

    /// CreateConversation; returns its id.
    async fn create_conversation(&self, index: usize) -> anyhow::Result<String> {
        let url = format!("{}/v1/conversations", self.base_url);
        let body = json!({ "title": format!("bench user {index}") });
        let conversation = self.post_json(&url, &body).await?;
        string_at(&conversation, "/id")
    }

    /// One turn: SendMessage, then the reply's stream until `done`.
    async fn turn(&self, conversation: &str, turn: usize) -> anyhow::Result<TurnTimes> {
        let sent = Instant::now();
        let url = format!("{}/v1/conversations/{conversation}/messages", self.base_url);
        let body = json!({ "content": format!("Turn {turn}: what is the weather like today?") });
        let answer = self.post_json(&url, &body).await?;
        let reply = string_at(&answer, "/reply/id")?;
        let url = format!(
            "{}/v1/conversations/{conversation}/messages/{reply}:stream",
            self.base_url
        );
        let response = self
            .client
            .get(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .context("StreamReply")?;
        let mut body = checked(response, "StreamReply").await?.bytes_stream();
        let mut reader = SseReader::default();
        let mut first_token = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("reading the reply stream")?;
            for event in reader.push(&chunk) {
                if event.event.as_deref() == Some("error") {
                    bail!("the stream failed: {}", event.data);
                }
                let event: StreamEvent = serde_json::from_str(&event.data)
                    .with_context(|| format!("an event that is not JSON: {}", event.data))?;
                if event.delta.is_some() && first_token.is_none() {
                    first_token = Some(sent.elapsed());
                }
                if let Some(error) = event.error {
                    bail!("the reply failed: {error}");
                }
                if event.done.is_some() {
                    let done = sent.elapsed();
                    // The server ends the stream after `done`: read it to
                    // its end, as a browser does, so the connection goes
                    // back to the pool for the next turn instead of being
                    // closed (a new connection per turn otherwise).
                    let _ = tokio::time::timeout(DRAIN_AFTER_DONE, async {
                        while let Some(Ok(_)) = body.next().await {}
                    })
                    .await;
                    return Ok(TurnTimes {
                        // A reply with no text has no delta: its first
                        // token is its end.
                        first_token: first_token.unwrap_or(done),
                        done,
                    });
                }
            }
        }
        bail!("the stream ended without `done`")
    }

    /// POSTs `body` as JSON with the user's token; the answer's JSON.
    async fn post_json(&self, url: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .client
            .post(url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        checked(response, url)
            .await?
            .json()
            .await
            .with_context(|| format!("the answer of POST {url} is not JSON"))
    }
}

/// This process's user + system CPU time so far, in seconds, from
/// `/proc/self/stat` (fields 14 and 15, in USER_HZ ticks, which Linux fixes
/// at 100 a second for user space); `None` where there is no such file.
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Field 3 (state) is the first after the name: utime is field 14.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The fields of a StreamReply event the bench looks at. The others, and
/// what `delta` and `done` hold, are skipped without being built: the load
/// generator shares the cores with the server, so it reads no more than it
/// needs.
#[derive(serde::Deserialize)]
struct StreamEvent {
    delta: Option<IgnoredAny>,
    done: Option<IgnoredAny>,
    error: Option<Value>,
}

/// `response` if its status is 2xx, else an error with its status and the
/// start of its body.
async fn checked(response: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    Err(anyhow!("{what}: HTTP {status}: {body}"))
}

/// The string at JSON `pointer` in `value`.
fn string_at(value: &Value, pointer: &str) -> anyhow::Result<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no {pointer} in {value}"))
}
