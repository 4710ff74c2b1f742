//! Reads the compiled descriptors into what the emitters need: each service's
//! methods with their access rule and their HTTP bindings resolved against
//! the request and response messages. Every google.api.http rule is checked
//! here, so a wrong rule fails the build with a message naming the method.

use std::collections::HashMap;

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, ServiceDescriptor, Value,
};

use crate::CodegenError;
use crate::options::{AccessRule, FieldRules, HttpRule, Pattern};
use crate::template::{Template, Variable};

/// How the text of a path or query parameter becomes JSON; mirrors
/// `switchboard_rest::binding::ScalarKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    /// A JSON string.
    Text,
    /// `true` / `false`.
    Bool,
    /// A number (sent as a JSON string).
    Number,
    /// An enum name or number.
    Enum,
}

/// A path variable resolved to its fields.
#[derive(Debug, Clone)]
pub struct BoundVariable {
    /// The variable in the template.
    pub variable: Variable,
    /// The fields from the request message down to the bound field.
    pub fields: Vec<FieldDescriptor>,
    /// How its text becomes JSON.
    pub kind: ScalarKind,
}

/// Where the body goes.
#[derive(Debug, Clone)]
pub enum BodyModel {
    /// No body.
    None,
    /// `body: "*"`.
    Whole,
    /// `body: "field"`.
    Field(FieldDescriptor),
}

/// A field the query string may set.
#[derive(Debug, Clone)]
pub struct QueryModel {
    /// The fields from the request message down to the leaf.
    pub fields: Vec<FieldDescriptor>,
    /// How its text becomes JSON.
    pub kind: ScalarKind,
    /// Whether it may be given many times.
    pub repeated: bool,
}

/// The FieldMask a PATCH body fills.
#[derive(Debug, Clone)]
pub struct MaskModel {
    /// The request's FieldMask field.
    pub field: FieldDescriptor,
    /// The body's message.
    pub body_message: MessageDescriptor,
}

/// One resolved HTTP binding.
#[derive(Debug, Clone)]
pub struct BindingModel {
    /// `GET`, `POST`, … or a custom kind.
    pub http_method: String,
    /// The template as written.
    pub template_text: String,
    /// The parsed template.
    pub template: Template,
    /// Its variables, resolved.
    pub variables: Vec<BoundVariable>,
    /// The body rule.
    pub body: BodyModel,
    /// The response field sent as the body.
    pub response_body: Option<FieldDescriptor>,
    /// The query parameters.
    pub query: Vec<QueryModel>,
    /// The FieldMask filled from the body.
    pub mask: Option<MaskModel>,
    /// For a server stream: the field of each message that is its SSE `id`.
    pub event_id: Option<FieldDescriptor>,
    /// For a server stream: the request field `Last-Event-ID` sets.
    pub resume: Option<(FieldDescriptor, ScalarKind)>,
}

/// One RPC.
#[derive(Debug, Clone)]
pub struct MethodModel {
    /// Its descriptor.
    pub descriptor: MethodDescriptor,
    /// Its access rule, if declared.
    pub access: Option<AccessRule>,
    /// Its HTTP bindings (the main rule first, then additional bindings).
    pub bindings: Vec<BindingModel>,
}

/// One service.
#[derive(Debug, Clone)]
pub struct ServiceModel {
    /// Its descriptor.
    pub descriptor: ServiceDescriptor,
    /// Its methods.
    pub methods: Vec<MethodModel>,
}

/// Everything the emitters read.
#[derive(Debug, Clone)]
pub struct ApiModel {
    /// The descriptor pool (with imports).
    pub pool: DescriptorPool,
    /// The services of the requested files.
    pub services: Vec<ServiceModel>,
    /// Comments by (file name, source path).
    comments: HashMap<(String, Vec<i32>), String>,
}

impl ApiModel {
    /// Resolves every service of the files named in `files`.
    ///
    /// # Errors
    /// A [`CodegenError::Rule`] naming the method whose HTTP rule is wrong.
    pub fn new(pool: DescriptorPool, files: &[String]) -> Result<Self, CodegenError> {
        let comments = collect_comments(&pool);
        let mut services = Vec::new();
        for file in pool
            .files()
            .filter(|file| files.iter().any(|f| f == file.name()))
        {
            for service in file.services() {
                let methods = service
                    .methods()
                    .map(|method| resolve_method(&pool, method))
                    .collect::<Result<Vec<_>, _>>()?;
                services.push(ServiceModel {
                    descriptor: service,
                    methods,
                });
            }
        }
        let mut seen = HashMap::new();
        for method in services.iter().flat_map(|s| &s.methods) {
            for binding in &method.bindings {
                let key = (binding.http_method.clone(), binding.template.match_key());
                if let Some(other) = seen.insert(key, method.descriptor.full_name().to_owned()) {
                    return Err(CodegenError::Rule {
                        method: method.descriptor.full_name().to_owned(),
                        reason: format!(
                            "{} {} is already bound to {other}",
                            binding.http_method, binding.template_text
                        ),
                    });
                }
            }
        }
        Ok(Self {
            pool,
            services,
            comments,
        })
    }

    /// The leading comment of the element at `path` in `file`, trimmed.
    pub fn comment(&self, file: &FileDescriptor, path: &[i32]) -> Option<&str> {
        self.comments
            .get(&(file.name().to_owned(), path.to_vec()))
            .map(String::as_str)
    }
}

fn collect_comments(pool: &DescriptorPool) -> HashMap<(String, Vec<i32>), String> {
    let mut comments = HashMap::new();
    for file in pool.files() {
        let Some(info) = &file.file_descriptor_proto().source_code_info else {
            continue;
        };
        for location in &info.location {
            let Some(text) = &location.leading_comments else {
                continue;
            };
            let text = text
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_owned();
            if !text.is_empty() {
                comments.insert((file.name().to_owned(), location.path.clone()), text);
            }
        }
    }
    comments
}

/// The value of a message option, transcoded into `T`.
fn option<T: prost::Message + Default>(
    pool: &DescriptorPool,
    options: &DynamicMessage,
    name: &str,
) -> Option<T> {
    let extension = pool.get_extension_by_name(name)?;
    if !options.has_extension(&extension) {
        return None;
    }
    match options.get_extension(&extension).as_ref() {
        Value::Message(message) => message.transcode_to::<T>().ok(),
        _ => None,
    }
}

/// The `google.api.field_behavior` values of a field (numbers of the
/// `google.api.FieldBehavior` enum).
fn field_behaviors(pool: &DescriptorPool, field: &FieldDescriptor) -> Vec<i32> {
    let Some(extension) = pool.get_extension_by_name("google.api.field_behavior") else {
        return Vec::new();
    };
    let options = field.options();
    if !options.has_extension(&extension) {
        return Vec::new();
    }
    match options.get_extension(&extension).as_ref() {
        Value::List(values) => values.iter().filter_map(Value::as_enum_number).collect(),
        _ => Vec::new(),
    }
}

/// Whether the server sets the field and ignores it in requests:
/// `google.api.field_behavior` OUTPUT_ONLY (3) or IDENTIFIER (8).
pub(crate) fn is_output_only(pool: &DescriptorPool, field: &FieldDescriptor) -> bool {
    field_behaviors(pool, field)
        .iter()
        .any(|behavior| matches!(behavior, 3 | 8))
}

/// Whether `google.api.field_behavior` marks the field REQUIRED (2).
pub(crate) fn is_behavior_required(pool: &DescriptorPool, field: &FieldDescriptor) -> bool {
    field_behaviors(pool, field).contains(&2)
}

/// The `(switchboard.v1.field)` rules of a field, if any.
pub(crate) fn field_rules(pool: &DescriptorPool, field: &FieldDescriptor) -> Option<FieldRules> {
    option(pool, &field.options(), "switchboard.v1.field")
}

fn resolve_method(
    pool: &DescriptorPool,
    method: MethodDescriptor,
) -> Result<MethodModel, CodegenError> {
    let options = method.options();
    let access = option::<AccessRule>(pool, &options, "switchboard.v1.access");
    let fail = |reason: String| CodegenError::Rule {
        method: method.full_name().to_owned(),
        reason,
    };
    let mut bindings = Vec::new();
    if let Some(rule) = option::<HttpRule>(pool, &options, "google.api.http") {
        if method.is_client_streaming() {
            return Err(fail(
                "client-streaming methods cannot have an HTTP binding".into(),
            ));
        }
        bindings.push(resolve_binding(pool, &method, &rule).map_err(&fail)?);
        for additional in &rule.additional_bindings {
            if !additional.additional_bindings.is_empty() {
                return Err(fail("additional_bindings must not nest".into()));
            }
            bindings.push(resolve_binding(pool, &method, additional).map_err(&fail)?);
        }
    }
    Ok(MethodModel {
        descriptor: method,
        access,
        bindings,
    })
}

fn resolve_binding(
    pool: &DescriptorPool,
    method: &MethodDescriptor,
    rule: &HttpRule,
) -> Result<BindingModel, String> {
    let (http_method, template_text) = match &rule.pattern {
        Some(Pattern::Get(path)) => ("GET".to_owned(), path.clone()),
        Some(Pattern::Put(path)) => ("PUT".to_owned(), path.clone()),
        Some(Pattern::Post(path)) => ("POST".to_owned(), path.clone()),
        Some(Pattern::Delete(path)) => ("DELETE".to_owned(), path.clone()),
        Some(Pattern::Patch(path)) => ("PATCH".to_owned(), path.clone()),
        Some(Pattern::Custom(custom)) => {
            if custom.kind.is_empty() || !custom.kind.chars().all(|c| c.is_ascii_alphabetic()) {
                return Err(format!(
                    "custom HTTP method {:?} is not a method name",
                    custom.kind
                ));
            }
            (custom.kind.to_ascii_uppercase(), custom.path.clone())
        }
        None => return Err("the HTTP rule has no method and path".into()),
    };
    let template = Template::parse(&template_text).map_err(|e| e.to_string())?;
    let input = method.input();

    let variables = template
        .variables
        .iter()
        .map(|variable| {
            let fields = field_chain(&input, &variable.field_path)?;
            let leaf = fields.last().expect("field paths are never empty");
            if leaf.is_list() || leaf.is_map() {
                return Err(format!(
                    "path variable {} is a repeated field",
                    variable.dotted()
                ));
            }
            let kind = leaf_kind(leaf).ok_or_else(|| {
                format!("path variable {} is not a scalar field", variable.dotted())
            })?;
            Ok(BoundVariable {
                variable: variable.clone(),
                fields,
                kind,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;

    let body = match rule.body.as_str() {
        "" => BodyModel::None,
        "*" => BodyModel::Whole,
        name => {
            let field = input.get_field_by_name(name).ok_or_else(|| {
                format!(
                    "body field {name:?} is not a field of {}",
                    input.full_name()
                )
            })?;
            if variables
                .iter()
                .any(|v| v.variable.field_path.len() == 1 && v.variable.field_path[0] == name)
            {
                return Err(format!("body field {name:?} is also bound by the path"));
            }
            BodyModel::Field(field)
        }
    };
    if http_method == "GET" && !matches!(body, BodyModel::None) {
        return Err("a GET binding cannot take a body".into());
    }

    let response_body = match rule.response_body.as_str() {
        "" => None,
        name => Some(method.output().get_field_by_name(name).ok_or_else(|| {
            format!(
                "response_body {name:?} is not a field of {}",
                method.output().full_name()
            )
        })?),
    };

    let bound: Vec<Vec<String>> = template
        .variables
        .iter()
        .map(|v| v.field_path.clone())
        .collect();
    let mut query = Vec::new();
    if !matches!(body, BodyModel::Whole) {
        let body_field = match &body {
            BodyModel::Field(field) => Some(field.name().to_owned()),
            _ => None,
        };
        collect_query(
            &input,
            &mut Vec::new(),
            &bound,
            body_field.as_deref(),
            &mut query,
        );
    }

    let mask = match (&body, http_method.as_str()) {
        (BodyModel::Field(field), "PATCH") => match field.kind() {
            Kind::Message(body_message) => input
                .fields()
                .find(|f| {
                    !f.is_list()
                        && matches!(f.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask")
                        && !bound.iter().any(|path| path[0] == f.name())
                })
                .map(|field| MaskModel { field, body_message }),
            _ => None,
        },
        _ => None,
    };

    let (event_id, resume) = if method.is_server_streaming() {
        let event_id = flagged_field(pool, &method.output(), "switchboard.v1.sse_event_id")?;
        let resume = flagged_field(pool, &input, "switchboard.v1.sse_resume_after")?
            .map(|field| {
                let kind = leaf_kind(&field)
                    .filter(|_| !field.is_list())
                    .ok_or_else(|| {
                        format!("sse_resume_after field {} is not a scalar", field.name())
                    })?;
                Ok::<_, String>((field, kind))
            })
            .transpose()?;
        (event_id, resume)
    } else {
        (None, None)
    };

    Ok(BindingModel {
        http_method,
        template_text,
        template,
        variables,
        body,
        response_body,
        query,
        mask,
        event_id,
        resume,
    })
}

/// The one top-level field of `message` that sets the boolean field option
/// `option_name`, if any.
fn flagged_field(
    pool: &DescriptorPool,
    message: &MessageDescriptor,
    option_name: &str,
) -> Result<Option<FieldDescriptor>, String> {
    let Some(extension) = pool.get_extension_by_name(option_name) else {
        return Ok(None);
    };
    let flagged: Vec<FieldDescriptor> = message
        .fields()
        .filter(|field| {
            let options = field.options();
            options.has_extension(&extension)
                && options.get_extension(&extension).as_bool() == Some(true)
        })
        .collect();
    match flagged.as_slice() {
        [] => Ok(None),
        [field] => Ok(Some(field.clone())),
        _ => Err(format!(
            "{} has more than one field with ({option_name})",
            message.full_name()
        )),
    }
}

/// The fields along `path` from `message`; every step but the last must be a
/// singular message field.
fn field_chain(
    message: &MessageDescriptor,
    path: &[String],
) -> Result<Vec<FieldDescriptor>, String> {
    let mut current = message.clone();
    let mut fields = Vec::new();
    for (index, name) in path.iter().enumerate() {
        let field = current.get_field_by_name(name).ok_or_else(|| {
            format!(
                "{} has no field {name:?} (in {})",
                current.full_name(),
                path.join(".")
            )
        })?;
        if index + 1 < path.len() {
            match field.kind() {
                Kind::Message(next) if !field.is_list() && !field.is_map() => current = next,
                _ => {
                    return Err(format!(
                        "{} is not a singular message field",
                        path[..=index].join(".")
                    ));
                }
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// How a leaf field's text becomes JSON, or `None` when it is not a leaf
/// (a message other than the string-like well-known types).
pub(crate) fn leaf_kind(field: &FieldDescriptor) -> Option<ScalarKind> {
    Some(match field.kind() {
        Kind::String | Kind::Bytes => ScalarKind::Text,
        Kind::Bool => ScalarKind::Bool,
        Kind::Enum(_) => ScalarKind::Enum,
        Kind::Message(message) => match message.full_name() {
            "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue" => ScalarKind::Text,
            "google.protobuf.BoolValue" => ScalarKind::Bool,
            "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue" => ScalarKind::Number,
            _ => return None,
        },
        _ => ScalarKind::Number,
    })
}

/// Every field the query string may set: leaves not bound by the path or the
/// body, through singular message fields (cycles cut), maps excluded.
fn collect_query(
    message: &MessageDescriptor,
    prefix: &mut Vec<FieldDescriptor>,
    bound: &[Vec<String>],
    body_field: Option<&str>,
    out: &mut Vec<QueryModel>,
) {
    for field in message.fields() {
        if prefix.is_empty() && Some(field.name()) == body_field {
            continue;
        }
        if field.is_map() {
            continue;
        }
        let names: Vec<&str> = prefix
            .iter()
            .map(FieldDescriptor::name)
            .chain([field.name()])
            .collect();
        if bound
            .iter()
            .any(|path| path.iter().map(String::as_str).eq(names.iter().copied()))
        {
            continue;
        }
        prefix.push(field.clone());
        if let Some(kind) = leaf_kind(&field) {
            out.push(QueryModel {
                fields: prefix.clone(),
                kind,
                repeated: field.is_list(),
            });
        } else if let Kind::Message(child) = field.kind() {
            let cycle = prefix[..prefix.len() - 1]
                .iter()
                .any(|f| matches!(f.kind(), Kind::Message(m) if m == child))
                || child == *message;
            if !field.is_list() && !cycle && prefix.len() < 8 {
                collect_query(&child, prefix, bound, None, out);
            }
        }
        prefix.pop();
    }
}

/// Whether a message is one of the well-known types (generated elsewhere).
pub(crate) fn is_well_known(message: &MessageDescriptor) -> bool {
    message.package_name() == "google.protobuf"
}
