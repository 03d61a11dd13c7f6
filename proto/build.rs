//! Compiles `mistnet.proto` with protox (pure Rust), so no system `protoc` is needed, then
//! generates the prost messages and tonic clients/servers from the descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=mistnet.proto");
    let descriptors = protox::compile(["mistnet.proto"], ["."])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
