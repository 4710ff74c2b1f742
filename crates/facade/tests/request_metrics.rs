//! The request metrics move as they should, read off a real `/metrics`
//! scrape: `switchboard_requests_total` counts each call once, with the
//! gRPC status it really ended with — in the headers of a trailers-only
//! answer, in the trailers after a stream's messages (native gRPC and
//! gRPC-Web), CANCELLED when the caller goes away — and
//! `switchboard_open_streams` counts reply streams by kind while they are
//! open (native gRPC, gRPC-Web, SSE, NDJSON, WebSocket). The queue's, the
//! engine's (its breaker too), the scheduler's, the database's, readiness
//! and the Redis bus's families move with the work that should move them.
//!
//! A test binary of its own: the recorder is process-wide, and these tests
//! compare counts before and after, one test at a time.

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "edge/support.rs"]
mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::json;
use switchboard_proto::v1::{GetConversationRequest, StreamReplyRequest};
use switchboard_testkit::grpc::{self, Wire};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::{Backend, PASSWORD, TestApp, spawn_app_running, spawn_app_with};

/// One test at a time: they compare process-wide counts.
static SERIAL: Mutex<()> = Mutex::const_new(());

const STREAM_REPLY: &str = "/switchboard.v1.ChatService/StreamReply";
const GET_CONVERSATION: &str = "/switchboard.v1.ChatService/GetConversation";

async fn start() -> TestApp {
    spawn_app_with(Backend::Sqlite, |config| {
        config.auth.credential_recheck_secs = 1;
        config.shutdown_grace_secs = 1;
    })
    .await
}

/// The value of the sample `name{labels}` in a scrape (0 when absent).
async fn sample(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.get_text("/metrics").await;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

async fn requests(
    app: &TestApp,
    transport: &str,
    rpc: &str,
    status: &str,
    grpc_status: &str,
) -> f64 {
    sample(
        app,
        "switchboard_requests_total",
        &[
            ("transport", transport),
            ("rpc", rpc),
            ("status", status),
            ("grpc_status", grpc_status),
        ],
    )
    .await
}

async fn open_streams(app: &TestApp, kind: &str) -> f64 {
    sample(app, "switchboard_open_streams", &[("kind", kind)]).await
}

/// Polls until `check` holds, for up to ten seconds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within ten seconds");
}

/// A reply that sends two tokens and then nothing until it is cancelled,
/// sent as `token`: (conversation, reply).
async fn stalled_reply(app: &TestApp, token: &str) -> (String, String) {
    send_as(app, token, "hold on [dev:stall]").await
}

fn stream_reply_frame(cid: &str, mid: &str) -> Vec<u8> {
    grpc::frame(
        &StreamReplyRequest {
            conversation_id: cid.to_owned(),
            message_id: mid.to_owned(),
            after_seq: 0,
        }
        .encode_to_vec(),
    )
}

#[tokio::test]
async fn a_status_sent_after_a_streams_messages_is_the_one_counted_and_open_streams_are_gauged() {
    let _serial = SERIAL.lock().await;
    let app = start().await;
    let (_, login) = app
        .call_login(
            None,
            json!({"email": "owner@example.test", "password": PASSWORD}),
        )
        .await;
    let token = login["accessToken"].as_str().unwrap().to_owned();
    let (cid, mid) = stalled_reply(&app, &token).await;
    let kinds = ["grpc", "grpc-web", "sse", "ndjson", "websocket"];
    let mut open_before = Vec::new();
    for kind in kinds {
        open_before.push(open_streams(&app, kind).await);
    }
    let grpc_before = requests(&app, "grpc", STREAM_REPLY, "200", "16").await;
    let grpc_web_before = requests(&app, "grpc-web", STREAM_REPLY, "200", "16").await;
    let sse_before = requests(&app, "rest", STREAM_REPLY, "200", "").await;

    // One stream of the stalled reply on every transport, with the session
    // that is about to log out.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut ends = Vec::new();
    for (client, wire) in [(&h2, Wire::Grpc), (&app.anonymous, Wire::GrpcWeb)] {
        let response = grpc::request(client, wire, &app.url(STREAM_REPLY))
            .bearer_auth(&token)
            .body(stream_reply_frame(&cid, &mid))
            .send()
            .await
            .unwrap();
        ends.push(tokio::spawn(async move {
            let answer = grpc::read_response(response, wire).await;
            (answer.messages.len(), answer.status.code)
        }));
    }
    let mut bodies = Vec::new();
    for accept in ["text/event-stream", "application/x-ndjson"] {
        let response = app
            .anonymous
            .get(app.url(&format!("/v1/conversations/{cid}/messages/{mid}:stream")))
            .bearer_auth(&token)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        bodies.push(tokio::spawn(async move { response.text().await.unwrap() }));
    }
    let mut request = format!("ws://{}/v1/ws", app.address)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("switchboard.v1, bearer.{token}").parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            json!({"subscribe": {"conversationId": cid, "messageId": mid, "afterSeq": 0}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    for (kind, before) in kinds.iter().zip(&open_before) {
        eventually(&format!("one more open {kind} stream"), || async {
            open_streams(&app, kind).await == before + 1.0
        })
        .await;
    }

    // The logout ends every stream with UNAUTHENTICATED at the next check.
    let (status, _) = app.call_logout(Some(&token), json!({})).await;
    assert_eq!(status, 200);
    for end in ends {
        let (messages, code) = tokio::time::timeout(Duration::from_secs(10), end)
            .await
            .expect("the stream ends")
            .unwrap();
        assert!(messages >= 1, "the status came after the stream's messages");
        assert_eq!(code, 16, "UNAUTHENTICATED");
    }
    for body in bodies {
        let text = tokio::time::timeout(Duration::from_secs(10), body)
            .await
            .expect("the stream ends")
            .unwrap();
        assert!(
            text.contains("UNAUTHENTICATED") || text.contains("16"),
            "{text}"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(frame)) = socket.next().await {
            if frame.is_close() {
                break;
            }
        }
    })
    .await
    .expect("the socket is closed");
    drop(socket);

    for (kind, before) in kinds.iter().zip(&open_before) {
        eventually(
            &format!("the {kind} stream no longer counted open"),
            || async { open_streams(&app, kind).await == *before },
        )
        .await;
    }
    assert_eq!(
        requests(&app, "grpc", STREAM_REPLY, "200", "16").await,
        grpc_before + 1.0,
        "native gRPC: UNAUTHENTICATED from the trailers, counted once"
    );
    assert_eq!(
        requests(&app, "grpc-web", STREAM_REPLY, "200", "16").await,
        grpc_web_before + 1.0,
        "gRPC-Web: UNAUTHENTICATED from the trailers, counted once"
    );
    assert_eq!(
        requests(&app, "rest", STREAM_REPLY, "200", "").await,
        sse_before + 2.0,
        "SSE and NDJSON, counted when they start"
    );
    app.stop().await;
}

#[tokio::test]
async fn unary_calls_and_a_caller_that_goes_away_are_counted_with_their_status() {
    let _serial = SERIAL.lock().await;
    let app = start().await;
    let token = app.owner.access_token.clone();
    let (cid, mid) = stalled_reply(&app, &token).await;
    let ok_before = requests(&app, "grpc", GET_CONVERSATION, "200", "0").await;
    let not_found_before = requests(&app, "grpc", GET_CONVERSATION, "200", "5").await;
    let rest_before = requests(&app, "rest", GET_CONVERSATION, "404", "").await;
    let cancelled_before = requests(&app, "grpc", STREAM_REPLY, "200", "1").await;
    let timed_before = sample(
        &app,
        "switchboard_request_duration_seconds_count",
        &[("transport", "grpc"), ("rpc", GET_CONVERSATION)],
    )
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();

    for (id, code) in [(cid.clone(), 0), (uuid::Uuid::now_v7().to_string(), 5)] {
        let response = grpc::request(&h2, Wire::Grpc, &app.url(GET_CONVERSATION))
            .bearer_auth(&token)
            .body(grpc::frame(&GetConversationRequest { id }.encode_to_vec()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            grpc::read_response(response, Wire::Grpc).await.status.code,
            code
        );
    }
    let (status, _) = app
        .rest(
            "GET",
            &format!("/v1/conversations/{}", uuid::Uuid::now_v7()),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // A stream whose caller reads one message and hangs up.
    let response = grpc::request(&h2, Wire::Grpc, &app.url(STREAM_REPLY))
        .bearer_auth(&token)
        .body(stream_reply_frame(&cid, &mid))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first message").unwrap();
    assert!(!first.is_empty());
    drop(body);
    drop(h2);

    eventually("the hung-up stream counted as CANCELLED", || async {
        requests(&app, "grpc", STREAM_REPLY, "200", "1").await == cancelled_before + 1.0
    })
    .await;
    assert_eq!(
        requests(&app, "grpc", GET_CONVERSATION, "200", "0").await,
        ok_before + 1.0,
        "OK comes in the trailers of a unary answer"
    );
    assert_eq!(
        requests(&app, "grpc", GET_CONVERSATION, "200", "5").await,
        not_found_before + 1.0,
        "NOT_FOUND comes in the headers of a trailers-only answer"
    );
    assert_eq!(
        requests(&app, "rest", GET_CONVERSATION, "404", "").await,
        rest_before + 1.0
    );
    assert_eq!(
        sample(
            &app,
            "switchboard_request_duration_seconds_count",
            &[("transport", "grpc"), ("rpc", GET_CONVERSATION)],
        )
        .await,
        timed_before + 2.0,
        "both gRPC calls timed"
    );
    app.stop().await;
}

/// Sends `content` in a new conversation as the owner: (conversation, reply).
async fn send(app: &TestApp, content: &str) -> (String, String) {
    send_as(app, &app.owner.access_token, content).await
}

/// Sends `content` in a new conversation as `token`: (conversation, reply).
async fn send_as(app: &TestApp, token: &str, content: &str) -> (String, String) {
    let (_, conversation) = app
        .create_conversation(Some(token), json!({"title": "metrics"}))
        .await;
    let cid = conversation["id"].as_str().unwrap().to_owned();
    let (status, sent) = app
        .rest(
            "POST",
            &format!("/v1/conversations/{cid}/messages"),
            Some(token),
            Some(json!({"content": content})),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    (cid, sent["reply"]["id"].as_str().unwrap().to_owned())
}

/// Waits until the reply is stored with `status` and its job has finished.
async fn reply_ends(app: &TestApp, cid: &str, reply: &str, status: &str) {
    eventually(&format!("the reply {status}"), || async {
        let messages = app
            .get_json(&format!("/v1/conversations/{cid}/messages"))
            .await;
        messages["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|message| message["id"] == reply && message["status"] == status)
    })
    .await;
}

#[tokio::test]
async fn the_queue_the_engine_and_the_database_pool_are_measured() {
    let _serial = SERIAL.lock().await;

    // Without workers, a sent message's job waits: the backlog has an age.
    let app = spawn_app_running(
        Backend::Sqlite,
        |config| config.database_max_connections = 2,
        false,
    )
    .await;
    send(&app, "nobody takes this").await;
    eventually("the oldest due job's age above zero", || async {
        sample(&app, "switchboard_jobs_oldest_due_age_seconds", &[]).await > 0.0
            && sample(&app, "switchboard_jobs", &[("state", "queued")]).await >= 1.0
    })
    .await;
    assert_eq!(
        sample(&app, "switchboard_db_connections_max", &[]).await,
        2.0
    );
    let open = sample(&app, "switchboard_db_connections", &[("state", "idle")]).await
        + sample(&app, "switchboard_db_connections", &[("state", "in_use")]).await;
    assert!(open >= 1.0, "the pool has connections: {open}");
    assert!(sample(&app, "switchboard_db_pool_acquire_seconds", &[]).await < 1.0);
    // Every connection held for longer than a sampling interval: the
    // sampler waits for one, and says how long.
    let switchboard_core::db::Pool::Sqlite(pool) = app.services().database().pool() else {
        panic!("a SQLite pool");
    };
    let held = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    tokio::time::sleep(Duration::from_secs(7)).await;
    drop(held);
    eventually("the sampler's wait for a connection", || async {
        sample(&app, "switchboard_db_pool_acquire_seconds", &[]).await >= 1.0
    })
    .await;
    app.stop().await;

    // With workers: one reply that completes, one whose two attempts fail.
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.engine.token_delay_ms = 0;
        config.queue.generate_reply.max_attempts = 2;
        config.queue.generate_reply.backoff_base_ms = 10;
        config.queue.generate_reply.backoff_max_ms = 10;
        // The failing reply's two attempts open the breaker.
        config.engine.resilience.failure_threshold = 2;
    })
    .await;
    eventually("the breaker reported closed from the start", || async {
        sample(
            &app,
            "switchboard_engine_breaker_state",
            &[("engine", "dev")],
        )
        .await
            == 0.0
    })
    .await;
    let dev = [("engine", "dev")];
    let counters = [
        (
            "switchboard_engine_calls_total",
            vec![("outcome", "completed")],
        ),
        (
            "switchboard_engine_calls_total",
            vec![("outcome", "failed")],
        ),
        (
            "switchboard_engine_tokens_total",
            vec![("direction", "input")],
        ),
        (
            "switchboard_engine_tokens_total",
            vec![("direction", "output")],
        ),
        ("switchboard_engine_call_duration_seconds_count", vec![]),
        ("switchboard_reply_first_token_seconds_count", vec![]),
        ("switchboard_replies_total", vec![("outcome", "completed")]),
        ("switchboard_replies_total", vec![("outcome", "retried")]),
        ("switchboard_replies_total", vec![("outcome", "failed")]),
    ];
    let jobs = [
        vec![("kind", "generate_reply"), ("outcome", "succeeded")],
        vec![("kind", "generate_reply"), ("outcome", "retrying")],
        vec![("kind", "generate_reply"), ("outcome", "dead")],
    ];
    let mut before = Vec::new();
    for (name, labels) in &counters {
        let labels: Vec<_> = dev.iter().chain(labels).copied().collect();
        before.push(sample(&app, name, &labels).await);
    }
    let mut jobs_before = Vec::new();
    for labels in &jobs {
        jobs_before.push(sample(&app, "switchboard_jobs_total", labels).await);
    }
    let durations_before = sample(
        &app,
        "switchboard_job_duration_seconds_count",
        &[("kind", "generate_reply")],
    )
    .await;

    let (cid, reply) = send(&app, "count my words please").await;
    reply_ends(&app, &cid, &reply, "MESSAGE_STATUS_COMPLETE").await;
    let (cid, reply) = send(&app, "this one breaks [dev:fail]").await;
    reply_ends(&app, &cid, &reply, "MESSAGE_STATUS_FAILED").await;
    eventually("the failed reply's job is dead", || async {
        sample(&app, "switchboard_jobs_total", &jobs[2]).await == jobs_before[2] + 1.0
    })
    .await;

    let mut after = Vec::new();
    for (name, labels) in &counters {
        let labels: Vec<_> = dev.iter().chain(labels).copied().collect();
        after.push(sample(&app, name, &labels).await);
    }
    let moved: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(moved[0], 1.0, "one engine call completed");
    assert_eq!(moved[1], 2.0, "two engine calls failed (both attempts)");
    assert!(
        moved[2] >= 4.0,
        "the prompt's words counted in: {}",
        moved[2]
    );
    assert!(
        moved[3] >= 10.0,
        "the reply's words counted out: {}",
        moved[3]
    );
    assert_eq!(moved[4], 3.0, "every engine call timed");
    assert_eq!(moved[5], 3.0, "every attempt's first token timed");
    assert_eq!(moved[6], 1.0, "one reply completed");
    assert_eq!(moved[7], 1.0, "the first failed attempt released the reply");
    assert_eq!(moved[8], 1.0, "the last attempt failed the reply");
    for (labels, (outcome, expected)) in
        jobs.iter()
            .zip([("succeeded", 1.0), ("retrying", 1.0), ("dead", 1.0)])
    {
        let now = sample(&app, "switchboard_jobs_total", labels).await;
        let was = jobs_before[jobs.iter().position(|l| l == labels).unwrap()];
        assert_eq!(now - was, expected, "jobs {outcome}");
    }
    assert_eq!(
        sample(
            &app,
            "switchboard_job_duration_seconds_count",
            &[("kind", "generate_reply")],
        )
        .await
            - durations_before,
        3.0,
        "every attempt timed"
    );
    eventually("the breaker open after two failed calls", || async {
        sample(
            &app,
            "switchboard_engine_breaker_state",
            &[("engine", "dev")],
        )
        .await
            == 2.0
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn readiness_and_the_database_are_gauged_and_a_drain_makes_the_instance_not_ready() {
    let _serial = SERIAL.lock().await;
    let mut app = spawn_app_with(Backend::Sqlite, |config| {
        config.shutdown_grace_secs = 3;
        // Every second, so that a run is counted while the test waits.
        config.schedules.purge_expired_sessions = "* * * * * *".to_owned();
    })
    .await;
    let purges = [("task", "purge_expired_sessions"), ("outcome", "succeeded")];
    let purged_before = sample(&app, "switchboard_scheduled_runs_total", &purges).await;
    eventually("ready and the database up", || async {
        sample(&app, "switchboard_ready", &[]).await == 1.0
            && sample(&app, "switchboard_database_up", &[]).await == 1.0
    })
    .await;
    eventually("a scheduled run counted", || async {
        sample(&app, "switchboard_scheduled_runs_total", &purges).await > purged_before
    })
    .await;
    // A stream keeps the draining server listening while it is scraped.
    let token = app.owner.access_token.clone();
    let (cid, mid) = stalled_reply(&app, &token).await;
    let stream = app
        .http
        .get(app.url(&format!("/v1/conversations/{cid}/messages/{mid}:stream")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    app.begin_shutdown();
    eventually("not ready once the drain began", || async {
        sample(&app, "switchboard_ready", &[]).await == 0.0
    })
    .await;
    drop(stream);
    app.stop().await;
}

/// Sends one command to the Redis on this machine over RESP; its answer.
async fn redis_command(args: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect("127.0.0.1:6379")
        .await
        .expect("Redis at 127.0.0.1:6379 (the tests need it)");
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(command.as_bytes()).await.unwrap();
    let mut answer = vec![0; 256];
    let read = stream.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test]
async fn the_redis_bus_is_measured_and_a_lost_subscription_is_restored() {
    let _serial = SERIAL.lock().await;
    let prefix = format!("metrics-{}", uuid::Uuid::now_v7().simple());
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.redis_url = Some(switchboard_core::config::Secret::new(
            "redis://127.0.0.1:6379".to_owned(),
        ));
        config.queue.prefix = prefix.clone();
        config.engine.token_delay_ms = 0;
    })
    .await;
    let subscriptions = ["reply event", "cache invalidation"];
    for subscription in subscriptions {
        eventually(&format!("the {subscription} subscription up"), || async {
            sample(
                &app,
                "switchboard_redis_subscribed",
                &[("subscription", subscription)],
            )
            .await
                == 1.0
        })
        .await;
    }
    let lag_before = sample(&app, "switchboard_redis_bus_lag_seconds_count", &[]).await;
    let (cid, reply) = send(&app, "over the bus").await;
    reply_ends(&app, &cid, &reply, "MESSAGE_STATUS_COMPLETE").await;
    eventually("reply events timed across the bus", || async {
        sample(&app, "switchboard_redis_bus_lag_seconds_count", &[]).await > lag_before
    })
    .await;

    // Redis drops every Pub/Sub connection: both subscriptions come back.
    let mut restored_before = Vec::new();
    for subscription in subscriptions {
        restored_before.push(
            sample(
                &app,
                "switchboard_redis_resubscriptions_total",
                &[("subscription", subscription)],
            )
            .await,
        );
    }
    let killed = redis_command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(
        killed.starts_with(':') && !killed.starts_with(":0"),
        "{killed}"
    );
    for (subscription, before) in subscriptions.iter().zip(restored_before) {
        eventually(
            &format!("the {subscription} subscription restored"),
            || async {
                sample(
                    &app,
                    "switchboard_redis_resubscriptions_total",
                    &[("subscription", subscription)],
                )
                .await
                    > before
                    && sample(
                        &app,
                        "switchboard_redis_subscribed",
                        &[("subscription", subscription)],
                    )
                    .await
                        == 1.0
            },
        )
        .await;
    }
    app.stop().await;
}
