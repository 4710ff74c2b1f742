//! [`CircuitBreaker`]: whether the chatbot engine takes calls, and the
//! limits of every engine call ([`ResilienceConfig`]). The breaker is
//! domain state: the workers' engine wrapper (`ResilientEngine`, in
//! `switchboard-engines`) feeds it, and [`EngineStatus`](crate::chat::EngineStatus)
//! shows it to SendMessage's admission check, readiness and metrics.
//! Time is `tokio::time`, so tests can pause it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// The limits of the workers' engine calls (`ResilientEngine`), with its [`CircuitBreaker`]'s. All
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
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn admit(self: &Arc<Self>) -> Result<BreakerCall> {
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

/// A call let through by a [`CircuitBreaker`], whose outcome it awaits:
/// [`BreakerCall::finished`] records it; dropped without one, a probe
/// frees its slot.
#[derive(Debug)]
pub struct BreakerCall {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    settled: bool,
}

impl BreakerCall {
    /// Records the call's outcome: `failed` for a retryable failure.
    pub fn finished(mut self, failed: bool) {
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
}
