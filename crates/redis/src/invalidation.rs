//! [`RedisInvalidations`], the domain's
//! [`InvalidationBus`](switchboard_core::cache::InvalidationBus) on Redis
//! Pub/Sub: what one instance changes, every instance's read caches forget.
//!
//! Each [`Invalidation`] is published as JSON on the channel
//! `{prefix}:cache-invalidations`, with the id of the instance that sent it
//! (which ignores its own). Publishing does not wait for Redis: a message
//! that is lost is bounded by the caches' own
//! [`ENTRY_TTL`](switchboard_core::cache::ENTRY_TTL). A listener task
//! applies the others' messages; while its subscription is down the caches
//! are not used at all ([`Caches::set_live`]), and when it is restored
//! they start empty, so a message missed meanwhile is never believed
//! against.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use redis::aio::{ConnectionManager, PubSub};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use switchboard_core::cache::{Caches, Invalidation, InvalidationBus};
use switchboard_core::{Error, Result};

use crate::bus::HEARTBEAT;
use crate::pubsub::keep_subscribed;
use crate::redis_error;

/// One message on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    /// The instance that sent it.
    origin: String,
    invalidation: Invalidation,
}

/// Cache invalidations shared through Redis Pub/Sub (see the module
/// comment).
pub struct RedisInvalidations {
    commands: ConnectionManager,
    channel: String,
    origin: String,
    listener: JoinHandle<()>,
}

impl std::fmt::Debug for RedisInvalidations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisInvalidations")
            .field("channel", &self.channel)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// An id no other instance has: the process id, the time and a counter
/// (two instances in one process, as in the tests, differ too).
fn instance_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl RedisInvalidations {
    /// Connects under `prefix` and applies the other instances'
    /// invalidations to `caches`; returns once subscribed. Hand the result
    /// to [`Caches::share_through`] so this instance's reach the others.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if Redis cannot be reached,
    /// [`Error::Internal`] if the URL is malformed.
    pub async fn connect(url: &str, prefix: &str, caches: &Arc<Caches>) -> Result<Self> {
        let client = redis::Client::open(url).map_err(redis_error)?;
        let commands = ConnectionManager::new(client.clone())
            .await
            .map_err(redis_error)?;
        let channel = format!("{prefix}:cache-invalidations");
        let origin = instance_id();
        // Nothing is believed until the subscription is up.
        caches.set_live(false);
        let (ready, subscribed) = oneshot::channel();
        let listener = tokio::spawn(listen(
            client,
            channel.clone(),
            origin.clone(),
            Arc::downgrade(caches),
            ready,
        ));
        subscribed
            .await
            .map_err(|_| Error::internal("the cache invalidation listener stopped"))??;
        Ok(Self {
            commands,
            channel,
            origin,
            listener,
        })
    }
}

impl InvalidationBus for RedisInvalidations {
    fn publish(&self, invalidation: &Invalidation) {
        let message = Message {
            origin: self.origin.clone(),
            invalidation: invalidation.clone(),
        };
        let payload = match serde_json::to_string(&message) {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(error = %err, "cannot encode a cache invalidation");
                return;
            }
        };
        let mut commands = self.commands.clone();
        let channel = self.channel.clone();
        tokio::spawn(async move {
            let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(payload)
                .query_async(&mut commands)
                .await;
            if let Err(err) = sent {
                tracing::warn!(%channel, error = %err, "a cache invalidation was not published; other instances see the change within the cache TTL");
            }
        });
    }
}

impl Drop for RedisInvalidations {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Applies one message from another instance; false once the caches are
/// gone.
fn apply(message: &redis::Msg, origin: &str, caches: &Weak<Caches>) -> bool {
    let Some(caches) = caches.upgrade() else {
        return false;
    };
    let decoded = message
        .get_payload::<String>()
        .map_err(redis_error)
        .and_then(|payload| serde_json::from_str::<Message>(&payload).map_err(Error::internal));
    match decoded {
        Ok(message) if message.origin != origin => caches.apply(&message.invalidation),
        Ok(_) => {}
        Err(err) => {
            // Not knowing what changed, forget everything.
            tracing::warn!(error = %err, "malformed cache invalidation; clearing the caches");
            caches.clear();
        }
    }
    true
}

/// Applies messages until the connection is lost (returns why) or the
/// caches are gone (returns `None`).
async fn relay(pubsub: PubSub, origin: &str, caches: &Weak<Caches>) -> Option<String> {
    let (mut sink, mut messages) = pubsub.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => {
                    if !apply(&message, origin, caches) {
                        return None;
                    }
                }
                None => return Some("the connection closed".to_owned()),
            },
            _ = heartbeat.tick() => {
                match tokio::time::timeout(HEARTBEAT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return Some(format!("ping failed: {err}")),
                    Err(_) => return Some("ping timed out".to_owned()),
                }
            }
        }
    }
}

/// The Pub/Sub task: subscribes (the caches go live), applies, and on a
/// loss takes the caches out of use until it has subscribed again (see
/// [`keep_subscribed`]).
async fn listen(
    client: redis::Client,
    channel: String,
    origin: String,
    caches: Weak<Caches>,
    ready: oneshot::Sender<Result<()>>,
) {
    let live = caches.clone();
    keep_subscribed(
        client,
        channel,
        "cache invalidation",
        ready,
        move || live.upgrade().map(|caches| caches.set_live(true)).is_some(),
        |pubsub| {
            let (origin, caches) = (&origin, &caches);
            async move {
                let reason = relay(pubsub, origin, caches).await?;
                // Nothing is believed until the subscription is back.
                caches.upgrade()?.set_live(false);
                Some(reason)
            }
        },
    )
    .await;
}
