//! Rouse's gRPC schema, `proto/rouse/v1`, as generated Rust.
//!
//! The CLI and the tests link this crate for the messages and clients
//! (feature `client`, the default); the api role adds `server`. Nothing here
//! knows the domain: conversions to `rouse_core` types live with the api.

#![allow(clippy::all, missing_docs, clippy::unwrap_used)]

tonic::include_proto!("rouse.v1");

/// The compiled `FileDescriptorSet` of every `rouse.v1` file: what tests walk
/// to find every service and method.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rouse_v1.bin"));

/// A std duration as a protobuf one (saturating at `i64::MAX` seconds).
pub fn duration_to_pb(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
