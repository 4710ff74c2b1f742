//! What Switchboard's test suites (and the load generator) share, so each
//! exists once:
//!
//! * [`postgres`]: a throwaway PostgreSQL database, created for one suite
//!   or test and dropped afterwards ([`ThrowawayPostgres`]);
//! * [`grpc`]: gRPC and gRPC-Web answers read off the wire, frames, status
//!   and trailers, as a hand-written client sees them;
//! * [`process`]: the `switchboard` binary run as a child process, and the
//!   free ports it listens on;
//! * [`ndjson`]: the lines of a streamed NDJSON response;
//! * [`rest`]: a REST client of a running server, signed in;
//! * [`tcp_proxy`]: a TCP proxy whose connections a test can cut, to play a
//!   network blip between a client and Redis or RabbitMQ.
//!
//! It depends on no Switchboard crate (only on clients such as sqlx and
//! reqwest), so every crate of the workspace may dev-depend on it without
//! a cycle. It is never part of the `switchboard` binary.

pub mod grpc;
pub mod ndjson;
pub mod postgres;
pub mod process;
pub mod rest;
pub mod tcp_proxy;

pub use postgres::ThrowawayPostgres;
