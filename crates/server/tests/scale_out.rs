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

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_core::chat::DevEngine;
use switchboard_testkit::ThrowawayPostgres;
use switchboard_testkit::process::{Process, free_port};
use switchboard_testkit::rest::RestClient;

const PASSWORD: &str = "correct horse battery staple";
const EMAIL: &str = "ops@example.test";

/// The processes of one deployment and the database they share; dropping
/// it kills the processes, then drops the database.
struct Cluster {
    env: Vec<(String, String)>,
    // Before `database`: fields drop in order, and the processes must be
    // gone before their database.
    processes: Vec<(String, Process)>,
    _database: ThrowawayPostgres,
    _data_dir: tempfile::TempDir,
}

impl Cluster {
    /// A fresh database and the environment of every process; `amqp`
    /// selects RabbitMQ as the queue (Redis carries it otherwise).
    async fn new(amqp: bool) -> Cluster {
        let database = ThrowawayPostgres::create().await;
        let data_dir = tempfile::tempdir().unwrap();
        let mut env = vec![
            ("DATABASE_URL", database.url().to_owned()),
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
            processes: Vec::new(),
            _database: database,
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
        let process = Process::spawn(self.command(args));
        let pid = process.id();
        println!("started {name} (pid {pid}): switchboard {}", args.join(" "));
        self.processes.push((name.to_owned(), process));
        pid
    }

    /// Kills the process with `pid` with SIGKILL; returns its name.
    fn kill(&mut self, pid: u32) -> String {
        let (name, process) = self
            .processes
            .iter_mut()
            .find(|(_, process)| process.id() == pid)
            .unwrap_or_else(|| panic!("no process {pid} of this cluster"));
        process.kill();
        name.clone()
    }
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
    let a = RestClient::sign_in(format!("http://127.0.0.1:{port_a}"), EMAIL, PASSWORD).await;
    let b = RestClient::sign_in(format!("http://127.0.0.1:{port_b}"), EMAIL, PASSWORD).await;

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
    let mut stream = a
        .stream(&format!("/v1/conversations/{cid}/messages/{mid}:stream"))
        .await;
    let mut events: Vec<Value> = Vec::new();
    let mut killed = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(line) = tokio::time::timeout_at(deadline.into(), stream.next())
        .await
        .expect("the reply finishes within a minute")
    {
        // NDJSON lines are `{"result": event}`.
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
            println!("api-a streamed 3 pieces; SIGKILLed {name} (pid {pid}), which held the job");
            killed = Some(pid);
        }
        if finished {
            break;
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
