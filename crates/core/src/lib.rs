//! Switchboard's domain: configuration, storage, identity, the chat model,
//! reply generation and its event hub, and the jobs the domain runs. No
//! transport and no adapter lives here: the gRPC services, REST routes and
//! WebSocket handlers (`switchboard-api`, `switchboard-facade`) call
//! [`chat::Chat`] and [`identity::Identity`] with an
//! [`identity::Principal`] and map [`Error`] through its one status table;
//! the engine clients (`switchboard-engines`), the job runtime and its
//! transports (`switchboard-workers`) and the Redis adapters
//! (`switchboard-redis`) implement this crate's traits
//! ([`chat::ReplyEngine`], [`jobs::JobTransport`], [`chat::ReplyBus`],
//! [`identity::SharedRateCounters`]); the composition root
//! (`switchboard-app`) builds the running whole from a [`config::Config`].

pub mod cache;
pub mod chat;
pub mod config;
pub mod db;
pub mod error;
pub mod identity;
pub mod jobs;
mod paging;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;

pub use config::Config;
pub use error::{Error, Result};
