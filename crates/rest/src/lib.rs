//! The runtime the generated REST adapter, service guards and access policy
//! table are written against. The code generator (`switchboard-codegen`)
//! turns each google.api.http rule into a static [`binding::HttpBinding`] and
//! a [`router::Route`] that calls the tonic service trait, so REST, gRPC and
//! gRPC-Web run the very same method.
//!
//! * [`binding`] — the static shape of a binding (path template, body, query).
//! * [`transcode`] — HTTP request → proto3 JSON → request message.
//! * [`proto_json`] — proto3 JSON → message, with errors in the API's words.
//! * [`router`] — matching, dispatch, JSON responses, SSE / NDJSON streams.
//! * [`error`] — google.rpc.Status JSON and the gRPC code → HTTP status table.
//! * [`validate`] — the field constraints of the proto, checked before a method runs.
//! * [`policy`] — the access rule of each method, as the proto declares it.
//! * [`session`] — server streams that end when their caller's session does.
//! * [`wkt`] — Timestamp and FieldMask with their spec JSON forms.

pub mod binding;
pub mod error;
pub mod policy;
pub mod proto_json;
pub mod router;
pub mod session;
pub mod transcode;
pub mod validate;
pub mod wkt;

pub use router::{RestRouter, Route};
pub use validate::Validate;

/// Re-exported for generated code, so generated crates need no direct dependency.
pub use regex;
