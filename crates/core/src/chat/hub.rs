//! The in-process event bus of replies being generated.
//!
//! Each reply has an append-only log of its events inside a
//! `tokio::sync::watch` channel: the generator appends and the channel wakes
//! subscribers, and each subscriber keeps its own cursor (an index into the
//! log) and clones one event at a time as it is polled. A slow client
//! therefore costs nothing but its cursor: the server never queues copies
//! per subscriber, and never drops an event. A finished log stays for a
//! short retention (so late subscribers need no database read) and is then
//! dropped; replies that finished longer ago are replayed from the database.
//!
//! With a [`ReplyBus`] ([`ReplyHub::with_bus`]; Redis in production), every
//! event a generator appends is also published on the bus, and subscribers follow replies from
//! the bus (see [`Chat::subscribe_reply`](crate::chat::Chat::subscribe_reply)),
//! so a client on one instance gets the reply a worker elsewhere generates.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

use crate::chat::bus::ReplyBus;
use crate::chat::events::{ReplyEvent, ReplyEventKind, attempt_base};
use crate::chat::wire;
use crate::error::Error;

/// The live event logs of replies, keyed by reply id.
#[derive(Debug)]
pub struct ReplyHub {
    logs: Mutex<HashMap<String, Arc<ReplyLog>>>,
    retention: Duration,
    /// When expired logs were last dropped: the sweep walks every log, so
    /// it runs at most once per [`SWEEP_INTERVAL`] (or per retention, if
    /// shorter), not on every call.
    swept_at: Mutex<Instant>,
    /// Where events also go, for subscribers on other instances.
    bus: Option<Arc<dyn ReplyBus>>,
    /// The ids of conversations that got a new reply in this process: a
    /// hint for their followers, who then read the new replies from the
    /// database.
    new_replies: tokio::sync::broadcast::Sender<String>,
}

/// Announcements of new replies kept for followers that are behind; one
/// that falls further behind reads the database instead.
const NEW_REPLY_HINTS: usize = 256;

/// How often publishing an event to the bus is tried.
const BUS_ATTEMPTS: u32 = 3;

/// At most this many events go to the bus in one publish.
const FORWARD_BATCH: usize = 256;

/// How often expired logs are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct ReplyLog {
    state: watch::Sender<LogState>,
    cancel: watch::Sender<bool>,
}

#[derive(Debug)]
struct LogState {
    events: Vec<ReplyEvent>,
    /// When the terminal event was appended.
    finished_at: Option<Instant>,
    /// When the log was created or last appended to.
    touched_at: Instant,
}

/// Appends the events of one attempt at a reply; held by the generator
/// that claimed it.
#[derive(Debug)]
pub(crate) struct ReplyPublisher {
    log: Arc<ReplyLog>,
    /// The queue of the task that publishes this attempt's events to the
    /// bus, when events go to other instances too ([`Forwarder`]).
    forward: Option<Forwarder>,
    /// The seq of the last event this publisher appended (or of the event
    /// before its first).
    last_seq: std::sync::atomic::AtomicU32,
}

/// Publishes one attempt's events to the bus from a task of its own, so
/// the generator does not wait for a round trip to the bus per token: the
/// events that queue up while one publish is on its way go in the next, all
/// at once ([`ReplyBus::publish_many`]), in order. The final event waits
/// until everything before it and itself are published.
#[derive(Debug)]
struct Forwarder {
    /// The queue and the task draining it; taken by [`Forwarder::finish`].
    running: Mutex<Option<ForwarderTask>>,
}

type ForwarderTask = (
    tokio::sync::mpsc::UnboundedSender<(u32, String)>,
    tokio::task::JoinHandle<()>,
);

impl Forwarder {
    fn start(bus: Arc<dyn ReplyBus>, reply_id: String) -> Self {
        let (queue, mut events) = tokio::sync::mpsc::unbounded_channel::<(u32, String)>();
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while events.recv_many(&mut batch, FORWARD_BATCH).await > 0 {
                publish_with_retries(bus.as_ref(), &reply_id, &batch).await;
                batch.clear();
            }
        });
        Self {
            running: Mutex::new(Some((queue, task))),
        }
    }

    /// Queues an event for the bus.
    fn send(&self, seq: u32, kind: &ReplyEventKind) {
        if let Some((queue, _)) = lock(&self.running).as_ref() {
            let _ = queue.send((seq, wire::encode(kind)));
        }
    }

    /// Closes the queue and waits until the task has published it all.
    async fn finish(&self) {
        let running = lock(&self.running).take();
        if let Some((queue, task)) = running {
            drop(queue);
            let _ = task.await;
        }
    }
}

/// Publishes `events` of `reply_id` to the bus, trying a few times over a
/// blip. A failure is logged: subscribers elsewhere then get the reply from
/// the database once it has finished.
async fn publish_with_retries(bus: &dyn ReplyBus, reply_id: &str, events: &[(u32, String)]) {
    let first = events.first().map_or(0, |(seq, _)| *seq);
    for attempt in 1..=BUS_ATTEMPTS {
        match bus.publish_many(reply_id, events).await {
            Ok(()) => return,
            Err(Error::Unavailable(reason)) if attempt < BUS_ATTEMPTS => {
                tracing::warn!(%reply_id, seq = first, %reason, "cannot publish the reply events; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => {
                tracing::warn!(%reply_id, seq = first, error = %err, "cannot publish the reply events");
                return;
            }
        }
    }
}

/// Locks `mutex`, also when a panic poisoned it (what it guards stays whole).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The events of one reply, as a stream that ends after the final event
/// (`Done` or `Error`).
pub struct ReplyStream {
    inner: BoxStream<'static, ReplyEvent>,
}

impl Default for ReplyHub {
    fn default() -> Self {
        Self::new(Self::DEFAULT_RETENTION)
    }
}

impl ReplyHub {
    /// How long a finished reply's log stays in memory by default.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(60);

    /// A hub that keeps finished logs for `retention`.
    pub fn new(retention: Duration) -> Self {
        Self {
            logs: Mutex::new(HashMap::new()),
            retention,
            swept_at: Mutex::new(Instant::now()),
            bus: None,
            new_replies: tokio::sync::broadcast::Sender::new(NEW_REPLY_HINTS),
        }
    }

    /// Tells this process's followers of `conversation_id` that it has a
    /// new reply.
    pub(crate) fn announce_reply(&self, conversation_id: &str) {
        // No receivers is fine: nobody follows a conversation here.
        let _ = self.new_replies.send(conversation_id.to_owned());
    }

    /// The conversation ids of new replies announced in this process.
    pub(crate) fn new_replies(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.new_replies.subscribe()
    }

    /// A hub that also publishes every event to `bus`.
    pub fn with_bus(bus: Arc<dyn ReplyBus>) -> Self {
        Self {
            bus: Some(bus),
            ..Self::default()
        }
    }

    /// The bus, if events travel between instances.
    pub fn bus(&self) -> Option<&Arc<dyn ReplyBus>> {
        self.bus.as_ref()
    }

    /// The log of `reply_id`, created empty if there is none yet, so a
    /// subscriber that comes before the generator waits on the same log.
    pub(crate) fn open(&self, reply_id: &str) -> Arc<ReplyLog> {
        let mut logs = self.lock_and_sweep();
        logs.entry(reply_id.to_owned())
            .or_insert_with(|| Arc::new(ReplyLog::new()))
            .clone()
    }

    /// Starts publishing attempt `attempt` (from 1) of `reply_id`. The log
    /// is kept while it has not finished, so subscribers follow an attempt
    /// that takes over from one that stopped: a later attempt first appends
    /// a `Reset`. A finished log (a reply an operator retried) is replaced.
    pub(crate) async fn begin(&self, reply_id: &str, attempt: u32) -> ReplyPublisher {
        let log = self.begin_log(reply_id);
        let base = attempt_base(attempt);
        let publisher = ReplyPublisher {
            log,
            forward: self
                .bus
                .clone()
                .map(|bus| Forwarder::start(bus, reply_id.to_owned())),
            last_seq: std::sync::atomic::AtomicU32::new(base),
        };
        if attempt > 1 {
            let reset = ReplyEventKind::Reset { attempt };
            publisher.push(ReplyEvent {
                seq: base,
                kind: reset.clone(),
            });
            publisher.forward(base, &reset);
        }
        publisher
    }

    fn begin_log(&self, reply_id: &str) -> Arc<ReplyLog> {
        let mut logs = self.lock_and_sweep();
        logs.entry(reply_id.to_owned())
            .and_modify(|log| {
                if log.is_finished() {
                    *log = Arc::new(ReplyLog::new());
                }
            })
            .or_insert_with(|| Arc::new(ReplyLog::new()))
            .clone()
    }

    /// Asks the generator of `reply_id` in this process, if any, to stop;
    /// it ends the reply as cancelled. Returns false if no attempt at the
    /// reply is under way here. (A generator elsewhere, or one that has not
    /// begun, learns of the cancel from the database.)
    pub fn cancel(&self, reply_id: &str) -> bool {
        let Some(log) = self.lock().get(reply_id).cloned() else {
            return false;
        };
        if log.is_finished() {
            return false;
        }
        log.cancel.send_replace(true);
        true
    }

    /// A publisher for the log of `reply_id` if subscribers are waiting on
    /// it and nothing has been published yet: for settling a reply that no
    /// generator here will produce.
    pub(crate) fn waiting(&self, reply_id: &str) -> Option<ReplyPublisher> {
        let logs = self.lock();
        let log = logs.get(reply_id)?;
        let state = log.state.borrow();
        (state.events.is_empty() && state.finished_at.is_none())
            .then(|| ReplyPublisher::continuing(log.clone()))
    }

    /// Ends every unfinished log with `kind`, so no subscriber waits on a
    /// reply this process will not finish (at shutdown).
    pub(crate) fn close_unfinished(&self, kind: &ReplyEventKind) -> usize {
        let unfinished: Vec<Arc<ReplyLog>> = self
            .lock()
            .values()
            .filter(|log| !log.is_finished())
            .cloned()
            .collect();
        for log in &unfinished {
            let publisher = ReplyPublisher::continuing(log.clone());
            publisher.push_next(kind.clone());
        }
        unfinished.len()
    }

    /// Drops every finished log now, whatever its age: later subscribers
    /// get the reply rebuilt from the database, as after a restart. For
    /// tests and for memory pressure.
    pub fn evict_finished(&self) {
        let mut logs = self.lock();
        logs.retain(|_, log| log.state.borrow().finished_at.is_none());
    }

    /// The number of logs in memory.
    pub fn live_logs(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<ReplyLog>>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (each operation is a single map call), so poisoning is ignored.
        self.logs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_and_sweep(&self) -> MutexGuard<'_, HashMap<String, Arc<ReplyLog>>> {
        let mut logs = self.lock();
        {
            let mut swept_at = self
                .swept_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if swept_at.elapsed() < self.retention.min(SWEEP_INTERVAL) {
                return logs;
            }
            *swept_at = Instant::now();
        }
        let retention = self.retention;
        logs.retain(|_, log| {
            let state = log.state.borrow();
            match state.finished_at {
                Some(at) => at.elapsed() < retention,
                // An unfinished log nobody holds or follows any more (its
                // attempt was released or taken over elsewhere) goes too.
                None => {
                    Arc::strong_count(log) > 1
                        || log.state.receiver_count() > 0
                        || state.touched_at.elapsed() < retention
                }
            }
        });
        logs
    }
}

impl ReplyLog {
    fn new() -> Self {
        Self {
            state: watch::Sender::new(LogState {
                events: Vec::new(),
                finished_at: None,
                touched_at: Instant::now(),
            }),
            cancel: watch::Sender::new(false),
        }
    }

    /// Whether the terminal event is in the log.
    pub(crate) fn is_finished(&self) -> bool {
        self.state.borrow().finished_at.is_some()
    }

    /// The events with a seq greater than `after_seq`, then the live ones,
    /// ending after the terminal event.
    pub(crate) fn stream(&self, after_seq: u32) -> ReplyStream {
        let rx = self.state.subscribe();
        ReplyStream::new(stream::unfold(
            Some((rx, 0usize)),
            move |cursor| async move {
                let (mut rx, mut next) = cursor?;
                loop {
                    // Clone one event under the lock; never hold it across await.
                    let step = {
                        let log = rx.borrow_and_update();
                        while log.events.get(next).is_some_and(|e| e.seq <= after_seq) {
                            next += 1;
                        }
                        match log.events.get(next) {
                            Some(event) => Some(Some(event.clone())),
                            None if log.finished_at.is_some() => Some(None),
                            None => None,
                        }
                    };
                    match step {
                        Some(Some(event)) => {
                            next += 1;
                            let rest = (!event.is_terminal()).then_some((rx, next));
                            return Some((event, rest));
                        }
                        Some(None) => return None,
                        // The hub dropped the unfinished log (a newer attempt
                        // replaced it): this stream cannot continue.
                        None => rx.changed().await.ok()?,
                    }
                }
            },
        ))
    }
}

impl ReplyPublisher {
    /// A publisher appending after the last event of `log` (settling a
    /// reply no generator here produces, or ending it at shutdown).
    /// Appends a stored event with its own seq, for this process's
    /// subscribers only (a replay of a finished reply).
    pub(crate) fn replay(&self, event: ReplyEvent) {
        self.push(event);
    }

    /// This process's subscribers only: the bus is not told.
    fn continuing(log: Arc<ReplyLog>) -> Self {
        let last = log.state.borrow().events.last().map_or(0, |e| e.seq);
        Self {
            log,
            forward: None,
            last_seq: std::sync::atomic::AtomicU32::new(last),
        }
    }

    /// Appends the next piece of text; returns its seq.
    pub(crate) async fn delta(&self, text: String) -> u32 {
        self.append(ReplyEventKind::Delta(text)).await
    }

    /// Appends any event (a replay of a stored reply); returns its seq.
    pub(crate) async fn publish(&self, kind: ReplyEventKind) -> u32 {
        self.append(kind).await
    }

    /// Appends the final event; the log accepts nothing after it.
    pub(crate) async fn finish(&self, kind: ReplyEventKind) -> u32 {
        self.append(kind).await
    }

    async fn append(&self, kind: ReplyEventKind) -> u32 {
        let terminal = matches!(kind, ReplyEventKind::Done(_) | ReplyEventKind::Error { .. });
        let seq = self.push_next(kind.clone());
        self.forward(seq, &kind);
        if terminal && let Some(forwarder) = &self.forward {
            forwarder.finish().await;
        }
        seq
    }

    /// Appends to this process's log only; returns the seq.
    fn push_next(&self, kind: ReplyEventKind) -> u32 {
        let seq = self
            .last_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(1);
        self.push(ReplyEvent { seq, kind });
        seq
    }

    /// Queues the event for the bus, if there is one.
    fn forward(&self, seq: u32, kind: &ReplyEventKind) {
        if let Some(forwarder) = &self.forward {
            forwarder.send(seq, kind);
        }
    }

    /// Appends `event` unless the log has finished or already holds an
    /// event at or after its seq.
    fn push(&self, event: ReplyEvent) {
        self.log.state.send_if_modified(|log| {
            if log.finished_at.is_some() || log.events.last().is_some_and(|e| e.seq >= event.seq) {
                return false;
            }
            if event.is_terminal() {
                log.finished_at = Some(Instant::now());
            }
            log.touched_at = Instant::now();
            log.events.push(event);
            true
        });
    }

    /// Resolves once someone asks for the reply to be cancelled.
    pub(crate) async fn cancelled(&self) {
        let mut rx = self.log.cancel.subscribe();
        // The sender lives in the log, which this publisher holds: the wait
        // only ends by a cancel request.
        let _ = rx.wait_for(|cancelled| *cancelled).await;
    }
}

impl ReplyStream {
    /// Wraps any stream of events.
    pub fn new(stream: impl Stream<Item = ReplyEvent> + Send + 'static) -> Self {
        Self {
            inner: stream.boxed(),
        }
    }

    /// Reply events as the Redis bus delivers them (seq and JSON), ending
    /// after the final one. If the bus fails for good, the stream ends with
    /// a retryable `UNAVAILABLE` error: the client resumes from its last seq.
    pub(crate) fn from_bus(
        events: BoxStream<'static, crate::error::Result<(u32, String)>>,
    ) -> Self {
        Self::new(stream::unfold(Some(events), |events| async move {
            let mut events = events?;
            let event = match events.next().await? {
                Ok((seq, json)) => wire::decode(seq, &json).unwrap_or_else(|err| ReplyEvent {
                    seq,
                    kind: ReplyEventKind::Error {
                        code: "INTERNAL".to_owned(),
                        message: err.public_message(),
                    },
                }),
                Err(err) => {
                    tracing::warn!(error = %err, "the reply bus failed a subscriber");
                    ReplyEvent {
                        seq: 0,
                        kind: ReplyEventKind::Error {
                            code: "UNAVAILABLE".to_owned(),
                            message: "the live stream was interrupted; resume from the last seq"
                                .to_owned(),
                        },
                    }
                }
            };
            let rest = (!event.is_terminal()).then_some(events);
            Some((event, rest))
        }))
    }

    /// The events of `events` with a seq greater than `after_seq`.
    pub fn from_events(events: Vec<ReplyEvent>, after_seq: u32) -> Self {
        Self::new(stream::iter(
            events
                .into_iter()
                .filter(move |event| event.seq > after_seq),
        ))
    }
}

impl Stream for ReplyStream {
    type Item = ReplyEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ReplyEvent>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for ReplyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyStream")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(seq: u32, text: &str) -> ReplyEvent {
        ReplyEvent {
            seq,
            kind: ReplyEventKind::Delta(text.into()),
        }
    }

    fn failed() -> ReplyEventKind {
        ReplyEventKind::Error {
            code: "UNAVAILABLE".into(),
            message: "x".into(),
        }
    }

    #[tokio::test]
    async fn subscribers_follow_live_events_from_their_own_cursor() {
        let hub = ReplyHub::default();
        let early = hub.open("r").stream(0);
        let publisher = hub.begin("r", 1).await;
        publisher.delta("a".into()).await;
        publisher.delta("b".into()).await;
        let late = hub.open("r").stream(1);
        publisher.finish(failed()).await;
        let early: Vec<_> = early.collect().await;
        let late: Vec<_> = late.collect().await;
        assert_eq!(early[..2], [delta(1, "a"), delta(2, "b")]);
        assert_eq!(early.len(), 3);
        assert_eq!(late[0], delta(2, "b"));
        assert_eq!(late.len(), 2);
    }

    #[tokio::test]
    async fn a_later_attempt_resets_the_log_its_subscribers_follow() {
        let hub = ReplyHub::default();
        let first = hub.begin("r", 1).await;
        first.delta("a".into()).await;
        let follower = hub.open("r").stream(0);
        let resumed = hub.open("r").stream(1);
        drop(first);
        let second = hub.begin("r", 2).await;
        second.delta("b".into()).await;
        second.finish(failed()).await;
        let seqs = |events: Vec<ReplyEvent>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let base = crate::chat::ATTEMPT_SEQ_SPAN;
        assert_eq!(
            seqs(follower.collect().await),
            [1, base, base + 1, base + 2]
        );
        let resumed: Vec<_> = resumed.collect().await;
        assert_eq!(resumed[0].kind, ReplyEventKind::Reset { attempt: 2 });
        assert_eq!(resumed[1], delta(base + 1, "b"));
    }

    #[tokio::test]
    async fn finished_logs_are_evicted_after_retention() {
        let hub = ReplyHub::new(Duration::ZERO);
        hub.begin("r", 1).await.finish(failed()).await;
        assert_eq!(hub.live_logs(), 1);
        hub.open("other");
        assert_eq!(hub.live_logs(), 1, "the finished log is swept");
        hub.evict_finished();
        assert_eq!(hub.live_logs(), 1, "unfinished logs stay");
    }

    #[tokio::test]
    async fn cancel_reaches_a_running_publisher_and_creates_no_log() {
        let hub = ReplyHub::default();
        assert!(!hub.cancel("r"), "nothing runs here");
        assert_eq!(hub.live_logs(), 0);
        let publisher = hub.begin("r", 1).await;
        assert!(hub.cancel("r"));
        tokio::time::timeout(Duration::from_secs(1), publisher.cancelled())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn abandoned_unfinished_logs_are_swept() {
        let hub = ReplyHub::new(Duration::ZERO);
        let publisher = hub.begin("released", 1).await;
        publisher.delta("a".into()).await;
        let followed = hub.open("followed").stream(0);
        drop(publisher);
        std::thread::sleep(SWEEP_INTERVAL.min(Duration::from_millis(5)));
        hub.open("other");
        assert_eq!(
            hub.live_logs(),
            2,
            "the released log goes; the followed one stays"
        );
        drop(followed);
    }
}
