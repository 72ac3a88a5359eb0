//! Compiles Google's Pub/Sub protos (vendored under `proto/google`, see its
//! README) with protox, so building needs no system `protoc`. Only the
//! servers are generated; the descriptor set is kept for the REST surface's
//! proto3 JSON mapping.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["google/pubsub/v1/pubsub.proto"];
    println!("cargo:rerun-if-changed={}", root.join("google").display());
    let descriptors = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("pubsub_v1.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Message bodies are shared between subscriptions and deliveries.
        .bytes(".google.pubsub.v1.PubsubMessage.data")
        .compile_fds(descriptors)?;
    Ok(())
}
