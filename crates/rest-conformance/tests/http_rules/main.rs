//! Every google.api.http rule, driven end to end through the REST routes the
//! generator emits for `proto/conformance/v1/library.proto`, one test per
//! rule. The echo service answers with the request message it received, so
//! each test reads how its HTTP request was transcoded.

mod access;
mod app;
mod body;
mod constraints;
mod deadline;
mod json;
mod path;
mod query;
mod streaming;
