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

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Cluster, EMAIL, PASSWORD};
use switchboard_core::chat::DevEngine;
use switchboard_testkit::process::free_port;
use switchboard_testkit::rest::RestClient;

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
