//! Signing keys and access tokens.
//!
//! Access tokens are JWTs (RFC 9068 profile: `typ: at+jwt`) signed with
//! Ed25519 (`EdDSA`) or RSA (`RS256`). Each [`SigningKey`] has a random
//! `kid`; a [`StoredKey`] is its database form. Verifiers hold a [`KeySet`]
//! of public keys, published as a JWKS document for other services.
//!
//! [`KeySet::verify`] trusts nothing in the token's header beyond the
//! `kid`: the key it names decides the one algorithm accepted, so `alg:
//! none`, HMAC with the public key as secret and any other algorithm swap
//! are refused before a signature is looked at. `Unverified` is the one
//! reader of a token before it is verified, here and for the tokens of
//! OpenID Connect providers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The `typ` header of access tokens (RFC 9068).
const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// Modulus size of generated RSA keys, in bits.
const RSA_BITS: usize = 2048;
/// Smallest RSA modulus accepted from storage or a JWK, in bytes.
const MIN_RSA_BYTES: usize = RSA_BITS / 8;
/// Largest leeway [`KeySet::verify`] applies, in seconds.
const MAX_LEEWAY_SECS: u64 = 3600;
/// Random bytes in a generated `kid`.
const KID_BYTES: usize = 16;

/// Why a key could not be made or read, or a token was refused.
///
/// Every refusal of a token should become the same 401 for the caller;
/// the variant is for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The token is not a well-formed JWT with the expected claims.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names no `kid`, or one not in the key set.
    #[error("token names an unknown key")]
    UnknownKey,
    /// The header's `alg` is not the algorithm of the key its `kid` names.
    #[error("token algorithm does not match its key")]
    WrongAlgorithm,
    /// The header's `typ` is not `at+jwt`: some other kind of JWT.
    #[error("token is not an access token")]
    WrongType,
    /// The signature does not verify with the key the `kid` names.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is still in the future (beyond the leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iss` is not the expected issuer.
    #[error("token has the wrong issuer")]
    WrongIssuer,
    /// `aud` is not the expected audience.
    #[error("token has the wrong audience")]
    WrongAudience,
    /// A key could not be generated, encoded, decoded or used.
    #[error("key error: {0}")]
    Key(String),
}

impl From<jsonwebtoken::errors::Error> for JwtError {
    fn from(error: jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::InvalidAlgorithmName => Self::WrongAlgorithm,
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::RsaFailedSigning
            | ErrorKind::Signing(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::Provider(_) => Self::Key(error.to_string()),
            _ => Self::Malformed(error.to_string()),
        }
    }
}

/// The signature algorithm of a key; the JWS `alg` of its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// Ed25519 signatures (`EdDSA`).
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`RS256`), for verifiers without
    /// Ed25519.
    #[serde(rename = "RS256")]
    Rs256,
}

impl KeyAlgorithm {
    /// The JWS name: `"EdDSA"` or `"RS256"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
        }
    }

    fn jwt_algorithm(self) -> Algorithm {
        match self {
            Self::EdDsa => Algorithm::EdDSA,
            Self::Rs256 => Algorithm::RS256,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = JwtError;

    /// Reads the JWS name, exactly as [`KeyAlgorithm::as_str`] writes it.
    ///
    /// # Errors
    ///
    /// [`JwtError::Key`] for any other name.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "EdDSA" => Ok(Self::EdDsa),
            "RS256" => Ok(Self::Rs256),
            other => Err(JwtError::Key(format!(
                "unsupported key algorithm {other:?}"
            ))),
        }
    }
}

/// The public half of a key, as a JWK carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKeyParts {
    /// The 32-byte Ed25519 point (`x`).
    Ed25519 { x: [u8; 32] },
    /// Big-endian modulus and exponent without leading zeros (`n`, `e`).
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl PublicKeyParts {
    fn algorithm(&self) -> KeyAlgorithm {
        match self {
            Self::Ed25519 { .. } => KeyAlgorithm::EdDsa,
            Self::Rsa { .. } => KeyAlgorithm::Rs256,
        }
    }

    /// The public half of a private key in the DER form [`SigningKey`] keeps.
    fn from_private_der(algorithm: KeyAlgorithm, der: &[u8]) -> Result<Self, JwtError> {
        match algorithm {
            KeyAlgorithm::EdDsa => {
                let key = ed25519_dalek::SigningKey::from_pkcs8_der(der)
                    .map_err(|e| JwtError::Key(format!("Ed25519 PKCS#8: {e}")))?;
                Ok(Self::Ed25519 {
                    x: key.verifying_key().to_bytes(),
                })
            }
            KeyAlgorithm::Rs256 => {
                let key = rsa::PrivateKey::from_pkcs1_der(der)
                    .map_err(|e| JwtError::Key(format!("RSA PKCS#1: {e}")))?;
                Self::rsa(key.n_bytes().into_vec(), key.e_bytes().into_vec())
            }
        }
    }

    fn rsa(n: Vec<u8>, e: Vec<u8>) -> Result<Self, JwtError> {
        if n.len() < MIN_RSA_BYTES {
            return Err(JwtError::Key(format!(
                "RSA modulus of {} bits is below {RSA_BITS}",
                n.len() * 8
            )));
        }
        rsa::PublicKey::new(
            rsa::BoxedUint::from_be_slice_vartime(&n),
            rsa::BoxedUint::from_be_slice_vartime(&e),
        )
        .map_err(|e| JwtError::Key(format!("RSA public key: {e}")))?;
        Ok(Self::Rsa { n, e })
    }

    /// Reads an RFC 7517 JWK: returns its `kid` and key.
    fn from_jwk(jwk: &Value) -> Result<(String, Self), JwtError> {
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        let b64 = |name: &str| -> Result<Vec<u8>, JwtError> {
            let text = field(name).ok_or_else(|| JwtError::Key(format!("JWK has no {name:?}")))?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| JwtError::Key(format!("JWK {name:?} is not base64url")))
        };
        let kid = field("kid")
            .filter(|kid| !kid.is_empty())
            .ok_or_else(|| JwtError::Key("JWK has no \"kid\"".into()))?;
        if field("use").is_some_and(|u| u != "sig") {
            return Err(JwtError::Key("JWK is not a signature key".into()));
        }
        let parts = match (field("kty"), field("crv")) {
            (Some("OKP"), Some("Ed25519")) => {
                let x: [u8; 32] = b64("x")?
                    .try_into()
                    .map_err(|_| JwtError::Key("Ed25519 JWK x is not 32 bytes".into()))?;
                ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map_err(|e| JwtError::Key(format!("Ed25519 JWK: {e}")))?;
                Self::Ed25519 { x }
            }
            (Some("RSA"), _) => Self::rsa(b64("n")?, b64("e")?)?,
            (kty, crv) => {
                return Err(JwtError::Key(format!(
                    "unsupported JWK kty {kty:?} crv {crv:?}"
                )));
            }
        };
        if let Some(alg) = field("alg")
            && alg != parts.algorithm().as_str()
        {
            return Err(JwtError::Key(format!(
                "JWK alg {alg:?} does not fit its key type"
            )));
        }
        Ok((kid.to_owned(), parts))
    }

    fn jwk(&self, kid: &str) -> Value {
        let alg = self.algorithm().as_str();
        match self {
            Self::Ed25519 { x } => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(x),
                "kid": kid,
                "alg": alg,
                "use": "sig",
            }),
            Self::Rsa { n, e } => json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(n),
                "e": URL_SAFE_NO_PAD.encode(e),
                "kid": kid,
                "alg": alg,
                "use": "sig",
            }),
        }
    }

    fn decoding_key(&self) -> DecodingKey {
        match self {
            // jsonwebtoken's Ed25519 verifier takes the raw 32-byte point.
            Self::Ed25519 { x } => DecodingKey::from_ed_der(x),
            Self::Rsa { n, e } => DecodingKey::from_rsa_raw_components(n, e),
        }
    }
}

/// A private key that signs access tokens.
///
/// Its `Debug` output leaves out the private key.
#[derive(Clone)]
pub struct SigningKey {
    /// The key id tokens name in their header; random, URL-safe.
    pub kid: String,
    /// The algorithm the key signs with.
    pub algorithm: KeyAlgorithm,
    /// Ed25519: PKCS#8 DER. RSA: PKCS#1 DER. What jsonwebtoken's
    /// `EncodingKey::from_ed_der` / `from_rsa_der` take.
    private_der: Vec<u8>,
    public: PublicKeyParts,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A [`SigningKey`] as it is kept in a database row.
///
/// Its `Debug` output leaves out the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The key id.
    pub kid: String,
    /// The JWS algorithm name, `"EdDSA"` or `"RS256"`.
    pub algorithm: String,
    /// Standard base64 of the private key's DER (Ed25519: PKCS#8, RSA:
    /// PKCS#1).
    pub private_key: String,
    /// The public JWK as JSON text.
    pub public_jwk: String,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("public_jwk", &self.public_jwk)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key with a random 16-byte `kid`: Ed25519 from 32 random bytes,
    /// or RSA with a 2048-bit modulus (which takes a noticeable fraction of
    /// a second).
    ///
    /// # Errors
    ///
    /// [`JwtError::Key`] if key generation or DER encoding fails.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, JwtError> {
        let (private_der, public) = match algorithm {
            KeyAlgorithm::EdDsa => {
                let mut seed = [0u8; 32];
                rand::fill(&mut seed);
                let key = ed25519_dalek::SigningKey::from_bytes(&seed);
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| JwtError::Key(format!("Ed25519 PKCS#8: {e}")))?;
                let public = PublicKeyParts::Ed25519 {
                    x: key.verifying_key().to_bytes(),
                };
                (der.as_bytes().to_vec(), public)
            }
            KeyAlgorithm::Rs256 => {
                let key = rsa::PrivateKey::new(&mut rand::rng(), RSA_BITS)
                    .map_err(|e| JwtError::Key(format!("RSA generation: {e}")))?;
                let der = key
                    .to_pkcs1_der()
                    .map_err(|e| JwtError::Key(format!("RSA PKCS#1: {e}")))?;
                let public =
                    PublicKeyParts::rsa(key.n_bytes().into_vec(), key.e_bytes().into_vec())?;
                (der.as_bytes().to_vec(), public)
            }
        };
        let mut kid = [0u8; KID_BYTES];
        rand::fill(&mut kid);
        Ok(Self {
            kid: URL_SAFE_NO_PAD.encode(kid),
            algorithm,
            private_der,
            public,
        })
    }

    /// The key's database form.
    pub fn to_stored(&self) -> StoredKey {
        StoredKey {
            kid: self.kid.clone(),
            algorithm: self.algorithm.as_str().to_owned(),
            private_key: STANDARD.encode(&self.private_der),
            public_jwk: self.public_jwk().to_string(),
        }
    }

    /// Reads a key back from its database form.
    ///
    /// The public key is derived from the private one; the stored JWK must
    /// agree with it (same key, same `kid`), so a row edited by hand cannot
    /// publish one key while signing with another.
    ///
    /// # Errors
    ///
    /// [`JwtError::Key`] if the algorithm is unknown, the private key does
    /// not decode, an RSA key is under 2048 bits, or the JWK disagrees.
    pub fn from_stored(stored: &StoredKey) -> Result<Self, JwtError> {
        let algorithm: KeyAlgorithm = stored.algorithm.parse()?;
        if stored.kid.is_empty() {
            return Err(JwtError::Key("stored key has an empty kid".into()));
        }
        let private_der = STANDARD
            .decode(&stored.private_key)
            .map_err(|_| JwtError::Key("stored private key is not base64".into()))?;
        let public = PublicKeyParts::from_private_der(algorithm, &private_der)?;
        let jwk: Value = serde_json::from_str(&stored.public_jwk)
            .map_err(|e| JwtError::Key(format!("stored JWK is not JSON: {e}")))?;
        let (jwk_kid, jwk_public) = PublicKeyParts::from_jwk(&jwk)?;
        if jwk_kid != stored.kid || jwk_public != public {
            return Err(JwtError::Key(
                "stored public JWK does not match the private key".into(),
            ));
        }
        Ok(Self {
            kid: stored.kid.clone(),
            algorithm,
            private_der,
            public,
        })
    }

    /// The public key as an RFC 7517 JWK with `kid`, `alg` and
    /// `use: "sig"`: `kty: OKP, crv: Ed25519, x` or `kty: RSA, n, e`.
    pub fn public_jwk(&self) -> Value {
        self.public.jwk(&self.kid)
    }

    fn encoding_key(&self) -> EncodingKey {
        match self.algorithm {
            KeyAlgorithm::EdDsa => EncodingKey::from_ed_der(&self.private_der),
            KeyAlgorithm::Rs256 => EncodingKey::from_rsa_der(&self.private_der),
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the URL of this deployment.
    pub iss: String,
    /// Audience: who the token is for.
    pub aud: String,
    /// Subject: the user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Not valid before, seconds since the Unix epoch.
    pub nbf: i64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
    /// The session the token was issued for; empty when there is none.
    #[serde(default)]
    pub sid: String,
}

/// Signs `claims` with `key`; the header carries the key's `alg`, its
/// `kid` and `typ: at+jwt`.
///
/// # Errors
///
/// [`JwtError::Key`] if the private key cannot be used, or
/// [`JwtError::Malformed`] if the claims do not serialise.
pub fn sign(key: &SigningKey, claims: &AccessClaims) -> Result<String, JwtError> {
    let mut header = Header::new(key.algorithm.jwt_algorithm());
    header.kid = Some(key.kid.clone());
    header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
    Ok(jsonwebtoken::encode(&header, claims, &key.encoding_key())?)
}

/// A public key a [`KeySet`] verifies with.
#[derive(Debug, Clone)]
struct VerifyingKey {
    public: PublicKeyParts,
    decoding: DecodingKey,
}

/// The public keys tokens may be signed with, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: BTreeMap<String, VerifyingKey>,
}

/// The header fields [`KeySet::verify`] reads before trusting anything.
#[derive(Deserialize)]
struct PeekedHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
}

impl KeySet {
    /// An empty key set, which refuses every token.
    pub fn new() -> Self {
        Self::default()
    }

    /// The public halves of `keys`.
    pub fn from_signing_keys(keys: &[SigningKey]) -> Self {
        let mut set = Self::new();
        for key in keys {
            set.insert(key);
        }
        set
    }

    /// The keys of a JWKS document, `{"keys": [jwk, …]}`.
    ///
    /// # Errors
    ///
    /// [`JwtError::Key`] if the document has no `keys` array or one of its
    /// keys is not a supported signature JWK.
    pub fn from_jwks(jwks: &Value) -> Result<Self, JwtError> {
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| JwtError::Key("JWKS has no \"keys\" array".into()))?;
        let mut set = Self::new();
        for jwk in keys {
            set.insert_jwk(jwk)?;
        }
        Ok(set)
    }

    /// Adds the public half of `key`, replacing any key with its `kid`.
    pub fn insert(&mut self, key: &SigningKey) {
        self.insert_parts(key.kid.clone(), key.public.clone());
    }

    /// Adds a public JWK, replacing any key with its `kid`.
    ///
    /// # Errors
    ///
    /// [`JwtError::Key`] if `jwk` has no `kid`, is not an Ed25519 or RSA
    /// (at least 2048-bit) signature key, or names an `alg` that does not fit.
    pub fn insert_jwk(&mut self, jwk: &Value) -> Result<(), JwtError> {
        let (kid, public) = PublicKeyParts::from_jwk(jwk)?;
        self.insert_parts(kid, public);
        Ok(())
    }

    fn insert_parts(&mut self, kid: String, public: PublicKeyParts) {
        let decoding = public.decoding_key();
        self.keys.insert(kid, VerifyingKey { public, decoding });
    }

    /// Whether a key with this `kid` is in the set.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The set as a JWKS document, `{"keys": [jwk, …]}`, ordered by `kid`.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|(kid, key)| key.public.jwk(kid))
            .collect();
        json!({ "keys": keys })
    }

    /// Verifies an access token and returns its claims.
    ///
    /// The header must name a known `kid`, carry exactly that key's `alg`
    /// and `typ: at+jwt`. Then the signature is checked, and the claims:
    /// `exp`, `nbf`, `iss`, `aud` and `sub` must be present, `exp` not
    /// passed and `nbf` reached (both give or take `leeway_secs`, at most an
    /// hour), `iss` equal to `issuer` and `aud` equal to `audience`.
    ///
    /// # Errors
    ///
    /// The first check that fails, as a [`JwtError`] variant other than
    /// [`JwtError::Key`] (which only a broken key in the set produces).
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        leeway_secs: u64,
    ) -> Result<AccessClaims, JwtError> {
        let header: PeekedHeader = Unverified::read(token)?.header()?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(JwtError::UnknownKey)?;
        let algorithm = key.public.algorithm();
        if header.alg.as_deref() != Some(algorithm.as_str()) {
            return Err(JwtError::WrongAlgorithm);
        }
        if !header.typ.as_deref().is_some_and(|typ| {
            typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE)
                || typ.eq_ignore_ascii_case("application/at+jwt")
        }) {
            return Err(JwtError::WrongType);
        }

        let mut validation = Validation::new(algorithm.jwt_algorithm());
        validation.leeway = leeway_secs.min(MAX_LEEWAY_SECS);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation)?;
        Ok(data.claims)
    }
}

/// A compact JWS (`header.payload.signature`) read without verifying
/// anything. What it says may only choose how the token is verified: its
/// issuer picks whose keys (this server's or a provider's), its header the
/// key. Each part is decoded only when asked for, so a broken payload does
/// not hide what the header says, nor a broken header the issuer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unverified<'t> {
    header: &'t str,
    payload: &'t str,
}

impl<'t> Unverified<'t> {
    /// Splits `token` into its parts; decodes nothing yet.
    ///
    /// # Errors
    ///
    /// [`JwtError::Malformed`] unless `token` has exactly three
    /// dot-separated parts.
    pub(crate) fn read(token: &'t str) -> Result<Self, JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three dot-separated parts".into()));
        };
        Ok(Self { header, payload })
    }

    /// The header, read as `H`: [`KeySet::verify`] reads `alg`, `kid` and
    /// `typ` as plain strings (so that `alg: none` is the wrong algorithm,
    /// not a malformed token); a provider's bearer token is read as
    /// `jsonwebtoken`'s own [`Header`].
    ///
    /// # Errors
    ///
    /// [`JwtError::Malformed`] when the header is not base64url or not JSON
    /// that `H` reads.
    pub(crate) fn header<H: DeserializeOwned>(&self) -> Result<H, JwtError> {
        let json = URL_SAFE_NO_PAD
            .decode(self.header)
            .map_err(|_| JwtError::Malformed("header is not base64url".into()))?;
        serde_json::from_slice(&json).map_err(|e| JwtError::Malformed(format!("header: {e}")))
    }

    /// The `iss` claim, or `None` unless the payload is base64url of a JSON
    /// object whose `iss` is a string.
    pub(crate) fn issuer(&self) -> Option<String> {
        let json = URL_SAFE_NO_PAD.decode(self.payload).ok()?;
        let claims: Map<String, Value> = serde_json::from_slice(&json).ok()?;
        claims.get("iss")?.as_str().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;
    use std::time::{SystemTime, UNIX_EPOCH};

    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::EncodePublicKey;

    use super::*;

    const ISSUER: &str = "https://switchboard.example";
    const AUDIENCE: &str = "switchboard-api";

    // RSA generation takes a while; each test binary makes two keys once.
    static RSA_KEY: LazyLock<SigningKey> =
        LazyLock::new(|| SigningKey::generate(KeyAlgorithm::Rs256).unwrap());
    static OTHER_RSA_KEY: LazyLock<SigningKey> =
        LazyLock::new(|| SigningKey::generate(KeyAlgorithm::Rs256).unwrap());

    fn ed_key() -> SigningKey {
        SigningKey::generate(KeyAlgorithm::EdDsa).unwrap()
    }

    fn now() -> i64 {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        i64::try_from(secs).unwrap()
    }

    fn claims() -> AccessClaims {
        let now = now();
        AccessClaims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "user-42".into(),
            exp: now + 300,
            nbf: now - 5,
            iat: now - 5,
            jti: "token-1".into(),
            sid: "session-7".into(),
        }
    }

    fn verify_with(key: &SigningKey, token: &str) -> Result<AccessClaims, JwtError> {
        KeySet::from_signing_keys(std::slice::from_ref(key)).verify(token, ISSUER, AUDIENCE, 30)
    }

    fn b64_json(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn keys() -> Vec<SigningKey> {
        vec![ed_key(), RSA_KEY.clone()]
    }

    #[test]
    fn sign_verify_round_trip_for_both_algorithms() {
        for key in keys() {
            let token = sign(&key, &claims()).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            assert_eq!(header.alg, key.algorithm.jwt_algorithm());
            assert_eq!(verify_with(&key, &token), Ok(claims_like(&token)));
            assert_eq!(verify_with(&key, &token).unwrap().sub, "user-42");
        }
    }

    /// The claims the token was signed with, read back without verifying.
    fn claims_like(token: &str) -> AccessClaims {
        jsonwebtoken::dangerous::insecure_decode_claims(token).unwrap()
    }

    #[test]
    fn missing_sid_reads_as_empty() {
        let key = ed_key();
        let mut value = serde_json::to_value(claims()).unwrap();
        value.as_object_mut().unwrap().remove("sid");
        let token = sign_raw(&key, &value);
        assert_eq!(verify_with(&key, &token).unwrap().sid, "");
    }

    /// Signs arbitrary JSON claims the way [`sign`] does.
    fn sign_raw(key: &SigningKey, claims: &Value) -> String {
        let mut header = Header::new(key.algorithm.jwt_algorithm());
        header.kid = Some(key.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, claims, &key.encoding_key()).unwrap()
    }

    #[test]
    fn stored_round_trip() {
        for key in keys() {
            let stored = key.to_stored();
            assert_eq!(stored.algorithm, key.algorithm.as_str());
            let restored = SigningKey::from_stored(&stored).unwrap();
            assert_eq!(restored.kid, key.kid);
            assert_eq!(restored.algorithm, key.algorithm);
            assert_eq!(restored.public_jwk(), key.public_jwk());
            // A token from the restored key verifies against the original's
            // published JWKS, and the other way round.
            let published = KeySet::from_signing_keys(std::slice::from_ref(&key)).jwks();
            let from_jwks = KeySet::from_jwks(&published).unwrap();
            let token = sign(&restored, &claims()).unwrap();
            assert!(from_jwks.verify(&token, ISSUER, AUDIENCE, 0).is_ok());
            let token = sign(&key, &claims()).unwrap();
            assert!(verify_with(&restored, &token).is_ok());
        }
    }

    #[test]
    fn stored_key_with_mismatched_jwk_is_refused() {
        let key = ed_key();
        let mut stored = key.to_stored();
        let mut other_jwk = ed_key().public_jwk();
        other_jwk["kid"] = json!(key.kid);
        stored.public_jwk = other_jwk.to_string();
        assert!(matches!(
            SigningKey::from_stored(&stored),
            Err(JwtError::Key(_))
        ));
        let mut stored = key.to_stored();
        stored.algorithm = "RS256".into();
        assert!(matches!(
            SigningKey::from_stored(&stored),
            Err(JwtError::Key(_))
        ));
        let mut stored = key.to_stored();
        stored.private_key = "not base64!".into();
        assert!(matches!(
            SigningKey::from_stored(&stored),
            Err(JwtError::Key(_))
        ));
        let mut stored = key.to_stored();
        stored.kid = "other".into();
        assert!(matches!(
            SigningKey::from_stored(&stored),
            Err(JwtError::Key(_))
        ));
    }

    #[test]
    fn public_jwks_have_the_rfc_7517_members() {
        let ed = ed_key();
        let jwk = ed.public_jwk();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], ed.kid.as_str());
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );

        let jwk = RSA_KEY.public_jwk();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["n"].as_str().unwrap())
                .unwrap()
                .len(),
            256
        );

        let set = KeySet::from_signing_keys(&[ed.clone(), RSA_KEY.clone()]);
        let jwks = set.jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
        assert_eq!(KeySet::from_jwks(&jwks).unwrap().jwks(), jwks);
        // Generated kids: 16 random bytes in base64url.
        assert_eq!(ed.kid.len(), 22);
        assert_ne!(ed.kid, ed_key().kid);
    }

    #[test]
    fn bad_jwks_are_errors_not_panics() {
        let kid = "k";
        let bad = [
            json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": kid}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([0u8; 32])}),
            json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": kid}),
            json!({"kty": "oct", "k": "c2VjcmV0", "kid": kid}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": ed_key().public_jwk()["x"], "kid": kid, "alg": "HS256"}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": ed_key().public_jwk()["x"], "kid": kid, "use": "enc"}),
        ];
        for jwk in bad {
            assert!(
                matches!(KeySet::new().insert_jwk(&jwk), Err(JwtError::Key(_))),
                "{jwk}"
            );
        }
        assert!(KeySet::from_jwks(&json!({"nokeys": []})).is_err());
    }

    #[test]
    fn key_algorithm_names() {
        assert_eq!(
            serde_json::to_string(&KeyAlgorithm::EdDsa).unwrap(),
            "\"EdDSA\""
        );
        assert_eq!(
            serde_json::to_string(&KeyAlgorithm::Rs256).unwrap(),
            "\"RS256\""
        );
        assert_eq!("EdDSA".parse::<KeyAlgorithm>(), Ok(KeyAlgorithm::EdDsa));
        assert_eq!("RS256".parse::<KeyAlgorithm>(), Ok(KeyAlgorithm::Rs256));
        assert!("HS256".parse::<KeyAlgorithm>().is_err());
        assert!("eddsa".parse::<KeyAlgorithm>().is_err());
    }

    #[test]
    fn debug_output_hides_private_keys() {
        let key = ed_key();
        let stored = key.to_stored();
        assert!(!format!("{key:?}").contains(&stored.private_key));
        assert!(!format!("{stored:?}").contains(&stored.private_key));
    }

    #[test]
    fn alg_none_is_refused() {
        for key in keys() {
            let header = json!({"alg": "none", "kid": key.kid, "typ": "at+jwt"});
            let payload = serde_json::to_value(claims()).unwrap();
            let token = format!("{}.{}.", b64_json(&header), b64_json(&payload));
            assert_eq!(verify_with(&key, &token), Err(JwtError::WrongAlgorithm));
            // Without a `typ`, and with `alg` in another case, likewise.
            let header = json!({"alg": "None", "kid": key.kid});
            let token = format!("{}.{}.", b64_json(&header), b64_json(&payload));
            assert_eq!(verify_with(&key, &token), Err(JwtError::WrongAlgorithm));
        }
    }

    /// A token signed with HS256 using `secret`, naming `key`'s kid.
    fn hs256_token(key: &SigningKey, secret: &[u8]) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn hs256_with_the_ed25519_public_key_as_secret_is_refused() {
        let key = ed_key();
        let PublicKeyParts::Ed25519 { x } = key.public else {
            panic!("not an Ed25519 key");
        };
        let x_text = key.public_jwk()["x"].as_str().unwrap().to_owned();
        for secret in [&x[..], x_text.as_bytes()] {
            let token = hs256_token(&key, secret);
            assert_eq!(verify_with(&key, &token), Err(JwtError::WrongAlgorithm));
        }
    }

    #[test]
    fn hs256_with_the_rsa_public_key_pem_as_secret_is_refused() {
        let key = &*RSA_KEY;
        let private = rsa::PrivateKey::from_pkcs1_der(&key.private_der).unwrap();
        let public = private.to_public_key();
        let spki = pem("PUBLIC KEY", public.to_public_key_der().unwrap().as_bytes());
        let pkcs1 = pem("RSA PUBLIC KEY", public.to_pkcs1_der().unwrap().as_bytes());
        for secret in [spki, pkcs1] {
            let token = hs256_token(key, secret.as_bytes());
            assert_eq!(verify_with(key, &token), Err(JwtError::WrongAlgorithm));
        }
    }

    #[test]
    fn algorithm_swap_between_key_types_is_refused() {
        // An RS256 token naming the Ed25519 key's kid.
        let ed = ed_key();
        let mut rsa_with_ed_kid = RSA_KEY.clone();
        rsa_with_ed_kid.kid = ed.kid.clone();
        let token = sign(&rsa_with_ed_kid, &claims()).unwrap();
        assert_eq!(verify_with(&ed, &token), Err(JwtError::WrongAlgorithm));
    }

    #[test]
    fn wrong_typ_is_refused() {
        for key in keys() {
            let mut header = Header::new(key.algorithm.jwt_algorithm());
            header.kid = Some(key.kid.clone());
            header.typ = Some("JWT".into());
            let token = jsonwebtoken::encode(&header, &claims(), &key.encoding_key()).unwrap();
            assert_eq!(verify_with(&key, &token), Err(JwtError::WrongType));
        }
    }

    #[test]
    fn expired_is_refused() {
        for key in keys() {
            let mut c = claims();
            c.exp = now() - 120;
            c.nbf = now() - 600;
            let token = sign(&key, &c).unwrap();
            assert_eq!(verify_with(&key, &token), Err(JwtError::Expired));
            // Within the leeway it is still good.
            let set = KeySet::from_signing_keys(std::slice::from_ref(&key));
            assert!(set.verify(&token, ISSUER, AUDIENCE, 300).is_ok());
        }
    }

    #[test]
    fn not_yet_valid_is_refused() {
        for key in keys() {
            let mut c = claims();
            c.nbf = now() + 600;
            c.exp = now() + 1200;
            let token = sign(&key, &c).unwrap();
            assert_eq!(verify_with(&key, &token), Err(JwtError::NotYetValid));
        }
    }

    #[test]
    fn wrong_issuer_and_audience_are_refused() {
        for key in keys() {
            let token = sign(&key, &claims()).unwrap();
            let set = KeySet::from_signing_keys(std::slice::from_ref(&key));
            assert_eq!(
                set.verify(&token, "https://evil.example", AUDIENCE, 30),
                Err(JwtError::WrongIssuer)
            );
            assert_eq!(
                set.verify(&token, ISSUER, "other-api", 30),
                Err(JwtError::WrongAudience)
            );
        }
    }

    #[test]
    fn missing_required_claims_are_refused() {
        let key = ed_key();
        for claim in ["exp", "nbf", "iss", "aud", "sub", "jti"] {
            let mut value = serde_json::to_value(claims()).unwrap();
            value.as_object_mut().unwrap().remove(claim);
            let token = sign_raw(&key, &value);
            assert!(
                matches!(verify_with(&key, &token), Err(JwtError::Malformed(_))),
                "accepted a token without {claim}"
            );
        }
    }

    #[test]
    fn unknown_kid_is_refused() {
        let key = ed_key();
        let token = sign(&key, &claims()).unwrap();
        let other = KeySet::from_signing_keys(&[ed_key(), RSA_KEY.clone()]);
        assert_eq!(
            other.verify(&token, ISSUER, AUDIENCE, 30),
            Err(JwtError::UnknownKey)
        );
        assert_eq!(
            KeySet::new().verify(&token, ISSUER, AUDIENCE, 30),
            Err(JwtError::UnknownKey)
        );
        // No kid at all.
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims(), &key.encoding_key()).unwrap();
        assert_eq!(verify_with(&key, &token), Err(JwtError::UnknownKey));
    }

    #[test]
    fn tampered_payload_is_refused() {
        for key in keys() {
            let token = sign(&key, &claims()).unwrap();
            let parts: Vec<&str> = token.split('.').collect();
            let mut payload: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
            payload["sub"] = json!("admin");
            let forged = format!("{}.{}.{}", parts[0], b64_json(&payload), parts[2]);
            assert_eq!(verify_with(&key, &forged), Err(JwtError::BadSignature));
        }
    }

    #[test]
    fn another_key_with_the_same_kid_is_refused() {
        let key = ed_key();
        let mut impostor = ed_key();
        impostor.kid = key.kid.clone();
        let token = sign(&impostor, &claims()).unwrap();
        assert_eq!(verify_with(&key, &token), Err(JwtError::BadSignature));

        let mut impostor = OTHER_RSA_KEY.clone();
        impostor.kid = RSA_KEY.kid.clone();
        let token = sign(&impostor, &claims()).unwrap();
        assert_eq!(verify_with(&RSA_KEY, &token), Err(JwtError::BadSignature));
    }

    #[test]
    fn the_issuer_is_read_only_from_compact_jws() {
        let issuer = |token: &str| Unverified::read(token).ok().and_then(|t| t.issuer());
        let payload = URL_SAFE_NO_PAD.encode(r#"{"iss":"https://sso.example.com","sub":"x"}"#);
        assert_eq!(
            issuer(&format!("e30.{payload}.sig")).as_deref(),
            Some("https://sso.example.com")
        );
        assert_eq!(issuer("not a jwt"), None);
        assert_eq!(issuer(&format!("e30.{payload}.sig.x.y")), None);
        assert_eq!(issuer("e30.e30.sig"), None);
    }

    #[test]
    fn each_part_is_read_without_the_other() {
        let token = Unverified::read("e30.!!.sig").unwrap();
        assert!(token.header::<PeekedHeader>().unwrap().kid.is_none());
        assert_eq!(token.issuer(), None);
        let payload = URL_SAFE_NO_PAD.encode(r#"{"iss":"https://sso.example.com"}"#);
        let token_text = format!("!!.{payload}.sig");
        let token = Unverified::read(&token_text).unwrap();
        assert!(matches!(
            token.header::<PeekedHeader>(),
            Err(JwtError::Malformed(_))
        ));
        assert_eq!(token.issuer().as_deref(), Some("https://sso.example.com"));
    }

    #[test]
    fn garbage_tokens_are_malformed() {
        let key = ed_key();
        for token in ["", "abc", "a.b", "a.b.c.d", "!!.b.c", "a.b.c.d.e"] {
            assert!(
                matches!(verify_with(&key, token), Err(JwtError::Malformed(_))),
                "{token:?}"
            );
        }
        // `{}` as header: no kid to look up.
        assert_eq!(verify_with(&key, "e30.e30."), Err(JwtError::UnknownKey));
        // A valid header with a signature that is not base64url.
        let token = sign(&key, &claims()).unwrap();
        let (message, _) = token.rsplit_once('.').unwrap();
        assert!(matches!(
            verify_with(&key, &format!("{message}.!!!")),
            Err(JwtError::Malformed(_))
        ));
        // A truncated signature is a bad signature, not a panic.
        assert_eq!(
            verify_with(&key, &format!("{message}.AAAA")),
            Err(JwtError::BadSignature)
        );
    }
}
