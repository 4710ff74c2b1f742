//! [`OidcProviderConfig`]: one provider as configured (file or
//! environment), with its defaults, and the checks it passes before the
//! server starts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use openidconnect::IssuerUrl;
use serde::{Deserialize, Serialize};

use super::OidcError;

/// The Switchboard roles a provider's claim values may map to.
pub const ROLES: [&str; 3] = ["admin", "operator", "user"];

/// One configured provider, as read from the configuration file or the
/// environment.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "OidcProviderConfigFile")]
pub struct OidcProviderConfig {
    /// URL-safe name used in paths and stored with linked accounts, such as
    /// `keycloak`.
    pub id: String,
    /// The name shown on the sign-in page; defaults to `id`.
    pub display_name: String,
    /// The issuer URL, exactly as the provider writes it in `iss`, such as
    /// `https://sso.example.com/realms/main`.
    pub issuer: String,
    /// Switchboard's client id at the provider.
    pub client_id: String,
    /// Switchboard's client secret at the provider.
    pub client_secret: String,
    /// Scopes asked for at sign-in; `openid` is always asked for. Defaults
    /// to `openid email profile`.
    pub scopes: Vec<String>,
    /// The `aud` that bearer access tokens must carry; defaults to
    /// `client_id`.
    pub audience: Option<String>,
    /// Dotted path to the claim holding roles or groups, such as
    /// `realm_access.roles` or `groups`. A claim name that itself contains
    /// dots (`https://example.com/roles`) is found too. None: no roles.
    pub role_claim: Option<String>,
    /// Claim value → Switchboard role (one of [`ROLES`]). Values not listed
    /// give no role.
    pub role_map: BTreeMap<String, String>,
}

/// [`OidcProviderConfig`] as written in a file, with its defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcProviderConfigFile {
    id: String,
    display_name: Option<String>,
    issuer: String,
    client_id: String,
    client_secret: String,
    #[serde(default = "default_scopes")]
    scopes: Vec<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    role_claim: Option<String>,
    #[serde(default)]
    role_map: BTreeMap<String, String>,
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

impl From<OidcProviderConfigFile> for OidcProviderConfig {
    fn from(file: OidcProviderConfigFile) -> Self {
        Self {
            display_name: file.display_name.unwrap_or_else(|| file.id.clone()),
            id: file.id,
            issuer: file.issuer,
            client_id: file.client_id,
            client_secret: file.client_secret,
            scopes: file.scopes,
            audience: file.audience,
            role_claim: file.role_claim,
            role_map: file.role_map,
        }
    }
}

impl fmt::Debug for OidcProviderConfig {
    // By hand so that the client secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProviderConfig")
            .field("id", &self.id)
            .field("display_name", &self.display_name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .field("role_claim", &self.role_claim)
            .field("role_map", &self.role_map)
            .finish()
    }
}

impl OidcProviderConfig {
    /// The `aud` required of bearer access tokens.
    pub fn audience(&self) -> &str {
        self.audience.as_deref().unwrap_or(&self.client_id)
    }

    /// Checks one provider's configuration without contacting it.
    ///
    /// # Errors
    ///
    /// [`OidcError::Config`] naming the first field that is not usable.
    pub fn validate(&self) -> Result<(), OidcError> {
        let invalid = |field: &str, problem: &str| {
            Err(OidcError::Config(format!(
                "provider {:?}: {field}: {problem}",
                self.id
            )))
        };
        if self.id.is_empty()
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid("id", "must be letters, digits, '-' or '_'");
        }
        match IssuerUrl::new(self.issuer.clone()) {
            Ok(url) if matches!(url.url().scheme(), "https" | "http") => {}
            _ => return invalid("issuer", "must be an http(s) URL"),
        }
        if self.client_id.is_empty() {
            return invalid("client_id", "must not be empty");
        }
        if self.audience.as_deref() == Some("") {
            return invalid("audience", "must not be empty when set");
        }
        if self.role_claim.as_deref() == Some("") {
            return invalid("role_claim", "must not be empty when set");
        }
        if let Some(role) = self
            .role_map
            .values()
            .find(|r| !ROLES.contains(&r.as_str()))
        {
            return invalid(
                "role_map",
                &format!("{role:?} is not one of {}", ROLES.join(", ")),
            );
        }
        Ok(())
    }

    /// Checks every provider's configuration, and that no two share an id.
    ///
    /// # Errors
    ///
    /// [`OidcError::Config`] for the first problem found.
    pub fn validate_all(configs: &[Self]) -> Result<(), OidcError> {
        let mut ids = BTreeSet::new();
        for config in configs {
            config.validate()?;
            if !ids.insert(config.id.as_str()) {
                return Err(OidcError::Config(format!(
                    "provider id {:?} is configured twice",
                    config.id
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::identity::oidc::example_config;

    #[test]
    fn config_defaults_and_validation() {
        let config = example_config();
        assert_eq!(config.display_name, "keycloak");
        assert_eq!(config.scopes, ["openid", "email", "profile"]);
        assert_eq!(config.audience(), "switchboard");
        assert!(!format!("{config:?}").contains("s3cret"));
        OidcProviderConfig::validate_all(std::slice::from_ref(&config)).expect("valid");

        let typo = serde_json::from_value::<OidcProviderConfig>(json!({
            "id": "x", "issuer": "https://x", "client_id": "c", "client_secret": "s", "role_claims": "groups",
        }));
        assert!(typo.is_err());

        let mut bad_role = config.clone();
        bad_role.role_map.insert("x".into(), "superuser".into());
        assert!(
            matches!(bad_role.validate(), Err(OidcError::Config(m)) if m.contains("superuser"))
        );
        let mut bad_id = config.clone();
        bad_id.id = "key cloak".into();
        assert!(bad_id.validate().is_err());
        let mut bad_issuer = config.clone();
        bad_issuer.issuer = "sso.example.com".into();
        assert!(bad_issuer.validate().is_err());
        assert!(OidcProviderConfig::validate_all(&[config.clone(), config]).is_err());
    }
}
