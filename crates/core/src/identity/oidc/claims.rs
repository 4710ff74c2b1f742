//! [`ExternalIdentity`]: who verified claims say a person or service is,
//! with the provider's role claim mapped to Switchboard roles.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{OidcError, OidcProviderConfig};

/// What a provider says about a person or a service, once verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalIdentity {
    /// The id of the [`OidcProviderConfig`] that vouched for it.
    pub provider: String,
    /// The provider's issuer URL.
    pub issuer: String,
    /// The `sub` claim: stable per issuer, the key to link accounts by.
    /// For a service's client_credentials token it is usually its client id.
    pub subject: String,
    /// The `email` claim.
    pub email: Option<String>,
    /// The `email_verified` claim; false when absent.
    pub email_verified: bool,
    /// The `name` claim, else `preferred_username`.
    pub name: Option<String>,
    /// Switchboard roles: the role claim's values mapped through `role_map`,
    /// sorted and deduplicated.
    pub roles: Vec<String>,
}

/// The identity in verified `claims`.
pub(super) fn identity_from_claims(
    config: &OidcProviderConfig,
    claims: &Map<String, Value>,
) -> Result<ExternalIdentity, OidcError> {
    let string = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let subject = string("sub")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OidcError::InvalidToken("no sub claim".into()))?;
    // Some providers write booleans as strings.
    let email_verified = match claims.get("email_verified") {
        Some(Value::Bool(verified)) => *verified,
        Some(Value::String(verified)) => verified == "true",
        _ => false,
    };
    let roles = match &config.role_claim {
        Some(path) => claim_values(claims, path)
            .into_iter()
            .filter_map(|value| config.role_map.get(&value).cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        None => Vec::new(),
    };
    Ok(ExternalIdentity {
        provider: config.id.clone(),
        issuer: config.issuer.clone(),
        subject,
        email: string("email"),
        email_verified,
        name: string("name").or_else(|| string("preferred_username")),
        roles,
    })
}

/// The string values at dotted `path` in `claims`: a string gives one, an
/// array its strings. A key may itself contain dots
/// (`https://example.com/roles`); the longest key that matches wins.
fn claim_values(claims: &Map<String, Value>, path: &str) -> Vec<String> {
    fn lookup<'v>(object: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
        if let Some(value) = object.get(path) {
            return Some(value);
        }
        path.rmatch_indices('.').find_map(|(dot, _)| {
            let child = object.get(&path[..dot])?.as_object()?;
            lookup(child, &path[dot + 1..])
        })
    }
    match lookup(claims, path) {
        Some(Value::String(value)) => vec![value.clone()],
        Some(Value::Array(values)) => values
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::identity::oidc::example_config;

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn claim_paths_reach_nested_and_dotted_claims() {
        let claims = claims(json!({
            "groups": ["a", "b", 3],
            "role": "solo",
            "realm_access": {"roles": ["admin"]},
            "https://example.com/roles": ["namespaced"],
            "resource_access": {"switchboard.web": {"roles": ["ops"]}},
        }));
        assert_eq!(claim_values(&claims, "groups"), ["a", "b"]);
        assert_eq!(claim_values(&claims, "role"), ["solo"]);
        assert_eq!(claim_values(&claims, "realm_access.roles"), ["admin"]);
        assert_eq!(
            claim_values(&claims, "https://example.com/roles"),
            ["namespaced"]
        );
        assert_eq!(
            claim_values(&claims, "resource_access.switchboard.web.roles"),
            ["ops"]
        );
        assert!(claim_values(&claims, "realm_access.missing").is_empty());
        assert!(claim_values(&claims, "realm_access").is_empty());
    }

    #[test]
    fn roles_are_mapped_sorted_and_deduplicated() {
        let claims = claims(json!({
            "sub": "u1",
            "email_verified": "true",
            "preferred_username": "ursula",
            "realm_access": {"roles": ["sb-ops", "sb-admin", "sb-admin-too", "unmapped"]},
        }));
        let identity = identity_from_claims(&example_config(), &claims).expect("an identity");
        assert_eq!(identity.roles, ["admin", "operator"]);
        assert!(identity.email_verified);
        assert_eq!(identity.name.as_deref(), Some("ursula"));
        assert_eq!(identity.email, None);

        let no_sub = identity_from_claims(&example_config(), &Map::new());
        assert!(matches!(no_sub, Err(OidcError::InvalidToken(_))));
    }
}
