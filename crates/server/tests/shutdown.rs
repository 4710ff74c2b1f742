//! Shutdown of the real binary, as an orchestrator does it: SIGTERM, then
//! a bounded wait. `serve` with a stalled reply stream open, and `worker
//! --listen` with a reply being generated, each with a 2 s grace. During
//! the grace the listener stays open: /readyz and /healthz answer 503
//! (not "connection refused"), new calls are refused with UNAVAILABLE, and
//! open work runs on; a stream still open when the grace ends is ended
//! with UNAVAILABLE, and the process exits 0 within the grace plus a
//! small margin.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const EMAIL: &str = "ops@example.test";

/// The browser origin the servers allow.
const ORIGIN: &str = "http://app.example";

/// The grace the processes are started with.
const GRACE: Duration = Duration::from_secs(2);

/// What the binary may take beyond the grace to end the streams, stop its
/// workers and close the database (README: "within the grace plus about a
/// second"); this bounds the test's wait, it measures nothing.
const MARGIN: Duration = Duration::from_secs(3);

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary with `args`, against the SQLite database in `data_dir`.
fn switchboard(data_dir: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("AMQP_URL")
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env("SWITCHBOARD_LOG_LEVEL", "warn")
        .env(
            "SWITCHBOARD_SHUTDOWN_GRACE_SECS",
            GRACE.as_secs().to_string(),
        )
        .env("SWITCHBOARD_ENGINE__TOKEN_DELAY_MS", "40")
        .env("SWITCHBOARD_CORS_ALLOWED_ORIGINS", ORIGIN)
        .env("SWITCHBOARD_USER_PASSWORD", PASSWORD)
        .stdin(Stdio::null());
    command
}

/// A long-running process, killed if the test ends before it exits.
struct Process(Child);

impl Process {
    fn spawn(mut command: Command) -> Process {
        Process(
            command
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }

    /// Sends SIGTERM, as an orchestrator does.
    fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// The exit status, waiting at most until `deadline`.
    async fn exit_by(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `base` answers /readyz with 200.
async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if matches!(&ready, Ok(r) if r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A REST client of one instance, signed in.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn sign_in(base: String) -> Api {
        let http = reqwest::Client::new();
        wait_ready(&http, &base).await;
        let login: Value = http
            .post(format!("{base}/v1/auth:login"))
            .json(&json!({"email": EMAIL, "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["accessToken"].as_str().unwrap().to_owned();
        Api { http, base, token }
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
    }

    /// Creates a conversation and sends `content`: (conversation, reply).
    async fn send(&self, content: &str) -> (String, String) {
        let conversation: Value = self
            .post("/v1/conversations", json!({"title": "shutdown"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let cid = conversation["id"].as_str().unwrap().to_owned();
        let sent: Value = self
            .post(
                &format!("/v1/conversations/{cid}/messages"),
                json!({"content": content}),
            )
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mid = sent["reply"]["id"].as_str().unwrap().to_owned();
        (cid, mid)
    }

    /// The reply's events as NDJSON lines.
    async fn stream(&self, cid: &str, mid: &str) -> NdJson {
        let response = self
            .http
            .get(format!(
                "{}/v1/conversations/{cid}/messages/{mid}:stream",
                self.base
            ))
            .bearer_auth(&self.token)
            .header("accept", "application/x-ndjson")
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        NdJson {
            body: Box::pin(
                response
                    .bytes_stream()
                    .map(|chunk| chunk.map(|b| b.to_vec())),
            ),
            buffer: Vec::new(),
        }
    }

    /// The stored message `mid` of conversation `cid`.
    async fn message(&self, cid: &str, mid: &str) -> Value {
        let listed: Value = self
            .http
            .get(format!("{}/v1/conversations/{cid}/messages", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|message| message["id"] == mid)
            .cloned()
            .unwrap_or_else(|| panic!("no message {mid}: {listed}"))
    }
}

/// The lines of an NDJSON response.
struct NdJson {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: Vec<u8>,
}

impl NdJson {
    /// The next line; `None` when the response ended cleanly. Panics if the
    /// connection is cut (a body error), which is what must not happen.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            match self.body.next().await {
                Some(chunk) => self
                    .buffer
                    .extend_from_slice(&chunk.expect("the stream is ended, not cut")),
                None => {
                    assert!(self.buffer.is_empty(), "a partial line was left");
                    return None;
                }
            }
        }
    }
}

/// The status code of `GET {base}{path}`; panics if the connection is
/// refused (the listener closed).
async fn status_of(base: &str, path: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path} must answer during the grace: {e}"))
        .status()
        .as_u16()
}

/// A new gRPC-Web call (ChatService.ListConversations, empty request):
/// its `grpc-status`.
async fn grpc_web_status(api: &Api) -> String {
    let response = api
        .http
        .post(format!(
            "{}/switchboard.v1.ChatService/ListConversations",
            api.base
        ))
        .bearer_auth(&api.token)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .expect("a new call is answered during the grace, not refused");
    let header = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    match header {
        Some(status) => status,
        None => {
            // Not trailers-only: the status is in the trailer frame.
            let body = response.bytes().await.unwrap();
            let text = String::from_utf8_lossy(&body).to_string();
            text.split("grpc-status:")
                .nth(1)
                .and_then(|rest| rest.split("\r\n").next())
                .unwrap_or("")
                .trim()
                .to_owned()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_drains_on_sigterm_and_exits_within_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let created = switchboard(
        dir.path(),
        &["user", "create", "--email", EMAIL, "--role", "admin"],
    )
    .output()
    .unwrap();
    assert!(created.status.success(), "{created:?}");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Process::spawn(switchboard(dir.path(), &["serve", "--listen", &listen]));
    let base = format!("http://{listen}");
    let api = Api::sign_in(base.clone()).await;

    // A reply that stalls after two tokens: its stream stays open.
    let (cid, mid) = api.send("hold on [dev:stall]").await;
    let mut stream = api.stream(&cid, &mid).await;
    let mut deltas = 0;
    while deltas < 2 {
        let line = stream.next().await.expect("two pieces before the stall");
        if line["result"].get("delta").is_some() {
            deltas += 1;
        }
    }

    server.terminate();
    let signalled = Instant::now();
    // Give the signal a moment to arrive (it is asynchronous).
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(status_of(&base, "/readyz").await, 503, "not ready at once");
    assert_eq!(
        status_of(&base, "/healthz").await,
        503,
        "the process is going away"
    );
    let refused = api
        .post("/v1/conversations", json!({"title": "too late"}))
        .await
        .expect("a new request is answered during the grace, not refused");
    assert_eq!(refused.status().as_u16(), 503);
    let refusal: Value = refused.json().await.unwrap();
    assert_eq!(refusal["code"], 14, "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("the server is shutting down"),
        "{refusal}"
    );
    assert_eq!(grpc_web_status(&api).await, "14", "UNAVAILABLE");

    // A browser's refused call still carries CORS headers (so the page sees
    // the 503, not a network error) and a request id; gRPC-Web keeps its
    // content type.
    let browser = api
        .http
        .post(format!("{base}/v1/conversations"))
        .bearer_auth(&api.token)
        .header("origin", ORIGIN)
        .json(&json!({"title": "too late"}))
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status().as_u16(), 503);
    assert_eq!(
        browser
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some(ORIGIN),
        "{:?}",
        browser.headers()
    );
    assert!(browser.headers().contains_key("x-request-id"));
    let web = api
        .http
        .post(format!(
            "{base}/switchboard.v1.ChatService/ListConversations"
        ))
        .bearer_auth(&api.token)
        .header("content-type", "application/grpc-web+proto")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(
        web.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/grpc-web+proto")
    );

    // Later in the grace the listener still answers.
    tokio::time::sleep(GRACE / 2).await;
    assert_eq!(status_of(&base, "/readyz").await, 503);

    // The stalled stream is ended when the grace runs out, with UNAVAILABLE.
    let mut last = Value::Null;
    while let Some(line) = stream.next().await {
        last = line;
    }
    assert_eq!(last["error"]["code"], 14, "ended with UNAVAILABLE: {last}");
    assert!(
        signalled.elapsed() >= GRACE - Duration::from_millis(300),
        "the open stream had the whole grace"
    );

    let status = server
        .exit_by(signalled + GRACE + MARGIN)
        .await
        .expect("the server exits within its grace and the margin");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_listener_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let created = switchboard(
        dir.path(),
        &["user", "create", "--email", EMAIL, "--role", "admin"],
    )
    .output()
    .unwrap();
    assert!(created.status.success(), "{created:?}");
    let (api_port, worker_port) = (free_port(), free_port());
    let api_listen = format!("127.0.0.1:{api_port}");
    let worker_listen = format!("127.0.0.1:{worker_port}");
    let _api_server = Process::spawn(switchboard(
        dir.path(),
        &["serve", "--no-workers", "--listen", &api_listen],
    ));
    let mut worker = Process::spawn(switchboard(
        dir.path(),
        &["worker", "--listen", &worker_listen],
    ));
    let worker_base = format!("http://{worker_listen}");
    wait_ready(&reqwest::Client::new(), &worker_base).await;
    let api = Api::sign_in(format!("http://{api_listen}")).await;

    // A reply of about 30 tokens 40 ms apart: about 1.2 s of work, which
    // fits in the grace.
    let (cid, mid) = api.send("a reply the worker finishes").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = api.message(&cid, &mid).await;
        if reply["status"] == "MESSAGE_STATUS_STREAMING" {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never took the job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    worker.terminate();
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        status_of(&worker_base, "/readyz").await,
        503,
        "not ready at once"
    );
    assert_eq!(status_of(&worker_base, "/healthz").await, 503);

    let status = worker
        .exit_by(signalled + GRACE + MARGIN)
        .await
        .expect("the worker exits within its grace and the margin");
    assert!(status.success(), "exit status {status}");
    let reply = api.message(&cid, &mid).await;
    assert_eq!(
        reply["status"], "MESSAGE_STATUS_COMPLETE",
        "the running job finished within the grace: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_keeps_answering_health_checks_for_its_drain_delay() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = switchboard(dir.path(), &["serve", "--listen", &listen]);
    command.env("SWITCHBOARD_SHUTDOWN_DRAIN_DELAY_SECS", "1");
    let mut server = Process::spawn(command);
    let base = format!("http://{listen}");
    wait_ready(&reqwest::Client::new(), &base).await;

    // Nothing is in flight: without the delay the port would close at once.
    server.terminate();
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_of(&base, "/readyz").await,
        503,
        "a failing check, not a refused connection"
    );
    let status = server
        .exit_by(signalled + GRACE + MARGIN)
        .await
        .expect("the process exits within its grace");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "the listener stayed open for the drain delay"
    );
}
