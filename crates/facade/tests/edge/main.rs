//! End-to-end tests of the edge: the real server on a real port, called by
//! real clients — tonic's generated gRPC client, gRPC-Web over HTTP/1.1 and
//! REST with reqwest — on SQLite and on the PostgreSQL of this machine; and
//! a real OpenID provider (npm `oidc-provider`) for sign-in with OIDC.

mod access;
mod error_table;
mod error_words;
mod identity;
mod lifecycle;
mod oidc;
mod oidc_provider;
mod raw;
mod refusals;
mod stream_sessions;
mod support;
mod transports;
mod websocket;
