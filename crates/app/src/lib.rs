//! Switchboard's composition root: [`Services::start_with`] builds the
//! running whole from a [`Config`](switchboard_core::Config) — the
//! database, the configured engine (`switchboard-engines`) inside its
//! resilience wrapper, the job transport and, where this process runs them,
//! the workers and the scheduler (`switchboard-workers`), the Redis reply
//! bus and shared login throttle (`switchboard-redis`) when `REDIS_URL` is
//! set, and the domain services of `switchboard-core` over them. The
//! binary, the edge and every test that needs a running domain start it
//! here, so they run what production runs.
//!
//! This is the one crate that names every adapter: a new engine, job
//! transport or bus is one arm here, and nothing else outside its own
//! crate changes.

mod services;

pub use services::{Services, Startup};
