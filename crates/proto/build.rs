//! Compiles `proto/rouse/v1/*.proto` with protox (pure Rust), so building
//! Rouse needs no system `protoc`. The clients and servers are generated
//! only for the features that ask for them, and the compiled descriptor set
//! is kept so code can walk every method (the api's authorization table is
//! checked against it).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "rouse/v1/services.proto",
        "rouse/v1/revisions.proto",
        "rouse/v1/executions.proto",
        "rouse/v1/iam.proto",
        "rouse/v1/builds.proto",
        "rouse/v1/nodes.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("rouse_v1.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .compile_fds(descriptors)?;
    Ok(())
}
