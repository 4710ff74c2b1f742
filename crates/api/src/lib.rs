//! Switchboard's gRPC services: tonic implementations of the generated
//! service traits, one module per proto service. They read the caller's
//! [`Principal`](switchboard_core::identity::Principal) from the request
//! extensions (the edge put it there), convert prost messages to domain
//! types in [`convert`], call the domain, and turn domain errors into
//! statuses with [`status_from`], the one error table of every RPC.

mod chat;
pub mod convert;
mod status;

pub use chat::{ChatApi, ReplyEventStream};
pub use status::status_from;
