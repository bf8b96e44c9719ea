//! Generates the tonic client and server for the filter <-> control plane protocol.
//! protox parses the .proto in pure Rust, so building needs no `protoc` on the machine.

use std::path::PathBuf;

use prost::Message;

/// Messages whose `Debug` is written by hand in `src/proto.rs`.
const SECRET_MESSAGES: [&str; 6] = [
    ".tollgate.v1.Deployment",
    ".tollgate.v1.AwsCredentials",
    ".tollgate.v1.ProviderToken",
    ".tollgate.v1.CreateModelRequest",
    ".tollgate.v1.UpdateModelRequest",
    ".tollgate.v1.GeneratedKey",
];

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
        // Messages holding a provider key, AWS credentials, an access token or a clear
        // virtual key get a redacting Debug
        // (src/proto.rs) instead of prost's, which prints every field.
        .skip_debug(SECRET_MESSAGES)
        .compile_fds(descriptors)?;
    Ok(())
}
