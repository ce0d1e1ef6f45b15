//! Compiles `proto/weir.proto` with protox (a protobuf compiler in Rust), so building weir
//! needs no `protoc` on the machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/weir.proto");
    let fds = protox::compile(["proto/weir.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
