//! Compiles the `.proto` files: messages, tonic clients and servers, and a file descriptor set for gRPC
//! reflection. Uses the `protoc` shipped inside the `protoc-bin-vendored` crate, so a fresh machine needs
//! nothing installed; set `PROTOC` to use another compiler.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "tally/v1/events.proto",
        "tally/v1/orders.proto",
        "tally/v1/wallet.proto",
        "tally/v1/reporting.proto",
        "tally/v1/admin.proto",
        "tally/v1/keys.proto",
        "tally/v1/cluster.proto",
        "tally/v1/audit.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    let descriptors = PathBuf::from(std::env::var("OUT_DIR")?).join("tally_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        // Decode errors are the caller's: INVALID_ARGUMENT (see src/codec.rs).
        .codec_path("crate::codec::WireCodec")
        .compile_with_config(config, &protos, &["."])?;
    Ok(())
}
