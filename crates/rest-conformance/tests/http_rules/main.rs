//! Every google.api.http rule, driven end to end through the REST routes the
//! generator emits for `conformance/v1/library.proto`: one test per rule.

mod app;
mod scratch;
