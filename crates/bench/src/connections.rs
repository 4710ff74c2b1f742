//! `connections`: many clients following one reply at once, over WebSocket
//! (`/v1/ws`, a `subscribe` frame naming the reply) or over Server-Sent
//! Events (StreamReply's REST route), all signed in with the same token.
//!
//! The reply comes from an engine this process plays: the server is started
//! with `engine.kind = "openai"` and `engine.openai.base_url` pointing at
//! `--engine-listen`, where a minimal OpenAI-compatible endpoint answers the
//! one `chat/completions` call of the run. It sends a first token at once
//! and one more every second (as a slow model does; it also keeps each
//! subscriber's quiet-stream check from reading the database) while the
//! clients connect, and holds the rest of the reply until every client has
//! subscribed and the server's memory has been read. Then it sends the
//! remaining tokens back to back, notes when it wrote the last one, and
//! ends the stream. So the report can say, for each client, how long after
//! the engine's last token its `done` arrived.
//!
//! Each client checks what it received: seqs from 1 without a gap or a
//! repeat, only deltas before the final event, a final `done` whose text is
//! both the deltas joined and the text the engine sent. A client that sees
//! anything else, or whose connection fails, counts as failed.
//!
//! Memory per connection is the server's `VmRSS` with every client
//! subscribed, minus its `VmRSS` just before the first client connected,
//! divided by the clients. Clients connect from several loopback source
//! addresses (127.0.0.1, .2, …), so no one address runs out of ephemeral
//! ports, and the process raises its own open-files limit first.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::logins::{loopback_plus, mib, status_kib};
use crate::sse::SseReader;
use crate::stats::{Percentiles, round};

/// How many failure messages are kept for stderr.
const ERRORS_SHOWN: usize = 5;

/// Open files the process needs besides its clients' sockets.
const SPARE_FILES: u64 = 64;

/// How the clients follow the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `/v1/ws`, one socket per client, one reply subscription each.
    Ws,
    /// `GET …/messages/{id}:stream` with `Accept: text/event-stream`.
    Sse,
}

/// What the `connections` subcommand runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsOptions {
    /// The server, such as http://127.0.0.1:8080 (on 127.0.0.0/8).
    #[arg(long, value_name = "URL")]
    pub base_url: String,
    /// A bearer access token of a user (Register or Login answers one).
    #[arg(long, env = "SWITCHBOARD_BENCH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The server's process id, whose VmRSS is read.
    #[arg(long)]
    pub pid: u32,
    /// Where this process answers the server's engine call (the server's
    /// `engine.openai.base_url` is `http://ADDR/v1`).
    #[arg(long, value_name = "ADDR")]
    pub engine_listen: SocketAddr,
    /// WebSocket or Server-Sent Events.
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// Clients, each on a connection of its own, all following one reply.
    #[arg(long, default_value_t = 2000)]
    pub clients: usize,
    /// Loopback source addresses the clients take turns on (127.0.0.1 on).
    #[arg(long, default_value_t = 4)]
    pub source_addresses: u32,
    /// Clients connecting at the same time.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Tokens the engine sends once every client has subscribed.
    #[arg(long, default_value_t = 20)]
    pub final_tokens: usize,
    /// Give up (and fail) after this many seconds in any phase.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

/// What a `connections` run measured: the one JSON line it prints.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsReport {
    /// `ws` or `sse`.
    pub transport: Transport,
    /// Clients started.
    pub clients: usize,
    /// Clients that got every event, in order, ending with the right `done`.
    pub complete: usize,
    /// Clients that did not.
    pub failed: usize,
    /// From the first connect to the last client's first event.
    pub connect_s: f64,
    /// Events each complete client received (deltas, usage, done).
    pub events_per_client: usize,
    /// The server's VmRSS before the first client connected.
    pub rss_before_mib: f64,
    /// Its VmRSS with every client subscribed.
    pub rss_open_mib: f64,
    /// `(rss_open - rss_before) / clients`.
    pub kib_per_connection: f64,
    /// From the engine writing its last token to each complete client
    /// receiving `done`.
    pub done_after_last_token_ms: Option<Percentiles>,
    /// The same for the last client to get `done`.
    pub last_done_after_last_token_ms: Option<f64>,
    /// This process's open-files soft limit during the run.
    pub open_files_limit: u64,
    /// The first few failures, for the operator; not printed in the JSON.
    #[serde(skip)]
    pub error_samples: Vec<String>,
}

/// Raises this process's open-files soft limit to its hard limit and
/// returns the new soft limit.
///
/// # Errors
/// When the hard limit is below `needed`, naming both and what to change.
pub fn raise_open_files_limit(needed: u64) -> anyhow::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum;
    if limit.current != hard {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: hard,
                maximum: hard,
            },
        )
        .context("cannot raise the open-files soft limit (RLIMIT_NOFILE) to the hard limit")?;
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    ensure!(
        soft >= needed,
        "the open-files hard limit (RLIMIT_NOFILE) is {soft}, but this run needs about {needed} \
         (one per client plus {SPARE_FILES}); raise it (`ulimit -Hn`, LimitNOFILE= in a systemd \
         unit, /etc/security/limits.conf) or run fewer --clients"
    );
    Ok(soft)
}

/// Runs the clients against one reply and measures them.
///
/// # Errors
/// When the server is not on loopback, the open-files limit is too low, the
/// conversation or message cannot be created, the engine call does not come
/// or a phase outlasts `--timeout-secs`. Clients that fail are counted in
/// the report instead.
pub async fn run(options: &ConnectionsOptions) -> anyhow::Result<ConnectionsReport> {
    ensure!(options.clients > 0, "--clients must be at least 1");
    ensure!(
        options.source_addresses > 0,
        "--source-addresses must be at least 1"
    );
    let needed = u64::try_from(options.clients)
        .unwrap_or(u64::MAX)
        .saturating_add(SPARE_FILES);
    let open_files_limit = raise_open_files_limit(needed)?;
    let base = options.base_url.trim_end_matches('/').to_owned();
    let server = server_address(&base)?;
    let timeout = Duration::from_secs(options.timeout_secs.max(1));
    let sources = (0..options.source_addresses)
        .map(|i| loopback_plus(Ipv4Addr::LOCALHOST, i))
        .collect::<anyhow::Result<Vec<IpAddr>>>()?;

    let engine = TcpListener::bind(options.engine_listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.engine_listen))?;
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .context("cannot build an HTTP client")?;
    let conversation = post_json(
        &http,
        &options.token,
        &format!("{base}/v1/conversations"),
        &json!({ "title": "connections bench" }),
    )
    .await?;
    let conversation = string_at(&conversation, "/id")?;
    let sent = post_json(
        &http,
        &options.token,
        &format!("{base}/v1/conversations/{conversation}/messages"),
        &json!({ "content": "Tell everyone at once." }),
    )
    .await?;
    let reply = string_at(&sent, "/reply/id")?;

    let (call, _) = tokio::time::timeout(timeout, engine.accept())
        .await
        .context("the server did not call the engine")?
        .context("accepting the engine call")?;
    let (go, hold) = oneshot::channel();
    let engine_task = tokio::spawn(play_engine(call, hold, options.final_tokens));

    let rss_before = status_kib(options.pid, "VmRSS")?;
    let target = Target {
        server,
        host: base
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_owned(),
        token: options.token.clone(),
        conversation,
        reply,
    };
    let target = Arc::new(target);
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel::<()>();
    let permits = Arc::new(Semaphore::new(options.connect_concurrency.max(1)));
    let started = Instant::now();
    let clients: Vec<_> = (0..options.clients)
        .map(|i| {
            let source = sources[i % sources.len()];
            let (target, permits, subscribed) =
                (target.clone(), permits.clone(), subscribed_tx.clone());
            let transport = options.transport;
            tokio::spawn(async move {
                let permit = permits.acquire_owned().await.ok();
                follow(
                    transport,
                    &target,
                    source,
                    Subscribed(Some((permit, subscribed))),
                )
                .await
            })
        })
        .collect();
    drop(subscribed_tx);

    // Every client says once that it has subscribed (or its task ends).
    let mut ready = 0;
    let connecting = async {
        while ready < options.clients && subscribed.recv().await.is_some() {
            ready += 1;
        }
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| anyhow!("clients still connecting after {timeout:?}"))?;
    let connect = started.elapsed();
    // Let the last connections' set-up finish before reading the memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open = status_kib(options.pid, "VmRSS")?;

    go.send(()).ok().context("the engine call ended early")?;
    let (last_token_at, text) = tokio::time::timeout(timeout, engine_task)
        .await
        .context("the engine did not finish")?
        .context("the engine task panicked")??;

    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    let mut events_per_client = 0;
    for client in clients {
        let outcome = tokio::time::timeout(timeout, client)
            .await
            .map_err(|_| anyhow!("no `done` within {timeout:?}"))
            .and_then(|joined| joined.context("a client panicked").and_then(|r| r));
        match outcome.and_then(|received| received.checked(&text)) {
            Ok(received) => {
                events_per_client = received.events;
                latencies.push(received.done_at.saturating_duration_since(last_token_at));
            }
            Err(err) => errors.push(format!("{err:#}")),
        }
    }
    let failed = errors.len();
    errors.truncate(ERRORS_SHOWN);
    let clients_f = options.clients as f64;
    Ok(ConnectionsReport {
        transport: options.transport,
        clients: options.clients,
        complete: latencies.len(),
        failed,
        connect_s: round(connect.as_secs_f64(), 2),
        events_per_client,
        rss_before_mib: mib(rss_before),
        rss_open_mib: mib(rss_open),
        kib_per_connection: round(rss_open.saturating_sub(rss_before) as f64 / clients_f, 1),
        done_after_last_token_ms: Percentiles::of(&latencies),
        last_done_after_last_token_ms: latencies
            .iter()
            .max()
            .map(|d| round(d.as_secs_f64() * 1000.0, 2)),
        open_files_limit,
        error_samples: errors,
    })
}

/// The reply every client follows, and how to reach it.
struct Target {
    server: SocketAddr,
    /// `host:port`, for the Host header.
    host: String,
    token: String,
    conversation: String,
    reply: String,
}

/// What one client received, to be checked against the engine's text.
#[derive(Debug)]
struct Received {
    /// The deltas joined.
    deltas: String,
    /// The text of the `done` message.
    done: String,
    /// Events received, the final one included.
    events: usize,
    /// When `done` arrived.
    done_at: Instant,
}

impl Received {
    /// `self` if its deltas and its `done` both carry `text`.
    fn checked(self, text: &str) -> anyhow::Result<Self> {
        ensure!(
            self.deltas == text,
            "the deltas joined are {:?}, the engine sent {text:?}",
            self.deltas
        );
        ensure!(
            self.done == text,
            "`done` carries {:?}, the engine sent {text:?}",
            self.done
        );
        Ok(self)
    }
}

/// Follows one reply's events as they arrive, checking their order.
#[derive(Debug, Default)]
struct EventCheck {
    last_seq: u32,
    deltas: String,
    events: usize,
}

impl EventCheck {
    /// Takes the next event (a `ReplyEvent` in proto3 JSON); `Some` with
    /// what was received once it is the final `done`.
    fn push(&mut self, event: &Value) -> anyhow::Result<Option<Received>> {
        let seq = event
            .get("seq")
            .and_then(Value::as_u64)
            .with_context(|| format!("an event without a seq: {event}"))?;
        ensure!(
            seq == u64::from(self.last_seq) + 1,
            "seq {seq} after seq {}: an event is missing, repeated or out of order",
            self.last_seq
        );
        self.last_seq = u32::try_from(seq).context("seq out of range")?;
        self.events += 1;
        if let Some(delta) = event.get("delta").and_then(Value::as_str) {
            self.deltas.push_str(delta);
            return Ok(None);
        }
        if event.get("usage").is_some() {
            return Ok(None);
        }
        if let Some(done) = event.get("done") {
            let content = done.get("content").and_then(Value::as_str).unwrap_or("");
            return Ok(Some(Received {
                deltas: std::mem::take(&mut self.deltas),
                done: content.to_owned(),
                events: self.events,
                done_at: Instant::now(),
            }));
        }
        bail!("an unexpected event: {event}")
    }
}

/// Tells the run once that a client has subscribed (its first event came)
/// or has failed before that (it is dropped), and gives the client's
/// connect permit back then.
struct Subscribed(Option<(Option<OwnedSemaphorePermit>, mpsc::UnboundedSender<()>)>);

impl Subscribed {
    /// The client got an event: it has subscribed.
    fn now(&mut self) {
        if let Some((_permit, subscribed)) = self.0.take() {
            let _ = subscribed.send(());
        }
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.now();
    }
}

/// One client: connects from `source`, follows the reply and returns what
/// it received once `done` arrives.
async fn follow(
    transport: Transport,
    target: &Target,
    source: IpAddr,
    mut subscribed: Subscribed,
) -> anyhow::Result<Received> {
    let stream = connect_from(source, target.server)
        .await
        .with_context(|| format!("connecting from {source}"))?;
    match transport {
        Transport::Ws => follow_ws(stream, target, &mut subscribed).await,
        Transport::Sse => follow_sse(stream, target, &mut subscribed).await,
    }
}

/// A TCP connection to `server` from `source`.
async fn connect_from(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Upgrades `stream` to `/v1/ws`, subscribes to the reply and reads frames
/// until `done`.
async fn follow_ws(
    stream: TcpStream,
    target: &Target,
    subscribed: &mut Subscribed,
) -> anyhow::Result<Received> {
    use tokio_tungstenite::tungstenite::Message;
    let mut request = format!("ws://{}/v1/ws", target.host)
        .into_client_request()
        .context("the WebSocket URL")?;
    let headers = request.headers_mut();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {}", target.token)
            .parse()
            .context("the token")?,
    );
    headers.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static("switchboard.v1"),
    );
    // Small buffers: the bench's own memory stays small next to the server's.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut socket, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .context("the WebSocket upgrade")?;
    let subscribe = json!({ "subscribe": {
        "conversationId": target.conversation,
        "messageId": target.reply,
        "afterSeq": 0,
    }});
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await
        .context("sending the subscription")?;
    let mut check = EventCheck::default();
    while let Some(frame) = socket.next().await {
        let text = match frame.context("reading a frame")? {
            Message::Text(text) => text,
            Message::Close(close) => bail!("the server closed the socket: {close:?}"),
            _ => continue,
        };
        let frame: Value = serde_json::from_str(&text)
            .with_context(|| format!("a frame that is not JSON: {text}"))?;
        let Some(event) = frame.get("event") else {
            bail!("a frame without an event: {frame}");
        };
        subscribed.now();
        if let Some(received) = check.push(event)? {
            let _ = socket.close(None).await;
            return Ok(received);
        }
    }
    bail!("the socket ended without `done`")
}

/// Sends StreamReply's GET on `stream` and reads its Server-Sent Events
/// (HTTP/1.1, chunked) until `done`.
async fn follow_sse(
    mut stream: TcpStream,
    target: &Target,
    subscribed: &mut Subscribed,
) -> anyhow::Result<Received> {
    let request = format!(
        "GET /v1/conversations/{}/messages/{}:stream HTTP/1.1\r\nhost: {}\r\n\
         authorization: Bearer {}\r\naccept: text/event-stream\r\n\r\n",
        target.conversation, target.reply, target.host, target.token
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("sending StreamReply")?;
    let mut buffer = vec![0u8; 4096];
    let mut head = Vec::new();
    let mut chunks = Dechunker::default();
    let mut events = SseReader::default();
    let mut check = EventCheck::default();
    loop {
        let read = stream
            .read(&mut buffer)
            .await
            .context("reading the stream")?;
        ensure!(
            read > 0,
            "the connection closed without `done`, after {} events (seq {})",
            check.events,
            check.last_seq
        );
        let mut body = &buffer[..read];
        if chunks.in_body.is_none() {
            head.extend_from_slice(body);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            ensure!(
                text.starts_with("http/1.1 200"),
                "StreamReply answered {}",
                text.lines().next().unwrap_or("")
            );
            chunks.in_body = Some(text.contains("transfer-encoding: chunked"));
            let rest = head.split_off(end + 4);
            chunks.pending = Vec::new();
            body = &[];
            for event in events.push(&chunks.push(&rest)?) {
                if let Some(received) = sse_event(&event, &mut check, subscribed)? {
                    return Ok(received);
                }
            }
        }
        for event in events.push(&chunks.push(body)?) {
            if let Some(received) = sse_event(&event, &mut check, subscribed)? {
                return Ok(received);
            }
        }
        ensure!(
            !chunks.ended,
            "the response body ended without `done`, after {} events",
            check.events
        );
    }
}

/// Checks one Server-Sent Event of the reply.
fn sse_event(
    event: &crate::sse::SseEvent,
    check: &mut EventCheck,
    subscribed: &mut Subscribed,
) -> anyhow::Result<Option<Received>> {
    ensure!(
        event.event.is_none(),
        "the stream failed: {} {}",
        event.event.as_deref().unwrap_or(""),
        event.data
    );
    let json: Value = serde_json::from_str(&event.data)
        .with_context(|| format!("an event that is not JSON: {}", event.data))?;
    subscribed.now();
    check.push(&json)
}

/// Undoes HTTP/1.1 chunked transfer coding, chunk by chunk as bytes arrive.
#[derive(Debug, Default)]
struct Dechunker {
    /// `None` until the head has been read; then whether the body is chunked.
    in_body: Option<bool>,
    /// Bytes of an unfinished chunk (or its size line).
    pending: Vec<u8>,
    /// Whether the last (empty) chunk has come.
    ended: bool,
}

impl Dechunker {
    /// The body bytes `input` completes.
    fn push(&mut self, input: &[u8]) -> anyhow::Result<Vec<u8>> {
        if self.in_body != Some(true) {
            return Ok(input.to_vec());
        }
        self.pending.extend_from_slice(input);
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]);
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .with_context(|| format!("a bad chunk size {size_text:?}"))?;
            if size == 0 {
                // The last chunk: what came before it is still returned.
                self.ended = true;
                break;
            }
            let data = line_end + 2;
            if rest.len() < data + size + 2 {
                break;
            }
            out.extend_from_slice(&rest[data..data + size]);
            start += data + size + 2;
        }
        self.pending.drain(..start);
        Ok(out)
    }
}

/// Plays the engine for the server's one call: a first token at once, one
/// more every second until `hold` fires, then `final_tokens` back to back
/// and the end of the stream. Returns when the last token was written and
/// the whole text sent.
async fn play_engine(
    mut call: TcpStream,
    hold: oneshot::Receiver<()>,
    final_tokens: usize,
) -> anyhow::Result<(Instant, String)> {
    // The request: its head, then as many body bytes as it says.
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = call
            .read(&mut buffer)
            .await
            .context("reading the engine call")?;
        ensure!(read > 0, "the engine call ended before its request");
        request.extend_from_slice(&buffer[..read]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break;
            }
        }
    }
    call.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
    )
    .await
    .context("answering the engine call")?;
    let mut stream = EngineStream {
        call,
        text: String::new(),
        tokens: 0,
    };
    stream.token().await?;
    let mut hold = std::pin::pin!(hold);
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            _ = &mut hold => break,
            _ = ticks.tick() => stream.token().await?,
        }
    }
    for _ in 0..final_tokens {
        stream.token().await?;
    }
    let last_token_at = Instant::now();
    let usage = json!({ "choices": [], "usage": { "prompt_tokens": 4, "completion_tokens": stream.tokens } });
    stream
        .call
        .write_all(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes())
        .await
        .context("ending the engine stream")?;
    let _ = stream.call.shutdown().await;
    Ok((last_token_at, stream.text))
}

/// The engine's answer as it is written: the text so far and its tokens.
struct EngineStream {
    call: TcpStream,
    text: String,
    tokens: usize,
}

impl EngineStream {
    /// Writes the next token as a `chat.completion.chunk`.
    async fn token(&mut self) -> anyhow::Result<()> {
        let piece = if self.tokens == 0 {
            "Hello".to_owned()
        } else {
            format!(" word{}", self.tokens)
        };
        self.tokens += 1;
        self.text.push_str(&piece);
        let chunk = json!({ "choices": [{ "index": 0, "delta": { "content": piece } }] });
        self.call
            .write_all(format!("data: {chunk}\n\n").as_bytes())
            .await
            .context("sending a token")
    }
}

/// The socket address of `base` (`http://127.x.y.z:PORT`).
fn server_address(base: &str) -> anyhow::Result<SocketAddr> {
    let url = reqwest::Url::parse(base).context("--base-url")?;
    let ip: Ipv4Addr = url
        .host_str()
        .and_then(|host| host.parse().ok())
        .with_context(|| format!("the server must be on an IPv4 loopback address, not {base}"))?;
    ensure!(
        ip.is_loopback(),
        "the server must be on 127.0.0.0/8, not {base}"
    );
    let port = url
        .port_or_known_default()
        .context("--base-url has no port")?;
    Ok(SocketAddr::new(IpAddr::V4(ip), port))
}

/// POSTs `body` as JSON with `token`; the answer's JSON.
async fn post_json(
    client: &reqwest::Client,
    token: &str,
    url: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    ensure!(status.is_success(), "POST {url}: HTTP {status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("the answer of POST {url} is not JSON"))
}

/// The string at JSON `pointer` in `value`.
fn string_at(value: &Value, pointer: &str) -> anyhow::Result<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no {pointer} in {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_anywhere_come_out_whole() {
        let mut chunks = Dechunker {
            in_body: Some(true),
            ..Dechunker::default()
        };
        assert_eq!(chunks.push(b"5\r\nhel").unwrap(), b"");
        assert_eq!(chunks.push(b"lo\r\n3;x=1\r\n wo\r\n").unwrap(), b"hello wo");
        assert_eq!(chunks.push(b"1\r\n!\r\n0\r\n\r\n").unwrap(), b"!");
        assert!(chunks.ended, "the last chunk ends the body");
    }

    #[test]
    fn events_must_come_in_order_and_end_in_done() {
        let mut check = EventCheck::default();
        assert!(
            check
                .push(&json!({"seq": 1, "delta": "a"}))
                .unwrap()
                .is_none()
        );
        assert!(
            check.push(&json!({"seq": 3, "delta": "b"})).is_err(),
            "a gap"
        );
        let mut check = EventCheck::default();
        check.push(&json!({"seq": 1, "delta": "a"})).unwrap();
        check.push(&json!({"seq": 2, "usage": {}})).unwrap();
        let received = check
            .push(&json!({"seq": 3, "done": {"content": "a"}}))
            .unwrap()
            .unwrap();
        assert_eq!(received.events, 3);
        assert!(received.checked("a").is_ok());
        let received = Received {
            deltas: "a".into(),
            done: "ab".into(),
            events: 2,
            done_at: Instant::now(),
        };
        assert!(received.checked("ab").is_err(), "a delta is missing");
    }
}
