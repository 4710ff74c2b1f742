//! HTTP request → proto3 JSON → request message, following the
//! google.api.http rules: path variables (nested fields and multi-segment
//! patterns), the body (`*` or one field), the remaining fields from the
//! query string (repeated and nested ones too), and a FieldMask computed from
//! a PATCH body. The JSON is then decoded by the message's own proto3 JSON
//! deserializer (pbjson), which accepts lowerCamelCase and proto names, so
//! the rules of the JSON mapping hold in one place.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::binding::{BodyRule, FieldPath, FieldStep, HttpBinding, MaskNode, ScalarKind, Segment};
use crate::error::invalid_field;
use crate::proto_json::excerpt;

/// Matches a request path against a binding's template. Returns the text
/// captured by each variable, in the order of `binding.variables`, or `None`
/// when the path does not match.
pub fn match_path(binding: &HttpBinding, path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    let rest = match binding.verb {
        Some(verb) => {
            let (head, tail) = rest.rsplit_once(':')?;
            if tail != verb {
                return None;
            }
            head
        }
        None => rest,
    };
    let parts: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    // Which path segments each template segment took: `**` takes the rest.
    let mut spans = Vec::with_capacity(binding.segments.len() + 1);
    let mut at = 0;
    for segment in binding.segments {
        match segment {
            Segment::Literal(literal) => {
                let part = parts.get(at)?;
                if decode(part)? != *literal {
                    return None;
                }
                spans.push(at);
                at += 1;
            }
            Segment::Any => {
                let part = parts.get(at)?;
                if part.is_empty() {
                    return None;
                }
                spans.push(at);
                at += 1;
            }
            Segment::AnyMany => {
                spans.push(at);
                at = parts.len();
            }
        }
    }
    if at != parts.len() {
        return None;
    }
    spans.push(at);
    binding
        .variables
        .iter()
        .map(|variable| {
            let pieces = &parts[spans[variable.start]..spans[variable.end]];
            // A variable of one plain segment takes its text fully decoded;
            // one that spans a pattern keeps `%2F` encoded, so an escaped
            // slash cannot add segments to a resource name.
            let single = variable.end - variable.start == 1
                && binding.segments[variable.start] != Segment::AnyMany;
            let decoded: Option<Vec<String>> = pieces
                .iter()
                .map(|piece| {
                    if single {
                        decode(piece)
                    } else {
                        decode_keeping_slashes(piece)
                    }
                })
                .collect();
            decoded.map(|pieces| pieces.join("/"))
        })
        .collect()
}

/// Decodes a segment but leaves `%2F` (an escaped `/`) as it is, as
/// google.api.http asks of multi-segment variables.
fn decode_keeping_slashes(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut start = 0;
    let mut at = 0;
    while at + 3 <= bytes.len() {
        if bytes[at] == b'%' && bytes[at + 1] == b'2' && bytes[at + 2].eq_ignore_ascii_case(&b'f') {
            // `%`, `2` and `F` are ASCII, so both cuts fall on char boundaries.
            out.push_str(&decode(&segment[start..at])?);
            out.push_str(&segment[at..at + 3]);
            at += 3;
            start = at;
        } else {
            at += 1;
        }
    }
    out.push_str(&decode(&segment[start..])?);
    Some(out)
}

fn decode(segment: &str) -> Option<String> {
    percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// Why a request could not be turned into its message.
pub type TranscodeError = tonic::Status;

/// Builds the request message of a matched binding from the captured path
/// variables, the raw query string and the body.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the field (or parameter) at fault: malformed
/// JSON, a body where none is taken, an unknown or repeated query parameter,
/// a wrong type, an unknown enum name, an unknown field.
#[allow(clippy::result_large_err)]
pub fn decode_request<Req: DeserializeOwned>(
    binding: &HttpBinding,
    captured: Vec<String>,
    query: Option<&str>,
    body: &[u8],
    last_event_id: Option<&str>,
) -> Result<Req, TranscodeError> {
    let mut json = request_json(binding, captured, query, body)?;
    if let (Some(resume), Some(id), Value::Object(request)) =
        (binding.resume, last_event_id, &mut json)
        && !request.contains_key(resume.field.json)
        && !request.contains_key(resume.field.proto)
    {
        let value = scalar_json(resume.kind, id.trim(), std::slice::from_ref(&resume.field))?;
        request.insert(resume.field.json.to_owned(), value);
    }
    crate::proto_json::from_json(json)
}

/// The proto3 JSON of the request, before it is decoded.
#[allow(clippy::result_large_err)]
fn request_json(
    binding: &HttpBinding,
    captured: Vec<String>,
    query: Option<&str>,
    body: &[u8],
) -> Result<Value, TranscodeError> {
    let body_value = parse_body(binding.body, body)?;
    let mut request = match (binding.body, body_value) {
        (BodyRule::Whole, Some(Value::Object(object))) => object,
        (BodyRule::Whole, Some(_)) => {
            return Err(invalid_field("", "the request body must be a JSON object"));
        }
        (BodyRule::Field(step), Some(value)) => {
            let mut object = Map::new();
            object.insert(step.json.to_owned(), value);
            object
        }
        _ => Map::new(),
    };
    // The mask comes from the body as sent, before path variables join it.
    let body_mask = match (binding.mask, binding.body) {
        (Some(mask), BodyRule::Field(step)) => match request.get(step.json) {
            Some(Value::Object(patch)) => {
                let mut paths = Vec::new();
                mask_paths(patch, mask.tree, mask.output_only, "", &mut paths);
                Some((mask.field, paths))
            }
            _ => None,
        },
        _ => None,
    };

    for (variable, text) in binding.variables.iter().zip(captured) {
        let value = scalar_json(variable.kind, &text, variable.path)?;
        insert_at(&mut request, variable.path, value)?;
    }

    let query_fields = parse_query(binding, query.unwrap_or(""))?;
    let mask_from_query = binding
        .mask
        .is_some_and(|mask| query_fields.keys().any(|path| path == mask.field.proto));
    for (_, (path, value)) in query_fields {
        insert_at(&mut request, path, value)?;
    }

    if let (Some((field, paths)), false) = (body_mask, mask_from_query) {
        remove_field(&mut request, field);
        request.insert(field.json.to_owned(), Value::String(paths.join(",")));
    }
    Ok(Value::Object(request))
}

#[allow(clippy::result_large_err)]
fn parse_body(rule: BodyRule, body: &[u8]) -> Result<Option<Value>, TranscodeError> {
    let blank = body.iter().all(u8::is_ascii_whitespace);
    match rule {
        BodyRule::None if blank => Ok(None),
        BodyRule::None => Err(invalid_field("", "this method takes no request body")),
        _ if blank => Ok(None),
        _ => serde_json::from_slice(body).map(Some).map_err(|error| {
            invalid_field("", &format!("the request body is not valid JSON: {error}"))
        }),
    }
}

/// The most unknown query parameters one error names.
const MAX_UNKNOWN_NAMED: usize = 8;

/// Query parameters grouped by field: the key is the field's proto path
/// (`a.b`), the value its path and JSON value.
#[allow(clippy::result_large_err)]
fn parse_query(
    binding: &HttpBinding,
    query: &str,
) -> Result<BTreeMap<String, (FieldPath, Value)>, TranscodeError> {
    let mut fields: BTreeMap<String, (FieldPath, Value)> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (name, text) in form_urlencoded::parse(query.as_bytes()) {
        let param = binding.query.iter().find(|param| {
            path_matches(param.path, &name, |s| s.proto)
                || path_matches(param.path, &name, |s| s.json)
        });
        let Some(param) = param else {
            // A handful named is enough; a client that sends thousands
            // is not told each back.
            if !unknown.contains(&name) && unknown.len() < MAX_UNKNOWN_NAMED {
                unknown.push(name);
            }
            continue;
        };
        let key = proto_path(param.path);
        let value = scalar_json(param.kind, &text, param.path)?;
        match fields.get_mut(&key) {
            Some((_, Value::Array(items))) if param.repeated => items.push(value),
            Some(_) => {
                return Err(invalid_field(&key, "query parameter given more than once"));
            }
            None if param.repeated => {
                fields.insert(key, (param.path, Value::Array(vec![value])));
            }
            None => {
                fields.insert(key, (param.path, value));
            }
        }
    }
    if !unknown.is_empty() {
        let names: Vec<String> = unknown
            .iter()
            .map(|name| format!("`{}`", excerpt(name)))
            .collect();
        let mut details = tonic_types::ErrorDetails::new();
        for name in &unknown {
            details.add_bad_request_violation(excerpt(name), "unknown query parameter");
        }
        return Err(
            <tonic::Status as tonic_types::StatusExt>::with_error_details(
                tonic::Code::InvalidArgument,
                format!("unknown query parameter {}", names.join(", ")),
                details,
            ),
        );
    }
    Ok(fields)
}

fn path_matches(path: FieldPath, name: &str, pick: fn(&FieldStep) -> &'static str) -> bool {
    let mut parts = name.split('.');
    path.iter().all(|step| parts.next() == Some(pick(step))) && parts.next().is_none()
}

fn proto_path(path: &[FieldStep]) -> String {
    path.iter()
        .map(|step| step.proto)
        .collect::<Vec<_>>()
        .join(".")
}

#[allow(clippy::result_large_err)]
fn scalar_json(kind: ScalarKind, text: &str, path: &[FieldStep]) -> Result<Value, TranscodeError> {
    Ok(match kind {
        ScalarKind::Text | ScalarKind::Number => Value::String(text.to_owned()),
        ScalarKind::Bool => match text {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => {
                return Err(invalid_field(
                    &proto_path(path),
                    &format!("must be true or false; got \"{}\"", excerpt(text)),
                ));
            }
        },
        ScalarKind::Enum => match text.parse::<i32>() {
            Ok(number) => Value::from(number),
            Err(_) => Value::String(text.to_owned()),
        },
    })
}

/// Sets the field at `path`, creating the messages on the way and replacing
/// the field wherever the body had it under either of its names.
#[allow(clippy::result_large_err)]
fn insert_at(
    request: &mut Map<String, Value>,
    path: FieldPath,
    value: Value,
) -> Result<(), TranscodeError> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut object = request;
    for (depth, step) in parents.iter().enumerate() {
        let existing = object
            .remove(step.proto)
            .or_else(|| object.remove(step.json));
        let child = object
            .entry(step.json.to_owned())
            .or_insert(existing.unwrap_or_else(|| Value::Object(Map::new())));
        object = match child {
            Value::Object(child) => child,
            _ => {
                return Err(invalid_field(
                    &proto_path(&path[..=depth]),
                    "must be a JSON object",
                ));
            }
        };
    }
    remove_field(object, *last);
    object.insert(last.json.to_owned(), value);
    Ok(())
}

fn remove_field(object: &mut Map<String, Value>, step: FieldStep) {
    object.remove(step.proto);
    object.remove(step.json);
}

/// The FieldMask paths (proto names) of the fields present in a PATCH body.
fn mask_paths(
    object: &Map<String, Value>,
    tree: &[MaskNode],
    output_only: &[FieldStep],
    prefix: &str,
    out: &mut Vec<String>,
) {
    for (key, value) in object {
        if output_only
            .iter()
            .any(|step| step.json == key || step.proto == key)
        {
            continue;
        }
        let node = tree
            .iter()
            .find(|node| node.field.json == key || node.field.proto == key);
        let name = node.map_or_else(
            || crate::wkt::camel_to_snake(key),
            |node| node.field.proto.to_owned(),
        );
        let path = format!("{prefix}{name}");
        match (node, value) {
            (Some(node), Value::Object(child)) if !child.is_empty() => {
                mask_paths(
                    child,
                    node.children,
                    node.output_only,
                    &format!("{path}."),
                    out,
                );
            }
            _ => out.push(path),
        }
    }
}

/// The deadline a `grpc-timeout` header asks for (`100m`, `5S`, …), as the
/// gRPC over HTTP/2 spec defines it: at most 8 digits and a unit.
pub fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::{MaskRule, QueryParam, Variable};

    const NAME: FieldStep = FieldStep {
        proto: "name",
        json: "name",
    };
    const ITEM: FieldStep = FieldStep {
        proto: "item",
        json: "item",
    };
    const ITEM_ID: FieldStep = FieldStep {
        proto: "item_id",
        json: "itemId",
    };
    const MASK: FieldStep = FieldStep {
        proto: "update_mask",
        json: "updateMask",
    };

    const NAMED: HttpBinding = HttpBinding {
        grpc_method: "/t.S/Get",
        http_method: "GET",
        template: "/v1/{name=shelves/*/books/**}",
        segments: &[
            Segment::Literal("v1"),
            Segment::Literal("shelves"),
            Segment::Any,
            Segment::Literal("books"),
            Segment::AnyMany,
        ],
        variables: &[Variable {
            path: &[NAME],
            kind: ScalarKind::Text,
            start: 1,
            end: 5,
        }],
        verb: None,
        body: BodyRule::None,
        response_body: None,
        query: &[QueryParam {
            path: &[ITEM, ITEM_ID],
            kind: ScalarKind::Text,
            repeated: true,
        }],
        mask: None,
        event_id: None,
        resume: None,
        policy: None,
    };

    #[test]
    fn multi_segment_variables_capture_their_whole_pattern() {
        let captured = match_path(&NAMED, "/v1/shelves/s%201/books/a/b").unwrap();
        assert_eq!(captured, vec!["shelves/s 1/books/a/b"]);
        assert!(match_path(&NAMED, "/v1/shelves/s1/pens/a").is_none());
        assert!(match_path(&NAMED, "/v1/shelves/s1").is_none());
        assert_eq!(
            match_path(&NAMED, "/v1/shelves/s1/books").unwrap(),
            vec!["shelves/s1/books"]
        );
        assert_eq!(
            match_path(&NAMED, "/v1/shelves/a%2fb/books/c%C3%A9").unwrap(),
            vec!["shelves/a%2fb/books/cé"],
            "an escaped slash adds no segment to the name"
        );
    }

    #[test]
    fn repeated_nested_query_parameters_accept_both_names() {
        let json = request_json(
            &NAMED,
            vec!["n".into()],
            Some("item.itemId=a&item.item_id=b"),
            b"",
        )
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "n", "item": {"itemId": ["a", "b"]}})
        );
    }

    #[test]
    fn unknown_query_parameters_are_named() {
        let error =
            request_json(&NAMED, vec!["n".into()], Some("colour=red&size=2"), b"").unwrap_err();
        assert_eq!(error.message(), "unknown query parameter `colour`, `size`");
    }

    #[test]
    fn a_body_where_none_is_taken_is_refused() {
        let error = request_json(&NAMED, vec!["n".into()], None, b"{}").unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_patch_body_fills_the_field_mask() {
        let binding = HttpBinding {
            http_method: "PATCH",
            body: BodyRule::Field(ITEM),
            query: &[],
            variables: &[Variable {
                path: &[ITEM, ITEM_ID],
                kind: ScalarKind::Text,
                start: 1,
                end: 2,
            }],
            segments: &[Segment::Literal("items"), Segment::Any],
            mask: Some(MaskRule {
                field: MASK,
                tree: &[MaskNode {
                    field: FieldStep {
                        proto: "shape",
                        json: "shape",
                    },
                    children: &[],
                    output_only: &[],
                }],
                output_only: &[FieldStep {
                    proto: "create_time",
                    json: "createTime",
                }],
            }),
            ..NAMED
        };
        let body = br#"{"displayName": "x", "createTime": "2026-01-01T00:00:00Z", "shape": {"sides": 3, "colour": "red"}}"#;
        let json = request_json(&binding, vec!["7".into()], None, body).unwrap();
        assert_eq!(json["updateMask"], "display_name,shape.sides,shape.colour");
        assert_eq!(json["item"]["itemId"], "7");
    }

    #[test]
    fn grpc_timeouts_follow_the_spec() {
        assert_eq!(
            parse_grpc_timeout("100m"),
            Some(std::time::Duration::from_millis(100))
        );
        assert_eq!(
            parse_grpc_timeout("2S"),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("+9S"), None);
    }
}
