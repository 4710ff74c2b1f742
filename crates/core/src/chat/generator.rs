//! Generating one reply: the unit of work behind a [`ReplyJob`], whoever runs
//! it (the in-process queue today, queue workers later). It claims the
//! reply, streams the engine's tokens into the hub, and stores the outcome,
//! including the boundaries of the pieces so the events can be replayed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::chat::engine::ReplyEngine;
use crate::chat::events::{self, CANCELLED_CODE, CANCELLED_MESSAGE, ReplyEventKind};
use crate::chat::hub::{ReplyHub, ReplyPublisher};
use crate::chat::model::{Message, MessageStatus};
use crate::chat::queue::ReplyJob;
use crate::chat::store::{self, ReplyEnding};
use crate::db::Database;
use crate::error::{Error, Result};

/// How many earlier messages the engine sees.
const HISTORY_LIMIT: u32 = 100;

/// The waits between attempts to store a finished reply.
const STORE_RETRY_DELAYS: &[Duration] = &[
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// Generates replies: claims, streams, stores.
pub struct ReplyGenerator {
    db: Database,
    hub: Arc<ReplyHub>,
    engine: Arc<dyn ReplyEngine>,
}

/// What [`ReplyGenerator::generate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GenerateOutcome {
    /// The reply was generated and stored complete.
    Completed,
    /// The engine failed; the reply is stored failed.
    Failed,
    /// The reply was cancelled while streaming; stored cancelled.
    Cancelled,
    /// Nothing to do: the reply is not pending (another worker has it, it
    /// has finished, or it was deleted).
    Skipped,
}

/// Where the token loop stopped.
enum Stop {
    End,
    Failed(Error),
    Cancelled,
}

impl std::fmt::Debug for ReplyGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyGenerator").finish_non_exhaustive()
    }
}

impl ReplyGenerator {
    /// A generator writing to `db`, publishing to `hub`, asking `engine`.
    pub fn new(db: Database, hub: Arc<ReplyHub>, engine: Arc<dyn ReplyEngine>) -> Self {
        Self { db, hub, engine }
    }

    /// Generates the reply of `job`, if it is still pending. Safe to call
    /// more than once and from several workers at the same time: the claim
    /// (pending → streaming, conditional in SQL) lets exactly one run.
    ///
    /// # Errors
    ///
    /// A database error while claiming or storing. An engine failure is not
    /// an error here: it is stored with the reply ([`GenerateOutcome::Failed`]).
    pub async fn generate(&self, job: &ReplyJob) -> Result<GenerateOutcome> {
        let Some(reply) = store::claim_reply(&self.db, &job.reply_id, store::now()).await? else {
            self.settle_waiting(job).await?;
            return Ok(GenerateOutcome::Skipped);
        };
        let publisher = self.hub.begin(&reply.id);
        let mut content = String::new();
        let mut lengths = Vec::new();
        let stop = match store::history(&self.db, &reply, HISTORY_LIMIT).await {
            Ok(history) => {
                self.stream_tokens(history, &publisher, &mut content, &mut lengths)
                    .await
            }
            Err(err) => Stop::Failed(err),
        };
        let (status, error, outcome) = match &stop {
            Stop::End => (MessageStatus::Complete, None, GenerateOutcome::Completed),
            Stop::Failed(err) => {
                tracing::warn!(reply_id = %reply.id, error = %err, "reply generation failed");
                let error = (err.grpc_code_name().to_owned(), err.public_message());
                (MessageStatus::Failed, Some(error), GenerateOutcome::Failed)
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
            content: &content,
            delta_lengths: &lengths,
            status,
            error: error.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
        };
        let stored = match self.store_ending(&reply.id, &ending).await {
            Ok(stored) => stored,
            Err(err) => {
                // Subscribers must not wait forever; the reply stays
                // streaming in the database and is redone after a restart.
                publisher.finish(ReplyEventKind::Error {
                    code: "UNAVAILABLE".to_owned(),
                    message: "the reply could not be stored".to_owned(),
                });
                return Err(err);
            }
        };
        let terminal = match (stored, error) {
            (Some(message), None) => ReplyEventKind::Done(message),
            (Some(_), Some((code, message))) => ReplyEventKind::Error { code, message },
            (None, _) => {
                tracing::warn!(reply_id = %reply.id, "reply vanished while it was generated");
                ReplyEventKind::Error {
                    code: "ABORTED".to_owned(),
                    message: "the reply was deleted while it was generated".to_owned(),
                }
            }
        };
        publisher.finish(terminal);
        Ok(outcome)
    }

    /// Ends every reply this process has not finished for its subscribers,
    /// with UNAVAILABLE: at shutdown, so no stream waits on a reply that will
    /// only be generated after the next start.
    pub(crate) fn close_unfinished(&self) {
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
        ending: &ReplyEnding<'_>,
    ) -> Result<Option<Message>> {
        let mut delays = STORE_RETRY_DELAYS.iter();
        loop {
            match store::finish_reply(&self.db, reply_id, ending, store::now()).await {
                Err(Error::Unavailable(reason)) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(%reply_id, %reason, "storing the reply failed; retrying");
                        tokio::time::sleep(*delay).await;
                    }
                    None => return Err(Error::Unavailable(reason)),
                },
                other => return other,
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
                publisher.finish(ReplyEventKind::Error {
                    code: "NOT_FOUND".to_owned(),
                    message: "the reply no longer exists".to_owned(),
                });
            }
            Some(stored) if stored.message.status.is_finished() => {
                for event in events::replay(&stored)? {
                    publisher.publish(event.kind);
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Publishes the engine's tokens until the stream ends, fails or the
    /// reply is cancelled, collecting the text and the piece lengths.
    async fn stream_tokens(
        &self,
        history: Vec<crate::chat::model::Message>,
        publisher: &ReplyPublisher,
        content: &mut String,
        lengths: &mut Vec<usize>,
    ) -> Stop {
        let mut tokens = self.engine.generate(history);
        loop {
            tokio::select! {
                // A cancel request wins over a token that is ready.
                biased;
                () = publisher.cancelled() => return Stop::Cancelled,
                token = tokens.next() => match token {
                    // An empty piece would be an event with nothing in it.
                    Some(Ok(token)) if token.is_empty() => {}
                    Some(Ok(token)) => {
                        content.push_str(&token);
                        lengths.push(token.len());
                        publisher.delta(token);
                    }
                    Some(Err(err)) => return Stop::Failed(err),
                    None => return Stop::End,
                },
            }
        }
    }
}
