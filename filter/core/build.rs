//! Compiles the filter <-> control plane protocol with prost (no tonic: the filter runs in wasm).
//! protox parses the .proto in pure Rust, so no `protoc` is needed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../api/proto";
    let proto = "../../api/proto/tollgate/v1/sync.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], [proto_root])?;
    prost_build::Config::new()
        // A deployment holds its provider key: src/proto.rs writes a Debug that hides it.
        .skip_debug([".tollgate.v1.Deployment"])
        .compile_fds(descriptors)?;
    Ok(())
}
