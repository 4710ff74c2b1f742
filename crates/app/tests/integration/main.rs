//! Integration tests of the running domain, built by the composition root
//! (`Services`) as the binary builds it, against real databases. Every
//! scenario in `chat.rs` runs twice, on a fresh SQLite file and on a fresh
//! PostgreSQL database (see `support.rs` for how to reach PostgreSQL);
//! `jobs.rs` runs the scheduler, `storage.rs` a database that cannot store.

mod caches;
mod chat;
mod jobs;
mod storage;
mod support;
