//! Scale-out, as it runs in production, on this machine's real PostgreSQL,
//! Redis and RabbitMQ: two `switchboard serve --no-workers` API instances
//! and two `switchboard worker` processes share one PostgreSQL database. A
//! client sends a message through instance B and streams the reply from
//! instance A (the events cross over the Redis bus); the worker generating
//! it is killed with SIGKILL mid-reply; the other worker takes the job over
//! once its lease runs out, and the client sees a reset and then the whole
//! reply, which is stored exactly once. Run once with Redis as the queue,
//! once with RabbitMQ.
//!
//! `cargo test -p switchboard --test scale_out -- --nocapture` prints what
//! happens.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::Connection as _;
use switchboard_core::chat::DevEngine;

const PASSWORD: &str = "correct horse battery staple";
const EMAIL: &str = "ops@example.test";

/// The PostgreSQL server the tests create their databases on.
fn postgres_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The processes of one deployment and the database they share; dropping
/// it kills the processes and drops the database.
struct Cluster {
    env: Vec<(String, String)>,
    database: String,
    processes: Vec<(String, Child)>,
    _data_dir: tempfile::TempDir,
}

impl Cluster {
    /// A fresh database and the environment of every process; `amqp`
    /// selects RabbitMQ as the queue (Redis carries it otherwise).
    async fn new(amqp: bool) -> Cluster {
        let database = format!("sb_scale_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&postgres_url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL must run for this test ({}): {e}",
                    postgres_url()
                )
            });
        // The name is ours: a fixed prefix and a UUID.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = postgres_url();
        let url = format!("{}/{database}", &base[..base.rfind('/').unwrap()]);
        let data_dir = tempfile::tempdir().unwrap();
        let mut env = vec![
            ("DATABASE_URL", url),
            ("REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
            (
                "SWITCHBOARD_QUEUE__PREFIX",
                format!("scale-{}", uuid::Uuid::now_v7().simple()),
            ),
            ("SWITCHBOARD_QUEUE__LEASE_SECS", "2".to_owned()),
            ("SWITCHBOARD_ENGINE__TOKEN_DELAY_MS", "60".to_owned()),
            ("SWITCHBOARD_LOG_LEVEL", "warn".to_owned()),
            (
                "SWITCHBOARD_DATA_DIR",
                data_dir.path().display().to_string(),
            ),
        ];
        if amqp {
            env.push((
                "AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            ));
        }
        Cluster {
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            database,
            processes: Vec::new(),
            _data_dir: data_dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .args(args)
            .env_remove("AMQP_URL")
            .env_remove("SWITCHBOARD_QUEUE__BACKEND")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        command
    }

    /// Runs a command to its end.
    fn run(&self, args: &[&str]) {
        let output = self
            .command(args)
            .env("SWITCHBOARD_USER_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "switchboard {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts a long-running process named `name`.
    fn spawn(&mut self, name: &str, args: &[&str]) -> u32 {
        let child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id();
        println!("started {name} (pid {pid}): switchboard {}", args.join(" "));
        self.processes.push((name.to_owned(), child));
        pid
    }

    /// Kills the process with `pid` with SIGKILL; returns its name.
    fn kill(&mut self, pid: u32) -> String {
        let (name, child) = self
            .processes
            .iter_mut()
            .find(|(_, child)| child.id() == pid)
            .unwrap_or_else(|| panic!("no process {pid} of this cluster"));
        child.kill().unwrap();
        child.wait().unwrap();
        name.clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let database = self.database.clone();
        // A thread of its own: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&postgres_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A REST client of one instance, signed in.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }
}

/// Waits until `base` answers /readyz, then signs in.
async fn sign_in(base: String) -> Api {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if matches!(&ready, Ok(r) if r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// The test, with RabbitMQ or Redis as the queue.
async fn a_reply_survives_its_worker_and_crosses_instances(amqp: bool) {
    let queue = if amqp { "RabbitMQ" } else { "Redis" };
    println!("== scale-out with {queue} as the queue, PostgreSQL, Redis bus ==");
    let mut cluster = Cluster::new(amqp).await;
    cluster.run(&["migrate"]);
    cluster.run(&["user", "create", "--email", EMAIL, "--role", "admin"]);
    let (port_a, port_b) = (free_port(), free_port());
    for (name, port) in [("api-a", port_a), ("api-b", port_b)] {
        let listen = format!("127.0.0.1:{port}");
        cluster.spawn(name, &["serve", "--no-workers", "--listen", &listen]);
    }
    // Each worker serves /healthz, /readyz and /metrics for operators.
    let worker_ports = [free_port(), free_port()];
    let listen: Vec<String> = worker_ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let workers = [
        cluster.spawn("worker-1", &["worker", "--listen", &listen[0]]),
        cluster.spawn("worker-2", &["worker", "--listen", &listen[1]]),
    ];
    let a = sign_in(format!("http://127.0.0.1:{port_a}")).await;
    let b = sign_in(format!("http://127.0.0.1:{port_b}")).await;

    let conversation = b
        .call(
            reqwest::Method::POST,
            "/v1/conversations",
            Some(json!({"title": "scale"})),
        )
        .await;
    let cid = conversation["id"].as_str().unwrap().to_owned();
    let text = format!("hello over {queue}");
    let sent = b
        .call(
            reqwest::Method::POST,
            &format!("/v1/conversations/{cid}/messages"),
            Some(json!({"content": text})),
        )
        .await;
    let mid = sent["reply"]["id"].as_str().unwrap().to_owned();
    let job_id = sent["jobId"].as_str().unwrap().to_owned();
    println!("sent through api-b: reply {mid}, job {job_id}");

    // Follow the reply from instance A.
    let response = a
        .http
        .get(format!(
            "{}/v1/conversations/{cid}/messages/{mid}:stream",
            a.base
        ))
        .bearer_auth(&a.token)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut events: Vec<Value> = Vec::new();
    let mut killed = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    'stream: while let Some(chunk) = tokio::time::timeout_at(deadline.into(), body.next())
        .await
        .expect("the reply finishes within a minute")
    {
        buffer.extend_from_slice(&chunk.unwrap());
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            // NDJSON lines are `{"result": event}`.
            let line: Value = serde_json::from_slice(&line).unwrap();
            let event = line["result"].clone();
            assert!(event.is_object(), "{line}");
            let finished = event.get("done").is_some() || event.get("error").is_some();
            events.push(event);
            let deltas = events.iter().filter(|e| e.get("delta").is_some()).count();
            if killed.is_none() && deltas == 3 {
                let job = a
                    .call(reqwest::Method::GET, &format!("/v1/jobs/{job_id}"), None)
                    .await;
                let worker = job["worker"].as_str().unwrap();
                let pid: u32 = worker.rsplit('-').next().unwrap().parse().unwrap();
                assert!(workers.contains(&pid), "{worker} is one of ours");
                let name = cluster.kill(pid);
                println!(
                    "api-a streamed 3 pieces; SIGKILLed {name} (pid {pid}), which held the job"
                );
                killed = Some(pid);
            }
            if finished {
                break 'stream;
            }
        }
    }
    let killed = killed.expect("a worker was killed mid-reply");

    // The client saw the dead attempt's pieces, a reset, then the whole reply.
    let expected = DevEngine::reply_text(&text);
    let reset = events
        .iter()
        .position(|e| e.get("reset").is_some())
        .expect("the new attempt starts with a reset");
    assert_eq!(events[reset]["reset"]["attempt"], 2);
    let after_reset: String = events[reset..]
        .iter()
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(after_reset, expected);
    let done = events.last().unwrap();
    assert_eq!(done["done"]["content"], expected.as_str(), "{done}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs only grow: {seqs:?}"
    );
    println!(
        "api-a got {} events: {} pieces of attempt 1, reset at seq {}, then the whole reply ({} characters), done",
        events.len(),
        reset,
        seqs[reset],
        expected.chars().count()
    );

    // Stored once, complete; the job says who finished it.
    let messages = b
        .call(
            reqwest::Method::GET,
            &format!("/v1/conversations/{cid}/messages"),
            None,
        )
        .await;
    let messages = messages["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "one message, one reply: {messages:?}");
    assert_eq!(messages[1]["status"], "MESSAGE_STATUS_COMPLETE");
    assert_eq!(messages[1]["content"], expected.as_str());
    let mut job = Value::Null;
    for _ in 0..100 {
        job = a
            .call(reqwest::Method::GET, &format!("/v1/jobs/{job_id}"), None)
            .await;
        if job["state"] == "JOB_STATE_SUCCEEDED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(job["state"], "JOB_STATE_SUCCEEDED", "{job}");
    assert_eq!(job["attempts"], 2);
    let finisher: u32 = job["worker"]
        .as_str()
        .unwrap()
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(finisher, killed);
    // The survivor's own listener shows the job it finished and its breaker.
    let survivor = listen[workers.iter().position(|pid| *pid == finisher).unwrap()].clone();
    let metrics = a
        .http
        .get(format!("http://{survivor}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"switchboard_jobs_total{kind="generate_reply",outcome="succeeded"} 1"#),
        "{metrics}"
    );
    let ready: Value = a
        .http
        .get(format!("http://{survivor}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["engine"]["breaker"], "closed", "{ready}");
    println!(
        "stored: 2 messages, the reply complete once; job {} succeeded after 2 attempts, finished by pid {finisher}",
        job_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_as_the_queue_a_reply_survives_its_worker_and_crosses_instances() {
    a_reply_survives_its_worker_and_crosses_instances(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rabbitmq_as_the_queue_a_reply_survives_its_worker_and_crosses_instances() {
    a_reply_survives_its_worker_and_crosses_instances(true).await;
}
