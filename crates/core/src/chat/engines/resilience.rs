//! [`ResilientEngine`]: what stands between the reply workers and a real
//! engine, so that a slow or failing engine costs a bounded amount of time
//! and never takes Switchboard down with it. Per reply, in order:
//!
//! 1. the [`CircuitBreaker`] refuses at once while the engine is known to be
//!    down;
//! 2. a concurrency limit queues the reply, for at most `queue_timeout_ms`;
//! 3. each call to the engine must send its first event within
//!    `call_timeout_ms`, and then never go quiet for longer than that;
//! 4. retryable failures are retried with exponential backoff and full
//!    jitter, but only while nothing has been passed on: text the user
//!    already saw is never replayed;
//! 5. the whole reply, waiting and retries included, ends by
//!    `reply_deadline_ms`.
//!
//! Every number is in [`ResilienceConfig`]. Time is `tokio::time`, so tests
//! can pause it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::stream;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, sleep, timeout_at};

use crate::chat::engine::{EngineEvent, EngineRequest, EngineStream, ReplyEngine};
use crate::error::{Error, Result};

/// The limits of a [`ResilientEngine`], with its [`CircuitBreaker`]'s. All
/// durations are in milliseconds; every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ResilienceConfig {
    /// Key `max_concurrent_calls`: replies generated through the engine at
    /// the same time, at least 1; more wait in line. Default `64`.
    pub max_concurrent_calls: usize,
    /// Key `queue_timeout_ms`: the longest a reply waits in line before it
    /// fails with "engine busy". Default `10000`.
    pub queue_timeout_ms: u64,
    /// Key `call_timeout_ms`: the longest wait for a call's first event, and
    /// between two events. Default `30000`.
    pub call_timeout_ms: u64,
    /// Key `reply_deadline_ms`: the longest a whole reply may take, from its
    /// first poll, waiting and retries included. Default `120000`.
    pub reply_deadline_ms: u64,
    /// Key `max_retries`: calls repeated after a retryable failure before
    /// anything was passed on. Default `2`.
    pub max_retries: u32,
    /// Key `backoff_base_ms`: the first retry waits up to this long, each
    /// next one up to twice as long (full jitter: a random wait between zero
    /// and that). Default `200`.
    pub backoff_base_ms: u64,
    /// Key `backoff_max_ms`: the ceiling of one wait between retries.
    /// Default `5000`.
    pub backoff_max_ms: u64,
    /// Key `failure_threshold`: consecutive failed calls that open the
    /// circuit, at least 1. Default `5`.
    pub failure_threshold: u32,
    /// Key `open_for_ms`: how long an open circuit refuses calls before it
    /// lets one probe through. Default `30000`.
    pub open_for_ms: u64,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 64,
            queue_timeout_ms: 10_000,
            call_timeout_ms: 30_000,
            reply_deadline_ms: 120_000,
            max_retries: 2,
            backoff_base_ms: 200,
            backoff_max_ms: 5_000,
            failure_threshold: 5,
            open_for_ms: 30_000,
        }
    }
}

impl ResilienceConfig {
    /// Checks the values that cannot work.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first bad key.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_concurrent_calls", self.max_concurrent_calls as u64),
            ("call_timeout_ms", self.call_timeout_ms),
            ("reply_deadline_ms", self.reply_deadline_ms),
            ("failure_threshold", u64::from(self.failure_threshold)),
            ("open_for_ms", self.open_for_ms),
        ];
        match positive.into_iter().find(|(_, value)| *value == 0) {
            Some((key, _)) => Err(Error::invalid_argument(key, "must be at least 1")),
            None if self.max_concurrent_calls > Semaphore::MAX_PERMITS => Err(
                Error::invalid_argument("max_concurrent_calls", "is too large"),
            ),
            None => Ok(()),
        }
    }
}

/// What a [`CircuitBreaker`] lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// The engine works: every call goes through.
    Closed,
    /// The engine failed repeatedly: every call is refused until `until`.
    Open {
        /// When the circuit turns half-open.
        until: Instant,
    },
    /// The circuit was open and its time is up: the next call goes through
    /// as a probe, alone; its outcome closes or re-opens the circuit.
    HalfOpen,
}

/// A circuit breaker for one engine: after `failure_threshold` consecutive
/// failed calls it opens and refuses calls for `open_for`, then lets one
/// probe call through, whose success closes it and whose failure opens it
/// again.
///
/// Only retryable failures (the engine down, overloaded or too slow) count;
/// an engine that answers "bad request" is up. The Open → HalfOpen turn
/// happens when it is next looked at ([`state`](Self::state),
/// [`check`](Self::check) or a call).
///
/// State changes are published on a [`tokio::sync::watch`] channel
/// ([`subscribe`](Self::subscribe)) rather than through a callback: readers
/// get the latest state without running code under the breaker's lock, and
/// any number of them (metrics, readiness, a database mirror) can follow it.
#[derive(Debug)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    phase: Mutex<Phase>,
    changes: watch::Sender<BreakerState>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl Phase {
    fn state(self) -> BreakerState {
        match self {
            Self::Closed { .. } => BreakerState::Closed,
            Self::Open { until } => BreakerState::Open { until },
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker that opens after `failure_threshold` (at least 1)
    /// consecutive failures, for `open_for`.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            open_for,
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            changes: watch::Sender::new(BreakerState::Closed),
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.phase().state()
    }

    /// Whether a call would be let through now; what `SendMessage` asks
    /// before accepting a message the engine could not answer.
    ///
    /// # Errors
    /// [`Error::Unavailable`] while the circuit is open, or half-open with
    /// its probe call under way.
    pub fn check(&self) -> Result<()> {
        Self::check_phase(&self.phase())
    }

    /// Follows the state: the receiver sees the current state at once and
    /// each change after it.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.changes.subscribe()
    }

    /// Lets one call through, or refuses it like [`check`](Self::check).
    /// In half-open state the call admitted is the probe.
    fn admit(self: &Arc<Self>) -> Result<BreakerCall> {
        let mut phase = self.phase();
        Self::check_phase(&phase)?;
        let probe = matches!(*phase, Phase::HalfOpen { .. });
        if probe {
            *phase = Phase::HalfOpen { probing: true };
        }
        Ok(BreakerCall {
            breaker: Arc::clone(self),
            probe,
            settled: false,
        })
    }

    fn check_phase(phase: &Phase) -> Result<()> {
        match *phase {
            Phase::Open { until } => Err(circuit_open(
                until.saturating_duration_since(Instant::now()),
            )),
            Phase::HalfOpen { probing: true } => Err(circuit_open(Duration::from_secs(1))),
            Phase::Closed { .. } | Phase::HalfOpen { probing: false } => Ok(()),
        }
    }

    /// Records the outcome of a call. Outcomes of calls admitted before the
    /// circuit opened are ignored while it is open or probing: only the
    /// probe decides.
    fn record(&self, probe: bool, failed: bool) {
        let mut phase = self.phase();
        let next = match (*phase, failed) {
            (Phase::Closed { failures }, true) if failures + 1 >= self.failure_threshold => {
                tracing::warn!(failures = failures + 1, "chatbot engine circuit opened");
                self.opened()
            }
            (Phase::Closed { failures }, true) => Phase::Closed {
                failures: failures + 1,
            },
            (Phase::Closed { .. }, false) => Phase::Closed { failures: 0 },
            (Phase::HalfOpen { .. }, true) if probe => {
                tracing::warn!("chatbot engine probe failed; circuit opened again");
                self.opened()
            }
            (Phase::HalfOpen { .. }, false) if probe => {
                tracing::info!("chatbot engine probe succeeded; circuit closed");
                Phase::Closed { failures: 0 }
            }
            (unchanged, _) => unchanged,
        };
        self.set(&mut phase, next);
    }

    /// Frees the probe slot of a probe that ended without an outcome (its
    /// reply was cancelled), so that the next call probes instead.
    fn release_probe(&self) {
        let mut phase = self.phase();
        if let Phase::HalfOpen { probing: true } = *phase {
            self.set(&mut phase, Phase::HalfOpen { probing: false });
        }
    }

    fn opened(&self) -> Phase {
        Phase::Open {
            until: Instant::now() + self.open_for,
        }
    }

    /// The phase, locked, with an open circuit whose time is up turned
    /// half-open.
    fn phase(&self) -> MutexGuard<'_, Phase> {
        // Nothing panics while the lock is held, so a poisoned lock still
        // guards a consistent phase.
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if let Phase::Open { until } = *phase
            && Instant::now() >= until
        {
            self.set(&mut phase, Phase::HalfOpen { probing: false });
        }
        phase
    }

    fn set(&self, phase: &mut Phase, next: Phase) {
        *phase = next;
        let state = next.state();
        self.changes.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }
}

/// The refusal of an open circuit, with a whole number of seconds to wait.
fn circuit_open(remaining: Duration) -> Error {
    let seconds = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
    Error::Unavailable(format!(
        "the chatbot engine is unavailable (circuit open); try again in {} s",
        seconds.max(1)
    ))
}

/// A call let through by a [`CircuitBreaker`], whose outcome it awaits.
struct BreakerCall {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    settled: bool,
}

impl BreakerCall {
    fn finished(mut self, failed: bool) {
        self.settled = true;
        self.breaker.record(self.probe, failed);
    }
}

impl Drop for BreakerCall {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.release_probe();
        }
    }
}

/// A [`ReplyEngine`] that calls another one within limits (see the module
/// documentation). Clones share the limits and the breaker.
#[derive(Clone)]
pub struct ResilientEngine {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Arc<dyn ReplyEngine>,
    config: ResilienceConfig,
    slots: Arc<Semaphore>,
    breaker: Arc<CircuitBreaker>,
}

impl ResilientEngine {
    /// Wraps `engine`; `config` should have passed
    /// [`ResilienceConfig::validate`].
    pub fn new(engine: Arc<dyn ReplyEngine>, config: ResilienceConfig) -> Self {
        let breaker = CircuitBreaker::new(
            config.failure_threshold,
            Duration::from_millis(config.open_for_ms),
        );
        Self {
            shared: Arc::new(Shared {
                engine,
                slots: Arc::new(Semaphore::new(
                    config.max_concurrent_calls.min(Semaphore::MAX_PERMITS),
                )),
                breaker: Arc::new(breaker),
                config,
            }),
        }
    }

    /// The engine's circuit breaker: [`CircuitBreaker::check`] before
    /// accepting work, [`CircuitBreaker::subscribe`] to follow it.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.shared.breaker
    }
}

impl std::fmt::Debug for ResilientEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientEngine")
            .field("engine", &self.shared.engine.name())
            .field("config", &self.shared.config)
            .field("breaker", &self.shared.breaker.state())
            .finish()
    }
}

impl ReplyEngine for ResilientEngine {
    fn generate(&self, request: EngineRequest) -> EngineStream {
        let reply = Reply {
            shared: Arc::clone(&self.shared),
            request,
            deadline: None,
            slot: None,
            call: None,
            retries: 0,
            passed_on: false,
            finished: false,
        };
        stream::unfold(reply, |mut reply| async move {
            let item = reply.next().await?;
            Some((item, reply))
        })
        .boxed()
    }

    fn name(&self) -> &'static str {
        self.shared.engine.name()
    }
}

/// One reply going through a [`ResilientEngine`].
struct Reply {
    shared: Arc<Shared>,
    request: EngineRequest,
    /// Set on the first poll: a reply waiting to be polled is not late.
    deadline: Option<Instant>,
    /// The concurrency slot, held from the first call to the end, backoff
    /// waits included.
    slot: Option<OwnedSemaphorePermit>,
    /// The engine call under way, with its breaker ticket.
    call: Option<(EngineStream, BreakerCall)>,
    retries: u32,
    /// Whether an event reached the consumer: from then on, no retry.
    passed_on: bool,
    finished: bool,
}

impl Reply {
    async fn next(&mut self) -> Option<Result<EngineEvent>> {
        if self.finished {
            return None;
        }
        let item = self.next_item().await;
        if !matches!(item, Some(Ok(_))) {
            self.finished = true;
            self.call = None;
            self.slot = None;
        }
        item
    }

    async fn next_item(&mut self) -> Option<Result<EngineEvent>> {
        let shared = Arc::clone(&self.shared);
        let (config, name) = (&shared.config, shared.engine.name());
        let call_timeout = Duration::from_millis(config.call_timeout_ms);
        let reply_deadline = Duration::from_millis(config.reply_deadline_ms);
        let deadline = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + reply_deadline);
        loop {
            // Taken out while awaiting it, put back after each event: if the
            // consumer drops the reply meanwhile, the call is dropped with it.
            let (mut events, call) = match self.call.take() {
                Some(call) => call,
                None => match self.start_call(deadline).await {
                    Ok(call) => call,
                    Err(err) => return Some(Err(err)),
                },
            };
            let limit = deadline.min(Instant::now() + call_timeout);
            let err = match timeout_at(limit, events.next()).await {
                Ok(Some(Ok(event))) => {
                    self.passed_on = true;
                    self.call = Some((events, call));
                    return Some(Ok(event));
                }
                Ok(None) => {
                    call.finished(false);
                    return None;
                }
                Ok(Some(Err(err))) => err,
                Err(_) if limit == deadline => Error::Unavailable(format!(
                    "the chatbot engine ({name}) did not finish the reply within {}",
                    human(reply_deadline)
                )),
                Err(_) if self.passed_on => Error::Unavailable(format!(
                    "the chatbot engine ({name}) stopped answering for {}",
                    human(call_timeout)
                )),
                Err(_) => Error::Unavailable(format!(
                    "the chatbot engine ({name}) did not answer within {}",
                    human(call_timeout)
                )),
            };
            drop(events);
            let retryable = is_retryable(&err);
            // A permanent error is an answer: the engine is up.
            call.finished(retryable);
            if !retryable || self.passed_on || self.retries >= config.max_retries {
                return Some(Err(err));
            }
            let backoff = self.backoff();
            if Instant::now() + backoff >= deadline {
                return Some(Err(err));
            }
            self.retries += 1;
            tracing::warn!(
                engine = name,
                retry = self.retries,
                backoff_ms = backoff.as_millis() as u64,
                error = %err,
                "chatbot engine call failed before its first event; retrying"
            );
            sleep(backoff).await;
        }
    }

    /// Starts a call: breaker, then a concurrency slot (once per reply),
    /// then the breaker again (the probe is taken only with a slot in hand).
    async fn start_call(&mut self, deadline: Instant) -> Result<(EngineStream, BreakerCall)> {
        let shared = &self.shared;
        shared.breaker.check()?;
        if self.slot.is_none() {
            let queue_timeout = Duration::from_millis(shared.config.queue_timeout_ms);
            let wait_until = deadline.min(Instant::now() + queue_timeout);
            let slot = timeout_at(wait_until, Arc::clone(&shared.slots).acquire_owned())
                .await
                .map_err(|_| {
                    Error::Unavailable(format!(
                        "the chatbot engine ({}) is busy: {} replies are under way; try again",
                        shared.engine.name(),
                        shared.config.max_concurrent_calls
                    ))
                })?
                .map_err(Error::internal)?;
            self.slot = Some(slot);
        }
        let call = shared.breaker.admit()?;
        Ok((shared.engine.generate(self.request.clone()), call))
    }

    /// The wait before the next retry: full jitter over an exponentially
    /// growing ceiling.
    fn backoff(&self) -> Duration {
        let config = &self.shared.config;
        let ceiling = config
            .backoff_base_ms
            .saturating_mul(1 << self.retries.min(32))
            .min(config.backoff_max_ms);
        Duration::from_millis(rand::random_range(0..=ceiling))
    }
}

/// Whether trying again later may work (SPEC: `Unavailable` and
/// `ResourceExhausted`).
fn is_retryable(err: &Error) -> bool {
    matches!(err, Error::Unavailable(_) | Error::ResourceExhausted { .. })
}

/// `duration` for people: "30 s", or "250 ms" below a second.
fn human(duration: Duration) -> String {
    if duration.subsec_millis() == 0 && duration.as_secs() > 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(3, Duration::from_secs(30)))
    }

    fn fail(breaker: &Arc<CircuitBreaker>) {
        breaker.admit().unwrap().finished(true);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_only() {
        let breaker = breaker();
        fail(&breaker);
        fail(&breaker);
        breaker.admit().unwrap().finished(false); // resets the count
        fail(&breaker);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker);
        let until = Instant::now() + Duration::from_secs(30);
        assert_eq!(breaker.state(), BreakerState::Open { until });
        let refused = breaker.check().unwrap_err().to_string();
        assert!(
            refused.ends_with("(circuit open); try again in 30 s"),
            "{refused}"
        );
        assert!(breaker.admit().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_exactly_one_probe_through() {
        let breaker = breaker();
        (0..3).for_each(|_| fail(&breaker));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(
            breaker
                .check()
                .unwrap_err()
                .to_string()
                .ends_with("try again in 1 s")
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probe = breaker.admit().unwrap();
        assert!(breaker.admit().is_err());
        assert!(breaker.check().is_err());
        probe.finished(false);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_the_circuit_again() {
        let breaker = breaker();
        (0..3).for_each(|_| fail(&breaker));
        tokio::time::advance(Duration::from_secs(30)).await;
        fail(&breaker);
        let until = Instant::now() + Duration::from_secs(30);
        assert_eq!(breaker.state(), BreakerState::Open { until });
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_the_slot_and_stale_outcomes_are_ignored() {
        let breaker = breaker();
        let stale = breaker.admit().unwrap();
        (0..3).for_each(|_| fail(&breaker));
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(breaker.admit().unwrap());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        stale.finished(false); // admitted while closed: not the probe
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn every_change_is_published() {
        let breaker = breaker();
        let mut states = breaker.subscribe();
        (0..3).for_each(|_| fail(&breaker));
        assert!(states.has_changed().unwrap());
        assert!(matches!(
            *states.borrow_and_update(),
            BreakerState::Open { .. }
        ));
        tokio::time::advance(Duration::from_secs(30)).await;
        breaker.admit().unwrap().finished(false);
        assert!(states.has_changed().unwrap());
        assert_eq!(*states.borrow_and_update(), BreakerState::Closed);
    }

    #[test]
    fn defaults_are_valid_and_zeros_are_not() {
        assert!(ResilienceConfig::default().validate().is_ok());
        let config = ResilienceConfig {
            call_timeout_ms: 0,
            ..ResilienceConfig::default()
        };
        assert!(
            matches!(config.validate(), Err(Error::InvalidArgument { field, .. }) if field == "call_timeout_ms")
        );
        let config: ResilienceConfig = serde_json::from_str(r#"{"max_retries": 0}"#).unwrap();
        assert_eq!((config.max_retries, config.failure_threshold), (0, 5));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(30)), "30 s");
        assert_eq!(human(Duration::from_millis(250)), "250 ms");
    }
}
