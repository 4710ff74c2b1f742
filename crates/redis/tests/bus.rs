//! The Redis reply event bus against the real Redis on 127.0.0.1:6379.

use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use switchboard_core::chat::ReplyBus;
use switchboard_core::error::{Error, Result};
use switchboard_redis::{RedisReplyBus, RedisReplyBusConfig};
use switchboard_testkit::tcp_proxy::TcpProxy;

const REDIS_URL: &str = "redis://127.0.0.1:6379";

fn unique_prefix() -> String {
    show_logs();
    format!("test-bus-{:08x}", rand::random::<u32>())
}

/// A bus on `url` whose reply channels buffer `live_capacity` events.
async fn bus_at(url: &str, prefix: &str, live_capacity: usize) -> RedisReplyBus {
    RedisReplyBus::connect_with(RedisReplyBusConfig {
        url: url.to_owned(),
        prefix: prefix.to_owned(),
        retention: Duration::from_secs(60),
        live_capacity,
        ..RedisReplyBusConfig::default()
    })
    .await
    .unwrap_or_else(|err| panic!("Redis must run on 127.0.0.1:6379 for these tests: {err}"))
}

async fn bus(prefix: &str) -> RedisReplyBus {
    bus_at(REDIS_URL, prefix, 256).await
}

fn event(seq: u32) -> String {
    format!(r#"{{"seq":{seq},"delta":"token {seq}"}}"#)
}

async fn publish_all(bus: &RedisReplyBus, reply_id: &str, seqs: impl IntoIterator<Item = u32>) {
    for seq in seqs {
        bus.publish(reply_id, seq, &event(seq)).await.unwrap();
    }
}

/// The next `count` events' seqs, checking each event's body.
async fn take_seqs(
    events: &mut BoxStream<'static, Result<(u32, String)>>,
    count: usize,
) -> Vec<u32> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events came: {seqs:?}", seqs.len()));
        let (seq, body) = next.expect("the stream ended").expect("the stream failed");
        assert_eq!(body, event(seq));
        seqs.push(seq);
    }
    seqs
}

async fn assert_quiet(events: &mut BoxStream<'static, Result<(u32, String)>>) {
    let next = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
    assert!(next.is_err(), "unexpected event: {next:?}");
}

#[tokio::test]
async fn subscriber_sees_backlog_then_live_events_without_gap_or_duplicate() {
    let prefix = unique_prefix();
    let (worker, api) = (bus(&prefix).await, bus(&prefix).await);
    // Seqs are increasing but not dense.
    let seqs: Vec<u32> = (1..=400).map(|n| n * 3 + n % 2).collect();
    let (backlog, live) = seqs.split_at(150);
    publish_all(&worker, "r1", backlog.iter().copied()).await;

    let mut events = api.subscribe("r1", 0);
    // The rest is published while the subscriber reads the backlog.
    let publishing = publish_all(&worker, "r1", live.iter().copied());
    let (received, ()) = tokio::join!(take_seqs(&mut events, seqs.len()), publishing);
    assert_eq!(received, seqs);
    assert_quiet(&mut events).await;
}

#[tokio::test]
async fn subscriber_resumes_after_a_seq() {
    let prefix = unique_prefix();
    let bus = bus(&prefix).await;
    publish_all(&bus, "r1", 1..=10).await;

    let mut events = bus.subscribe("r1", 6);
    assert_eq!(take_seqs(&mut events, 4).await, [7, 8, 9, 10]);
    publish_all(&bus, "r1", [11]).await;
    assert_eq!(take_seqs(&mut events, 1).await, [11]);
    // Resuming at the end gives only what comes next.
    let mut caught_up = bus.subscribe("r1", 11);
    assert_quiet(&mut caught_up).await;
    publish_all(&bus, "r1", [12]).await;
    assert_eq!(take_seqs(&mut caught_up, 1).await, [12]);
}

#[tokio::test]
async fn two_subscribers_of_one_reply_see_every_event() {
    let prefix = unique_prefix();
    let (worker, api) = (bus(&prefix).await, bus(&prefix).await);
    publish_all(&worker, "r1", 1..=3).await;
    let mut first = api.subscribe("r1", 0);
    let mut second = api.subscribe("r1", 2);
    assert_eq!(api.live_replies(), 1);
    publish_all(&worker, "r1", 4..=6).await;

    assert_eq!(take_seqs(&mut first, 6).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(take_seqs(&mut second, 4).await, [3, 4, 5, 6]);
    drop(first);
    assert_eq!(api.live_replies(), 1);
    drop(second);
    assert_eq!(api.live_replies(), 0);
}

#[tokio::test]
async fn a_lagging_subscriber_rereads_the_backlog() {
    let prefix = unique_prefix();
    // Two live events fit in the channel; the subscriber falls far behind.
    let (worker, api) = (bus(&prefix).await, bus_at(REDIS_URL, &prefix, 2).await);
    let mut events = api.subscribe("r1", 0);
    let first_publish = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        publish_all(&worker, "r1", [1]).await;
    };
    // The first event arrives live, after the (empty) backlog was read.
    let (first, ()) = tokio::join!(take_seqs(&mut events, 1), first_publish);
    assert_eq!(first, [1]);

    // More than one backlog batch, published while nobody reads.
    publish_all(&worker, "r1", 2..=700).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected: Vec<u32> = (2..=700).collect();
    assert_eq!(take_seqs(&mut events, expected.len()).await, expected);
    publish_all(&worker, "r1", [701]).await;
    assert_eq!(take_seqs(&mut events, 1).await, [701]);
}

#[tokio::test]
async fn events_of_replies_nobody_follows_are_not_kept() {
    let prefix = unique_prefix();
    let (worker, api) = (bus(&prefix).await, bus(&prefix).await);
    let watched = api.subscribe("watched", 0);
    for reply in 0..200 {
        publish_all(&worker, &format!("unwatched-{reply}"), 1..=5).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.live_replies(), 1);
    drop(watched);
    assert_eq!(api.live_replies(), 0);
    assert_eq!(worker.live_replies(), 0);

    // The backlog in Redis expires after the retention.
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}:reply:unwatched-0"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn publish_refuses_a_seq_that_does_not_grow_but_repeats_the_last() {
    let prefix = unique_prefix();
    let bus = bus(&prefix).await;
    publish_all(&bus, "r1", [5]).await;
    // A retried publish of the last event is harmless.
    bus.publish("r1", 5, &event(5)).await.unwrap();
    let published = bus.publish("r1", 3, &event(3)).await;
    assert!(
        matches!(published, Err(Error::FailedPrecondition(_))),
        "{published:?}"
    );
    let mut events = bus.subscribe("r1", 0);
    assert_eq!(take_seqs(&mut events, 1).await, [5]);
    assert_quiet(&mut events).await;
}

#[tokio::test]
async fn a_subscriber_loses_nothing_across_a_connection_blip() {
    let prefix = unique_prefix();
    let proxy = TcpProxy::start("127.0.0.1:6379").await;
    let api = bus_at(&format!("redis://{}", proxy.addr), &prefix, 256).await;
    let worker = bus(&prefix).await;
    let mut events = api.subscribe("r1", 0);
    let first_publish = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        publish_all(&worker, "r1", [1]).await;
    };
    let (first, ()) = tokio::join!(take_seqs(&mut events, 1), first_publish);
    assert_eq!(first, [1]);

    // Published while the API process is cut off from Redis.
    proxy.cut();
    publish_all(&worker, "r1", 2..=20).await;
    let expected: Vec<u32> = (2..=20).collect();
    assert_eq!(take_seqs(&mut events, expected.len()).await, expected);
    publish_all(&worker, "r1", [21]).await;
    assert_eq!(take_seqs(&mut events, 1).await, [21]);
}

#[tokio::test]
async fn connect_fails_loudly_without_redis() {
    let connected = RedisReplyBus::connect("redis://127.0.0.1:1", "unused").await;
    assert!(matches!(connected, Err(Error::Unavailable(_))));
}

/// Shows the crate's logs (at debug) in the output of a failing test.
fn show_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("brokers_scratch=debug")
        .try_init();
}
