//! What every job transport must do, written once and run by the tests of
//! each transport.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use switchboard_core::jobs::{Delivery, JobTransport};
use tokio::sync::watch;

/// The next delivery, which must come within `wait`.
pub(crate) async fn receive_within(transport: &dyn JobTransport, wait: Duration) -> Delivery {
    tokio::time::timeout(wait, transport.receive())
        .await
        .unwrap_or_else(|_| panic!("no delivery within {wait:?}"))
        .expect("receive failed")
}

/// Fails if anything is delivered within `wait`.
pub(crate) async fn assert_nothing_within(transport: &dyn JobTransport, wait: Duration) {
    if let Ok(delivery) = tokio::time::timeout(wait, transport.receive()).await {
        panic!(
            "unexpected delivery: {:?}",
            delivery.map(|delivery| delivery.job_id)
        );
    }
}

/// One id sent is received once, and once acknowledged never comes back.
pub(crate) async fn send_receive_ack(transport: &dyn JobTransport, quiet: Duration) {
    transport.send("job-1", None).await.unwrap();
    let delivery = receive_within(transport, Duration::from_secs(5)).await;
    assert_eq!(delivery.job_id, "job-1");
    delivery.receipt.keep_alive().await.unwrap();
    delivery.receipt.ack().await.unwrap();
    assert_nothing_within(transport, quiet).await;
}

/// Sends `count` ids through `sender` while four tasks (two per receiving
/// transport, as two worker processes running two jobs each) receive and
/// acknowledge them. Every id must be delivered exactly once (nothing
/// fails here, so nothing is redelivered). Returns the jobs per second,
/// first send to last ack.
pub(crate) async fn four_receivers_take_every_job(
    sender: Arc<dyn JobTransport>,
    workers: [Arc<dyn JobTransport>; 2],
    count: usize,
) -> f64 {
    let started = Instant::now();
    let deliveries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let (done_tx, done) = watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let mut receivers = Vec::new();
    for task in 0..4 {
        let transport = Arc::clone(&workers[task % 2]);
        let deliveries = Arc::clone(&deliveries);
        let done_tx = Arc::clone(&done_tx);
        let mut done = done.clone();
        receivers.push(tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    delivery = transport.receive() => delivery.unwrap(),
                    _ = done.wait_for(|done| *done) => return,
                };
                delivery.receipt.ack().await.unwrap();
                let mut deliveries = deliveries.lock().unwrap();
                *deliveries.entry(delivery.job_id).or_default() += 1;
                if deliveries.values().sum::<usize>() >= count {
                    done_tx.send_replace(true);
                }
            }
        }));
    }
    stream::iter(0..count)
        .map(|n| {
            let sender = Arc::clone(&sender);
            async move { sender.send(&format!("job-{n}"), None).await.unwrap() }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let sent_in = started.elapsed();
    tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all(receivers),
    )
    .await
    .expect("not every job was delivered within 60 s");
    let elapsed = started.elapsed();

    let deliveries = std::mem::take(&mut *deliveries.lock().unwrap());
    assert_eq!(deliveries.len(), count, "some jobs were never delivered");
    assert!(
        deliveries.values().all(|&times| times == 1),
        "some jobs were delivered twice"
    );
    for worker in &workers {
        assert_nothing_within(worker.as_ref(), Duration::from_millis(500)).await;
    }
    let per_second = count as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{}: {count} jobs sent in {sent_in:?}, all acked after {elapsed:?}: {per_second:.0} jobs/s",
        sender.name()
    );
    per_second
}

/// A receiver waiting for a job while its connection to the broker is cut
/// (`cut`: the test's proxy drops every connection) reconnects by itself
/// and gets the job sent after the cut, within 10 s.
pub(crate) async fn a_waiting_receiver_survives_a_cut_connection(
    receiver: Arc<dyn JobTransport>,
    sender: &dyn JobTransport,
    cut: impl FnOnce(),
) {
    let waiting = tokio::spawn(async move {
        let delivery = receiver.receive().await.unwrap();
        delivery.receipt.ack().await.unwrap();
        delivery.job_id
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cut();
    sender.send("after-the-cut", None).await.unwrap();
    let job_id = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the receiver did not reconnect within 10 s")
        .unwrap();
    assert_eq!(job_id, "after-the-cut");
}
