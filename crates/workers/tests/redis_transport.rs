//! The Redis job transport against the real Redis on 127.0.0.1:6379.

mod transport_scenarios;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use switchboard_core::error::Error;
use switchboard_core::jobs::JobTransport;
use switchboard_testkit::tcp_proxy::TcpProxy;
use switchboard_workers::redis::{RedisTransport, RedisTransportConfig};
use transport_scenarios::{assert_nothing_within, receive_within};

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A test's key prefix and the transports it opens.
struct TestQueue {
    prefix: String,
    lease: Duration,
}

impl TestQueue {
    fn new(lease: Duration) -> Self {
        show_logs();
        Self {
            prefix: format!("test-jobs-{:08x}", rand::random::<u32>()),
            lease,
        }
    }

    /// A worker process's transport.
    async fn transport(&self) -> RedisTransport {
        self.transport_at(REDIS_URL).await
    }

    async fn transport_at(&self, url: &str) -> RedisTransport {
        let config = RedisTransportConfig {
            url: url.to_owned(),
            prefix: self.prefix.clone(),
            lease: self.lease,
            poll_interval: Duration::from_millis(200),
        };
        RedisTransport::connect(config)
            .await
            .unwrap_or_else(|err| panic!("Redis must run on 127.0.0.1:6379 for these tests: {err}"))
    }

    async fn remove_keys(self) {
        let client = redis::Client::open(REDIS_URL).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let () = redis::cmd("DEL")
            .arg(format!("{}:jobs", self.prefix))
            .arg(format!("{}:jobs:delayed", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn sends_receives_and_acks() {
    let queue = TestQueue::new(Duration::from_millis(500));
    let transport = queue.transport().await;
    assert_eq!(transport.name(), "redis");
    // Quiet for longer than the lease: an acked job is never taken over.
    transport_scenarios::send_receive_ack(&transport, Duration::from_millis(1500)).await;
    queue.remove_keys().await;
}

#[tokio::test]
async fn delayed_job_arrives_not_before_its_time() {
    let queue = TestQueue::new(Duration::from_secs(10));
    let transport = queue.transport().await;
    let due = Utc::now() + Duration::from_millis(1500);
    transport.send("later", Some(due)).await.unwrap();
    transport.send("now", None).await.unwrap();
    // A due time in the past means now.
    transport
        .send("overdue", Some(Utc::now() - Duration::from_secs(60)))
        .await
        .unwrap();

    for expected in ["now", "overdue"] {
        let delivery = receive_within(&transport, Duration::from_secs(1)).await;
        assert_eq!(delivery.job_id, expected);
        delivery.receipt.ack().await.unwrap();
    }
    let delivery = receive_within(&transport, Duration::from_secs(5)).await;
    let arrived = Utc::now();
    assert_eq!(delivery.job_id, "later");
    assert!(arrived >= due, "arrived {arrived}, due {due}");
    assert!(
        arrived - due < chrono::TimeDelta::seconds(1),
        "late: {arrived} for {due}"
    );
    delivery.receipt.ack().await.unwrap();
    queue.remove_keys().await;
}

#[tokio::test]
async fn unacked_job_goes_to_another_worker_after_the_lease() {
    let lease = Duration::from_secs(1);
    let queue = TestQueue::new(lease);
    let crashed = queue.transport().await;
    let survivor = queue.transport().await;
    crashed.send("job-1", None).await.unwrap();
    let lost = receive_within(&crashed, Duration::from_secs(2)).await;
    let taken = Instant::now();
    // The worker dies: no ack, no renewal, its connections gone.
    drop(lost);
    drop(crashed);

    let again = receive_within(&survivor, Duration::from_secs(5)).await;
    assert_eq!(again.job_id, "job-1");
    assert!(
        taken.elapsed() >= lease,
        "taken over after {:?}",
        taken.elapsed()
    );
    again.receipt.ack().await.unwrap();
    assert_nothing_within(&survivor, Duration::from_millis(1500)).await;
    queue.remove_keys().await;
}

#[tokio::test]
async fn keep_alive_prevents_redelivery() {
    let queue = TestQueue::new(Duration::from_secs(1));
    let worker = queue.transport().await;
    let other = queue.transport().await;
    worker.send("long-job", None).await.unwrap();
    let delivery = receive_within(&worker, Duration::from_secs(2)).await;

    let renewing = async {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            delivery.receipt.keep_alive().await.unwrap();
        }
    };
    // Three leases long, the other worker gets nothing.
    let (_, ()) = tokio::join!(
        renewing,
        assert_nothing_within(&other, Duration::from_secs(3))
    );
    delivery.receipt.ack().await.unwrap();
    assert_nothing_within(&other, Duration::from_millis(1500)).await;
    queue.remove_keys().await;
}

#[tokio::test]
async fn keep_alive_after_a_takeover_tells_the_worker_to_stop() {
    let queue = TestQueue::new(Duration::from_millis(500));
    let slow = queue.transport().await;
    let other = queue.transport().await;
    slow.send("job-1", None).await.unwrap();
    let stale = receive_within(&slow, Duration::from_secs(2)).await;
    let taken_over = receive_within(&other, Duration::from_secs(5)).await;
    assert_eq!(taken_over.job_id, "job-1");

    let renewed = stale.receipt.keep_alive().await;
    assert!(
        matches!(renewed, Err(Error::FailedPrecondition(_))),
        "{renewed:?}"
    );
    // The new holder still can.
    taken_over.receipt.keep_alive().await.unwrap();
    taken_over.receipt.ack().await.unwrap();
    queue.remove_keys().await;
}

#[tokio::test]
async fn a_thousand_jobs_reach_four_receivers_once_each() {
    let queue = TestQueue::new(Duration::from_secs(10));
    let sender: Arc<dyn JobTransport> = Arc::new(queue.transport().await);
    let workers: [Arc<dyn JobTransport>; 2] = [
        Arc::new(queue.transport().await),
        Arc::new(queue.transport().await),
    ];
    transport_scenarios::four_receivers_take_every_job(sender, workers, 1000).await;
    queue.remove_keys().await;
}

#[tokio::test]
async fn a_waiting_worker_survives_a_connection_blip() {
    let queue = TestQueue::new(Duration::from_secs(10));
    let proxy = TcpProxy::start("127.0.0.1:6379").await;
    let worker = queue.transport_at(&format!("redis://{}", proxy.addr)).await;
    let sender = queue.transport().await;
    transport_scenarios::a_waiting_receiver_survives_a_cut_connection(
        Arc::new(worker),
        &sender,
        || proxy.cut(),
    )
    .await;
    queue.remove_keys().await;
}

#[tokio::test]
async fn connect_fails_loudly_without_redis() {
    let config = RedisTransportConfig {
        url: "redis://127.0.0.1:1".to_owned(),
        ..RedisTransportConfig::default()
    };
    let connected = RedisTransport::connect(config).await;
    assert!(matches!(connected, Err(Error::Unavailable(_))));
}

/// Shows the crate's logs (at debug) in the output of a failing test.
fn show_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("brokers_scratch=debug")
        .try_init();
}
