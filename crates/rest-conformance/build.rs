//! Compiles the conformance protos with the real generator, exactly as the
//! API crate's build script does.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // google/api and switchboard/v1/options.proto come from the workspace's proto/.
    switchboard_codegen::Generator::new("proto")
        .include("../../proto")
        .files(&["conformance/v1/library.proto"])
        .generate()?;
    Ok(())
}
