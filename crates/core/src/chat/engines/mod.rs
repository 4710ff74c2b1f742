//! The real reply engines and what makes them safe to depend on:
//!
//! * [`GrpcEngine`] calls an engine that implements Switchboard's own
//!   contract, `proto/switchboard/engine/v1/engine.proto` (generated code in
//!   [`pb`]);
//! * [`OpenAiEngine`] calls any OpenAI-compatible `/v1/chat/completions`
//!   endpoint (OpenAI, vLLM, llama.cpp, Ollama, LiteLLM, …);
//! * [`ResilientEngine`] wraps either (or any [`ReplyEngine`]) with a
//!   concurrency limit, timeouts, retries and a [`CircuitBreaker`].
//!
//! [`ReplyEngine`]: crate::chat::ReplyEngine

mod grpc;
mod openai;
mod resilience;

pub use grpc::{GrpcEngine, GrpcEngineConfig};
pub use openai::{DEFAULT_CONTEXT_BUDGET_CHARS, OpenAiEngine, OpenAiEngineConfig};
pub use resilience::{BreakerState, CircuitBreaker, ResilienceConfig, ResilientEngine};

/// The engine contract's generated code (package `switchboard.engine.v1`):
/// prost messages, the `chat_engine_client` Switchboard uses and the
/// `chat_engine_server` that engines written in Rust (and tests) implement.
#[allow(missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("switchboard.engine.v1");
}
