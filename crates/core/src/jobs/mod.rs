//! Jobs: work that runs outside the request that asked for it, at least
//! once, on whichever worker takes it.
//!
//! Every job has a row in the application database ([`Job`]): its kind,
//! JSON payload, state, attempts and last error. That row is the truth
//! about the job whatever carries it, so GetJob and the dead-letter store
//! work the same on every backend. A [`JobTransport`] carries job ids from
//! whoever enqueues to the [`Worker`]s: the SQL transport (SQLite or
//! PostgreSQL, the embedded default) takes due rows straight from the
//! table; Redis and RabbitMQ carry the ids through a broker.
//!
//! A worker takes an attempt with a conditional update of the row and a
//! lease it renews while it runs; a worker that dies (SIGKILL) stops
//! renewing, and the job is taken again once the lease runs out. Failures
//! are retried with exponential backoff and jitter up to the kind's
//! maximum; then the job is dead: it stays in the table, with payload, last
//! error, attempt count and times, until an operator retries or deletes it.

pub mod amqp;
mod model;
pub mod redis;
mod schedule;
mod service;
mod sql;
pub(crate) mod store;
mod transport;
mod worker;

pub use model::{Job, JobState, NewJob, RetryPolicy};
pub use schedule::{Schedule, ScheduledTask, Scheduler};
pub use service::{DEFAULT_DEAD_LETTER_PAGE_SIZE, Jobs};
pub use sql::SqlTransport;
pub use transport::{Delivery, JobTransport, Receipt};
pub use worker::{JobFailure, JobHandler, Worker, WorkerConfig};

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stop_requested(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Aborts the task when dropped, so a lease renewal never outlives the
/// attempt it renews (even when the attempt panics or is aborted).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
