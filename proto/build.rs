//! Compiles the `.proto` files. Uses the `protoc` shipped inside the `protoc-bin-vendored` crate, so a
//! fresh machine needs nothing installed; set `PROTOC` to use another compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["tally/v1/events.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    config.compile_protos(&protos, &["."])?;
    Ok(())
}
