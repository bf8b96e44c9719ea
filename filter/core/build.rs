//! Compiles the filter <-> control plane protocol with prost (no tonic: the filter runs in wasm).
//! protox parses the .proto in pure Rust, so no `protoc` is needed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../api/proto";
    let proto = "../../api/proto/tollgate/v1/sync.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], [proto_root])?;
    prost_build::Config::new()
        // These hold provider keys, AWS credentials or access tokens: src/proto.rs writes
        // a Debug that hides them.
        .skip_debug([
            ".tollgate.v1.Deployment",
            ".tollgate.v1.AwsCredentials",
            ".tollgate.v1.ProviderToken",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
