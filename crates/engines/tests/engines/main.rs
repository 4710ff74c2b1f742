//! Integration tests of the engine clients against in-process servers
//! that speak the real protocols (`engine_servers.rs`): a tonic
//! `ChatEngine` and an axum server answering like OpenAI's
//! `/v1/chat/completions`; and of the resilience wrapper around them.

mod engine_servers;
mod grpc_engine;
mod openai_engine;
mod resilience;
