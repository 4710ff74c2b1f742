//! Access tokens that a provider issued to a service, sent to us as bearer
//! tokens: verified offline against the provider's key set, each key
//! accepted only with its own algorithm.

use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use openidconnect::core::CoreJsonWebKeySet;
use serde_json::{Map, Value};

use crate::identity::jwt::Unverified;

use super::claims::identity_from_claims;
use super::{ExternalIdentity, OidcError, OidcProviders};

/// How far `exp` and `nbf` of a bearer token may be off.
const BEARER_LEEWAY: Duration = Duration::from_secs(30);

impl OidcProviders {
    /// Verifies a bearer token issued by a configured provider.
    ///
    /// If `token` is a JWT whose `iss` is a configured provider's issuer, it
    /// is verified against that provider's JWKS: the signature with the
    /// algorithm of the key named by `kid` only, `iss`, `aud` (the
    /// provider's [audience](super::OidcProviderConfig::audience)), `exp`
    /// and `nbf` with 30 s of leeway. An unknown `kid` fetches the JWKS
    /// again, at most once per 30 s per provider. Returns `Ok(None)` when
    /// the token is not a JWT or its issuer is not a configured provider, so
    /// that the caller can try its own keys.
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
}

/// The key set in `jsonwebtoken`'s form. Keys it cannot read (encryption
/// keys, unknown types) are left out: tokens signed with them fail as
/// signed by an unknown key.
pub(super) fn bearer_keys(jwks: &CoreJsonWebKeySet) -> Vec<Jwk> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
