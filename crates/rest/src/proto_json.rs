//! Proto3 JSON into a message, with every decoding error said in the API's
//! words. The messages' deserializers (pbjson's, serde's derives) describe
//! what they expected in Rust's terms — `struct switchboard.v1.Book`,
//! `expected expected one of: [..]`, `data did not match any variant of
//! untagged enum Content`, `Invalid symbol 33` — so the JSON is fed to
//! them through [`JsonValue`], a deserializer whose error type
//! ([`Problem`]) turns each kind of failure into a sentence about JSON:
//! "must be a string, not an object", "unknown field", "must be one of
//! GENRE_FICTION, GENRE_HISTORY". Every echoed piece of the input is cut to
//! [`excerpt`] length. This is the one place such errors are translated, for
//! REST bodies, query strings and path variables, and WebSocket frames.

use std::fmt;

use serde::de::value::{MapAccessDeserializer, MapDeserializer, SeqDeserializer};
use serde::de::{
    self, DeserializeOwned, Deserializer, Expected, IntoDeserializer, Unexpected, Visitor,
};
use serde_json::Value;

use crate::error::invalid_field;

/// The most characters of client input an error message repeats.
pub const MAX_ECHOED_CHARS: usize = 128;

/// `text` as a client's input is repeated in an error message: whole when
/// short, else its first [`MAX_ECHOED_CHARS`] characters and `…`.
pub fn excerpt(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHOED_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

/// Decodes `json` into `T`, the proto3 JSON mapping as `T`'s deserializer
/// implements it.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the field at fault (its JSON path, cut to
/// length) and what was wrong with it, with a google.rpc.BadRequest field
/// violation.
#[allow(clippy::result_large_err)]
pub fn from_json<T: DeserializeOwned>(json: Value) -> Result<T, tonic::Status> {
    serde_path_to_error::deserialize(JsonValue(json)).map_err(|error| {
        let field = error.path().to_string();
        let field = if field == "." {
            String::new()
        } else {
            excerpt(&field)
        };
        invalid_field(&field, &error.into_inner().0)
    })
}

/// What was wrong with a JSON value, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem(String);

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Problem {}

impl de::Error for Problem {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Problem(custom_message(&message.to_string()))
    }

    fn invalid_type(found: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Problem(format!(
            "must be {}, not {}",
            expected_text(expected),
            kind_of(&found)
        ))
    }

    fn invalid_value(found: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Problem(format!(
            "must be {}; got {}",
            expected_text(expected),
            value_of(&found)
        ))
    }

    fn invalid_length(length: usize, expected: &dyn Expected) -> Self {
        Problem(format!(
            "must be {}; got {length} items",
            expected_text(expected)
        ))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Problem(format!(
            "unknown value \"{}\"; expected one of {}",
            excerpt(variant),
            expected.join(", ")
        ))
    }

    fn unknown_field(_field: &str, _expected: &'static [&'static str]) -> Self {
        // The path already ends with the field's name.
        Problem("unknown field".to_owned())
    }

    fn missing_field(field: &'static str) -> Self {
        Problem(format!("`{field}` is required"))
    }

    fn duplicate_field(field: &'static str) -> Self {
        Problem(format!("`{field}` is given more than once"))
    }
}

/// The kind of a JSON value, as it is named in an error.
fn kind_of(found: &Unexpected<'_>) -> &'static str {
    match found {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) | Unexpected::Float(_) => "a number",
        // A variant named by a string alone (`"subscribe"`).
        Unexpected::Char(_) | Unexpected::Str(_) | Unexpected::UnitVariant => "a string",
        Unexpected::Unit | Unexpected::Option => "null",
        Unexpected::Seq => "an array",
        Unexpected::Map | Unexpected::StructVariant | Unexpected::NewtypeVariant => "an object",
        _ => "a value of another kind",
    }
}

/// A JSON value as an error repeats it (cut to length).
fn value_of(found: &Unexpected<'_>) -> String {
    match found {
        Unexpected::Bool(value) => value.to_string(),
        Unexpected::Unsigned(value) => value.to_string(),
        Unexpected::Signed(value) => value.to_string(),
        Unexpected::Float(value) => value.to_string(),
        Unexpected::Char(value) => format!("\"{value}\""),
        Unexpected::Str(value) => format!("\"{}\"", excerpt(value)),
        other => kind_of(other).to_owned(),
    }
}

/// What a deserializer expected, in JSON's terms. Deserializers describe
/// it for Rust programmers (`struct switchboard.v1.Book`, `i32`, `a
/// sequence`, pbjson's enums `expected one of: ["A", "B"]`).
fn expected_text(expected: &dyn Expected) -> String {
    let text = expected.to_string();
    if let Some(list) = text.strip_prefix("expected one of: ") {
        let names: Vec<&str> = list
            .trim_matches(['[', ']'])
            .split(',')
            .map(|name| name.trim().trim_matches('"'))
            .filter(|name| !name.is_empty())
            .collect();
        return format!("one of {}", names.join(", "));
    }
    let plain = match text.as_str() {
        "a boolean" => "true or false",
        "a string" | "a borrowed string" | "a char" => "a string",
        "a sequence" | "tuple variant" => "an array",
        "a map" | "newtype variant" | "struct variant" => "an object",
        "unit" | "unit variant" => "null",
        "i8" => "an integer from -128 to 127",
        "i16" => "an integer from -32768 to 32767",
        "i32" => "an integer from -2147483648 to 2147483647",
        "i64" => "an integer from -9223372036854775808 to 9223372036854775807",
        "u8" => "an integer from 0 to 255",
        "u16" => "an integer from 0 to 65535",
        "u32" => "an integer from 0 to 4294967295",
        "u64" => "an integer from 0 to 18446744073709551615",
        "i128" | "u128" => "an integer",
        "f32" | "f64" => "a number",
        _ if text.starts_with("struct ")
            || text.starts_with("enum ")
            || text.starts_with("map ")
            || text.starts_with("a map") =>
        {
            "an object"
        }
        // Our own visitors and pbjson's well-known types already speak
        // JSON ("an RFC 3339 date-time …", "a base64 string").
        _ if !text.contains("::") && !text.contains('<') => return text,
        _ => "a value of another kind",
    };
    plain.to_owned()
}

/// A free-form message from a deserializer, in the API's words where it
/// is one the libraries under the messages are known to give.
fn custom_message(message: &str) -> String {
    let base64 = [
        "Invalid symbol",
        "Invalid byte",
        "Invalid input length",
        "Invalid last symbol",
        "Invalid padding",
        "Encoded text cannot have a 6-bit remainder",
    ];
    let described = match message {
        // pbjson reads a number from a JSON number or a string.
        _ if message.contains("untagged enum") => {
            "must be a number that fits the field (a whole number, for an integer field), or a string holding one"
        }
        "invalid digit found in string" | "cannot parse integer from empty string" => {
            "must be an integer"
        }
        "number too large to fit in target type" | "number too small to fit in target type" => {
            "is out of range for this field"
        }
        "invalid float literal" | "cannot parse float from empty string" => "must be a number",
        _ if base64.iter().any(|prefix| message.starts_with(prefix)) => {
            "must be base64 (the standard or the URL-safe alphabet)"
        }
        _ => return excerpt(message),
    };
    described.to_owned()
}

/// A JSON value that deserializes with [`Problem`] errors: the same
/// behaviour as `serde_json::Value`'s deserializer, in other words.
#[derive(Debug)]
pub struct JsonValue(pub Value);

impl<'de> IntoDeserializer<'de, Problem> for JsonValue {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

fn entries(
    object: serde_json::Map<String, Value>,
) -> MapDeserializer<'static, impl Iterator<Item = (String, JsonValue)>, Problem> {
    MapDeserializer::new(
        object
            .into_iter()
            .map(|(key, value)| (key, JsonValue(value))),
    )
}

impl<'de> Deserializer<'de> for JsonValue {
    type Error = Problem;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(value) => visitor.visit_bool(value),
            Value::Number(number) => {
                if let Some(value) = number.as_u64() {
                    visitor.visit_u64(value)
                } else if let Some(value) = number.as_i64() {
                    visitor.visit_i64(value)
                } else {
                    visitor.visit_f64(number.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(text) => visitor.visit_string(text),
            Value::Array(items) => {
                let mut items = SeqDeserializer::new(items.into_iter().map(JsonValue));
                let value = visitor.visit_seq(&mut items)?;
                items.end()?;
                Ok(value)
            }
            Value::Object(object) => {
                let mut entries = entries(object);
                let value = visitor.visit_map(&mut entries)?;
                entries.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Problem> {
        visitor.visit_newtype_struct(self)
    }

    /// An enum is a string (a unit variant) or an object of one key (the
    /// variant) holding its content.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Problem> {
        match self.0 {
            Value::String(text) => visitor.visit_enum(text.into_deserializer()),
            Value::Object(object) if object.len() == 1 => {
                visitor.visit_enum(MapAccessDeserializer::new(entries(object)))
            }
            Value::Object(_) => Err(Problem("must be an object with exactly one key".to_owned())),
            other => Err(de::Error::invalid_type(
                unexpected(&other),
                &"an object with exactly one key",
            )),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier
    }
}

fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(value) => Unexpected::Bool(*value),
        Value::Number(_) => Unexpected::Float(0.0),
        Value::String(text) => Unexpected::Str(text),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shelf {
        name: String,
        #[serde(default)]
        books: Vec<u32>,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    enum Kind {
        Wall,
        Free { wheels: u32 },
    }

    fn message(json: Value) -> String {
        from_json::<Shelf>(json).unwrap_err().message().to_owned()
    }

    #[test]
    fn errors_name_json_kinds_not_rust_types() {
        assert_eq!(
            message(json!({"name": 5})),
            "name: must be a string, not a number"
        );
        assert_eq!(message(json!("shelf")), "must be an object, not a string");
        assert_eq!(
            message(json!({"name": "n", "books": {}})),
            "books: must be an array, not an object"
        );
        assert_eq!(
            message(json!({"name": "n", "books": ["x"]})),
            "books[0]: must be an integer from 0 to 4294967295, not a string"
        );
        assert_eq!(
            message(json!({"name": "n", "colour": 1})),
            "colour: unknown field"
        );
        assert_eq!(message(json!({})), "`name` is required");
        assert_eq!(
            message(json!({"name": "n", "kind": "roof"})),
            "kind: unknown value \"roof\"; expected one of wall, free"
        );
        assert_eq!(
            message(json!({"name": "n", "kind": {"free": {"wheels": 1}, "wall": null}})),
            "kind: must be an object with exactly one key"
        );
    }

    #[test]
    fn messages_of_the_libraries_under_the_messages_are_translated() {
        for (library, ours) in [
            (
                "data did not match any variant of untagged enum Content",
                "must be a number that fits the field (a whole number, for an integer field), or a string holding one",
            ),
            ("invalid digit found in string", "must be an integer"),
            (
                "Invalid symbol 33, offset 0.",
                "must be base64 (the standard or the URL-safe alphabet)",
            ),
        ] {
            assert_eq!(<Problem as de::Error>::custom(library).0, ours);
        }
        let enum_names = "expected one of: [\"GENRE_FICTION\", \"GENRE_HISTORY\"]";
        let problem = <Problem as de::Error>::invalid_value(Unexpected::Signed(9), &enum_names);
        assert_eq!(
            problem.0,
            "must be one of GENRE_FICTION, GENRE_HISTORY; got 9"
        );
    }

    #[test]
    fn echoed_input_is_cut_to_length() {
        let long = "k".repeat(10_000);
        let error = from_json::<Shelf>(json!({"name": "n", long.clone(): 1})).unwrap_err();
        assert!(error.message().len() < 200, "{}", error.message());
        let error = from_json::<Shelf>(json!({"name": "n", "kind": long})).unwrap_err();
        assert!(error.message().len() < 200, "{}", error.message());
    }
}
