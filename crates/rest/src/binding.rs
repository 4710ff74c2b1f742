//! The static description of one google.api.http binding, as the code
//! generator emits it: the HTTP method, the parsed path template, where the
//! body goes, which fields the query string may set and how their text
//! becomes proto3 JSON. The generator has already checked every rule, so the
//! runtime only matches and copies.

/// One step of a field path: the proto name and the JSON (lowerCamelCase)
/// name of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldStep {
    /// The field's name in the .proto file, such as `conversation_id`.
    pub proto: &'static str,
    /// The field's proto3 JSON name, such as `conversationId`.
    pub json: &'static str,
}

/// A path from the request message to a (possibly nested) field.
pub type FieldPath = &'static [FieldStep];

/// How the text of a path or query parameter becomes a JSON value before the
/// request message is decoded with its proto3 JSON deserializer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    /// Passed as a JSON string: strings, bytes (base64), 64-bit integers,
    /// and every well-known type whose JSON form is a string.
    Text,
    /// `true` or `false`.
    Bool,
    /// A number; sent as a JSON string, which the proto3 JSON mapping accepts
    /// for every numeric type.
    Number,
    /// An enum: a value name, or its number.
    Enum,
}

/// A field the query string may set.
#[derive(Debug, Clone, Copy)]
pub struct QueryParam {
    /// The path to the field.
    pub path: FieldPath,
    /// How its text becomes JSON.
    pub kind: ScalarKind,
    /// Whether the field is repeated (the parameter may be given many times).
    pub repeated: bool,
}

/// One segment of a path template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// A literal segment that must match exactly.
    Literal(&'static str),
    /// `*`: exactly one segment.
    Any,
    /// `**`: zero or more segments; only ever the last segment.
    AnyMany,
}

/// A variable of a path template: the segments `start..end` of the template
/// are captured (joined by `/`) into the field `path`.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    /// The field the captured text sets.
    pub path: FieldPath,
    /// How the captured text becomes JSON.
    pub kind: ScalarKind,
    /// The first template segment the variable covers.
    pub start: usize,
    /// One past the last template segment the variable covers.
    pub end: usize,
}

/// Where the HTTP body goes in the request message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRule {
    /// The method takes no body; every field not in the path is a query parameter.
    None,
    /// `body: "*"`: the body is the request message, less the path fields.
    Whole,
    /// `body: "field"`: the body is the value of that top-level field.
    Field(FieldStep),
}

/// A message field that is itself a message, for computing a FieldMask from
/// the fields present in a PATCH body.
#[derive(Debug, Clone, Copy)]
pub struct MaskNode {
    /// The field.
    pub field: FieldStep,
    /// Its message-typed sub-fields, whose presence is reported path by path.
    pub children: &'static [MaskNode],
    /// Its message's output-only fields, never put in a mask.
    pub output_only: &'static [FieldStep],
}

/// The FieldMask a PATCH binding fills from the body, as grpc-gateway does.
#[derive(Debug, Clone, Copy)]
pub struct MaskRule {
    /// The request's top-level FieldMask field.
    pub field: FieldStep,
    /// The message-typed fields of the body message.
    pub tree: &'static [MaskNode],
    /// The body message's output-only fields (`google.api.field_behavior`
    /// OUTPUT_ONLY or IDENTIFIER): a client that sends back a resource it
    /// read does not ask to change them.
    pub output_only: &'static [FieldStep],
}

/// The request field a `Last-Event-ID` header sets, for Server-Sent Events
/// that resume.
#[derive(Debug, Clone, Copy)]
pub struct ResumeField {
    /// The request's top-level field.
    pub field: FieldStep,
    /// How the header's text becomes JSON.
    pub kind: ScalarKind,
}

/// One HTTP binding of an RPC method.
#[derive(Debug, Clone, Copy)]
pub struct HttpBinding {
    /// The full gRPC method path, such as `/switchboard.v1.ChatService/GetConversation`.
    pub grpc_method: &'static str,
    /// The HTTP method, upper case (`GET`, `POST`, or a custom verb's kind).
    pub http_method: &'static str,
    /// The template as written in the proto, for messages and logs.
    pub template: &'static str,
    /// The parsed path segments.
    pub segments: &'static [Segment],
    /// The variables bound by the path.
    pub variables: &'static [Variable],
    /// The custom verb after the last `:`, if any.
    pub verb: Option<&'static str>,
    /// Where the body goes.
    pub body: BodyRule,
    /// The JSON name of the response field sent as the body, if not the whole response.
    pub response_body: Option<&'static str>,
    /// The fields the query string may set.
    pub query: &'static [QueryParam],
    /// The FieldMask filled from the body when the query does not set it.
    pub mask: Option<MaskRule>,
    /// For a server stream: the JSON name of the field of each message that
    /// is the Server-Sent Event `id`.
    pub event_id: Option<&'static str>,
    /// For a server stream: the request field `Last-Event-ID` sets.
    pub resume: Option<ResumeField>,
    /// The method's access rule, checked before the request is read, so a
    /// caller without access learns nothing from how its input is judged.
    pub policy: Option<&'static crate::policy::MethodPolicy>,
}
