//! Well-known types whose proto3 JSON form pbjson-types gets wrong, written
//! here so that every generated message serialises as the JSON mapping spec
//! says: `Timestamp` as RFC 3339 normalised to `Z` (pbjson writes `+00:00`)
//! and `FieldMask` as one comma-separated string of lowerCamelCase paths
//! (pbjson writes `{"paths": [...]}`). The code generator maps
//! `google.protobuf.Timestamp` and `google.protobuf.FieldMask` here; the wire
//! format is the standard one.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, independent of any time zone: `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (1970-01-01T00:00:00Z).
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Non-negative fractions of a second at nanosecond resolution, 0 to 999,999,999.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// The timestamp as a chrono date-time, or `None` when it is out of
    /// chrono's range or its nanos are outside 0..1e9.
    pub fn to_datetime(&self) -> Option<DateTime<Utc>> {
        let nanos = u32::try_from(self.nanos)
            .ok()
            .filter(|n| *n < 1_000_000_000)?;
        DateTime::from_timestamp(self.seconds, nanos)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(time: DateTime<Utc>) -> Self {
        Self {
            seconds: time.timestamp(),
            nanos: time.timestamp_subsec_nanos() as i32,
        }
    }
}

impl prost::Name for Timestamp {
    const NAME: &'static str = "Timestamp";
    const PACKAGE: &'static str = "google.protobuf";
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let time = self
            .to_datetime()
            .ok_or_else(|| serde::ser::Error::custom("timestamp out of range"))?;
        serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 date-time such as \"2026-01-02T03:04:05Z\"")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Timestamp, E> {
                DateTime::parse_from_rfc3339(value)
                    .map(|time| Timestamp::from(time.with_timezone(&Utc)))
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(value), &self))
            }
        }
        deserializer.deserialize_str(TimestampVisitor)
    }
}

/// A set of field paths: `google.protobuf.FieldMask`. Paths use the proto
/// field names (`snake_case`); in JSON they are lowerCamelCase, joined by
/// commas.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct FieldMask {
    /// The field paths, such as `title` or `conversation.title`.
    #[prost(string, repeated, tag = "1")]
    pub paths: Vec<String>,
}

impl prost::Name for FieldMask {
    const NAME: &'static str = "FieldMask";
    const PACKAGE: &'static str = "google.protobuf";
}

impl Serialize for FieldMask {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let camel: Vec<String> = self.paths.iter().map(|path| snake_to_camel(path)).collect();
        serializer.serialize_str(&camel.join(","))
    }
}

impl<'de> Deserialize<'de> for FieldMask {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldMaskVisitor;
        impl Visitor<'_> for FieldMaskVisitor {
            type Value = FieldMask;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a comma-separated list of field paths such as \"title,updateTime\"")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<FieldMask, E> {
                let paths = value
                    .split(',')
                    .map(str::trim)
                    .filter(|path| !path.is_empty())
                    .map(camel_to_snake)
                    .collect();
                Ok(FieldMask { paths })
            }
        }
        deserializer.deserialize_str(FieldMaskVisitor)
    }
}

/// A field path in JSON form (`pageCount.value`) in proto form
/// (`page_count.value`), as the proto3 JSON mapping converts it: `_` before
/// each ASCII capital, which is lowered. `*` and digits are kept.
pub fn camel_to_snake(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A field path in proto form in JSON form: each `_` followed by an ASCII
/// lower-case letter becomes that letter in capitals.
pub fn snake_to_camel(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match chars.peek() {
            Some(next) if c == '_' && next.is_ascii_lowercase() => {
                out.push(next.to_ascii_uppercase());
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_json_is_z_normalised_and_round_trips() {
        let time = Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_000_000,
        };
        let json = serde_json::to_string(&time).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.123Z\"");
        let back: Timestamp = serde_json::from_str("\"2023-11-14T23:13:20.123+01:00\"").unwrap();
        assert_eq!(back, time);
    }

    #[test]
    fn timestamp_rejects_garbage_with_a_clear_message() {
        let err = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }

    #[test]
    fn field_mask_paths_convert_as_the_spec_says() {
        for (snake, camel) in [
            ("page_count", "pageCount"),
            ("a.b_c", "a.bC"),
            ("*", "*"),
            ("ab_1c", "ab_1c"),
        ] {
            assert_eq!(snake_to_camel(snake), camel);
            assert_eq!(camel_to_snake(camel), snake);
        }
    }

    #[test]
    fn field_mask_json_is_one_camel_case_string() {
        let mask = FieldMask {
            paths: vec!["title".into(), "conversation.update_time".into()],
        };
        assert_eq!(
            serde_json::to_string(&mask).unwrap(),
            "\"title,conversation.updateTime\""
        );
        let back: FieldMask = serde_json::from_str("\"title, conversation.updateTime\"").unwrap();
        assert_eq!(back, mask);
    }
}
