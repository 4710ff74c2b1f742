//! The `generate_reply` job: what [`Chat::send_message`](crate::chat::Chat::send_message)
//! enqueues, and the [`JobHandler`] workers run it with.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::chat::generator::{GenerateOutcome, ReplyGenerator};
use crate::chat::store;
use crate::db::Database;
use crate::error::{Error, Result};
use crate::jobs::{Job, JobFailure, JobHandler};

/// The kind of the job that generates one reply.
pub const GENERATE_REPLY: &str = "generate_reply";

/// The payload of a `generate_reply` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyJob {
    /// The id of the pending assistant message.
    pub reply_id: String,
    /// The conversation it belongs to.
    pub conversation_id: String,
}

impl ReplyJob {
    /// The job's payload as JSON.
    pub fn to_payload(&self) -> serde_json::Value {
        serde_json::json!({
            "reply_id": self.reply_id,
            "conversation_id": self.conversation_id,
        })
    }

    /// Reads a job's payload.
    ///
    /// # Errors
    ///
    /// [`Error::Internal`] if it is not a reply job's payload.
    pub fn from_payload(payload: &serde_json::Value) -> Result<Self> {
        serde_json::from_value(payload.clone()).map_err(Error::internal)
    }
}

/// Runs `generate_reply` jobs with a [`ReplyGenerator`].
#[derive(Debug)]
pub struct ReplyJobHandler {
    generator: Arc<ReplyGenerator>,
    db: Database,
}

impl ReplyJobHandler {
    /// A handler generating with `generator`, reopening replies in `db`.
    pub fn new(generator: Arc<ReplyGenerator>, db: Database) -> Self {
        Self { generator, db }
    }
}

#[async_trait]
impl JobHandler for ReplyJobHandler {
    async fn run(&self, job: &Job, last_attempt: bool) -> std::result::Result<(), JobFailure> {
        let reply = ReplyJob::from_payload(&job.payload)
            .map_err(|e| JobFailure::Permanent(format!("bad payload: {e}")))?;
        match self.generator.generate(&reply, last_attempt).await {
            Ok(
                GenerateOutcome::Completed | GenerateOutcome::Cancelled | GenerateOutcome::Skipped,
            ) => Ok(()),
            Ok(GenerateOutcome::Released { reason }) => Err(JobFailure::Retryable(reason)),
            Ok(GenerateOutcome::Failed { reason, retryable }) => Err(if retryable {
                JobFailure::Retryable(reason)
            } else {
                JobFailure::Permanent(reason)
            }),
            // A database error: the reply is still pending or streaming;
            // the next attempt takes it over.
            Err(err) => Err(JobFailure::Retryable(err.to_string())),
        }
    }

    async fn reopen(&self, job: &Job) -> Result<()> {
        let reply = ReplyJob::from_payload(&job.payload)?;
        store::reopen_failed(&self.db, &reply.reply_id, store::now()).await?;
        Ok(())
    }
}
