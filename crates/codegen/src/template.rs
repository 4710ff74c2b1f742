//! The google.api.http path template grammar:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! A variable without `=` is `{field=*}`. `**` may only be the last segment.
//! Variables do not nest.

use std::fmt;

/// One segment of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches itself.
    Literal(String),
    /// `*`: one segment.
    Any,
    /// `**`: the rest of the path.
    AnyMany,
}

/// A variable: the field path it sets and the segments it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The field path, such as `["conversation", "id"]`.
    pub field_path: Vec<String>,
    /// First segment covered.
    pub start: usize,
    /// One past the last segment covered.
    pub end: usize,
}

impl Variable {
    /// The field path as written, `a.b`.
    pub fn dotted(&self) -> String {
        self.field_path.join(".")
    }
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The segments, variables flattened in.
    pub segments: Vec<Segment>,
    /// The variables, in order.
    pub variables: Vec<Variable>,
    /// The custom verb, if any.
    pub verb: Option<String>,
}

/// One parameter of a template's OpenAPI path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathParameter {
    /// The parameter's name in the path.
    pub name: String,
    /// The variable (index into [`Template::variables`]) the text belongs
    /// to; `None` for a wildcard outside any variable.
    pub variable: Option<usize>,
    /// Whether it stands for `**` (any number of segments).
    pub many: bool,
    /// Whether it is a whole plain variable (`{field}`), not one wildcard of
    /// a variable's pattern.
    pub whole: bool,
}

/// A collection name made singular for a parameter name: `books` → `book`,
/// `categories` → `category`. Plain rules; the name is only a label.
fn singular(literal: &str) -> String {
    let word = literal.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_");
    if let Some(stem) = word.strip_suffix("ies") {
        format!("{stem}y")
    } else if let Some(stem) = word.strip_suffix("ves") {
        format!("{stem}f")
    } else if word.ends_with("ss") {
        word
    } else if let Some(stem) = word.strip_suffix('s') {
        stem.to_owned()
    } else {
        word
    }
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// The template.
    pub template: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path template {:?}: {}", self.template, self.reason)
    }
}

impl std::error::Error for TemplateError {}

impl Template {
    /// Parses a template.
    ///
    /// # Errors
    /// A [`TemplateError`] saying what breaks the grammar.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let fail = |reason: &str| TemplateError {
            template: template.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| fail("must start with '/'"))?;
        // The verb is a `:` after the last `/` and after the last `}`.
        let tail_start = rest
            .rfind('/')
            .map_or(0, |i| i + 1)
            .max(rest.rfind('}').map_or(0, |i| i + 1));
        let (body, verb) = match rest[tail_start..].find(':') {
            Some(at) => {
                let at = tail_start + at;
                let verb = &rest[at + 1..];
                if verb.is_empty() || !verb.chars().all(is_literal_char) {
                    return Err(fail("the verb after ':' must be a non-empty literal"));
                }
                (&rest[..at], Some(verb.to_owned()))
            }
            None => (rest, None),
        };
        let mut parsed = Template {
            segments: Vec::new(),
            variables: Vec::new(),
            verb,
        };
        let mut chars = body;
        loop {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner.find('}').ok_or_else(|| fail("unclosed '{'"))?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..close], "*"),
                };
                if pattern.contains('{') {
                    return Err(fail("variables cannot nest"));
                }
                let field_path: Vec<String> = field.split('.').map(str::to_owned).collect();
                if field_path.iter().any(|part| !is_ident(part)) {
                    return Err(fail(&format!("{field:?} is not a field path")));
                }
                let start = parsed.segments.len();
                for segment in pattern.split('/') {
                    parsed.segments.push(
                        parse_plain(segment)
                            .ok_or_else(|| fail(&format!("{segment:?} is not a valid segment")))?,
                    );
                }
                parsed.variables.push(Variable {
                    field_path,
                    start,
                    end: parsed.segments.len(),
                });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                let segment = &chars[..end];
                parsed.segments.push(
                    parse_plain(segment)
                        .ok_or_else(|| fail(&format!("{segment:?} is not a valid segment")))?,
                );
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some(next) => chars = next,
                None if chars.is_empty() => break,
                None => return Err(fail("expected '/' after a variable")),
            }
        }
        if let Some(at) = parsed.segments.iter().position(|s| *s == Segment::AnyMany)
            && at + 1 != parsed.segments.len()
        {
            return Err(fail("'**' must be the last segment"));
        }
        let mut seen = std::collections::HashSet::new();
        for variable in &parsed.variables {
            if !seen.insert(variable.dotted()) {
                return Err(fail(&format!(
                    "variable {} appears twice",
                    variable.dotted()
                )));
            }
        }
        Ok(parsed)
    }

    /// The template as an OpenAPI path, and its parameters in order.
    ///
    /// A variable that is one plain segment becomes `{field.path}`. A
    /// variable with a pattern is spelled out, since an OpenAPI parameter
    /// cannot hold a `/`: `{name=shelves/*/books/*}` becomes
    /// `shelves/{shelf}/books/{book}`, one parameter per wildcard, named after
    /// the literal before it. So distinct templates give distinct paths, and
    /// a client that fills the parameters builds a URL the server matches.
    pub fn openapi_path(&self) -> (String, Vec<PathParameter>) {
        let mut path = String::new();
        let mut parameters: Vec<PathParameter> = Vec::new();
        let mut index = 0;
        let mut previous_literal: Option<&str> = None;
        while index < self.segments.len() {
            path.push('/');
            let variable = self.variables.iter().position(|v| v.start == index);
            if let Some(position) = variable
                && self.variable_pattern(&self.variables[position]).is_none()
            {
                let variable = &self.variables[position];
                path.push_str(&format!("{{{}}}", variable.dotted()));
                parameters.push(PathParameter {
                    name: variable.dotted(),
                    variable: Some(position),
                    many: false,
                    whole: true,
                });
                index = variable.end;
                continue;
            }
            let owner = self
                .variables
                .iter()
                .position(|v| v.start <= index && index < v.end);
            match &self.segments[index] {
                Segment::Literal(literal) => {
                    path.push_str(literal);
                    previous_literal = Some(literal);
                }
                wildcard => {
                    let base = previous_literal
                        .map(singular)
                        .or_else(|| owner.map(|o| self.variables[o].field_path.join("_")))
                        .unwrap_or_else(|| "segment".to_owned());
                    let mut name = base.clone();
                    let mut n = 2;
                    while parameters.iter().any(|p| p.name == name) {
                        name = format!("{base}{n}");
                        n += 1;
                    }
                    path.push_str(&format!("{{{name}}}"));
                    parameters.push(PathParameter {
                        name,
                        variable: owner,
                        many: *wildcard == Segment::AnyMany,
                        whole: false,
                    });
                }
            }
            index += 1;
        }
        if path.is_empty() {
            path.push('/');
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        (path, parameters)
    }

    /// The segments and verb that decide which requests the template
    /// matches; two templates with the same key can never both be reached.
    pub fn match_key(&self) -> String {
        format!("{:?}:{:?}", self.segments, self.verb)
    }

    /// A regular expression for the text a variable captures, when it is
    /// more than one plain segment (`{name=shelves/*}` → `^shelves/[^/]+$`).
    pub fn variable_pattern(&self, variable: &Variable) -> Option<String> {
        let segments = &self.segments[variable.start..variable.end];
        if segments == [Segment::Any] {
            return None;
        }
        let parts: Vec<String> = segments
            .iter()
            .map(|segment| match segment {
                Segment::Literal(literal) => regex::escape(literal),
                Segment::Any => "[^/]+".to_owned(),
                Segment::AnyMany => ".*".to_owned(),
            })
            .collect();
        Some(format!("^{}$", parts.join("/")))
    }
}

fn parse_plain(segment: &str) -> Option<Segment> {
    match segment {
        "*" => Some(Segment::Any),
        "**" => Some(Segment::AnyMany),
        "" => None,
        literal if literal.chars().all(is_literal_char) => {
            Some(Segment::Literal(literal.to_owned()))
        }
        _ => None,
    }
}

fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;@%".contains(c)
}

fn is_ident(part: &str) -> bool {
    let mut chars = part.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(text: &str) -> Segment {
        Segment::Literal(text.to_owned())
    }

    #[test]
    fn simple_variables_are_one_segment_each() {
        let t =
            Template::parse("/v1/conversations/{conversation_id}/messages/{message_id}").unwrap();
        assert_eq!(t.segments.len(), 5);
        assert_eq!(
            t.variables[0],
            Variable {
                field_path: vec!["conversation_id".into()],
                start: 2,
                end: 3
            }
        );
        assert_eq!(t.variables[1].start, 4);
        assert_eq!(t.verb, None);
    }

    #[test]
    fn nested_field_paths_are_split() {
        let t = Template::parse("/v1/conversations/{conversation.id}").unwrap();
        assert_eq!(t.variables[0].field_path, vec!["conversation", "id"]);
        assert_eq!(t.openapi_path().0, "/v1/conversations/{conversation.id}");
    }

    #[test]
    fn patterns_cover_several_segments() {
        let t = Template::parse("/v1/{name=shelves/*/books/*}").unwrap();
        assert_eq!(
            t.segments,
            vec![
                literal("v1"),
                literal("shelves"),
                Segment::Any,
                literal("books"),
                Segment::Any
            ]
        );
        assert_eq!((t.variables[0].start, t.variables[0].end), (1, 5));
        let (path, parameters) = t.openapi_path();
        assert_eq!(path, "/v1/shelves/{shelf}/books/{book}");
        assert_eq!(
            parameters
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["shelf", "book"]
        );
        assert!(parameters.iter().all(|p| p.variable == Some(0)));
        assert_eq!(
            t.variable_pattern(&t.variables[0]).unwrap(),
            "^shelves/[^/]+/books/[^/]+$"
        );
    }

    #[test]
    fn custom_verbs_follow_the_last_segment() {
        let t = Template::parse("/v1/items/{id}:cancel").unwrap();
        assert_eq!(t.verb.as_deref(), Some("cancel"));
        assert_eq!(t.segments.len(), 3);
        let t = Template::parse("/v1/auth:login").unwrap();
        assert_eq!(t.segments, vec![literal("v1"), literal("auth")]);
        assert_eq!(t.verb.as_deref(), Some("login"));
        let t = Template::parse("/v1/{name=things/*}:archive").unwrap();
        assert_eq!(t.openapi_path().0, "/v1/things/{thing}:archive");
    }

    #[test]
    fn double_wildcards_must_come_last() {
        assert!(Template::parse("/v1/{path=files/**}").is_ok());
        let error = Template::parse("/v1/**/x").unwrap_err();
        assert!(error.reason.contains("last"), "{error}");
    }

    #[test]
    fn malformed_templates_are_refused_with_a_reason() {
        for bad in [
            "v1/x",
            "/v1/{id",
            "/v1/{a{b}}",
            "/v1/{1x}",
            "/v1//x",
            "/v1/x:",
            "/v1/{id}/{id}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
