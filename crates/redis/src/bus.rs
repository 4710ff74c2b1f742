//! The cross-process part of the live reply event bus, on Redis: a worker
//! publishes a reply's events, and whichever API process holds the client
//! streams them.
//!
//! Each event is written twice, atomically (one Lua script): appended to
//! the reply's stream `{prefix}:reply:{reply_id}` (the backlog, expiring a
//! while after the reply's last event), and announced on the Pub/Sub channel
//! `{prefix}:reply-events`. The entry id of event `seq` is `{seq}-1`, so the
//! events after a sequence number are one XRANGE away.
//!
//! Each process holds one Pub/Sub connection, whose task hands announcements
//! to the local subscribers of their reply through a bounded broadcast
//! channel per reply, and drops those of replies nobody here follows. A
//! subscriber registers on that channel *before* reading the backlog, then
//! skips live events it has already seen: nothing falls between the two.
//! Whenever a live event may have been missed — the subscriber fell more
//! than the channel's capacity behind (`Lagged`), or the Pub/Sub connection
//! dropped and was re-established — it reads the backlog again after the
//! last event it delivered. So a subscriber sees every event after
//! `after_seq` once, in order, and holds at most one backlog batch plus its
//! share of the channel in memory, however slow it is.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use redis::Script;
use redis::aio::{ConnectionManager, PubSub};
use redis::streams::StreamRangeReply;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use switchboard_core::chat::ReplyBus;
use switchboard_core::{Error, Result};

use crate::pubsub::keep_subscribed;
use crate::redis_error;

/// How many backlog events one read fetches.
const BACKLOG_BATCH: usize = 256;

/// How often the Pub/Sub connection is pinged, and how long the answer may
/// take: a connection that died silently (no reset) is noticed within twice
/// this.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

/// How many times in a row a backlog read may fail before the subscriber's
/// stream ends with the error.
const BACKLOG_ATTEMPTS: u32 = 5;

/// Appends events to the stream KEYS[1], trimmed to about ARGV[1] entries
/// and expiring ARGV[2] seconds after the last, and announces the ones it
/// added in one message on channel ARGV[3], whose JSON is ARGV[4] (the
/// opening, up to the events array), the added events' `[seq, event]`
/// pairs, and `]}`; the events follow from ARGV[5], four values each (entry
/// id `{seq}-1`, seq, event, event as a JSON string), their seqs growing.
/// Returns 0, doing nothing, if the stream is already past the last of
/// them (a newer attempt's events); otherwise 1, having skipped the events
/// whose entries are there already (a retried publish).
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
        if last and tonumber(string.match(last[1], '^%d+')) > tonumber(ARGV[#ARGV - 2]) then
            return 0
        end
        local added = {}
        for b = 5, #ARGV, 4 do
            local entry = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[b],
                                      'seq', ARGV[b + 1], 'event', ARGV[b + 2])
            if type(entry) == 'table' and entry.err then
                if not string.find(entry.err, 'equal or smaller', 1, true) then
                    return redis.error_reply(entry.err)
                end
                if not redis.call('XRANGE', KEYS[1], ARGV[b], ARGV[b])[1] then
                    return 0
                end
            else
                added[#added + 1] = '[' .. ARGV[b + 1] .. ',' .. ARGV[b + 3] .. ']'
            end
        end
        if #added > 0 then
            redis.call('PUBLISH', ARGV[3], ARGV[4] .. table.concat(added, ',') .. ']}')
            redis.call('EXPIRE', KEYS[1], ARGV[2])
        end
        return 1
        ",
    )
});

/// Settings of a [`RedisReplyBus`].
#[derive(Debug, Clone)]
pub struct RedisReplyBusConfig {
    /// Where Redis is: `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key and channel, so that deployments (or tests) can
    /// share a Redis.
    pub prefix: String,
    /// How long a reply's backlog stays after its last event.
    pub retention: Duration,
    /// About how many events a reply's backlog keeps (older ones are
    /// trimmed, so a subscriber resuming further back misses them).
    pub max_events: usize,
    /// How many live events a reply's local channel buffers; a subscriber
    /// further behind re-reads the backlog instead.
    pub live_capacity: usize,
}

impl Default for RedisReplyBusConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "switchboard".to_owned(),
            retention: Duration::from_secs(15 * 60),
            max_events: 10_000,
            live_capacity: 256,
        }
    }
}

/// Publishes reply events to, and streams them from, every process sharing
/// a Redis; see the module documentation. Clones share one connection pair.
#[derive(Clone)]
pub struct RedisReplyBus {
    inner: Arc<BusInner>,
}

impl std::fmt::Debug for RedisReplyBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplyBus")
            .field("prefix", &self.inner.config.prefix)
            .finish_non_exhaustive()
    }
}

/// What the bus handles and their subscriptions share; the Pub/Sub task
/// runs until the last of them is dropped.
struct BusInner {
    commands: ConnectionManager,
    config: RedisReplyBusConfig,
    /// `{prefix}:reply-events`.
    channel: String,
    fan_out: Arc<FanOut>,
    listener: JoinHandle<()>,
}

/// The local subscribers of each reply, fed by the Pub/Sub task.
struct FanOut {
    replies: Mutex<HashMap<String, broadcast::Sender<LiveEvent>>>,
    /// Counts the (re)subscriptions of the Pub/Sub connection: a change
    /// tells every subscriber that announcements may have been missed.
    subscriptions: watch::Sender<u64>,
    live_capacity: usize,
}

/// An event as it travels on a reply's local channel: its seq and JSON.
type LiveEvent = (u32, Arc<str>);

/// Now, in microseconds since the Unix epoch.
fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}

/// A parsed [`Announcement`]: the reply, its events, when it was sent.
type Announced = (String, Vec<(u32, String)>, Option<i64>);

/// What `{prefix}:reply-events` carries: the events of one publish, in
/// order, each `[seq, event JSON as a string]`. (Before, one message per
/// event, `{"reply_id", "seq", "event"}`; still read, so a process of the
/// previous release publishing during a rolling upgrade is followed.)
#[derive(Deserialize)]
#[serde(untagged)]
enum Announcement {
    Events {
        reply_id: String,
        /// When it was published (Unix time in microseconds, the
        /// publisher's clock), for `switchboard_redis_bus_lag_seconds`.
        #[serde(default)]
        sent_at: Option<i64>,
        events: Vec<(u32, String)>,
    },
    Event {
        reply_id: String,
        seq: u32,
        event: String,
    },
}

impl Announcement {
    /// The reply and its events, in order, that `payload` announces, and
    /// when it was published if it says.
    fn parse(payload: &str) -> Result<Announced> {
        Ok(
            match serde_json::from_str::<Announcement>(payload).map_err(Error::internal)? {
                Announcement::Events {
                    reply_id,
                    sent_at,
                    events,
                } => (reply_id, events, sent_at),
                Announcement::Event {
                    reply_id,
                    seq,
                    event,
                } => (reply_id, vec![(seq, event)], None),
            },
        )
    }
}

/// One subscriber's position in one reply.
struct Subscription {
    bus: Arc<BusInner>,
    reply_id: String,
    live: broadcast::Receiver<LiveEvent>,
    resubscribed: watch::Receiver<u64>,
    /// The seq of the last event delivered (or `after_seq`).
    last_seq: u32,
    /// Backlog entries read but not yet delivered; `None` for a malformed
    /// entry, skipped but counted as seen.
    backlog: VecDeque<(u32, Option<String>)>,
    /// Whether the backlog after `last_seq` must be read before live events.
    catching_up: bool,
    /// Set after an error item: the stream ends.
    failed: bool,
}

impl RedisReplyBus {
    /// Connects with the default settings under `prefix`.
    ///
    /// # Errors
    ///
    /// As [`RedisReplyBus::connect_with`].
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        Self::connect_with(RedisReplyBusConfig {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            ..RedisReplyBusConfig::default()
        })
        .await
    }

    /// Connects, and returns once the Pub/Sub connection is subscribed.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if Redis cannot be reached,
    /// [`Error::Internal`] if the URL is malformed.
    pub async fn connect_with(config: RedisReplyBusConfig) -> Result<Self> {
        let client = redis::Client::open(config.url.as_str()).map_err(redis_error)?;
        let commands = ConnectionManager::new(client.clone())
            .await
            .map_err(redis_error)?;
        let channel = format!("{}:reply-events", config.prefix);
        let fan_out = Arc::new(FanOut {
            replies: Mutex::new(HashMap::new()),
            subscriptions: watch::Sender::new(0),
            live_capacity: config.live_capacity.max(1),
        });
        let (ready, subscribed) = oneshot::channel();
        let listener = tokio::spawn(listen(client, channel.clone(), Arc::clone(&fan_out), ready));
        subscribed
            .await
            .map_err(|_| Error::internal("the reply event listener stopped"))??;
        Ok(Self {
            inner: Arc::new(BusInner {
                commands,
                config,
                channel,
                fan_out,
                listener,
            }),
        })
    }

    /// How many replies have subscribers in this process (a gauge).
    pub fn live_replies(&self) -> usize {
        self.inner.fan_out.lock().len()
    }
}

impl RedisReplyBus {
    /// Runs [`PUBLISH`] for `events` (seqs growing), once more if the
    /// connection had dropped (the manager has reconnected since; the
    /// script skips what a first try wrote).
    async fn publish_events(&self, reply_id: &str, events: &[(u32, &str)]) -> Result<()> {
        let Some(&(last_seq, _)) = events.last() else {
            return Ok(());
        };
        let opening = format!(
            "{{\"reply_id\":{},\"sent_at\":{},\"events\":[",
            serde_json::to_string(reply_id).map_err(Error::internal)?,
            unix_micros()
        );
        let mut publish = PUBLISH.prepare_invoke();
        publish
            .key(self.inner.stream_key(reply_id))
            .arg(self.inner.config.max_events)
            .arg(self.inner.config.retention.as_secs().max(1))
            .arg(&self.inner.channel)
            .arg(opening);
        for &(seq, event) in events {
            let quoted = serde_json::to_string(event).map_err(Error::internal)?;
            publish
                .arg(format!("{seq}-1"))
                .arg(seq)
                .arg(event)
                .arg(quoted);
        }
        let mut conn = self.inner.commands.clone();
        let outcome: u8 = match publish.invoke_async(&mut conn).await {
            Err(err) if err.is_connection_dropped() || err.is_io_error() => {
                publish.invoke_async(&mut conn).await.map_err(redis_error)?
            }
            outcome => outcome.map_err(redis_error)?,
        };
        match outcome {
            0 => Err(Error::FailedPrecondition(format!(
                "reply {reply_id} already has an event after seq {last_seq}"
            ))),
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl ReplyBus for RedisReplyBus {
    /// Appends event `seq` of `reply_id` to its backlog and announces it to
    /// every process.
    ///
    /// Publishing the reply's last seq again does nothing and succeeds, so
    /// a publish that failed with [`Error::Unavailable`] (written or not)
    /// can simply be retried.
    ///
    /// # Errors
    ///
    /// [`Error::FailedPrecondition`] (and nothing is written) if the reply
    /// already has an event after `seq`: seqs must grow.
    /// [`Error::Unavailable`] if Redis cannot be reached.
    async fn publish(&self, reply_id: &str, seq: u32, event_json: &str) -> Result<()> {
        self.publish_events(reply_id, &[(seq, event_json)]).await
    }

    /// All of `events` in one script call: one round trip for the events
    /// that queued up while the last publish was on its way.
    ///
    /// # Errors
    ///
    /// As [`RedisReplyBus::publish`], for the last of `events`.
    async fn publish_many(&self, reply_id: &str, events: &[(u32, String)]) -> Result<()> {
        let events: Vec<(u32, &str)> = events
            .iter()
            .map(|(seq, event_json)| (*seq, event_json.as_str()))
            .collect();
        self.publish_events(reply_id, &events).await
    }

    /// The events of `reply_id` with a seq above `after_seq`, in order,
    /// each once: the backlog first, then live ones as they are published.
    /// The stream does not end by itself (events are opaque here: the
    /// caller knows which one is last); an `Err` item, after Redis failed
    /// several times in a row, ends it.
    fn subscribe(
        &self,
        reply_id: &str,
        after_seq: u32,
    ) -> BoxStream<'static, Result<(u32, String)>> {
        let subscription = Subscription {
            // Registered now, before any backlog read.
            live: self.inner.fan_out.register(reply_id),
            resubscribed: self.inner.fan_out.subscriptions.subscribe(),
            bus: Arc::clone(&self.inner),
            reply_id: reply_id.to_owned(),
            last_seq: after_seq,
            backlog: VecDeque::new(),
            catching_up: true,
            failed: false,
        };
        stream::unfold(subscription, |mut subscription| async move {
            let item = subscription.next_event().await?;
            Some((item, subscription))
        })
        .boxed()
    }
}

impl BusInner {
    fn stream_key(&self, reply_id: &str) -> String {
        format!("{}:reply:{reply_id}", self.config.prefix)
    }
}

impl Drop for BusInner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl FanOut {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<LiveEvent>>> {
        self.replies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new receiver of `reply_id`'s live events.
    fn register(&self, reply_id: &str) -> broadcast::Receiver<LiveEvent> {
        self.lock()
            .entry(reply_id.to_owned())
            .or_insert_with(|| broadcast::channel(self.live_capacity).0)
            .subscribe()
    }

    /// Drops `reply_id`'s channel if the caller's receiver, not yet dropped,
    /// is its last. Registration takes the same lock, so none can sneak in.
    fn unregister(&self, reply_id: &str) {
        let mut replies = self.lock();
        if replies
            .get(reply_id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            replies.remove(reply_id);
        }
    }

    /// Hands one announcement to the local subscribers of its reply, if any.
    fn dispatch(&self, message: &redis::Msg) {
        let announced = message
            .get_payload::<String>()
            .map_err(redis_error)
            .and_then(|payload| Announcement::parse(&payload));
        let (reply_id, events, sent_at) = match announced {
            Ok(announced) => announced,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring a malformed reply event");
                return;
            }
        };
        if let Some(sent_at) = sent_at {
            // Across hosts this includes the difference of their clocks.
            let lag = (unix_micros() - sent_at).max(0) as f64 / 1e6;
            metrics::histogram!("switchboard_redis_bus_lag_seconds").record(lag);
        }
        if let Some(sender) = self.lock().get(&reply_id) {
            for (seq, event) in events {
                // Err only if every receiver went since the lookup.
                let _ = sender.send((seq, event.into()));
            }
        }
    }

    /// Relays announcements until the connection is lost; returns why.
    async fn relay(&self, pubsub: PubSub) -> String {
        let (mut sink, mut messages) = pubsub.split();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => self.dispatch(&message),
                    None => return "the connection closed".to_owned(),
                },
                _ = heartbeat.tick() => {
                    match tokio::time::timeout(HEARTBEAT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => return format!("ping failed: {err}"),
                        Err(_) => return "ping timed out".to_owned(),
                    }
                }
            }
        }
    }
}

/// The Pub/Sub task: subscribes, relays, and re-subscribes after a loss
/// (see [`keep_subscribed`]).
async fn listen(
    client: redis::Client,
    channel: String,
    fan_out: Arc<FanOut>,
    ready: oneshot::Sender<Result<()>>,
) {
    let counted = Arc::clone(&fan_out);
    keep_subscribed(
        client,
        channel,
        "reply event",
        ready,
        move || {
            // Subscribers re-read what they may have missed meanwhile.
            counted.subscriptions.send_modify(|count| *count += 1);
            true
        },
        |pubsub| {
            let fan_out = &fan_out;
            async move { Some(fan_out.relay(pubsub).await) }
        },
    )
    .await;
}

impl Subscription {
    /// The next event, `None` once the stream is over.
    async fn next_event(&mut self) -> Option<Result<(u32, String)>> {
        if self.failed {
            return None;
        }
        loop {
            if let Some((seq, event)) = self.backlog.pop_front() {
                if seq > self.last_seq {
                    self.last_seq = seq;
                    if let Some(event) = event {
                        return Some(Ok((seq, event)));
                    }
                }
                continue;
            }
            if self.catching_up {
                match self.read_backlog().await {
                    Ok(more) => self.catching_up = more,
                    Err(err) => {
                        self.failed = true;
                        return Some(Err(err));
                    }
                }
                continue;
            }
            tokio::select! {
                received = self.live.recv() => match received {
                    Ok((seq, event)) if seq > self.last_seq => {
                        self.last_seq = seq;
                        return Some(Ok((seq, event.to_string())));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(reply_id = %self.reply_id, missed, "subscriber lagged; re-reading the backlog");
                        self.catching_up = true;
                    }
                    // The bus is gone: nothing more will come.
                    Err(RecvError::Closed) => return None,
                },
                changed = self.resubscribed.changed() => match changed {
                    Ok(()) => self.catching_up = true,
                    Err(_) => return None,
                },
            }
        }
    }

    /// Reads the next batch of the backlog after `last_seq`, retrying a few
    /// times if Redis is unavailable; `true` if there may be more.
    async fn read_backlog(&mut self) -> Result<bool> {
        let key = self.bus.stream_key(&self.reply_id);
        let start = format!("{}-0", u64::from(self.last_seq) + 1);
        let mut failures = 0;
        let reply = loop {
            let mut conn = self.bus.commands.clone();
            let read: redis::RedisResult<StreamRangeReply> = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(BACKLOG_BATCH)
                .query_async(&mut conn)
                .await;
            match read.map_err(redis_error) {
                Ok(reply) => break reply,
                Err(Error::Unavailable(reason)) if failures + 1 < BACKLOG_ATTEMPTS => {
                    tokio::time::sleep(retry_delay(failures)).await;
                    failures += 1;
                    tracing::debug!(%reason, reply_id = %self.reply_id, "retrying a backlog read");
                }
                Err(err) => return Err(err),
            }
        };
        let more = reply.ids.len() == BACKLOG_BATCH;
        for entry in reply.ids {
            // The entry id is `{seq}-1`.
            let Some(seq) = entry.id.split('-').next().and_then(|ms| ms.parse().ok()) else {
                continue;
            };
            let event = entry.get::<String>("event");
            if event.is_none() {
                tracing::warn!(entry = %entry.id, %key, "skipping a reply event without a body");
            }
            self.backlog.push_back((seq, event));
        }
        Ok(more)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.bus.fan_out.unregister(&self.reply_id);
    }
}

/// How long to wait after `failures` failed attempts in a row: 0.1 s,
/// doubling, at most 5 s.
pub(crate) fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(100 << failures.min(6)).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::Announcement;

    #[test]
    fn an_announcement_carries_its_events_in_order() {
        let payload =
            r#"{"reply_id":"r1","events":[[3,"{\"kind\":\"delta\"}"],[4,"{\"kind\":\"done\"}"]]}"#;
        let (reply_id, events, sent_at) = Announcement::parse(payload).expect("parses");
        assert_eq!(reply_id, "r1");
        assert_eq!(sent_at, None, "an announcement of the previous release");
        assert_eq!(
            events,
            vec![
                (3, r#"{"kind":"delta"}"#.to_owned()),
                (4, r#"{"kind":"done"}"#.to_owned())
            ]
        );
    }

    #[test]
    fn the_previous_releases_one_event_announcement_is_still_read() {
        let payload = r#"{"reply_id":"r1","seq":7,"event":"{\"kind\":\"done\"}"}"#;
        let (reply_id, events, _) = Announcement::parse(payload).expect("parses");
        assert_eq!(reply_id, "r1");
        assert_eq!(events, vec![(7, r#"{"kind":"done"}"#.to_owned())]);
    }

    #[test]
    fn a_malformed_announcement_is_an_error() {
        assert!(Announcement::parse(r#"{"reply_id":"r1"}"#).is_err());
        assert!(Announcement::parse("not json").is_err());
    }
}
