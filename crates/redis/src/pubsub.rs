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

/// Keeps `channel` subscribed for as long as its owner lives.
///
/// After each successful subscription `subscribed` runs first (false: the
/// owner is gone and the task ends), then the first one is reported to
/// `ready`, then `serve` reads the subscription until it is lost
/// (`Some(reason)`, logged, and the loop subscribes again) or its owner is
/// gone (`None`). If the first attempt fails, its error goes to `ready` and
/// the task ends; later failures are logged and retried. `what` names the
/// subscription in the logs.
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
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                } else {
                    tracing::info!(%channel, "{what} subscription restored");
                }
                let Some(reason) = serve(pubsub).await else {
                    return;
                };
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
