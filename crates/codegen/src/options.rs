//! The option messages the generator reads from descriptors: google.api.http
//! rules and Switchboard's own access and field rules. They mirror
//! `proto/google/api/http.proto` and `proto/switchboard/v1/options.proto`
//! field for field; dynamic option values are transcoded into them.

/// `google.api.HttpRule`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HttpRule {
    /// Unused here: only service configs select methods.
    #[prost(string, tag = "1")]
    pub(crate) selector: String,
    /// The method and template.
    #[prost(oneof = "Pattern", tags = "2, 3, 4, 5, 6, 8")]
    pub(crate) pattern: Option<Pattern>,
    /// `*`, a field name, or empty.
    #[prost(string, tag = "7")]
    pub(crate) body: String,
    /// A response field name, or empty.
    #[prost(string, tag = "12")]
    pub(crate) response_body: String,
    /// More bindings of the same method.
    #[prost(message, repeated, tag = "11")]
    pub(crate) additional_bindings: Vec<HttpRule>,
}

/// The `pattern` oneof of `google.api.HttpRule`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Pattern {
    /// GET.
    #[prost(string, tag = "2")]
    Get(String),
    /// PUT.
    #[prost(string, tag = "3")]
    Put(String),
    /// POST.
    #[prost(string, tag = "4")]
    Post(String),
    /// DELETE.
    #[prost(string, tag = "5")]
    Delete(String),
    /// PATCH.
    #[prost(string, tag = "6")]
    Patch(String),
    /// Any other method.
    #[prost(message, tag = "8")]
    Custom(CustomHttpPattern),
}

/// `google.api.CustomHttpPattern`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CustomHttpPattern {
    /// The HTTP method.
    #[prost(string, tag = "1")]
    pub(crate) kind: String,
    /// The path template.
    #[prost(string, tag = "2")]
    pub(crate) path: String,
}

/// `switchboard.v1.AccessRule`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AccessRule {
    /// The permission required.
    #[prost(string, tag = "1")]
    pub permission: String,
    /// Anyone may call.
    #[prost(bool, tag = "2")]
    pub public: bool,
}

/// `switchboard.v1.FieldRules`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FieldRules {
    /// Must be set.
    #[prost(bool, tag = "1")]
    pub(crate) required: bool,
    /// Minimum length in characters.
    #[prost(uint32, tag = "2")]
    pub(crate) min_len: u32,
    /// Maximum length in characters; 0 = none.
    #[prost(uint32, tag = "3")]
    pub(crate) max_len: u32,
    /// Regular expression the whole string must match.
    #[prost(string, tag = "4")]
    pub(crate) pattern: String,
    /// Smallest number.
    #[prost(double, optional, tag = "5")]
    pub(crate) minimum: Option<f64>,
    /// Largest number.
    #[prost(double, optional, tag = "6")]
    pub(crate) maximum: Option<f64>,
    /// Maximum items; 0 = none.
    #[prost(uint32, tag = "7")]
    pub(crate) max_items: u32,
}

impl FieldRules {
    /// The pattern as the generated code and OpenAPI apply it: anchored at
    /// both ends, so the whole value must match.
    pub(crate) fn anchored_pattern(&self) -> Option<String> {
        // Always wrapped: `^a|b$` is not anchored as a whole.
        (!self.pattern.is_empty()).then(|| format!("^(?:{})$", self.pattern))
    }
}
