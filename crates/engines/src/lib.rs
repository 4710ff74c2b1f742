//! The real reply engines, behind the domain's
//! [`ReplyEngine`](switchboard_core::chat::ReplyEngine) trait, and what
//! makes them safe to depend on:
//!
//! * [`GrpcEngine`] calls an engine that implements Switchboard's own
//!   contract, `proto/switchboard/engine/v1/engine.proto` (generated code in
//!   [`pb`]);
//! * [`OpenAiEngine`] calls any OpenAI-compatible `/v1/chat/completions`
//!   endpoint (OpenAI, vLLM, llama.cpp, Ollama, LiteLLM, …);
//! * [`ResilientEngine`] wraps either (or any `ReplyEngine`, the
//!   development one included) with a concurrency limit, timeouts, retries
//!   and the domain's [`CircuitBreaker`](switchboard_core::chat::CircuitBreaker).
//!
//! A new engine is a module here implementing `ReplyEngine`, and one arm
//! in the binary's composition root (`switchboard-app`) that builds it from
//! its configuration.

mod grpc;
mod openai;
mod resilience;

pub use grpc::{GrpcEngine, GrpcEngineConfig};
pub use openai::{DEFAULT_CONTEXT_BUDGET_CHARS, OpenAiEngine, OpenAiEngineConfig};
pub use resilience::ResilientEngine;

/// The engine contract's generated code (package `switchboard.engine.v1`):
/// prost messages, the `chat_engine_client` Switchboard uses and the
/// `chat_engine_server` that engines written in Rust (and tests) implement.
#[allow(missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("switchboard.engine.v1");
}
