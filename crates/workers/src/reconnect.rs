//! How the broker transports (Redis, RabbitMQ) keep receiving through a
//! broker that goes away: one loop for both, [`keep_receiving`]. Each
//! transport says how to try once (and drops the connection it found
//! broken, so the next try opens a new one); this waits between tries.

use std::future::Future;
use std::time::Duration;

use switchboard_core::{Error, Result};

/// Calls `receive_once` until it yields a delivery. `Ok(None)` (nothing
/// arrived, the broker answered) tries again at once; UNAVAILABLE (the
/// broker did not answer) waits first, 0.1 s after the first failure in a
/// row, doubling, at most 5 s, and logs each failure; any other error is
/// returned. Cancel-safe as far as `receive_once` is.
pub(crate) async fn keep_receiving<F, Fut, T>(
    broker: &'static str,
    mut receive_once: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let mut failures = 0;
    loop {
        match receive_once().await {
            Ok(Some(delivery)) => return Ok(delivery),
            Ok(None) => failures = 0,
            Err(Error::Unavailable(reason)) => {
                let delay = retry_delay(failures);
                failures += 1;
                tracing::warn!(broker, %reason, retry_in = ?delay, "cannot receive jobs; reconnecting");
                tokio::time::sleep(delay).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// How long to wait after `failures` failed attempts in a row: 0.1 s,
/// doubling, at most 5 s.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(100 << failures.min(6)).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use switchboard_core::jobs::Delivery;

    #[test]
    fn waits_double_up_to_five_seconds() {
        let waits: Vec<u64> = (0..8).map(|n| retry_delay(n).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_broker_is_waited_for_and_other_errors_are_returned() {
        let tries = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let delivered = keep_receiving("test", || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(Error::Unavailable("down".to_owned())),
                2 => Ok(None),
                _ => Ok(Some(Delivery {
                    job_id: "job".to_owned(),
                    receipt: Box::new(NoReceipt),
                })),
            }
        })
        .await
        .unwrap();
        assert_eq!(delivered.job_id, "job");
        assert_eq!(tries.load(Ordering::SeqCst), 4);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        let refused = keep_receiving("test", || async {
            Err::<Option<Delivery>, _>(Error::internal("broken"))
        })
        .await
        .unwrap_err();
        assert!(matches!(refused, Error::Internal(_)));
    }

    struct NoReceipt;

    #[async_trait::async_trait]
    impl switchboard_core::jobs::Receipt for NoReceipt {
        async fn ack(&self) -> Result<()> {
            Ok(())
        }
        async fn keep_alive(&self) -> Result<()> {
            Ok(())
        }
    }
}
