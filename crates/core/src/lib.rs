//! Switchboard's domain: configuration, storage, identity, the chat model,
//! reply generation and the reply event hub. No transport code lives here:
//! the gRPC services, REST routes and WebSocket handlers are adapters in
//! other crates that call [`chat::Chat`] with a [`identity::Principal`] and
//! map [`Error`] through its one status table.
//!
//! Start with [`Services::start`], which builds everything from a
//! [`config::Config`].

pub mod chat;
pub mod config;
pub mod db;
pub mod error;
pub mod identity;
pub mod jobs;
pub mod services;

pub use config::Config;
pub use error::{Error, Result};
pub use services::Services;
