//! Compiles the conformance protos with the real generator, exactly as the
//! API crate's build script does.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    switchboard_codegen::Generator::new("proto")
        .files(&["conformance/v1/library.proto"])
        .generate()?;
    Ok(())
}
