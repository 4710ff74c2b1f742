//! Switchboard's API schema, generated from `proto/` at build time: prost
//! messages with proto3 JSON (pbjson), tonic servers and clients, and for
//! every service a guard that validates input, the REST routes of its
//! google.api.http bindings and the access policy table; plus the OpenAPI
//! document and the descriptor set served by gRPC reflection. Nothing here is
//! written by hand but this file: see `crates/codegen`.

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

pub use switchboard::v1;
pub use switchboard_rest::wkt::{FieldMask, Timestamp};

/// The OpenAPI 3.1 document of the REST API, as generated from the protos.
pub const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// The encoded `FileDescriptorSet` of every proto (with imports), for gRPC
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));
