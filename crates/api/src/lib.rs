//! Switchboard's gRPC services: tonic implementations of the generated
//! service traits, one module per proto service (users.rs holds the two
//! small administrative ones, jobs.rs the operators' JobService). They read the caller's
//! [`Principal`](switchboard_core::identity::Principal) from the request
//! extensions (the edge put it there), convert prost messages to domain
//! types in [`convert`] and [`convert_identity`], call the domain, and turn
//! domain errors into statuses with [`status_from`], the one error table of
//! every RPC.

mod auth;
mod caller;
mod chat;
pub mod convert;
pub mod convert_identity;
mod jobs;
mod status;
mod users;

pub use auth::AuthApi;
pub use chat::{ChatApi, ReplyEventStream};
pub use jobs::JobApi;
pub use status::status_from;
pub use users::{AuditApi, UserApi};
