//! The SQL transport: workers take due rows straight from the `jobs` table
//! of the application database (SQLite in the embedded default, or
//! PostgreSQL). Nothing extra to run, and a job commits in the same
//! transaction as the write that asked for it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use switchboard_core::Result;
use switchboard_core::db::{Database, DatabaseKind, now};
use switchboard_core::jobs::{Delivery, JobTransport, Receipt, store};

/// Takes jobs from the `jobs` table. Workers in this process are woken as
/// soon as a job is sent; workers in other processes find it at their next
/// poll.
#[derive(Debug, Clone)]
pub struct SqlTransport {
    db: Database,
    poll_interval: Duration,
    wake: Arc<Notify>,
}

impl SqlTransport {
    /// How often an idle worker looks for due jobs by default.
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

    /// A transport over `db`, polling every `poll_interval` when idle.
    pub fn new(db: Database, poll_interval: Duration) -> Self {
        Self {
            db,
            poll_interval,
            wake: Arc::new(Notify::new()),
        }
    }
}

#[async_trait]
impl JobTransport for SqlTransport {
    async fn send(&self, _job_id: &str, _not_before: Option<DateTime<Utc>>) -> Result<()> {
        // The row is the message; a retry's row already has its `run_at`.
        self.wake.notify_one();
        Ok(())
    }

    async fn receive(&self) -> Result<Delivery> {
        let mut one = self.receive_many(1).await?;
        Ok(one.swap_remove(0))
    }

    async fn send_many(&self, _job_ids: &[String]) -> Result<()> {
        // The rows are the messages; one wake-up takes them in batches.
        self.wake.notify_one();
        Ok(())
    }

    /// Up to `max` due rows in one query; an idle worker waits for the next
    /// `send` in this process (woken at once) or the poll interval.
    async fn receive_many(&self, max: usize) -> Result<Vec<Delivery>> {
        loop {
            let notified = self.wake.notified();
            let ids = store::next_due_many(&self.db, now(), max).await?;
            if !ids.is_empty() {
                return Ok(ids
                    .into_iter()
                    .map(|job_id| Delivery {
                        job_id,
                        receipt: Box::new(RowReceipt),
                    })
                    .collect());
            }
            let _ = tokio::time::timeout(self.poll_interval, notified).await;
        }
    }

    fn name(&self) -> &'static str {
        match self.db.kind() {
            DatabaseKind::Sqlite => "sqlite",
            DatabaseKind::Postgres => "postgres",
        }
    }
}

/// A receipt with nothing to tell: the SQL transport, where the job row's
/// own state and lease are the receipt.
#[derive(Debug)]
struct RowReceipt;

#[async_trait]
impl Receipt for RowReceipt {
    async fn ack(&self) -> Result<()> {
        Ok(())
    }

    async fn keep_alive(&self) -> Result<()> {
        Ok(())
    }
}
