//! Generates the API code from `proto/` (see crates/codegen).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    switchboard_codegen::Generator::new("proto")
        .files(&[
            "switchboard/v1/chat.proto",
            "switchboard/v1/identity.proto",
            "switchboard/v1/audit.proto",
            "switchboard/v1/jobs.proto",
        ])
        .openapi_info(switchboard_codegen::OpenApiInfo {
            title: "Switchboard API".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "The REST/JSON face of Switchboard, a backend for chatbot products. \
                The same API is served over native gRPC and gRPC-Web on the same port; \
                this document is generated from the protobuf definitions."
                .into(),
        })
        .generate()?;
    Ok(())
}
