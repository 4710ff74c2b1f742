//! The one Pub/Sub subscription loop the reply bus and the cache
//! invalidations share: subscribe, tell the starter whether the first
//! attempt worked, serve the subscription until it is lost, and subscribe
//! again with a growing delay.

use std::future::Future;

use redis::aio::PubSub;
use tokio::sync::oneshot;

use switchboard_core::Result;

use crate::bus::retry_delay;
use crate::redis_error;

/// 1 while the subscription named by its label is up, 0 while it is lost.
const SUBSCRIBED: &str = "switchboard_redis_subscribed";
/// Subscriptions restored after they were lost.
const RESUBSCRIPTIONS: &str = "switchboard_redis_resubscriptions_total";

/// Keeps `channel` subscribed for as long as its owner lives.
///
/// After each successful subscription `subscribed` runs first (false: the
/// owner is gone and the task ends), then the first one is reported to
/// `ready`, then `serve` reads the subscription until it is lost
/// (`Some(reason)`, logged, and the loop subscribes again) or its owner is
/// gone (`None`). If the first attempt fails, its error goes to `ready` and
/// the task ends; later failures are logged and retried. `what` names the
/// subscription in the logs and in the `subscription` label of
/// `switchboard_redis_subscribed` and `switchboard_redis_resubscriptions_total`.
pub(crate) async fn keep_subscribed<Serve, Served>(
    client: redis::Client,
    channel: String,
    what: &'static str,
    ready: oneshot::Sender<Result<()>>,
    mut subscribed: impl FnMut() -> bool,
    mut serve: Serve,
) where
    Serve: FnMut(PubSub) -> Served,
    Served: Future<Output = Option<String>>,
{
    let mut ready = Some(ready);
    let mut failures = 0;
    loop {
        let attempt = match client.get_async_pubsub().await {
            Ok(mut pubsub) => pubsub.subscribe(&channel).await.map(|()| pubsub),
            Err(err) => Err(err),
        };
        match attempt {
            Ok(pubsub) => {
                failures = 0;
                if !subscribed() {
                    return;
                }
                metrics::gauge!(SUBSCRIBED, "subscription" => what).set(1.0);
                if let Some(ready) = ready.take() {
                    // The series exists from the start, at 0.
                    metrics::counter!(RESUBSCRIPTIONS, "subscription" => what).increment(0);
                    let _ = ready.send(Ok(()));
                } else {
                    metrics::counter!(RESUBSCRIPTIONS, "subscription" => what).increment(1);
                    tracing::info!(%channel, "{what} subscription restored");
                }
                let Some(reason) = serve(pubsub).await else {
                    return;
                };
                metrics::gauge!(SUBSCRIBED, "subscription" => what).set(0.0);
                tracing::warn!(%channel, %reason, "lost the {what} subscription; subscribing again");
            }
            Err(err) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(redis_error(err)));
                    return;
                }
                tracing::warn!(%channel, error = %err, "cannot subscribe to {what}; retrying");
            }
        }
        tokio::time::sleep(retry_delay(failures)).await;
        failures += 1;
    }
}
