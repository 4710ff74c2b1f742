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
    /// Makes every one of `job_ids` deliverable now, returning once the
    /// transport holds all of them durably. Transports that can send many
    /// ids in one round trip (a Redis pipeline, RabbitMQ publishes whose
    /// confirms are awaited together) override this; by default the ids are
    /// sent one after the other.
    async fn send_many(&self, job_ids: &[String]) -> Result<()> {
        for job_id in job_ids {
            self.send(job_id, None).await?;
        }
        Ok(())
    }
    /// Waits for the next job id like [`receive`](Self::receive), then
    /// takes up to `max` in all (at least one) of those ready without
    /// waiting, so that a worker with `max` free slots starts them
    /// together. Cancel-safe as `receive` is. By default one id.
    async fn receive_many(&self, max: usize) -> Result<Vec<Delivery>> {
        let _ = max;
        Ok(vec![self.receive().await?])
    }
    /// The backend's name: `sqlite`, `postgres`, `redis` or `amqp`.
    fn name(&self) -> &'static str;
}
