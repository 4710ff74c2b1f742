//! Load generators behind the figures of `docs/benchmarks.md`, run by
//! `scripts/bench.sh` (`just bench`).
//!
//! Four measurements, one module each, each ending in one JSON line:
//!
//! * [`chat`]: simulated users holding conversations with a running server
//!   over REST, each turn a `SendMessage` followed by the reply's
//!   Server-Sent Events until `done`: chat turns per second and the
//!   first-token latency a user sees.
//! * [`queue`]: job-queue throughput (enqueue → done) through the real job
//!   machinery of `switchboard-core` (`Jobs`, `Worker`, a transport) on each
//!   backend, in the same shape as `scripts/bench/dramatiq_bench.py`'s output
//!   so that the rows line up with Dramatiq's on the same brokers.
//! * [`logins`]: a burst of failed sign-ins from many loopback addresses at
//!   once against a running server, and the server's resident memory
//!   before, at its peak and in the seconds after.
//! * [`connections`]: thousands of WebSocket or Server-Sent Events clients
//!   following one reply, each checking every event it gets, with the
//!   server's memory per connection and how long after the engine's last
//!   token each client's `done` arrived.
//!
//! * [`hello`]: a bare tonic hello-world server, the reference the
//!   signed-in GetConversation is held to.
//!
//! The binary (`src/main.rs`) only parses arguments, sets up logging and
//! prints what these modules return.

pub mod chat;
pub mod connections;
pub mod hello;
pub mod logins;
pub mod queue;
mod scratch;
mod sse;
pub mod stats;
