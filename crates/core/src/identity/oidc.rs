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

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessToken, AccessTokenHash, AdditionalClaims, AuthorizationCode, ClaimsVerificationError,
    ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IdTokenFields, IssuerUrl, Nonce, OAuth2TokenResponse as _, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, SignatureVerificationError,
    StandardErrorResponse, StandardTokenResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::identity::jwt::Unverified;

/// The Switchboard roles a provider's claim values may map to.
pub const ROLES: [&str; 3] = ["admin", "operator", "user"];

/// How far `exp` and `nbf` of a bearer token may be off.
const BEARER_LEEWAY: Duration = Duration::from_secs(30);

/// The least time between two JWKS fetches of one provider triggered by an
/// unknown `kid`, so that garbage tokens cannot make us hammer the provider.
const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// How long a failed discovery is remembered before the next attempt, so
/// that a provider that is down is not asked again on every request.
const REDISCOVERY_BACKOFF: Duration = Duration::from_secs(5);

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

/// A sign-in that has been started but not completed. The caller keeps it
/// (a database row keyed by `state`, with an expiry) and hands it to
/// [`OidcProviders::complete_login`] when the browser comes back.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    /// The id of the provider signing in.
    pub provider: String,
    /// The `state` sent to the provider; the callback must bring it back.
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier, sent with the code.
    pub pkce_verifier: String,
    /// The redirect URI of the authorization request; sent again with the
    /// code.
    pub redirect_uri: String,
}

impl fmt::Debug for PendingLogin {
    // By hand: the verifier and nonce are secrets until the login completes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogin")
            .field("provider", &self.provider)
            .field("state", &self.state)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// Every claim of an ID token that OpenID Connect does not define, so that
/// role claims such as `realm_access` and `groups` survive verification.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
struct OtherClaims(Map<String, Value>);

impl AdditionalClaims for OtherClaims {}

/// `openidconnect`'s client, with [`OtherClaims`] in the ID token and the
/// endpoints that discovery provides.
type ProviderClient = openidconnect::Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    StandardTokenResponse<
        IdTokenFields<
            OtherClaims,
            EmptyExtraTokenFields,
            CoreGenderClaim,
            CoreJweContentEncryptionAlgorithm,
            CoreJwsSigningAlgorithm,
        >,
        CoreTokenType,
    >,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// An ID token with [`OtherClaims`].
type ProviderIdToken = openidconnect::IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

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

/// What is known about one provider. The mutex is held across discovery
/// and JWKS fetches so that concurrent callers wait for one fetch instead
/// of each starting their own.
#[derive(Default)]
struct ProviderState(Mutex<Discovery>);

#[derive(Default)]
struct Discovery {
    current: Option<Arc<Discovered>>,
    /// When the key set in `current` was fetched.
    keys_fetched_at: Option<Instant>,
    /// The last failed discovery, replayed until [`REDISCOVERY_BACKOFF`]
    /// has passed.
    last_failure: Option<(Instant, String)>,
}

/// A provider's metadata and keys, as of the last fetch.
struct Discovered {
    /// The discovery document, its `jwks` set to the latest key set.
    metadata: CoreProviderMetadata,
    /// The same key set, for `jsonwebtoken`.
    bearer_keys: Vec<Jwk>,
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

    /// Starts a sign-in with `provider`: the URL to send the browser to
    /// (with PKCE S256, `state` and `nonce`) and what to keep until it
    /// comes back to `redirect_uri`.
    ///
    /// # Errors
    ///
    /// [`OidcError::UnknownProvider`], [`OidcError::Config`] for a
    /// redirect URI that is not a URL, [`OidcError::Discovery`] when the
    /// provider cannot be discovered.
    pub async fn start_login(
        &self,
        provider: &str,
        redirect_uri: &str,
    ) -> Result<(PendingLogin, String), OidcError> {
        let index = self.index_of(provider)?;
        let config = &self.inner.configs[index];
        let discovered = self.discovered(index).await?;
        let client = provider_client(config, &discovered, redirect_uri)?;

        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        // openidconnect always asks for `openid`; asking twice confuses some
        // providers.
        for scope in config.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();

        let pending = PendingLogin {
            provider: config.id.clone(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            redirect_uri: redirect_uri.to_owned(),
        };
        Ok((pending, url.to_string()))
    }

    /// Completes the sign-in `pending` with the `code` the provider sent to
    /// the redirect URI: exchanges it (with the PKCE verifier), verifies the
    /// ID token (signature with the provider's keys, `iss`, `aud`, `exp`,
    /// `nonce`, `at_hash` when present) and reads the identity from its
    /// claims. The caller has already matched `state`.
    ///
    /// # Errors
    ///
    /// [`OidcError::Exchange`] when the provider refuses the code,
    /// [`OidcError::InvalidToken`] when the ID token fails verification,
    /// [`OidcError::Discovery`] or [`OidcError::Unreachable`] when the
    /// provider cannot be reached, [`OidcError::UnknownProvider`].
    pub async fn complete_login(
        &self,
        pending: &PendingLogin,
        code: &str,
    ) -> Result<ExternalIdentity, OidcError> {
        let index = self.index_of(&pending.provider)?;
        let config = &self.inner.configs[index];
        let discovered = self.discovered(index).await?;
        let client = provider_client(config, &discovered, &pending.redirect_uri)?;

        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Discovery(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.inner.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(response) => {
                    OidcError::Exchange(match response.error_description() {
                        Some(description) => format!("{}: {description}", response.error()),
                        None => response.error().to_string(),
                    })
                }
                RequestTokenError::Request(e) => OidcError::Unreachable(error_chain(&e)),
                other => OidcError::Exchange(error_chain(&other)),
            })?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::Exchange("the provider sent no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce.clone());

        let claims = match verify_id_token(&client, id_token, &nonce, response.access_token()) {
            // The provider may have rotated its keys since we fetched them:
            // fetch again (at most once per interval) and retry once.
            Err(IdTokenRejection::UnknownKey) if self.refresh_keys(index, &discovered).await? => {
                let discovered = self.discovered(index).await?;
                let client = provider_client(config, &discovered, &pending.redirect_uri)?;
                verify_id_token(&client, id_token, &nonce, response.access_token())
            }
            verified => verified,
        }
        .map_err(|rejection| match rejection {
            IdTokenRejection::UnknownKey => {
                OidcError::InvalidToken("ID token signed by an unknown key".into())
            }
            IdTokenRejection::Invalid(reason) => OidcError::InvalidToken(reason),
        })?;
        identity_from_claims(config, &claims)
    }

    /// Verifies a bearer token issued by a configured provider.
    ///
    /// If `token` is a JWT whose `iss` is a configured provider's issuer, it
    /// is verified against that provider's JWKS: the signature with the
    /// algorithm of the key named by `kid` only, `iss`, `aud` (the
    /// provider's [audience](OidcProviderConfig::audience)), `exp` and `nbf`
    /// with 30 s of leeway. An unknown `kid` fetches the JWKS again, at
    /// most once per 30 s per provider. Returns `Ok(None)` when the token is
    /// not a JWT or its issuer is not a configured provider, so that the
    /// caller can try its own keys.
    ///
    /// # Errors
    ///
    /// [`OidcError::InvalidToken`] when verification fails,
    /// [`OidcError::Discovery`] when the issuer's provider cannot be
    /// discovered.
    pub async fn verify_bearer(&self, token: &str) -> Result<Option<ExternalIdentity>, OidcError> {
        let Ok(unverified) = Unverified::read(token) else {
            return Ok(None);
        };
        let Some(issuer) = unverified.issuer() else {
            return Ok(None);
        };
        // Two configs may name the same issuer (two clients of one realm);
        // the first that accepts the token wins.
        let mut first_error = None;
        for (index, config) in self.inner.configs.iter().enumerate() {
            if config.issuer != issuer {
                continue;
            }
            match self.verify_bearer_with(index, token, unverified).await {
                Ok(identity) => return Ok(Some(identity)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(None), Err)
    }

    async fn verify_bearer_with(
        &self,
        index: usize,
        token: &str,
        unverified: Unverified<'_>,
    ) -> Result<ExternalIdentity, OidcError> {
        let config = &self.inner.configs[index];
        // Without an audience of its own, the provider's ID tokens for our
        // client (audience = client id) would pass as access tokens.
        let Some(audience) = config.audience.as_deref() else {
            return Err(OidcError::InvalidToken(format!(
                "provider {:?} has no `audience` configured, so its tokens are not accepted as bearer tokens",
                config.id
            )));
        };
        let header: jsonwebtoken::Header = unverified
            .header()
            .map_err(|e| OidcError::InvalidToken(e.to_string()))?;
        let mut discovered = self.discovered(index).await?;
        let jwk = match find_key(&discovered.bearer_keys, &header) {
            Some(jwk) => jwk,
            None => {
                if self.refresh_keys(index, &discovered).await? {
                    discovered = self.discovered(index).await?;
                }
                find_key(&discovered.bearer_keys, &header).ok_or_else(|| {
                    OidcError::InvalidToken(format!(
                        "no {:?} key with kid {:?} in the provider's JWKS",
                        header.alg, header.kid
                    ))
                })?
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| OidcError::InvalidToken(format!("key {:?}: {e}", header.kid)))?;

        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = BEARER_LEEWAY.as_secs();
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| OidcError::InvalidToken(e.to_string()))?;
        // An ID token (it carries the sign-in's nonce, or says so in
        // Keycloak's `typ` claim) proves a sign-in to a client, not access.
        if data.claims.contains_key("nonce")
            || data.claims.get("typ").and_then(Value::as_str) == Some("ID")
        {
            return Err(OidcError::InvalidToken(
                "an ID token is not an access token".to_owned(),
            ));
        }
        identity_from_claims(config, &data.claims)
    }

    fn index_of(&self, provider: &str) -> Result<usize, OidcError> {
        self.inner
            .configs
            .iter()
            .position(|c| c.id == provider)
            .ok_or_else(|| OidcError::UnknownProvider(provider.to_owned()))
    }

    /// The provider's metadata and keys, discovering it if that has not
    /// succeeded yet.
    async fn discovered(&self, index: usize) -> Result<Arc<Discovered>, OidcError> {
        let config = &self.inner.configs[index];
        let mut state = self.inner.states[index].0.lock().await;
        if let Some(current) = &state.current {
            return Ok(current.clone());
        }
        if let Some((at, error)) = &state.last_failure
            && at.elapsed() < REDISCOVERY_BACKOFF
        {
            return Err(OidcError::Discovery(error.clone()));
        }
        match discover(config, &self.inner.http).await {
            Ok(discovered) => {
                tracing::info!(provider = %config.id, issuer = %config.issuer, "discovered identity provider");
                let discovered = Arc::new(discovered);
                state.current = Some(discovered.clone());
                state.keys_fetched_at = Some(Instant::now());
                state.last_failure = None;
                Ok(discovered)
            }
            Err(error) => {
                tracing::warn!(provider = %config.id, issuer = %config.issuer, %error, "identity provider discovery failed");
                state.last_failure = Some((Instant::now(), error.clone()));
                Err(OidcError::Discovery(error))
            }
        }
    }

    /// Fetches the provider's JWKS again unless `seen` is already outdated
    /// (another caller refreshed) or the last fetch is less than
    /// [`JWKS_REFRESH_INTERVAL`] old. Returns whether newer keys than
    /// `seen` are available.
    async fn refresh_keys(&self, index: usize, seen: &Arc<Discovered>) -> Result<bool, OidcError> {
        let config = &self.inner.configs[index];
        let mut state = self.inner.states[index].0.lock().await;
        let Some(current) = state.current.clone() else {
            return Ok(false);
        };
        if !Arc::ptr_eq(&current, seen) {
            return Ok(true);
        }
        if state
            .keys_fetched_at
            .is_some_and(|at| at.elapsed() < JWKS_REFRESH_INTERVAL)
        {
            return Ok(false);
        }
        state.keys_fetched_at = Some(Instant::now());
        let jwks = CoreJsonWebKeySet::fetch_async(current.metadata.jwks_uri(), &self.inner.http)
            .await
            .map_err(|e| {
                tracing::warn!(provider = %config.id, error = %error_chain(&e), "JWKS refresh failed");
                OidcError::Discovery(format!("JWKS: {}", error_chain(&e)))
            })?;
        tracing::info!(provider = %config.id, keys = jwks.keys().len(), "refreshed identity provider keys");
        let bearer_keys = bearer_keys(&jwks);
        let metadata = current.metadata.clone().set_jwks(jwks);
        state.current = Some(Arc::new(Discovered {
            metadata,
            bearer_keys,
        }));
        Ok(true)
    }
}

/// Fetches the discovery document (checking that its issuer is the
/// configured one) and the JWKS.
async fn discover(
    config: &OidcProviderConfig,
    http: &reqwest::Client,
) -> Result<Discovered, String> {
    let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|e| format!("issuer: {e}"))?;
    let metadata = CoreProviderMetadata::discover_async(issuer, http)
        .await
        .map_err(|e| error_chain(&e))?;
    let bearer_keys = bearer_keys(metadata.jwks());
    Ok(Discovered {
        metadata,
        bearer_keys,
    })
}

/// An `openidconnect` client for `config` with the discovered metadata.
fn provider_client(
    config: &OidcProviderConfig,
    discovered: &Discovered,
    redirect_uri: &str,
) -> Result<ProviderClient, OidcError> {
    let redirect_uri = RedirectUrl::new(redirect_uri.to_owned())
        .map_err(|e| OidcError::Config(format!("redirect URI {redirect_uri:?}: {e}")))?;
    Ok(ProviderClient::from_provider_metadata(
        discovered.metadata.clone(),
        ClientId::new(config.client_id.clone()),
        Some(ClientSecret::new(config.client_secret.clone())),
    )
    .set_redirect_uri(redirect_uri))
}

/// Why an ID token was refused.
enum IdTokenRejection {
    /// Signed by a key not in the key set we have: maybe a rotated one.
    UnknownKey,
    /// Anything else, with the reason.
    Invalid(String),
}

/// Verifies `id_token` with `client`'s keys and identity (signature, `iss`,
/// `aud`, `exp`, `nonce`, and `at_hash` when present) and returns all its
/// claims.
fn verify_id_token(
    client: &ProviderClient,
    id_token: &ProviderIdToken,
    nonce: &Nonce,
    access_token: &AccessToken,
) -> Result<Map<String, Value>, IdTokenRejection> {
    let invalid = |e: &dyn StdError| IdTokenRejection::Invalid(error_chain(e));
    let verifier = client.id_token_verifier();
    let claims = id_token.claims(&verifier, nonce).map_err(|e| match e {
        ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        ) => IdTokenRejection::UnknownKey,
        e => invalid(&e),
    })?;
    if let Some(expected) = claims.access_token_hash() {
        let alg = id_token.signing_alg().map_err(|e| invalid(&e))?;
        let key = id_token.signing_key(&verifier).map_err(|e| invalid(&e))?;
        let actual =
            AccessTokenHash::from_token(access_token, alg, key).map_err(|e| invalid(&e))?;
        if actual != *expected {
            return Err(IdTokenRejection::Invalid(
                "at_hash does not match the access token".into(),
            ));
        }
    }
    match serde_json::to_value(claims) {
        Ok(Value::Object(claims)) => Ok(claims),
        _ => Err(IdTokenRejection::Invalid("claims are not an object".into())),
    }
}

/// The key set in `jsonwebtoken`'s form. Keys it cannot read (encryption
/// keys, unknown types) are left out: tokens signed with them fail as
/// signed by an unknown key.
fn bearer_keys(jwks: &CoreJsonWebKeySet) -> Vec<Jwk> {
    jwks.keys()
        .iter()
        .filter_map(|key| serde_json::to_value(key).ok())
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter(|jwk| jwk.common.public_key_use != Some(PublicKeyUse::Encryption))
        .collect()
}

/// The key that may verify a token with `header`: named by its `kid` (or,
/// without a `kid`, the first), usable for signing, and whose own algorithm
/// is the header's. Symmetric keys are never accepted.
fn find_key<'k>(keys: &'k [Jwk], header: &jsonwebtoken::Header) -> Option<&'k Jwk> {
    keys.iter()
        .filter(|jwk| header.kid.is_none() || jwk.common.key_id == header.kid)
        .find(|jwk| key_algorithm(jwk, header.alg) == Some(header.alg))
}

/// The signing algorithm of `jwk`: its `alg` when it declares one, else
/// `requested`; either way only if the key's type and curve allow it (an
/// RSA key never verifies HS256, a P-256 key only ES256).
fn key_algorithm(jwk: &Jwk, requested: Algorithm) -> Option<Algorithm> {
    use Algorithm::{ES256, ES384, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512};
    let alg = match jwk.common.key_algorithm {
        Some(declared) => signing_algorithm(declared)?,
        None => requested,
    };
    let fits = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => [RS256, RS384, RS512, PS256, PS384, PS512].contains(&alg),
        AlgorithmParameters::EllipticCurve(ec) => matches!(
            (&ec.curve, alg),
            (EllipticCurve::P256, ES256) | (EllipticCurve::P384, ES384)
        ),
        AlgorithmParameters::OctetKeyPair(okp) => {
            okp.curve == EllipticCurve::Ed25519 && alg == EdDSA
        }
        // Symmetric keys never: the provider's JWKS is public.
        _ => false,
    };
    fits.then_some(alg)
}

/// The JWS algorithm a JWK's `alg` names; None for encryption algorithms.
fn signing_algorithm(declared: KeyAlgorithm) -> Option<Algorithm> {
    Some(match declared {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The identity in verified `claims`.
fn identity_from_claims(
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn config() -> OidcProviderConfig {
        serde_json::from_value(json!({
            "id": "keycloak",
            "issuer": "https://sso.example.com/realms/main",
            "client_id": "switchboard",
            "client_secret": "s3cret",
            "role_claim": "realm_access.roles",
            "role_map": {"sb-admin": "admin", "sb-ops": "operator", "sb-admin-too": "admin"},
        }))
        .expect("a config")
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
        let identity = identity_from_claims(&config(), &claims).expect("an identity");
        assert_eq!(identity.roles, ["admin", "operator"]);
        assert!(identity.email_verified);
        assert_eq!(identity.name.as_deref(), Some("ursula"));
        assert_eq!(identity.email, None);

        let no_sub = identity_from_claims(&config(), &Map::new());
        assert!(matches!(no_sub, Err(OidcError::InvalidToken(_))));
    }

    #[test]
    fn config_defaults_and_validation() {
        let config = config();
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

    #[test]
    fn keys_verify_only_with_their_own_algorithm() {
        let jwks: CoreJsonWebKeySet = serde_json::from_value(json!({"keys": [
            {"kty": "RSA", "kid": "r", "use": "sig", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "r384", "alg": "RS384", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        ]}))
        .expect("a JWKS");
        let keys = bearer_keys(&jwks);
        assert_eq!(keys.len(), 3, "the encryption key is left out");
        let header = |alg, kid: &str| jsonwebtoken::Header {
            kid: Some(kid.into()),
            ..jsonwebtoken::Header::new(alg)
        };
        let found =
            |alg, kid| find_key(&keys, &header(alg, kid)).and_then(|k| k.common.key_id.clone());

        assert_eq!(found(Algorithm::RS256, "r").as_deref(), Some("r"));
        assert_eq!(found(Algorithm::PS256, "r").as_deref(), Some("r"));
        assert_eq!(found(Algorithm::HS256, "r"), None);
        assert_eq!(found(Algorithm::ES256, "r"), None);
        assert_eq!(found(Algorithm::RS256, "r384"), None);
        assert_eq!(found(Algorithm::RS384, "r384").as_deref(), Some("r384"));
        assert_eq!(found(Algorithm::ES256, "e").as_deref(), Some("e"));
        assert_eq!(found(Algorithm::ES384, "e"), None);
        assert_eq!(found(Algorithm::RS256, "enc"), None);
        assert_eq!(found(Algorithm::RS256, "unknown"), None);
    }
}
