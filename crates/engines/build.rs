//! Compiles the engine contract (`proto/switchboard/engine/v1/engine.proto`)
//! into prost messages and a tonic client and server, with protox (no
//! protoc needed). It is not part of the API, so the API generator in the
//! root crate does not see it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto/switchboard/engine/v1/engine.proto");
    let descriptors = protox::compile(["switchboard/engine/v1/engine.proto"], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
