//! Shutdown of the real binary, as an orchestrator does it: SIGTERM, then
//! a bounded wait. `serve` with a stalled reply stream open, and `worker
//! --listen` with a reply being generated, each with a 2 s grace. During
//! the grace the listener stays open: /readyz and /healthz answer 503
//! (not "connection refused"), new calls are refused with UNAVAILABLE, and
//! open work runs on; a stream still open when the grace ends is ended
//! with UNAVAILABLE, and the process exits 0 within the grace plus a
//! small margin.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_testkit::grpc::{self, Wire};
use switchboard_testkit::ndjson::NdJson;
use switchboard_testkit::process::{Process, free_port};
use switchboard_testkit::rest::{RestClient, wait_ready};

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

/// Signs in to the instance at `base` once it is ready.
async fn sign_in(base: String) -> RestClient {
    RestClient::sign_in(base, EMAIL, PASSWORD).await
}

/// Creates a conversation and sends `content`: (conversation, reply).
async fn send(api: &RestClient, content: &str) -> (String, String) {
    let conversation = api
        .call(
            reqwest::Method::POST,
            "/v1/conversations",
            Some(json!({"title": "shutdown"})),
        )
        .await;
    let cid = conversation["id"].as_str().unwrap().to_owned();
    let sent = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/conversations/{cid}/messages"),
            Some(json!({"content": content})),
        )
        .await;
    let mid = sent["reply"]["id"].as_str().unwrap().to_owned();
    (cid, mid)
}

/// The reply's events as NDJSON lines.
async fn stream(api: &RestClient, cid: &str, mid: &str) -> NdJson {
    api.stream(&format!("/v1/conversations/{cid}/messages/{mid}:stream"))
        .await
}

/// The stored message `mid` of conversation `cid`.
async fn message(api: &RestClient, cid: &str, mid: &str) -> Value {
    let listed = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/conversations/{cid}/messages"),
            None,
        )
        .await;
    listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|message| message["id"] == mid)
        .cloned()
        .unwrap_or_else(|| panic!("no message {mid}: {listed}"))
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
async fn grpc_web_status(api: &RestClient) -> String {
    let response = grpc::request(
        &api.http,
        Wire::GrpcWeb,
        &format!("{}/switchboard.v1.ChatService/ListConversations", api.base),
    )
    .bearer_auth(&api.token)
    .body(grpc::frame(&[]))
    .send()
    .await
    .expect("a new call is answered during the grace, not refused");
    grpc::read_response(response, Wire::GrpcWeb)
        .await
        .status
        .code
        .to_string()
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
    let api = sign_in(base.clone()).await;

    // A reply that stalls after two tokens: its stream stays open.
    let (cid, mid) = send(&api, "hold on [dev:stall]").await;
    let mut stream = stream(&api, &cid, &mid).await;
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
    let api = sign_in(format!("http://{api_listen}")).await;

    // A reply of about 30 tokens 40 ms apart: about 1.2 s of work, which
    // fits in the grace.
    let (cid, mid) = send(&api, "a reply the worker finishes").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = message(&api, &cid, &mid).await;
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
    let reply = message(&api, &cid, &mid).await;
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
