//! Input constraints declared with `(switchboard.v1.field)` in the proto.
//! The generator implements [`Validate`] for every message; the generated
//! service guard calls it before the method runs, so gRPC, gRPC-Web and REST
//! reject the same input with the same `INVALID_ARGUMENT` status, carrying a
//! google.rpc.BadRequest that names every field at fault.

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// One field that breaks a constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path with proto names, such as `conversation.title` or `items[2].name`.
    pub field: String,
    /// What is wrong, for people.
    pub description: String,
}

/// Checks a message against the constraints declared in its proto.
pub trait Validate {
    /// Appends a violation for every constraint this message (and the
    /// messages inside it) breaks. `prefix` is the message's own path,
    /// ending in `.` unless empty.
    fn collect_violations(&self, prefix: &str, violations: &mut Vec<FieldViolation>);

    /// Checks the message.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT`, naming the first field at fault in the message and
    /// every one in a google.rpc.BadRequest detail.
    #[allow(clippy::result_large_err)]
    fn validate(&self) -> Result<(), tonic::Status> {
        let mut violations = Vec::new();
        self.collect_violations("", &mut violations);
        status_of(&violations)
    }
}

/// Checks an update request whose FieldMask names the fields of `body`
/// (the resource message) to change: a non-empty mask limits the checks of
/// the resource to the fields it names, so a partial update is not refused
/// for a field it leaves alone. Fields outside the resource are always
/// checked.
///
/// # Errors
/// As [`Validate::validate`].
#[allow(clippy::result_large_err)]
pub fn validate_masked<T: Validate>(
    request: &T,
    body: &str,
    mask: &[String],
) -> Result<(), tonic::Status> {
    let mut violations = Vec::new();
    request.collect_violations("", &mut violations);
    // `*` (or no mask) means every field, so every field is checked.
    if !mask.is_empty() && !mask.iter().any(|path| path == "*") {
        violations.retain(|violation| {
            let Some(rest) = violation
                .field
                .strip_prefix(body)
                .and_then(|r| r.strip_prefix('.'))
            else {
                return true;
            };
            mask.iter().any(|path| {
                rest == path
                    || rest.starts_with(&format!("{path}."))
                    || rest.starts_with(&format!("{path}["))
            })
        });
    }
    status_of(&violations)
}

/// Checks only the named top-level `fields` of a request (and what lies
/// under them), for a door whose client sends part of a request and leaves
/// the rest to the server: a WebSocket frame that follows a whole
/// conversation carries StreamReply's `conversation_id`, and the server
/// names each reply. The violations read as the RPC's own.
///
/// # Errors
/// As [`Validate::validate`], for the named fields only.
#[allow(clippy::result_large_err)]
pub fn validate_fields<T: Validate>(request: &T, fields: &[&str]) -> Result<(), tonic::Status> {
    let mut violations = Vec::new();
    request.collect_violations("", &mut violations);
    violations.retain(|violation| {
        fields.iter().any(|field| {
            violation.field.strip_prefix(field).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
            })
        })
    });
    status_of(&violations)
}

/// `INVALID_ARGUMENT` for the violations, or `Ok` when there are none.
#[allow(clippy::result_large_err)]
fn status_of(violations: &[FieldViolation]) -> Result<(), tonic::Status> {
    let Some(first) = violations.first() else {
        return Ok(());
    };
    let mut message = format!("{}: {}", first.field, first.description);
    if violations.len() > 1 {
        message.push_str(&format!(" (and {} more)", violations.len() - 1));
    }
    let mut details = ErrorDetails::new();
    for violation in violations {
        details.add_bad_request_violation(&violation.field, &violation.description);
    }
    Err(tonic::Status::with_error_details(
        Code::InvalidArgument,
        message,
        details,
    ))
}

impl<T: Validate> Validate for Box<T> {
    fn collect_violations(&self, prefix: &str, violations: &mut Vec<FieldViolation>) {
        (**self).collect_violations(prefix, violations);
    }
}

/// The checks generated code calls, one per rule kind. Each pushes a
/// violation for `field` when the value breaks the rule.
#[derive(Debug)]
pub struct Checker<'a> {
    prefix: &'a str,
    violations: &'a mut Vec<FieldViolation>,
}

impl<'a> Checker<'a> {
    /// A checker for the fields of the message at `prefix`.
    pub fn new(prefix: &'a str, violations: &'a mut Vec<FieldViolation>) -> Self {
        Self { prefix, violations }
    }

    /// The path of a field of this message.
    pub fn path(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    fn fail(&mut self, field: &str, description: String) {
        let field = self.path(field);
        self.violations.push(FieldViolation { field, description });
    }

    /// `required` on a field whose emptiness `is_set` already tells.
    pub fn required(&mut self, field: &str, is_set: bool) {
        if !is_set {
            self.fail(field, "is required".to_owned());
        }
    }

    /// `min_len` / `max_len` on a string, counted in characters.
    pub fn text_length(&mut self, field: &str, value: &str, min: u32, max: u32) {
        if min == 0 && max == 0 {
            return;
        }
        let count = value.chars().count();
        if max > 0 && count > max as usize {
            self.fail(
                field,
                format!("must be at most {max} characters long (got {count})"),
            );
        } else if count < min as usize {
            self.fail(
                field,
                format!("must be at least {min} characters long (got {count})"),
            );
        }
    }

    /// `min_len` / `max_len` on bytes, counted in bytes.
    pub fn bytes_length(&mut self, field: &str, value: &[u8], min: u32, max: u32) {
        let count = value.len();
        if max > 0 && count > max as usize {
            self.fail(
                field,
                format!("must be at most {max} bytes long (got {count})"),
            );
        } else if count < min as usize {
            self.fail(
                field,
                format!("must be at least {min} bytes long (got {count})"),
            );
        }
    }

    /// `pattern` on a string: `regex` is the rule anchored at both ends,
    /// `shown` the rule as the proto states it, for the message. An empty
    /// string that is not required is not checked: `required` says whether
    /// it may be empty.
    pub fn pattern(&mut self, field: &str, value: &str, regex: &regex::Regex, shown: &str) {
        if !value.is_empty() && !regex.is_match(value) {
            self.fail(field, format!("must match the pattern {shown}"));
        }
    }

    /// `minimum` / `maximum` on a number.
    pub fn range(&mut self, field: &str, value: f64, minimum: Option<f64>, maximum: Option<f64>) {
        // NaN is below and above every bound.
        if let Some(min) = minimum
            && (value.is_nan() || value < min)
        {
            self.fail(field, format!("must be at least {min} (got {value})"));
        }
        if let Some(max) = maximum
            && (value.is_nan() || value > max)
        {
            self.fail(field, format!("must be at most {max} (got {value})"));
        }
    }

    /// `max_items` on a repeated field.
    pub fn max_items(&mut self, field: &str, count: usize, max: u32) {
        if max > 0 && count > max as usize {
            self.fail(
                field,
                format!("must have at most {max} items (got {count})"),
            );
        }
    }

    /// Checks a nested message, at the path of `field`.
    pub fn nested<T: Validate + ?Sized>(&mut self, field: &str, value: &T) {
        let prefix = format!("{}.", self.path(field));
        value.collect_violations(&prefix, self.violations);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Title(String);

    impl Validate for Title {
        fn collect_violations(&self, prefix: &str, violations: &mut Vec<FieldViolation>) {
            let mut check = Checker::new(prefix, violations);
            check.required("title", !self.0.is_empty());
            check.text_length("title", &self.0, 0, 5);
        }
    }

    #[test]
    fn characters_are_counted_not_bytes() {
        assert!(Title("héllo".into()).validate().is_ok());
        let status = Title("héllo!".into()).validate().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "title: must be at most 5 characters long (got 6)"
        );
    }

    #[test]
    fn every_violation_is_listed_in_the_details() {
        let status = Title(String::new()).validate().unwrap_err();
        assert_eq!(status.message(), "title: is required");
        let details = status.get_error_details();
        assert_eq!(details.bad_request().unwrap().field_violations.len(), 1);
    }

    struct Update(Title);

    impl Validate for Update {
        fn collect_violations(&self, prefix: &str, violations: &mut Vec<FieldViolation>) {
            Checker::new(prefix, violations).nested("book", &self.0);
        }
    }

    #[test]
    fn a_mask_limits_checks_to_its_fields_and_star_checks_all() {
        let update = Update(Title("far too long".into()));
        assert!(validate_masked(&update, "book", &["author".into()]).is_ok());
        assert!(validate_masked(&update, "book", &["title".into()]).is_err());
        assert!(validate_masked(&update, "book", &["*".into()]).is_err());
        assert!(validate_masked(&update, "book", &[]).is_err());
    }

    struct Pair(Title, Title);

    impl Validate for Pair {
        fn collect_violations(&self, prefix: &str, violations: &mut Vec<FieldViolation>) {
            let mut check = Checker::new(prefix, violations);
            check.nested("first", &self.0);
            check.nested("second", &self.1);
        }
    }

    #[test]
    fn validating_some_fields_leaves_the_others_unchecked() {
        let pair = Pair(Title(String::new()), Title("far too long".into()));
        let status = validate_fields(&pair, &["second"]).unwrap_err();
        assert_eq!(
            status.message(),
            "second.title: must be at most 5 characters long (got 12)"
        );
        let details = status.get_error_details();
        assert_eq!(details.bad_request().unwrap().field_violations.len(), 1);
        assert!(
            validate_fields(&pair, &["secon"]).is_ok(),
            "a whole name only"
        );
        assert!(validate_fields(&pair, &[]).is_ok());
    }

    #[test]
    fn nan_is_out_of_every_range() {
        let mut violations = Vec::new();
        Checker::new("", &mut violations).range("x", f64::NAN, Some(0.0), None);
        assert_eq!(violations.len(), 1);
    }
}
