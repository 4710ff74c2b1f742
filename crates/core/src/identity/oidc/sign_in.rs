//! The authorization-code flow: [`OidcProviders::start_login`] sends the
//! browser to the provider with PKCE, `state` and `nonce` and returns the
//! [`PendingLogin`] to keep; [`OidcProviders::complete_login`] exchanges the
//! code and verifies the ID token.

use std::error::Error as StdError;
use std::fmt;

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessToken, AccessTokenHash, AdditionalClaims, AuthorizationCode, ClaimsVerificationError,
    ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IdTokenFields, Nonce, OAuth2TokenResponse as _, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, SignatureVerificationError,
    StandardErrorResponse, StandardTokenResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::claims::identity_from_claims;
use super::discovery::Discovered;
use super::{ExternalIdentity, OidcError, OidcProviderConfig, OidcProviders, error_chain};

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

impl OidcProviders {
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
