//! The AMQP job transport against the real RabbitMQ on 127.0.0.1:5672.

mod transport_scenarios;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::options::QueueDeleteOptions;
use switchboard_core::error::Error;
use switchboard_core::jobs::JobTransport;
use switchboard_testkit::tcp_proxy::TcpProxy;
use switchboard_workers::amqp::{AmqpTransport, AmqpTransportConfig};
use transport_scenarios::{assert_nothing_within, receive_within};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A test's queue prefix; its queues are deleted at the end.
struct TestQueue {
    prefix: String,
}

impl TestQueue {
    fn new() -> Self {
        show_logs();
        Self {
            prefix: format!("test-jobs-{:08x}", rand::random::<u32>()),
        }
    }

    /// A worker process's transport, running `concurrency` jobs at once.
    async fn transport(&self, concurrency: u16) -> AmqpTransport {
        self.transport_at(AMQP_URL, concurrency).await
    }

    async fn transport_at(&self, url: &str, concurrency: u16) -> AmqpTransport {
        let config = AmqpTransportConfig {
            url: url.to_owned(),
            prefix: self.prefix.clone(),
            concurrency,
        };
        AmqpTransport::connect(config).await.unwrap_or_else(|err| {
            panic!("RabbitMQ must run on 127.0.0.1:5672 (guest/guest) for these tests: {err}")
        })
    }

    /// Deletes the job queue and every delay bucket queue.
    async fn delete_queues(self) {
        let connection = lapin::Connection::connect(AMQP_URL, Default::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let buckets = (0..32).map(|k| format!("{}.jobs.delayed.{}ms", self.prefix, 1u64 << k));
        for queue in std::iter::once(format!("{}.jobs", self.prefix)).chain(buckets) {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .unwrap();
        }
        connection.close(200, "done".into()).await.unwrap();
    }
}

#[tokio::test]
async fn sends_receives_and_acks() {
    let queue = TestQueue::new();
    let transport = queue.transport(1).await;
    assert_eq!(transport.name(), "amqp");
    transport_scenarios::send_receive_ack(&transport, Duration::from_millis(500)).await;
    transport.close().await.unwrap();
    queue.delete_queues().await;
}

#[tokio::test]
async fn delayed_jobs_arrive_not_before_their_time_and_short_delays_first() {
    let queue = TestQueue::new();
    let transport = queue.transport(4).await;
    let long_due = Utc::now() + Duration::from_millis(2500);
    let short_due = Utc::now() + Duration::from_millis(1000);
    // Sent first, the long delay must not hold up the short one.
    transport.send("long", Some(long_due)).await.unwrap();
    transport.send("short", Some(short_due)).await.unwrap();
    transport.send("now", None).await.unwrap();

    for (expected, due) in [
        ("now", None),
        ("short", Some(short_due)),
        ("long", Some(long_due)),
    ] {
        let delivery = receive_within(&transport, Duration::from_secs(5)).await;
        let arrived = Utc::now();
        assert_eq!(delivery.job_id, expected);
        if let Some(due) = due {
            assert!(arrived >= due, "{expected} arrived {arrived}, due {due}");
            assert!(
                arrived - due < chrono::TimeDelta::seconds(1),
                "{expected} late: {arrived} for {due}"
            );
        }
        delivery.receipt.ack().await.unwrap();
    }
    transport.close().await.unwrap();
    queue.delete_queues().await;
}

#[tokio::test]
async fn unacked_job_goes_to_another_worker_when_the_first_one_dies() {
    let queue = TestQueue::new();
    let crashed = queue.transport(1).await;
    let survivor = queue.transport(1).await;
    crashed.send("job-1", None).await.unwrap();
    // The first worker takes it (the survivor is not consuming yet).
    let lost = receive_within(&crashed, Duration::from_secs(2)).await;
    assert_eq!(lost.job_id, "job-1");
    // The worker dies: no ack, no close, its connection just goes.
    drop(lost);
    drop(crashed);

    let again = receive_within(&survivor, Duration::from_secs(5)).await;
    assert_eq!(again.job_id, "job-1");
    again.receipt.ack().await.unwrap();
    assert_nothing_within(&survivor, Duration::from_millis(500)).await;
    survivor.close().await.unwrap();
    queue.delete_queues().await;
}

#[tokio::test]
async fn a_live_worker_keeps_its_job() {
    let queue = TestQueue::new();
    let worker = queue.transport(1).await;
    let other = queue.transport(1).await;
    worker.send("long-job", None).await.unwrap();
    let delivery = receive_within(&worker, Duration::from_secs(2)).await;
    let renewing = async {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            delivery.receipt.keep_alive().await.unwrap();
        }
    };
    let (_, ()) = tokio::join!(
        renewing,
        assert_nothing_within(&other, Duration::from_secs(2))
    );
    delivery.receipt.ack().await.unwrap();
    assert_nothing_within(&other, Duration::from_millis(500)).await;
    worker.close().await.unwrap();
    other.close().await.unwrap();
    queue.delete_queues().await;
}

#[tokio::test]
async fn a_thousand_jobs_reach_four_receivers_once_each() {
    let queue = TestQueue::new();
    let sender: Arc<dyn JobTransport> = Arc::new(queue.transport(1).await);
    // Two worker processes running two jobs at once each.
    let workers: [Arc<dyn JobTransport>; 2] = [
        Arc::new(queue.transport(2).await),
        Arc::new(queue.transport(2).await),
    ];
    transport_scenarios::four_receivers_take_every_job(sender, workers, 1000).await;
    queue.delete_queues().await;
}

#[tokio::test]
async fn a_worker_reconnects_after_losing_its_connection() {
    let queue = TestQueue::new();
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let worker = queue.transport_at(&url, 1).await;
    let sender = queue.transport(1).await;
    transport_scenarios::a_waiting_receiver_survives_a_cut_connection(
        Arc::new(worker),
        &sender,
        || proxy.cut(),
    )
    .await;
    queue.delete_queues().await;
}

#[tokio::test]
async fn send_fails_fast_while_the_broker_is_unreachable() {
    let queue = TestQueue::new();
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let sender = queue.transport_at(&url, 1).await;
    drop(proxy);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let sent = tokio::time::timeout(Duration::from_secs(5), sender.send("job-1", None))
        .await
        .expect("send hung while the broker was unreachable");
    assert!(matches!(sent, Err(Error::Unavailable(_))), "{sent:?}");
    let connected = AmqpTransport::connect(AmqpTransportConfig {
        url: "amqp://guest:guest@127.0.0.1:1/%2f".to_owned(),
        ..AmqpTransportConfig::default()
    })
    .await;
    assert!(matches!(connected, Err(Error::Unavailable(_))));
    queue.delete_queues().await;
}

/// Shows the crate's logs (at debug) in the output of a failing test.
fn show_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("brokers_scratch=debug")
        .try_init();
}
