//! Generates the tonic client and server for the filter <-> control plane protocol.
//! protox parses the .proto in pure Rust, so building needs no `protoc` on the machine.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../api/proto";
    let protos = [
        "../api/proto/tollgate/v1/sync.proto",
        "../api/proto/tollgate/v1/management.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, [proto_root])?;
    // tonic-reflection serves the service from this encoded descriptor set.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("tollgate_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
