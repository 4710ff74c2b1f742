//! Switchboard's job runtime: what runs the domain's jobs, wherever they
//! wait.
//!
//! * [`Worker`] takes job ids from a transport, starts an attempt of each
//!   job under a lease it renews, runs the kind's
//!   [`JobHandler`](switchboard_core::jobs::JobHandler), and records the
//!   outcome (succeeded, retried after a backoff, or dead) in the job's row;
//! * the transports carry job ids to workers, at least once: [`SqlTransport`]
//!   (the `jobs` table itself, SQLite or PostgreSQL), [`RedisTransport`]
//!   (streams and a consumer group) and [`AmqpTransport`] (RabbitMQ), the
//!   two brokers sharing one reconnect loop;
//! * [`Scheduler`] runs the domain's
//!   [`ScheduledTask`](switchboard_core::jobs::ScheduledTask)s on their cron
//!   schedules, each tick once however many workers run it.
//!
//! The domain owns the job record, inserting it inside a caller's
//! transaction, the [`JobTransport`](switchboard_core::jobs::JobTransport)
//! and handler traits, and the handlers themselves (`switchboard-core`'s
//! `jobs` module); the binary's composition root (`switchboard-app`) wires
//! them to this runtime. A new transport is a module here implementing
//! `JobTransport`, and one arm in the composition root.

pub mod amqp;
mod reconnect;
pub mod redis;
mod scheduler;
mod sql;
mod worker;

pub use amqp::{AmqpTransport, AmqpTransportConfig};
pub use redis::{RedisTransport, RedisTransportConfig};
pub use scheduler::Scheduler;
pub use sql::SqlTransport;
pub use worker::{Worker, WorkerConfig, default_worker_name};
