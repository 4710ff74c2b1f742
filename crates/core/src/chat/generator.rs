//! Generating one reply: the unit of work behind a `generate_reply` job
//! ([`ReplyJob`]), on whichever worker takes it. It claims the reply under a
//! lease (one attempt at a time), streams the engine's text into the hub,
//! and stores the outcome, including the boundaries of the pieces so the
//! events can be replayed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::cache::{Caches, Invalidation};
use crate::chat::engine::{EngineEvent, EngineRequest, ReplyEngine, Usage};
use crate::chat::events::{self, CANCELLED_CODE, CANCELLED_MESSAGE, ReplyEventKind};
use crate::chat::hub::{ReplyHub, ReplyPublisher};
use crate::chat::model::{Message, MessageStatus};
use crate::chat::queue::ReplyJob;
use crate::chat::store::{self, ReplyEnding};
use crate::db::Database;
use crate::error::{Error, Result};
use crate::tasks::AbortOnDrop;
use crate::telemetry;

/// How many earlier messages the engine sees.
const HISTORY_LIMIT: u32 = 100;

/// The waits between attempts to store a finished reply.
const STORE_RETRY_DELAYS: &[Duration] = &[
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// How often an attempt renews its lease on the reply and looks for a
/// cancel request made on another instance.
const RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// Generates replies: claims, streams, stores.
pub struct ReplyGenerator {
    db: Database,
    hub: Arc<ReplyHub>,
    engine: Arc<dyn ReplyEngine>,
    lease: Duration,
    /// Told that a stored reply moved its conversation's `updated_at`.
    caches: Arc<Caches>,
}

/// What [`ReplyGenerator::generate`] did.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GenerateOutcome {
    /// The reply was generated and stored complete.
    Completed,
    /// The reply was cancelled; stored cancelled.
    Cancelled,
    /// Nothing to do: the reply is not pending (another worker has it, it
    /// has finished, or it was deleted), or another attempt took it over.
    Skipped,
    /// The engine failed and this was the last attempt, or the failure was
    /// permanent: the reply is stored failed.
    Failed {
        /// What went wrong.
        reason: String,
        /// Whether a later attempt might have worked.
        retryable: bool,
    },
    /// The engine failed in a way worth retrying: the reply is pending
    /// again, for the job's next attempt.
    Released {
        /// What went wrong.
        reason: String,
    },
}

/// Where the event loop stopped.
enum Stop {
    End,
    Failed(Error),
    Cancelled,
    /// The lease was lost: another attempt holds the reply now.
    Lost,
}

impl std::fmt::Debug for ReplyGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyGenerator")
            .field("engine", &self.engine.name())
            .finish_non_exhaustive()
    }
}

/// Whether a failure may pass if tried again.
pub(crate) fn is_retryable(err: &Error) -> bool {
    matches!(err, Error::Unavailable(_) | Error::ResourceExhausted { .. })
}

impl ReplyGenerator {
    /// The default time an attempt holds a reply without renewing.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

    /// A generator writing to `db`, publishing to `hub`, asking `engine`;
    /// an attempt whose worker dies releases the reply after `lease`.
    pub fn new(
        db: Database,
        hub: Arc<ReplyHub>,
        engine: Arc<dyn ReplyEngine>,
        lease: Duration,
    ) -> Self {
        Self {
            db,
            hub,
            engine,
            lease,
            caches: Arc::new(Caches::new()),
        }
    }

    /// Invalidates the conversation of each stored reply in `caches` (the
    /// chat service's, whose bus tells every instance).
    #[must_use]
    pub fn with_caches(mut self, caches: Arc<Caches>) -> Self {
        self.caches = caches;
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<dyn ReplyEngine> {
        &self.engine
    }

    /// Generates the reply of `job`, if it is pending or its last attempt
    /// was abandoned. Safe to call more than once and from several workers
    /// at the same time: the claim (conditional in SQL) lets exactly one
    /// attempt run, and every write of an attempt is conditional on still
    /// holding the reply, so the stored reply is written once.
    ///
    /// `last_attempt` says whether a retryable engine failure ends the
    /// reply (stored failed) or releases it for the job's next attempt.
    ///
    /// # Errors
    ///
    /// A database error while claiming or storing. An engine failure is not
    /// an error here: it is an outcome.
    pub async fn generate(&self, job: &ReplyJob, last_attempt: bool) -> Result<GenerateOutcome> {
        let span = telemetry::traced(|| {
            tracing::info_span!(
                "generate_reply",
                switchboard.reply_id = %job.reply_id,
                switchboard.conversation_id = %job.conversation_id,
                switchboard.reply.outcome = tracing::field::Empty,
            )
        });
        let outcome = self
            .attempt(job, last_attempt)
            .instrument(span.clone())
            .await;
        let label = match &outcome {
            Ok(outcome) => outcome_label(outcome),
            Err(_) => "error",
        };
        span.record("switchboard.reply.outcome", label);
        metrics::counter!("switchboard_replies_total", "engine" => self.engine.name(), "outcome" => label)
            .increment(1);
        outcome
    }

    /// One attempt at the reply of `job`: see [`ReplyGenerator::generate`].
    async fn attempt(&self, job: &ReplyJob, last_attempt: bool) -> Result<GenerateOutcome> {
        // The first claim and the history are read at once (the history
        // does not change with the claim; on PostgreSQL in one statement):
        // one database round trip less before the first token. A claim that has to wait for an earlier
        // attempt's lease reads the history again after it.
        let now = store::now();
        let (first, history) = store::claim_reply_with_history(
            &self.db,
            &job.conversation_id,
            &job.reply_id,
            now,
            now + self.lease,
            HISTORY_LIMIT,
        )
        .instrument(self.db.span("claim_reply"))
        .await;
        let (claimed, history) = match first? {
            Some(claimed) => (claimed, history),
            None => {
                let Some(claimed) = self.claim(job).await? else {
                    self.settle_waiting(job).await?;
                    return Ok(GenerateOutcome::Skipped);
                };
                let history = store::history(&self.db, &claimed.message, HISTORY_LIMIT).await;
                (claimed, history)
            }
        };
        let reply = &claimed.message;
        let attempt = claimed.attempt;
        let publisher = self.hub.begin(&reply.id, attempt).await;
        let (lost_tx, lost_rx) = oneshot::channel();
        let _renewal = AbortOnDrop(tokio::spawn(renew(
            self.db.clone(),
            self.hub.clone(),
            reply.id.clone(),
            attempt,
            self.lease,
            lost_tx,
        )));
        let mut streamed = Streamed::default();
        let stop = match history {
            Ok(history) => {
                let span = self.engine_span(attempt);
                let started = Instant::now();
                let request = EngineRequest {
                    conversation_id: reply.conversation_id.clone(),
                    reply_id: reply.id.clone(),
                    attempt,
                    history,
                    trace_fields: telemetry::propagation_fields(&span),
                };
                let stop = self
                    .stream(request, &publisher, lost_rx, &mut streamed)
                    .instrument(span.clone())
                    .await;
                record_engine_end(&span, &stop, &streamed);
                self.count_engine_call(&stop, &streamed, started.elapsed());
                stop
            }
            Err(err) => Stop::Failed(err),
        };
        drop(_renewal);
        let (status, error, outcome) = match stop {
            Stop::Lost => {
                tracing::warn!(reply_id = %reply.id, attempt, "another attempt took the reply over");
                return Ok(GenerateOutcome::Skipped);
            }
            Stop::End => (MessageStatus::Complete, None, GenerateOutcome::Completed),
            Stop::Failed(err) if is_retryable(&err) && !last_attempt => {
                tracing::info!(reply_id = %reply.id, attempt, error = %err, "reply attempt failed; it is retried");
                if !store::release_reply(&self.db, &reply.id, attempt, store::now()).await? {
                    return Ok(GenerateOutcome::Skipped);
                }
                return Ok(GenerateOutcome::Released {
                    reason: err.to_string(),
                });
            }
            Stop::Failed(err) => {
                tracing::warn!(reply_id = %reply.id, attempt, error = %err, "reply generation failed");
                let error = (err.grpc_code_name().to_owned(), err.public_message());
                let outcome = GenerateOutcome::Failed {
                    reason: err.to_string(),
                    retryable: is_retryable(&err),
                };
                (MessageStatus::Failed, Some(error), outcome)
            }
            Stop::Cancelled => {
                let error = (CANCELLED_CODE.to_owned(), CANCELLED_MESSAGE.to_owned());
                (
                    MessageStatus::Cancelled,
                    Some(error),
                    GenerateOutcome::Cancelled,
                )
            }
        };
        let ending = ReplyEnding {
            content: &streamed.content,
            delta_lengths: &streamed.lengths,
            status,
            error: error.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
            usage: streamed.usage,
        };
        let stored = match self
            .store_ending(&reply.id, attempt, &ending)
            .instrument(self.db.span("finish_reply"))
            .await
        {
            Ok(stored) => stored,
            Err(err) => {
                // Subscribers must not wait forever; the reply stays
                // streaming, and its job is taken again when the lease runs out.
                publisher
                    .finish(ReplyEventKind::Error {
                        code: "UNAVAILABLE".to_owned(),
                        message: "the reply could not be stored".to_owned(),
                    })
                    .await;
                return Err(err);
            }
        };
        let Some(message) = stored else {
            tracing::warn!(reply_id = %reply.id, attempt, "the reply was deleted or taken over while it was generated");
            return Ok(GenerateOutcome::Skipped);
        };
        if let Some(usage) = streamed.usage {
            publisher.publish(ReplyEventKind::Usage(usage)).await;
        }
        let terminal = match error {
            None => ReplyEventKind::Done(message),
            Some((code, message)) => ReplyEventKind::Error { code, message },
        };
        publisher.finish(terminal).await;
        Ok(outcome)
    }

    /// Claims the reply of `job` for a new attempt. A reply still held by
    /// the lease of an attempt whose worker died (the job's own lease can
    /// run out first) is waited for, up to two leases, rather than given up:
    /// `None` means the reply is finished, deleted, or held by a live worker.
    async fn claim(&self, job: &ReplyJob) -> Result<Option<store::StoredMessage>> {
        let give_up = tokio::time::Instant::now() + self.lease * 2;
        loop {
            let now = store::now();
            if let Some(claimed) =
                store::claim_reply(&self.db, &job.reply_id, now, now + self.lease).await?
            {
                return Ok(Some(claimed));
            }
            let held_until = store::reply_lease(&self.db, &job.reply_id).await?;
            let Some(until) = held_until.filter(|until| *until > now) else {
                return Ok(None);
            };
            let wait = (until - now).to_std().unwrap_or_default() + Duration::from_millis(50);
            if tokio::time::Instant::now() + wait > give_up {
                return Ok(None);
            }
            tracing::info!(reply_id = %job.reply_id, ?wait, "the reply is held by an earlier attempt's lease; waiting for it");
            tokio::time::sleep(wait).await;
        }
    }

    /// Ends every reply this process has not finished for its subscribers,
    /// with UNAVAILABLE: at shutdown, so no stream waits on a reply that will
    /// only be generated after the next start.
    pub fn close_unfinished(&self) {
        let closed = self.hub.close_unfinished(&ReplyEventKind::Error {
            code: "UNAVAILABLE".to_owned(),
            message: "the server is shutting down; the reply is finished after it restarts"
                .to_owned(),
        });
        if closed > 0 {
            tracing::info!(closed, "ended the streams of unfinished replies");
        }
    }

    /// Stores the end of a reply, retrying a few times over a few seconds
    /// when the database is briefly unavailable, so a blip does not leave a
    /// finished reply streaming until the next restart.
    async fn store_ending(
        &self,
        reply_id: &str,
        attempt: u32,
        ending: &ReplyEnding<'_>,
    ) -> Result<Option<Message>> {
        let mut delays = STORE_RETRY_DELAYS.iter();
        loop {
            match store::finish_reply(&self.db, reply_id, attempt, ending, store::now()).await {
                Err(Error::Unavailable(reason)) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(%reply_id, %reason, "storing the reply failed; retrying");
                        tokio::time::sleep(*delay).await;
                    }
                    None => return Err(Error::Unavailable(reason)),
                },
                other => {
                    if let Ok(Some(message)) = &other {
                        self.caches.invalidate(Invalidation::Conversation {
                            id: message.conversation_id.clone(),
                        });
                    }
                    return other;
                }
            }
        }
    }

    /// Ends the wait of subscribers of a reply this call did not claim: one
    /// that was deleted, or already finished (its events are replayed from
    /// the database). A reply another worker is generating is left to it.
    async fn settle_waiting(&self, job: &ReplyJob) -> Result<()> {
        let Some(publisher) = self.hub.waiting(&job.reply_id) else {
            return Ok(());
        };
        match store::get_message(&self.db, &job.conversation_id, &job.reply_id).await? {
            None => {
                publisher
                    .finish(ReplyEventKind::Error {
                        code: "NOT_FOUND".to_owned(),
                        message: "the reply no longer exists".to_owned(),
                    })
                    .await;
            }
            Some(stored) if stored.message.status.is_finished() => {
                for event in events::replay(&stored)? {
                    publisher.replay(event);
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The span of one engine call (OpenTelemetry's generative-AI
    /// conventions: a client span named `chat <engine>`); disabled when
    /// tracing is off.
    fn engine_span(&self, attempt: u32) -> tracing::Span {
        telemetry::traced(|| {
            tracing::info_span!(
                "engine",
                otel.name = %format_args!("chat {}", self.engine.name()),
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
                gen_ai.operation.name = "chat",
                gen_ai.system = self.engine.name(),
                gen_ai.usage.input_tokens = tracing::field::Empty,
                gen_ai.usage.output_tokens = tracing::field::Empty,
                switchboard.reply.attempt = attempt,
                switchboard.reply.pieces = tracing::field::Empty,
            )
        })
    }

    /// Counts one engine call in `switchboard_engine_calls_total` by how it
    /// ended (`completed`, `failed`, `cancelled`, `lost`), its duration in
    /// `switchboard_engine_call_duration_seconds`, and the tokens the engine
    /// reported in `switchboard_engine_tokens_total` by `direction`
    /// (`input`: the prompt, `output`: the reply).
    fn count_engine_call(&self, stop: &Stop, streamed: &Streamed, took: Duration) {
        let engine = self.engine.name();
        let outcome = match stop {
            Stop::End => "completed",
            Stop::Failed(_) => "failed",
            Stop::Cancelled => "cancelled",
            Stop::Lost => "lost",
        };
        metrics::counter!("switchboard_engine_calls_total", "engine" => engine, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("switchboard_engine_call_duration_seconds", "engine" => engine)
            .record(took.as_secs_f64());
        if let Some(usage) = &streamed.usage {
            metrics::counter!("switchboard_engine_tokens_total", "engine" => engine, "direction" => "input")
                .increment(u64::from(usage.prompt_tokens));
            metrics::counter!("switchboard_engine_tokens_total", "engine" => engine, "direction" => "output")
                .increment(u64::from(usage.completion_tokens));
        }
    }

    /// Publishes the engine's text until the stream ends, fails, the
    /// reply is cancelled or the lease is lost, collecting the text, the
    /// piece lengths and the usage.
    async fn stream(
        &self,
        request: EngineRequest,
        publisher: &ReplyPublisher,
        mut lost: oneshot::Receiver<()>,
        streamed: &mut Streamed,
    ) -> Stop {
        let started = Instant::now();
        let mut events = self.engine.generate(request);
        loop {
            tokio::select! {
                // A cancel request wins over a token that is ready.
                biased;
                () = publisher.cancelled() => return Stop::Cancelled,
                _ = &mut lost => return Stop::Lost,
                event = events.next() => match event {
                    // An empty piece would be an event with nothing in it.
                    Some(Ok(EngineEvent::Delta(text))) if text.is_empty() => {}
                    Some(Ok(EngineEvent::Delta(text))) => {
                        if streamed.lengths.is_empty() {
                            metrics::histogram!("switchboard_reply_first_token_seconds", "engine" => self.engine.name())
                                .record(started.elapsed().as_secs_f64());
                        }
                        streamed.content.push_str(&text);
                        streamed.lengths.push(text.len());
                        publisher.delta(text).await;
                    }
                    Some(Ok(EngineEvent::Usage(usage))) => streamed.usage = Some(usage),
                    Some(Err(err)) => return Stop::Failed(err),
                    None => return Stop::End,
                },
            }
        }
    }
}

/// Records on the engine call's `span` how it ended and what it streamed.
fn record_engine_end(span: &tracing::Span, stop: &Stop, streamed: &Streamed) {
    if span.is_disabled() {
        return;
    }
    span.record("switchboard.reply.pieces", streamed.lengths.len());
    if let Some(usage) = &streamed.usage {
        span.record("gen_ai.usage.input_tokens", usage.prompt_tokens);
        span.record("gen_ai.usage.output_tokens", usage.completion_tokens);
    }
    if let Stop::Failed(err) = stop {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", err.to_string());
    }
}

/// What an attempt has streamed so far.
#[derive(Debug, Default)]
struct Streamed {
    content: String,
    lengths: Vec<usize>,
    usage: Option<Usage>,
}

/// The metric label of an outcome.
fn outcome_label(outcome: &GenerateOutcome) -> &'static str {
    match outcome {
        GenerateOutcome::Completed => "completed",
        GenerateOutcome::Cancelled => "cancelled",
        GenerateOutcome::Skipped => "skipped",
        GenerateOutcome::Failed { .. } => "failed",
        GenerateOutcome::Released { .. } => "retried",
    }
}

/// Renews the lease of attempt `attempt` on a reply every second until
/// aborted. A cancel request stored by any instance cancels the attempt
/// through the hub; losing the reply to another attempt is told through
/// `lost`.
async fn renew(
    db: Database,
    hub: Arc<ReplyHub>,
    reply_id: String,
    attempt: u32,
    lease: Duration,
    lost: oneshot::Sender<()>,
) {
    let mut ticks = tokio::time::interval(RENEW_INTERVAL.min(lease / 3));
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match store::renew_reply(&db, &reply_id, attempt, store::now() + lease).await {
            Ok(Some(true)) => {
                hub.cancel(&reply_id);
            }
            Ok(Some(false)) => {}
            Ok(None) => {
                let _ = lost.send(());
                return;
            }
            Err(err) => tracing::warn!(%reply_id, error = %err, "cannot renew the reply's lease"),
        }
    }
}
