//! Emits the OpenAPI 3.1 document of the REST API from the same model the
//! routes are generated from: paths and operations from the bindings,
//! parameters for path variables and query fields, request and response
//! schemas under the proto3 JSON mapping (path fields left out of bodies,
//! required fields marked), field constraints as JSON Schema keywords, proto
//! comments as descriptions, the google.rpc.Status error schema, streaming
//! responses and the security schemes.

use std::collections::BTreeMap;
#[cfg(test)]
use std::collections::BTreeSet;

use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::CodegenError;
use crate::model::{
    ApiModel, BindingModel, BodyModel, field_rules, is_behavior_required, is_output_only,
};
use crate::template::PathParameter;

/// The document's title, version and description.
#[derive(Debug, Clone)]
pub struct OpenApiInfo {
    /// `info.title`.
    pub title: String,
    /// `info.version`.
    pub version: String,
    /// `info.description` (CommonMark).
    pub description: String,
}

impl Default for OpenApiInfo {
    fn default() -> Self {
        Self {
            title: "API".into(),
            version: "0.0.0".into(),
            description: String::new(),
        }
    }
}

const STATUS_SCHEMA: &str = "google.rpc.Status";

/// The HTTP methods an OpenAPI 3.1 path item has a key for.
const OPERATION_KEYS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Builds the document.
///
/// # Errors
/// Never at present; kept fallible for rules that cannot be rendered.
pub(crate) fn document(model: &ApiModel, info: &OpenApiInfo) -> Result<String, CodegenError> {
    let mut builder = Builder {
        model,
        schemas: BTreeMap::new(),
        pending: Vec::new(),
    };
    let mut paths: Map<String, Value> = Map::new();
    let mut shapes: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    let mut tags = Vec::new();
    for service in &model.services {
        let descriptor = &service.descriptor;
        let mut tag = json!({ "name": descriptor.name() });
        if let Some(comment) = model.comment(&descriptor.parent_file(), descriptor.path()) {
            tag["description"] = comment.into();
        }
        tags.push(tag);
        for method in &service.methods {
            for (index, binding) in method.bindings.iter().enumerate() {
                let (mut path, mut parameters) = binding.template.openapi_path();
                // Paths that differ only in parameter names are one path to
                // OpenAPI (`/v1/x/{id}` and `/v1/x/{x.id}`): the later
                // binding takes the names the first one gave.
                let shape = path_shape(&path);
                match shapes.get(&shape) {
                    Some((first_path, names)) => {
                        path.clone_from(first_path);
                        for (parameter, name) in parameters.iter_mut().zip(names) {
                            parameter.name.clone_from(name);
                        }
                    }
                    None => {
                        let names = parameters.iter().map(|p| p.name.clone()).collect();
                        shapes.insert(shape, (path.clone(), names));
                    }
                }
                let operation = builder.operation(
                    service.descriptor.name(),
                    method,
                    binding,
                    index,
                    &parameters,
                );
                let entry = paths.entry(path).or_insert_with(|| json!({}));
                let key = binding.http_method.to_ascii_lowercase();
                if OPERATION_KEYS.contains(&key.as_str()) {
                    entry[key] = operation;
                } else {
                    // OpenAPI 3.1 has no key for other methods: list them
                    // under an extension, where tools that know can find them.
                    entry["x-custom-methods"][&binding.http_method] = operation;
                }
            }
        }
    }
    builder.drain();
    let mut schemas: Map<String, Value> = builder.schemas.into_iter().collect();
    schemas.insert(STATUS_SCHEMA.to_owned(), status_schema());

    let document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": info.title,
            "version": info.version,
            "description": info.description,
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token issued by Switchboard or by a configured OpenID Connect provider.",
                },
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "An API key created through the API; also accepted as `Authorization: Bearer`.",
                },
            },
        },
    });
    let mut text = serde_json::to_string_pretty(&document).expect("a JSON value always serialises");
    text.push('\n');
    Ok(text)
}

fn status_schema() -> Value {
    json!({
        "type": "object",
        "description": "An error, shaped like google.rpc.Status: a gRPC status code, a message for people, and machine-readable details.",
        "properties": {
            "code": { "type": "integer", "format": "int32", "description": "The gRPC status code (3 = INVALID_ARGUMENT, 5 = NOT_FOUND, …)." },
            "message": { "type": "string", "description": "What went wrong, naming the field at fault where there is one." },
            "details": {
                "type": "array",
                "description": "Error details such as google.rpc.BadRequest, each with its `@type`.",
                "items": {
                    "type": "object",
                    "properties": { "@type": { "type": "string" } },
                    "required": ["@type"],
                    "additionalProperties": true,
                },
            },
        },
        "required": ["code", "message"],
    })
}

struct Builder<'a> {
    model: &'a ApiModel,
    schemas: BTreeMap<String, Value>,
    pending: Vec<SchemaSource>,
}

enum SchemaSource {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

impl Builder<'_> {
    fn operation(
        &mut self,
        service: &str,
        method: &crate::model::MethodModel,
        binding: &BindingModel,
        index: usize,
        path_parameters: &[PathParameter],
    ) -> Value {
        let descriptor = &method.descriptor;
        let mut operation = Map::new();
        let operation_id = if index == 0 {
            format!("{service}_{}", descriptor.name())
        } else {
            format!("{service}_{}_{index}", descriptor.name())
        };
        operation.insert("operationId".into(), operation_id.into());
        operation.insert("tags".into(), json!([service]));
        if let Some(comment) = self
            .model
            .comment(&descriptor.parent_file(), descriptor.path())
        {
            operation.insert("summary".into(), first_sentence(comment).into());
            operation.insert("description".into(), comment.into());
        }

        let mut parameters = Vec::new();
        for parameter in path_parameters {
            parameters.push(self.path_parameter(binding, parameter));
        }
        for query in &binding.query {
            let leaf = query.fields.last().expect("non-empty");
            let name: Vec<&str> = query
                .fields
                .iter()
                .map(FieldDescriptor::json_name)
                .collect();
            let mut schema = self.field_schema(leaf);
            strip_description(&mut schema);
            let mut parameter = json!({
                "name": name.join("."),
                "in": "query",
                "required": false,
                "schema": schema,
            });
            if query.repeated {
                parameter["style"] = "form".into();
                parameter["explode"] = true.into();
            }
            if let Some(text) = self.field_comment(leaf) {
                parameter["description"] = text.into();
            }
            parameters.push(parameter);
        }
        if let Some((field, _)) = &binding.resume {
            parameters.push(json!({
                "name": "Last-Event-ID",
                "in": "header",
                "required": false,
                "description": format!(
                    "Sent by a reconnecting EventSource: the `id` of the last event it received. Sets `{}` when the query string does not.",
                    field.json_name()
                ),
                "schema": { "type": "string", "pattern": "^[0-9]+$" },
            }));
        }
        if !parameters.is_empty() {
            operation.insert("parameters".into(), parameters.into());
        }

        let input = descriptor.input();
        let bound_paths: Vec<Vec<String>> = binding
            .variables
            .iter()
            .map(|v| v.variable.field_path.clone())
            .collect();
        let body_schema = match &binding.body {
            BodyModel::None => None,
            BodyModel::Whole => Some(self.message_without(&input, &bound_paths)),
            BodyModel::Field(field) => {
                let nested: Vec<Vec<String>> = bound_paths
                    .iter()
                    .filter(|path| path.len() > 1 && path[0] == field.name())
                    .map(|path| path[1..].to_vec())
                    .collect();
                Some(match field.kind() {
                    Kind::Message(message)
                        if !field.is_list() && !field.is_map() && !nested.is_empty() =>
                    {
                        self.message_without(&message, &nested)
                    }
                    _ => self.field_schema(field),
                })
            }
        };
        if let Some(schema) = body_schema {
            operation.insert(
                "requestBody".into(),
                json!({
                    "required": matches!(binding.body, BodyModel::Whole),
                    "content": { "application/json": { "schema": schema } },
                }),
            );
        }

        let output = descriptor.output();
        let success = match &binding.response_body {
            Some(field) => self.field_schema(field),
            None => self.message_schema_ref(&output),
        };
        let ok = if descriptor.is_server_streaming() {
            json!({
                "description": "A stream of messages: Server-Sent Events (each `data:` is one message as JSON; an error ends the stream with an `error` event carrying a google.rpc.Status), or newline-delimited JSON with `Accept: application/x-ndjson` (each line `{\"result\": message}` or `{\"error\": status}`).",
                "content": {
                    "text/event-stream": {
                        // Each event, as OpenAPI 3.2 (`itemSchema`) and
                        // SSE-aware tools read it: `data` is JSON.
                        "schema": sse_event_schema(&success, binding.event_id.is_some()),
                    },
                    "application/x-ndjson": {
                        "schema": {
                            "type": "object",
                            "description": "One line of the stream.",
                            "properties": { "result": success, "error": reference(STATUS_SCHEMA) },
                        },
                    },
                },
            })
        } else {
            json!({
                "description": "OK",
                "content": { "application/json": { "schema": success } },
            })
        };
        let access = method.access.clone().unwrap_or_default();
        if access.public {
            // Explicitly open: no credentials needed.
            operation.insert("security".into(), json!([]));
        } else {
            operation.insert(
                "security".into(),
                json!([{ "bearerAuth": [] }, { "apiKey": [] }]),
            );
            let permission = if access.permission.is_empty() {
                "(administrators only)".to_owned()
            } else {
                access.permission
            };
            operation.insert("x-permission".into(), permission.into());
        }
        let mut responses = Map::new();
        responses.insert("200".into(), ok);
        if binding.resume.is_some() {
            responses.insert(
                "204".into(),
                json!({
                    "description": "Resumed with `Last-Event-ID` after the stream's last event: nothing is left, and an EventSource stops reconnecting.",
                }),
            );
        }
        responses.insert(
            "default".into(),
            json!({
                "description": "An error: the HTTP status follows the gRPC code (400 invalid argument, 401 unauthenticated, 403 permission denied, 404 not found, 409 conflict, 429 too many requests, 503 unavailable, 504 deadline exceeded).",
                "content": { "application/json": { "schema": reference(STATUS_SCHEMA) } },
            }),
        );
        operation.insert("responses".into(), Value::Object(responses));
        Value::Object(operation)
    }

    /// A path parameter: the bound field itself for a plain `{field}`, or
    /// one wildcard of a variable's pattern.
    fn path_parameter(&mut self, binding: &BindingModel, parameter: &PathParameter) -> Value {
        let bound = parameter.variable.map(|index| &binding.variables[index]);
        let (schema, description) = match bound {
            Some(bound) if parameter.whole => {
                let leaf = bound.fields.last().expect("field paths are never empty");
                let mut schema = self.field_schema(leaf);
                strip_description(&mut schema);
                (schema, self.field_comment(leaf))
            }
            Some(bound) => {
                let pattern = binding
                    .template
                    .variable_pattern(&bound.variable)
                    .unwrap_or_default();
                let description = format!(
                    "A segment of `{}`, which is set to the part of the path matching `{pattern}`.",
                    bound.variable.dotted()
                );
                (wildcard_schema(parameter.many), Some(description))
            }
            None => (wildcard_schema(parameter.many), None),
        };
        let mut value = json!({
            "name": parameter.name,
            "in": "path",
            "required": true,
            "schema": schema,
        });
        if let Some(description) = description {
            value["description"] = description.into();
        }
        value
    }

    fn field_comment(&self, field: &FieldDescriptor) -> Option<String> {
        self.model
            .comment(&field.parent_file(), field.path())
            .map(str::to_owned)
    }

    /// A reference to a message's component schema, or an inline schema for
    /// the well-known types.
    fn message_schema_ref(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known_schema(message.full_name()) {
            return schema;
        }
        self.require(SchemaSource::Message(message.clone()), message.full_name());
        reference(message.full_name())
    }

    fn require(&mut self, source: SchemaSource, name: &str) {
        if !self.schemas.contains_key(name) {
            self.schemas.insert(name.to_owned(), Value::Null);
            self.pending.push(source);
        }
    }

    fn drain(&mut self) {
        while let Some(source) = self.pending.pop() {
            let (name, schema) = match source {
                SchemaSource::Message(message) => {
                    let schema = self.message_schema(&message, &[]);
                    (message.full_name().to_owned(), schema)
                }
                SchemaSource::Enum(enumeration) => {
                    let names: Vec<String> =
                        enumeration.values().map(|v| v.name().to_owned()).collect();
                    let mut schema = json!({ "type": "string", "enum": names });
                    if let Some(text) = self
                        .model
                        .comment(&enumeration.parent_file(), enumeration.path())
                    {
                        let mut text = text.to_owned();
                        for value in enumeration.values() {
                            if let Some(doc) =
                                self.model.comment(&value.parent_file(), value.path())
                            {
                                text.push_str(&format!(
                                    "\n\n- `{}`: {}",
                                    value.name(),
                                    doc.replace('\n', " ")
                                ));
                            }
                        }
                        schema["description"] = text.into();
                    }
                    (enumeration.full_name().to_owned(), schema)
                }
            };
            self.schemas.insert(name, schema);
        }
    }

    /// The schema of a message, without the fields at `excluded` paths
    /// (path variables, which are not repeated in bodies).
    fn message_schema(&mut self, message: &MessageDescriptor, excluded: &[Vec<String>]) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            if excluded
                .iter()
                .any(|path| path.len() == 1 && path[0] == field.name())
            {
                continue;
            }
            let nested: Vec<Vec<String>> = excluded
                .iter()
                .filter(|path| path.len() > 1 && path[0] == field.name())
                .map(|path| path[1..].to_vec())
                .collect();
            let schema = match field.kind() {
                Kind::Message(child) if !nested.is_empty() && !field.is_list() => {
                    self.message_without(&child, &nested)
                }
                _ => self.field_schema(&field),
            };
            let pool = &self.model.pool;
            if field_rules(pool, &field).is_some_and(|rules| rules.required)
                || is_behavior_required(pool, &field)
            {
                required.push(field.json_name().to_owned());
            }
            let mut schema = schema;
            if is_output_only(pool, &field) {
                schema["readOnly"] = true.into();
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut schema = json!({ "type": "object", "properties": properties });
        if !required.is_empty() {
            schema["required"] = required.into();
        }
        if let Some(text) = self.model.comment(&message.parent_file(), message.path()) {
            schema["description"] = text.into();
        }
        schema
    }

    /// An inline schema of `message` less the fields at `excluded`, or a
    /// reference when nothing is excluded.
    fn message_without(&mut self, message: &MessageDescriptor, excluded: &[Vec<String>]) -> Value {
        if excluded.is_empty() {
            return self.message_schema_ref(message);
        }
        // The body schema is a copy of the message with the path fields left out.
        let schema = self.message_schema(message, excluded);
        self.require(SchemaSource::Message(message.clone()), message.full_name());
        schema
    }

    /// The schema of one field's value under the proto3 JSON mapping, with
    /// its constraints and description.
    fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        let rules = field_rules(&self.model.pool, field).unwrap_or_default();
        let mut single = match field.kind() {
            Kind::Message(message) if field.is_map() => {
                let value = message
                    .get_field_by_name("value")
                    .expect("map entries have a value");
                let value_schema = self.field_schema(&value);
                json!({ "type": "object", "additionalProperties": value_schema })
            }
            Kind::Message(message) => self.message_schema_ref(&message),
            Kind::Enum(enumeration) => {
                self.require(
                    SchemaSource::Enum(enumeration.clone()),
                    enumeration.full_name(),
                );
                reference(enumeration.full_name())
            }
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => {
                json!({ "type": "string", "format": "byte", "contentEncoding": "base64" })
            }
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": 4_294_967_295_u32 })
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]+$" })
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]+$" })
            }
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Double => json!({ "type": "number", "format": "double" }),
        };
        if !field.is_map() {
            if rules.min_len > 0 {
                single["minLength"] = rules.min_len.into();
            }
            if rules.max_len > 0 {
                single["maxLength"] = rules.max_len.into();
            }
            if let Some(pattern) = rules.anchored_pattern() {
                single["pattern"] = pattern.into();
            }
            // 64-bit integers are JSON strings, where minimum/maximum mean nothing.
            let numeric = matches!(single["type"].as_str(), Some("integer" | "number"));
            if let (Some(minimum), true) = (rules.minimum, numeric) {
                single["minimum"] = number(minimum);
            }
            if let (Some(maximum), true) = (rules.maximum, numeric) {
                single["maximum"] = number(maximum);
            }
            if rules.required && field.kind() == Kind::String && rules.min_len == 0 {
                single["minLength"] = 1.into();
            }
        }
        let mut schema = if field.is_list() {
            let mut array = json!({ "type": "array", "items": single });
            if rules.max_items > 0 {
                array["maxItems"] = rules.max_items.into();
            }
            array
        } else {
            single
        };
        if let Some(text) = self.field_comment(field) {
            schema["description"] = text.into();
        }
        schema
    }
}

/// The first sentence of a comment, on one line, for an operation summary.
fn first_sentence(comment: &str) -> String {
    let flat = comment.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.find(". ") {
        Some(end) => flat[..end].to_owned(),
        None => flat.trim_end_matches('.').to_owned(),
    }
}

/// A path with every `{parameter}` blanked out: OpenAPI's notion of the
/// same path.
fn path_shape(path: &str) -> String {
    let mut shape = String::with_capacity(path.len());
    let mut in_parameter = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_parameter = true;
                shape.push_str("{}");
            }
            '}' => in_parameter = false,
            _ if in_parameter => {}
            _ => shape.push(c),
        }
    }
    shape
}

/// One Server-Sent Event of a stream of `item`s: a message event whose
/// `data` is the item as JSON (with an `id` when the stream has one), or the
/// `error` event whose `data` is a google.rpc.Status.
fn sse_event_schema(item: &Value, with_id: bool) -> Value {
    let json_data = |schema: Value| json!({ "type": "string", "contentMediaType": "application/json", "contentSchema": schema });
    let mut message = json!({
        "type": "object",
        "properties": { "data": json_data(item.clone()) },
        "required": ["data"],
        "not": { "required": ["event"] },
    });
    if with_id {
        message["properties"]["id"] = json!({ "type": "string" });
    }
    json!({
        "description": "One event: a message, or an `error` event that ends the stream.",
        "oneOf": [
            message,
            {
                "type": "object",
                "properties": {
                    "event": { "const": "error" },
                    "data": json_data(reference(STATUS_SCHEMA)),
                },
                "required": ["event", "data"],
            },
        ],
    })
}

/// The schema of a path parameter standing for `*` (one segment) or `**`.
fn wildcard_schema(many: bool) -> Value {
    if many {
        json!({ "type": "string" })
    } else {
        json!({ "type": "string", "pattern": "^[^/]+$" })
    }
}

/// Parameters carry their description themselves, not in their schema too.
fn strip_description(schema: &mut Value) {
    if let Some(object) = schema.as_object_mut() {
        object.remove("description");
    }
}

fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        Value::from(value as i64)
    } else {
        Value::from(value)
    }
}

/// Inline schemas of the well-known types, under the proto3 JSON mapping.
fn well_known_schema(name: &str) -> Option<Value> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => {
            json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$" })
        }
        "google.protobuf.FieldMask" => {
            json!({ "type": "string", "description": "Comma-separated lowerCamelCase field paths." })
        }
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.Struct" => json!({ "type": "object", "additionalProperties": true }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array", "items": {} }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string" } },
            "additionalProperties": true,
        }),
        "google.protobuf.StringValue" => json!({ "type": ["string", "null"] }),
        "google.protobuf.BytesValue" => {
            json!({ "type": ["string", "null"], "contentEncoding": "base64" })
        }
        "google.protobuf.BoolValue" => json!({ "type": ["boolean", "null"] }),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
            json!({ "type": ["integer", "null"] })
        }
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({ "type": ["string", "null"], "pattern": "^-?[0-9]+$" })
        }
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => {
            json!({ "type": ["number", "null"] })
        }
        _ => return None,
    })
}

/// Every schema name a document references, for tests.
#[cfg(test)]
pub(crate) fn referenced_schemas(document: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    fn walk(value: &Value, names: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    names.insert(
                        target
                            .trim_start_matches("#/components/schemas/")
                            .to_owned(),
                    );
                }
                map.values().for_each(|v| walk(v, names));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, names)),
            _ => {}
        }
    }
    walk(document, &mut names);
    names
}

#[cfg(test)]
mod tests {
    //! The document generated from `tests/protos/valid/shelves.proto`.

    use super::*;

    const PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protos");
    const WORKSPACE_PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");

    fn document_of(file: &str) -> Value {
        let text = crate::Generator::new(PROTOS)
            .include(WORKSPACE_PROTOS)
            .files(&[file])
            .openapi()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn shelves() -> Value {
        document_of("valid/shelves.proto")
    }

    fn property_names(schema: &Value) -> Vec<&str> {
        schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    fn parameter_names<'a>(operation: &'a Value, place: &str) -> Vec<&'a str> {
        operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|parameter| parameter["in"] == place)
            .map(|parameter| parameter["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn each_operation_states_the_credentials_its_access_rule_needs() {
        let document = shelves();
        let get = &document["paths"]["/v1/shelves/{shelf}/books/{book}"]["get"];
        assert_eq!(get["security"], json!([]), "a public method needs nothing");
        assert!(get.get("x-permission").is_none());
        let list = &document["paths"]["/v1/shelves/{shelf}/books"]["get"];
        assert_eq!(
            list["security"],
            json!([{ "bearerAuth": [] }, { "apiKey": [] }])
        );
        assert_eq!(list["x-permission"], "books.read");
        let create = &document["paths"]["/v1/shelves/{shelf}/books"]["post"];
        assert_eq!(create["x-permission"], "(administrators only)");
        let schemes = &document["components"]["securitySchemes"];
        assert_eq!(schemes["bearerAuth"]["bearerFormat"], "JWT");
        assert_eq!(schemes["apiKey"]["name"], "x-api-key");
    }

    #[test]
    fn path_parameters_are_not_repeated_in_the_body_schema() {
        let document = shelves();
        let create = &document["paths"]["/v1/shelves/{shelf}/books"]["post"];
        let body = &create["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(property_names(body), ["bookId", "book"]);
        let update = &document["paths"]["/v1/shelves/{shelf}/books/{book}"]["patch"];
        let body = &update["requestBody"]["content"]["application/json"]["schema"];
        assert!(!property_names(body).contains(&"name"), "{body}");
        assert!(property_names(body).contains(&"title"), "{body}");
    }

    #[test]
    fn pattern_variables_are_spelled_out_one_parameter_per_wildcard() {
        let document = shelves();
        let get = &document["paths"]["/v1/shelves/{shelf}/books/{book}"]["get"];
        assert_eq!(parameter_names(get, "path"), ["shelf", "book"]);
        assert_eq!(get["parameters"][0]["schema"]["pattern"], "^[^/]+$");
        assert_eq!(get["parameters"][0]["required"], true);
        let described = get["parameters"][1]["description"].as_str().unwrap();
        assert!(
            described.contains("`name`") && described.contains("^shelves/[^/]+/books/[^/]+$"),
            "{described}"
        );
    }

    #[test]
    fn required_fields_are_listed() {
        let document = shelves();
        let schemas = &document["components"]["schemas"];
        assert_eq!(schemas["rules.v1.Book"]["required"], json!(["title"]));
        assert_eq!(
            schemas["rules.v1.CreateBookRequest"]["required"],
            json!(["book"])
        );
        assert!(schemas["rules.v1.Author"].get("required").is_none());
    }

    #[test]
    fn field_constraints_become_json_schema_keywords() {
        let document = shelves();
        let book = &document["components"]["schemas"]["rules.v1.Book"]["properties"];
        assert_eq!(book["title"]["maxLength"], 100);
        assert_eq!(
            book["title"]["minLength"], 1,
            "a required string is not empty"
        );
        assert_eq!(book["isbn"]["minLength"], 13);
        assert_eq!(book["isbn"]["pattern"], "^(?:[0-9]{13})$");
        assert_eq!(book["pages"]["minimum"], 1);
        assert_eq!(book["pages"]["maximum"], 10000);
        assert_eq!(book["tags"]["maxItems"], 5);
    }

    #[test]
    fn query_parameters_include_nested_and_repeated_fields() {
        let document = shelves();
        let list = &document["paths"]["/v1/shelves/{shelf}/books"]["get"];
        assert_eq!(
            parameter_names(list, "query"),
            [
                "pageSize",
                "tags",
                "filter.author.displayName",
                "filter.author.born",
                "filter.years"
            ]
        );
        let years = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "filter.years")
            .unwrap();
        assert_eq!(years["schema"]["type"], "array");
        assert_eq!(years["schema"]["items"]["type"], "integer");
        assert_eq!(
            (&years["style"], &years["explode"]),
            (&json!("form"), &json!(true))
        );
        assert!(list.get("requestBody").is_none());
    }

    #[test]
    fn single_field_body_leaves_the_rest_to_the_query() {
        let document = shelves();
        let update = &document["paths"]["/v1/shelves/{shelf}/books/{book}"]["patch"];
        assert_eq!(parameter_names(update, "query"), ["updateMask"]);
        assert_eq!(update["requestBody"]["required"], false);
    }

    #[test]
    fn additional_bindings_are_operations_of_their_own() {
        let document = shelves();
        assert_eq!(
            document["paths"]["/v1/shelves/{shelf}/books/{book}"]["get"]["operationId"],
            "Shelves_GetBook"
        );
        let fetch = &document["paths"]["/v1/shelves/{shelf}/books/{book}:fetch"]["post"];
        assert_eq!(fetch["operationId"], "Shelves_GetBook_1");
        assert_eq!(fetch["requestBody"]["required"], true);
    }

    #[test]
    fn response_body_is_the_schema_of_that_field() {
        let document = shelves();
        let tags =
            &document["paths"]["/v1/shelves/{shelf}/books/{book}/tags"]["get"]["responses"]["200"];
        assert_eq!(
            tags["content"]["application/json"]["schema"]["type"],
            "array"
        );
    }

    #[test]
    fn streaming_response_offers_sse_and_ndjson() {
        let document = shelves();
        let content = &document["paths"]["/v1/shelves/{shelf}/books:watch"]["get"]["responses"]["200"]
            ["content"];
        let types: Vec<&str> = content
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(types, ["text/event-stream", "application/x-ndjson"]);
        let line = &content["application/x-ndjson"]["schema"]["properties"];
        assert_eq!(line["result"], reference("rules.v1.Book"));
        assert_eq!(line["error"], reference(STATUS_SCHEMA));
    }

    #[test]
    fn every_ref_resolves() {
        let document = shelves();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        let referenced = referenced_schemas(&document);
        assert!(referenced.contains("rules.v1.Book") && referenced.contains(STATUS_SCHEMA));
        let missing: Vec<&String> = referenced
            .iter()
            .filter(|name| !schemas.contains_key(*name))
            .collect();
        assert!(missing.is_empty(), "unresolved: {missing:?}");
        assert!(
            schemas.values().all(|schema| !schema.is_null()),
            "a schema was left unfilled"
        );
    }

    #[test]
    fn custom_methods_use_only_openapi_operation_keys() {
        const KEYS: &[&str] = &[
            "get",
            "put",
            "post",
            "delete",
            "options",
            "head",
            "patch",
            "trace",
            "parameters",
        ];
        let document = document_of("valid/custom_method.proto");
        for (path, item) in document["paths"].as_object().unwrap() {
            for key in item.as_object().unwrap().keys() {
                assert!(
                    KEYS.contains(&key.as_str()) || key.starts_with("x-"),
                    "{path}: {key}"
                );
            }
        }
    }

    #[test]
    fn paths_differing_only_in_parameter_names_are_one_path() {
        assert_eq!(path_shape("/v1/x/{id}:go"), path_shape("/v1/x/{x.id}:go"));
        assert_ne!(path_shape("/v1/x/{id}"), path_shape("/v1/y/{id}"));
    }
}
