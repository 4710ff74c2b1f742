//! `switchboard probe` against real servers: a healthy one passes every
//! step; one whose engine is down fails at the REST reply stream, named with
//! its latency, and exits 1; `--every --listen` keeps probing and its
//! metrics follow the server going away.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_testkit::process::{Process, free_port};
use switchboard_testkit::rest::{post_json, wait_ready};

/// A `switchboard serve` on a fresh SQLite data dir with `env` added.
struct Server {
    base: String,
    process: Process,
    _data_dir: tempfile::TempDir,
}

impl Server {
    async fn start(env: &[(&str, String)]) -> Server {
        let data_dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut command = support::embedded_serve(data_dir.path(), port);
        command
            .env("SWITCHBOARD_LOG_LEVEL", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let server = Server {
            base: format!("http://127.0.0.1:{port}"),
            process: Process::spawn(command),
            _data_dir: data_dir,
        };
        wait_ready(&reqwest::Client::new(), &server.base).await;
        server
    }

    /// Registers the probe's account and gives its API key.
    async fn probe_key(&self) -> String {
        let http = reqwest::Client::new();
        let registered = post_json(
            &http,
            format!("{}/v1/auth:register", self.base),
            None,
            json!({"email": "probe@example.test", "password": "a long enough password 1"}),
        )
        .await;
        let token = registered["accessToken"].as_str().unwrap();
        let key = post_json(
            &http,
            format!("{}/v1/me/api-keys", self.base),
            Some(token),
            json!({"name": "probe"}),
        )
        .await;
        key["secret"].as_str().unwrap().to_owned()
    }
}

fn probe(base: &str, key: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .arg("probe")
        .arg(base)
        .args(args)
        .env("SWITCHBOARD_PROBE_API_KEY", key)
        .stdin(Stdio::null());
    command
}

#[tokio::test]
async fn a_healthy_server_passes_every_step() {
    let server = Server::start(&[]).await;
    let key = server.probe_key().await;
    let output = probe(&server.base, &key, &[]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for step in [
        "readyz",
        "rest_create_conversation",
        "rest_send_message",
        "rest_stream_reply",
        "grpc_send_message",
        "grpc_stream_reply",
        "rest_delete_conversation",
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.starts_with("ok") && line.contains(step) && line.ends_with(" ms")),
            "{step} passed with its latency: {stdout}"
        );
    }
    // It cleans up after itself.
    let http = reqwest::Client::new();
    let listed: Value = http
        .get(format!("{}/v1/conversations", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["conversations"].as_array().map_or(0, Vec::len),
        0,
        "{listed}"
    );
}

#[tokio::test]
async fn a_broken_engine_fails_the_reply_step_by_name() {
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let server = Server::start(&[
        ("SWITCHBOARD_ENGINE__KIND", "openai".to_owned()),
        ("SWITCHBOARD_ENGINE__OPENAI__BASE_URL", dead),
        ("SWITCHBOARD_ENGINE__OPENAI__MODEL", "gone".to_owned()),
        (
            "SWITCHBOARD_ENGINE__RESILIENCE__MAX_RETRIES",
            "0".to_owned(),
        ),
        (
            "SWITCHBOARD_QUEUE__GENERATE_REPLY__MAX_ATTEMPTS",
            "1".to_owned(),
        ),
    ])
    .await;
    let key = server.probe_key().await;
    let output = probe(&server.base, &key, &["--timeout", "5s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("ok") && line.contains("rest_send_message")),
        "{stdout}"
    );
    let failed = stdout
        .lines()
        .find(|line| line.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("a failed step: {stdout}"));
    assert!(
        failed.contains("rest_stream_reply") && failed.contains("UNAVAILABLE"),
        "{failed}"
    );
    assert!(
        stderr.contains("probe failed at step rest_stream_reply after ")
            && stderr.contains(" ms: "),
        "{stderr}"
    );
    assert!(
        !stdout.contains("grpc_send_message"),
        "the run stops at the first failure: {stdout}"
    );
}

#[tokio::test]
async fn probing_for_ever_exports_metrics_that_follow_the_server() {
    let server = Server::start(&[]).await;
    let key = server.probe_key().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = probe(
        &server.base,
        &key,
        &["--every", "200ms", "--timeout", "2s", "--listen", &listen],
    );
    command.stdout(Stdio::null());
    let _probe = Process::spawn(command);
    let metrics_url = format!("http://{listen}/metrics");
    let http = reqwest::Client::new();
    let scrape = || async {
        match http.get(&metrics_url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    };
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape().await;
        if value(&text, "switchboard_probe_runs_total{outcome=\"success\"}").unwrap_or(0.0) >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        value(&text, "switchboard_probe_runs_total{outcome=\"success\"}").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert_eq!(value(&text, "switchboard_probe_up"), Some(1.0), "{text}");
    assert!(
        value(
            &text,
            "switchboard_probe_step_duration_seconds{step=\"grpc_stream_reply\"}"
        )
        .is_some(),
        "{text}"
    );

    // The server goes away: the next runs fail at the first step.
    let mut server = server;
    server.process.kill();
    for _ in 0..100 {
        text = scrape().await;
        if value(&text, "switchboard_probe_up") == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(value(&text, "switchboard_probe_up"), Some(0.0), "{text}");
    assert_eq!(
        value(&text, "switchboard_probe_step_success{step=\"readyz\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        value(&text, "switchboard_probe_runs_total{outcome=\"failure\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
}
