//! Sign-in through external OpenID Connect providers (Keycloak, Entra ID,
//! Auth0, …), and verification of the access tokens they issue to services.
//!
//! [`OidcProviders`] holds the configured providers. Each is discovered
//! lazily, on first use, so a provider that is down never stops the server
//! from starting: calls that need it fail with [`OidcError::Discovery`] and a
//! later call discovers it again. Two doors use a provider:
//!
//! * people sign in with the authorization-code flow (PKCE S256, `state` and
//!   `nonce`): [`OidcProviders::start_login`] gives the authorization URL and
//!   a [`PendingLogin`] for the caller to store, and
//!   [`OidcProviders::complete_login`] exchanges the code and verifies the ID
//!   token with the `openidconnect` crate;
//! * services send a JWT access token from the provider as a bearer token;
//!   [`OidcProviders::verify_bearer`] checks it offline against the
//!   provider's JWKS with `jsonwebtoken`.
//!
//! Either way the result is an [`ExternalIdentity`] whose roles come from a
//! configurable claim (`realm_access.roles`, `groups`, …) mapped through the
//! provider's `role_map`.
//!
//! This file holds [`OidcProviders`] and [`OidcError`]; the rest lives by
//! concern:
//!
//! * `config` — [`OidcProviderConfig`], read and checked before start;
//! * `discovery` — each provider's metadata and key set, fetched on first
//!   use and again when its keys rotate;
//! * `sign_in` — the authorization-code flow and its ID token;
//! * `bearer` — providers' access tokens sent as bearer tokens;
//! * `claims` — the [`ExternalIdentity`] in verified claims, roles mapped.

mod bearer;
mod claims;
mod config;
mod discovery;
mod sign_in;

use std::error::Error as StdError;
use std::sync::Arc;

use openidconnect::reqwest;

use discovery::ProviderState;

pub use claims::ExternalIdentity;
pub use config::{OidcProviderConfig, ROLES};
pub use sign_in::PendingLogin;

/// What can go wrong with an external provider. Each variant's doc names the
/// status it should become.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// No provider is configured under this id. gRPC `NOT_FOUND`, HTTP 404.
    #[error("unknown identity provider {0:?}")]
    UnknownProvider(String),
    /// A provider's configuration, or a redirect URI, is not usable.
    /// Found by [`OidcProviderConfig::validate`] before the server starts;
    /// at run time gRPC `INVALID_ARGUMENT`, HTTP 400.
    #[error("invalid identity provider configuration: {0}")]
    Config(String),
    /// The provider cannot be discovered: it is unreachable, or its discovery
    /// document or key set is unusable. A later call tries again.
    /// gRPC `UNAVAILABLE`, HTTP 503.
    #[error("identity provider discovery failed: {0}")]
    Discovery(String),
    /// The provider's token endpoint could not be reached. gRPC
    /// `UNAVAILABLE`, HTTP 503.
    #[error("identity provider unreachable: {0}")]
    Unreachable(String),
    /// The provider refused the authorization code (wrong, expired, already
    /// used, PKCE mismatch) or answered the exchange with something unusable.
    /// gRPC `UNAUTHENTICATED`, HTTP 401.
    #[error("authorization code exchange failed: {0}")]
    Exchange(String),
    /// An ID token or bearer access token failed verification (signature,
    /// issuer, audience, expiry, nonce). gRPC `UNAUTHENTICATED`, HTTP 401.
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

/// The configured providers, each discovered on first use. Cheap to clone:
/// clones share the discovered metadata and key sets.
#[derive(Clone)]
pub struct OidcProviders {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    configs: Vec<OidcProviderConfig>,
    /// One per config, same order.
    states: Vec<ProviderState>,
}

impl std::fmt::Debug for OidcProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProviders")
            .field("configs", &self.inner.configs)
            .finish_non_exhaustive()
    }
}

impl OidcProviders {
    /// Providers for `configs`, none contacted yet. `http` should not follow
    /// redirects (the OpenID Connect specs forbid it on these endpoints) and
    /// should have a timeout, since sign-ins wait on it.
    pub fn new(configs: Vec<OidcProviderConfig>, http: reqwest::Client) -> Self {
        let states = configs.iter().map(|_| ProviderState::default()).collect();
        Self {
            inner: Arc::new(Inner {
                http,
                configs,
                states,
            }),
        }
    }

    /// The configured providers, in configuration order.
    pub fn configs(&self) -> &[OidcProviderConfig] {
        &self.inner.configs
    }

    fn index_of(&self, provider: &str) -> Result<usize, OidcError> {
        self.inner
            .configs
            .iter()
            .position(|c| c.id == provider)
            .ok_or_else(|| OidcError::UnknownProvider(provider.to_owned()))
    }
}

/// An error and its sources, joined: reqwest's and openidconnect's own
/// messages leave the cause ("connection refused") to the source chain.
fn error_chain(error: &dyn StdError) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

/// The provider the tests use: Keycloak, roles from `realm_access.roles`.
#[cfg(test)]
fn example_config() -> OidcProviderConfig {
    serde_json::from_value(serde_json::json!({
        "id": "keycloak",
        "issuer": "https://sso.example.com/realms/main",
        "client_id": "switchboard",
        "client_secret": "s3cret",
        "role_claim": "realm_access.roles",
        "role_map": {"sb-admin": "admin", "sb-ops": "operator", "sb-admin-too": "admin"},
    }))
    .expect("a config")
}
