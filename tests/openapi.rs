//! The committed OpenAPI document is the generated one. When this fails, run
//! `just openapi` (or `cargo run -q -- openapi > openapi/switchboard.v1.json`)
//! and commit the result.

#[test]
fn committed_openapi_document_is_fresh() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/openapi/switchboard.v1.json"
    ))
    .expect("openapi/switchboard.v1.json exists");
    assert!(
        committed == switchboard_proto::OPENAPI_JSON,
        "openapi/switchboard.v1.json is stale: run `just openapi` and commit it"
    );
}

#[test]
fn document_is_openapi_3_1_with_every_rest_route() {
    let document: serde_json::Value =
        serde_json::from_str(switchboard_proto::OPENAPI_JSON).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/conversations", "post"),
        ("/v1/conversations", "get"),
        ("/v1/conversations/{id}", "get"),
        ("/v1/conversations/{id}", "patch"),
        ("/v1/conversations/{id}", "delete"),
        ("/v1/conversations/{conversation_id}/messages", "get"),
        ("/v1/conversations/{conversation_id}/messages", "post"),
        (
            "/v1/conversations/{conversation_id}/messages/{message_id}:stream",
            "get",
        ),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    let patch_body = &paths["/v1/conversations/{id}"]["patch"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert!(patch_body["properties"]["title"].is_object());
    assert!(
        patch_body["properties"].get("id").is_none(),
        "path fields are not repeated in the body"
    );
    let title =
        &document["components"]["schemas"]["switchboard.v1.Conversation"]["properties"]["title"];
    assert_eq!(title["maxLength"], 200);
}
