//! What a job's kind provides: a [`JobHandler`] that runs one attempt and
//! says how it failed ([`JobFailure`]). The worker runtime
//! (`switchboard-workers`) calls it under a lease.

use async_trait::async_trait;

use crate::error::Result;
use crate::jobs::model::Job;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFailure {
    /// It may work later (a dependency was down or slow): retried with
    /// backoff while attempts remain.
    Retryable(String),
    /// It will not work however often it is tried: dead at once.
    Permanent(String),
}

/// Runs the jobs of one kind.
#[async_trait]
pub trait JobHandler: Send + Sync {
    /// Runs attempt `job.attempts` of `job`. `last_attempt` is true when a
    /// retryable failure will not be retried (the job dies instead), so the
    /// handler can record a final outcome.
    async fn run(&self, job: &Job, last_attempt: bool) -> std::result::Result<(), JobFailure>;

    /// Prepares a dead job to run again, before an operator's retry puts it
    /// back in the queue (a reply marked failed goes back to pending).
    async fn reopen(&self, _job: &Job) -> Result<()> {
        Ok(())
    }
}
