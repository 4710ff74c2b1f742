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

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream;
use switchboard_core::chat::{
    BreakerCall, CircuitBreaker, EngineEvent, EngineRequest, EngineStream, ReplyEngine,
    ResilienceConfig,
};
use switchboard_core::{Error, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep, timeout_at};

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

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(30)), "30 s");
        assert_eq!(human(Duration::from_millis(250)), "250 ms");
    }
}
