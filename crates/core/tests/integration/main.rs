//! Integration tests of switchboard-core against real databases. Every
//! scenario in `chat.rs` runs twice, on a fresh SQLite file and on a fresh
//! PostgreSQL database (see `support.rs` for how to reach PostgreSQL).

mod chat;
mod jobs;
mod support;
