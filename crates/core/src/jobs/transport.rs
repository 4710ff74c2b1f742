//! The seam between the job table and whatever carries job ids to workers.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;

/// One job id handed to a worker. It must be acknowledged once the job's
/// outcome is recorded, or it is delivered again (to any worker) after the
/// worker dies or stops renewing it.
pub struct Delivery {
    /// The id of the job's row.
    pub job_id: String,
    /// How the transport is told this copy is handled.
    pub receipt: Box<dyn Receipt>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

/// The transport's handle on one delivered copy of a job id.
#[async_trait]
pub trait Receipt: Send + Sync {
    /// The job is done with (recorded succeeded, retrying or dead): never
    /// deliver this copy again.
    async fn ack(&self) -> Result<()>;
    /// The worker is still on it: postpone redelivery. Called every few
    /// seconds while the job runs.
    async fn keep_alive(&self) -> Result<()>;
}

/// Carries job ids to workers, at least once.
#[async_trait]
pub trait JobTransport: Send + Sync {
    /// Makes `job_id` deliverable now, or not before `not_before` (a retry
    /// after its backoff). Returns once the transport holds it durably.
    async fn send(&self, job_id: &str, not_before: Option<DateTime<Utc>>) -> Result<()>;
    /// Waits for the next job id for this worker. Cancel-safe: dropping the
    /// future loses nothing.
    async fn receive(&self) -> Result<Delivery>;
    /// The backend's name: `sqlite`, `postgres`, `redis` or `amqp`.
    fn name(&self) -> &'static str;
}
