//! The generator's model over small test protos: valid google.api.http
//! rules resolve to the bindings the runtime needs; invalid ones fail the
//! build with a message naming the method and what is wrong.

use switchboard_codegen::{ApiModel, CodegenError, Generator};

const PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protos");
/// google/api and switchboard/v1/options.proto, shared with the API.
const WORKSPACE_PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");

fn model(file: &str) -> Result<ApiModel, CodegenError> {
    Generator::new(PROTOS)
        .include(WORKSPACE_PROTOS)
        .files(&[file])
        .model()
}

/// The message of the error resolving `invalid/<name>.proto`.
fn rejection(name: &str) -> String {
    match model(&format!("invalid/{name}.proto")) {
        Ok(_) => panic!("invalid/{name}.proto was accepted"),
        Err(error) => error.to_string(),
    }
}

/// The JSON-name paths of a binding's query parameters, `a.b` style.
fn query_names(model: &ApiModel, method: &str, binding: usize) -> Vec<String> {
    let method = model.services[0]
        .methods
        .iter()
        .find(|m| m.descriptor.name() == method)
        .unwrap();
    method.bindings[binding]
        .query
        .iter()
        .map(|param| {
            param
                .fields
                .iter()
                .map(|f| f.json_name())
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect()
}

#[test]
fn valid_rules_resolve_to_bindings() {
    let model = model("valid/shelves.proto").unwrap();
    let summary: Vec<String> = model.services[0]
        .methods
        .iter()
        .flat_map(|method| &method.bindings)
        .map(|binding| format!("{} {}", binding.http_method, binding.template_text))
        .collect();
    assert_eq!(
        summary,
        [
            "GET /v1/{name=shelves/*/books/*}",
            "POST /v1/{name=shelves/*/books/*}:fetch",
            "GET /v1/{parent=shelves/*}/books",
            "POST /v1/{parent=shelves/*}/books",
            "PATCH /v1/{book.name=shelves/*/books/*}",
            "GET /v1/{name=shelves/*/books/*}/tags",
            "GET /v1/{parent=shelves/*}/books:watch",
        ]
    );
}

#[test]
fn nested_path_variable_resolves_through_the_message_field() {
    let model = model("valid/shelves.proto").unwrap();
    let update = &model.services[0].methods[3].bindings[0];
    let fields: Vec<&str> = update.variables[0]
        .fields
        .iter()
        .map(|f| f.name())
        .collect();
    assert_eq!(fields, ["book", "name"]);
    assert_eq!(
        update
            .template
            .variable_pattern(&update.variables[0].variable)
            .unwrap(),
        "^shelves/[^/]+/books/[^/]+$"
    );
}

#[test]
fn query_parameters_are_the_leaves_outside_path_and_body() {
    let model = model("valid/shelves.proto").unwrap();
    assert_eq!(
        query_names(&model, "ListBooks", 0),
        [
            "pageSize",
            "tags",
            "filter.author.displayName",
            "filter.author.born",
            "filter.years"
        ],
        "maps are never query parameters; nested messages are walked"
    );
    assert!(
        query_names(&model, "CreateBook", 0).is_empty(),
        "body \"*\" leaves nothing to the query"
    );
    assert_eq!(
        query_names(&model, "UpdateBook", 0),
        ["updateMask"],
        "the body field is not in the query"
    );
}

#[test]
fn repeated_query_parameters_are_marked_repeated() {
    let model = model("valid/shelves.proto").unwrap();
    let list = &model.services[0].methods[1].bindings[0];
    let repeated: Vec<bool> = list.query.iter().map(|param| param.repeated).collect();
    assert_eq!(repeated, [false, true, false, false, true]);
}

#[test]
fn patch_with_a_field_body_and_a_field_mask_fills_the_mask() {
    let model = model("valid/shelves.proto").unwrap();
    let update = &model.services[0].methods[3].bindings[0];
    assert_eq!(update.mask.as_ref().unwrap().field.name(), "update_mask");
    assert_eq!(
        update.mask.as_ref().unwrap().body_message.full_name(),
        "rules.v1.Book"
    );
}

#[test]
fn response_body_and_custom_verbs_resolve() {
    let model = model("valid/shelves.proto").unwrap();
    let methods = &model.services[0].methods;
    assert_eq!(
        methods[4].bindings[0]
            .response_body
            .as_ref()
            .unwrap()
            .name(),
        "tags"
    );
    assert_eq!(
        methods[0].bindings[1].template.verb.as_deref(),
        Some("fetch")
    );
    assert_eq!(
        methods[5].bindings[0].template.verb.as_deref(),
        Some("watch")
    );
}

#[test]
fn body_field_that_does_not_exist_is_refused() {
    assert_eq!(
        rejection("body_field_missing"),
        "invalid.v1.Broken.Create: body field \"cover\" is not a field of invalid.v1.Book"
    );
}

#[test]
fn get_with_a_body_is_refused() {
    assert_eq!(
        rejection("get_with_body"),
        "invalid.v1.Broken.Get: a GET binding cannot take a body"
    );
}

#[test]
fn path_variable_on_a_repeated_field_is_refused() {
    assert_eq!(
        rejection("path_variable_repeated"),
        "invalid.v1.Broken.Get: path variable tags is a repeated field"
    );
}

#[test]
fn path_variable_on_a_message_field_is_refused() {
    assert_eq!(
        rejection("path_variable_message"),
        "invalid.v1.Broken.Get: path variable shelf is not a scalar field"
    );
}

#[test]
fn path_variable_through_a_repeated_field_is_refused() {
    assert_eq!(
        rejection("path_through_repeated"),
        "invalid.v1.Broken.Get: past_shelves is not a singular message field"
    );
}

#[test]
fn path_variable_that_names_no_field_is_refused() {
    assert_eq!(
        rejection("path_field_missing"),
        "invalid.v1.Broken.Get: invalid.v1.Book has no field \"id\" (in id)"
    );
}

#[test]
fn body_field_also_bound_by_the_path_is_refused() {
    assert_eq!(
        rejection("body_field_also_in_path"),
        "invalid.v1.Broken.Update: body field \"title\" is also bound by the path"
    );
}

#[test]
fn response_body_that_does_not_exist_is_refused() {
    assert_eq!(
        rejection("response_body_missing"),
        "invalid.v1.Broken.Get: response_body \"cover\" is not a field of invalid.v1.Book"
    );
}

#[test]
fn nested_additional_bindings_are_refused() {
    assert_eq!(
        rejection("nested_additional_bindings"),
        "invalid.v1.Broken.Get: additional_bindings must not nest"
    );
}

#[test]
fn duplicate_route_is_refused() {
    assert_eq!(
        rejection("duplicate_route"),
        "invalid.v1.Broken.Fetch: GET /v1/books/{name} is already bound to invalid.v1.Broken.Get"
    );
}

#[test]
fn duplicate_route_with_a_renamed_variable_is_refused() {
    assert!(
        rejection("duplicate_route_renamed_variable")
            .contains("is already bound to invalid.v1.Broken.Get")
    );
}

#[test]
fn same_variable_with_different_patterns_is_two_routes() {
    let model = model("valid/distinct_patterns.proto").unwrap();
    assert_eq!(model.services[0].methods.len(), 2);
}

#[test]
fn client_streaming_binding_is_refused() {
    assert_eq!(
        rejection("client_streaming"),
        "invalid.v1.Broken.Upload: client-streaming methods cannot have an HTTP binding"
    );
}

#[test]
fn custom_kind_that_is_not_a_method_name_is_refused() {
    assert_eq!(
        rejection("custom_kind_not_a_method"),
        "invalid.v1.Broken.Move: custom HTTP method \"MO VE\" is not a method name"
    );
}

#[test]
fn malformed_template_is_refused_with_the_template() {
    assert_eq!(
        rejection("bad_template"),
        "invalid.v1.Broken.Get: path template \"/v1/books/{name\": unclosed '{'"
    );
}

/// The message of the error generating `invalid_fields/<name>.proto`: field
/// rules are checked when the Rust code is emitted.
fn field_rejection(name: &str) -> String {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("codegen-{name}"));
    std::fs::create_dir_all(&out).unwrap();
    let generated = Generator::new(PROTOS)
        .include(WORKSPACE_PROTOS)
        .files(&[format!("invalid_fields/{name}.proto")])
        .out_dir(out)
        .generate();
    generated
        .expect_err("the field rule was accepted")
        .to_string()
}

#[test]
fn length_rule_on_a_number_is_refused() {
    assert_eq!(
        field_rejection("length_on_number"),
        "fields.v1.Book.pages: min_len / max_len apply to strings and bytes only"
    );
}

#[test]
fn pattern_that_does_not_compile_is_refused() {
    assert!(
        field_rejection("pattern_not_a_regex")
            .starts_with("fields.v1.Book.isbn: pattern does not compile")
    );
}

#[test]
fn max_items_on_a_singular_field_is_refused() {
    assert_eq!(
        field_rejection("max_items_on_singular"),
        "fields.v1.Book.title: max_items applies to repeated fields only"
    );
}
