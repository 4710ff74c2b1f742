//! Jobs: work that runs outside the request that asked for it, at least
//! once, on whichever worker takes it.
//!
//! Every job has a row in the application database ([`Job`]): its kind,
//! JSON payload, state, attempts and last error. That row is the truth
//! about the job whatever carries it, so GetJob and the dead-letter store
//! ([`Jobs`]) work the same on every backend. The row is inserted inside
//! the caller's transaction, with the write that asked for it (a reply's job
//! commits with its message). A [`JobTransport`] carries job ids from whoever enqueues
//! to the workers; a [`JobHandler`] runs one kind's attempts; a
//! [`ScheduledTask`] runs on a cron schedule ([`maintenance`] holds the
//! domain's own).
//!
//! The runtime that drives them (the worker loop with its leases, the SQL,
//! Redis and RabbitMQ transports, the scheduler) is `switchboard-workers`:
//! a worker takes an attempt with a conditional update of the row
//! ([`store::start_attempt`]) and a lease it renews while it runs; a worker
//! that dies (SIGKILL) stops renewing, and the job is taken again once the
//! lease runs out. Failures are retried with exponential backoff and jitter
//! up to the kind's maximum; then the job is dead: it stays in the table,
//! with payload, last error, attempt count and times, until an operator
//! retries or deletes it.

mod handler;
pub mod maintenance;
mod model;
pub mod schedule;
mod service;
pub mod store;
mod transport;

pub use handler::{JobFailure, JobHandler};
pub use model::{Job, JobState, NewJob, RetryPolicy};
pub use schedule::{Schedule, ScheduledTask};
pub use service::{DEFAULT_DEAD_LETTER_PAGE_SIZE, Jobs};
pub use transport::{Delivery, JobTransport, Receipt};
