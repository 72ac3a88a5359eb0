//! Compiles `proto/rouse/v1/*.proto` with protox (pure Rust), so building
//! Rouse needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "rouse/v1/services.proto",
        "rouse/v1/revisions.proto",
        "rouse/v1/executions.proto",
        "rouse/v1/iam.proto",
        "rouse/v1/builds.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
