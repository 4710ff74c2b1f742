//! Integration tests of switchboard-core against real databases. Every
//! scenario in `chat.rs` runs twice, on a fresh SQLite file and on a fresh
//! PostgreSQL database (see `support.rs` for how to reach PostgreSQL). The
//! engine clients run against in-process servers that speak the real
//! protocols (`engine_servers.rs`): a tonic `ChatEngine` and an axum server
//! answering like OpenAI's `/v1/chat/completions`.

mod chat;
mod engine_servers;
mod grpc_engine;
mod jobs;
mod openai_engine;
mod resilience;
mod storage;
mod support;
