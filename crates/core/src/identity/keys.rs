//! [`KeyRing`]: the keys that sign this server's access tokens, kept in the
//! database so they survive restarts and are shared by every instance.
//!
//! The newest unretired key signs. Rotating adds a key and retires the
//! others; a retired key stays published in the JWKS (and accepted) for as
//! long as a token it signed can live, so nobody is logged out by a
//! rotation. An instance re-reads the keys before signing or publishing
//! them when its copy is a minute old, and at once (at most every few
//! seconds) when it meets a `kid` it does not know, so a rotation made by
//! another process reaches every instance within a minute, without restarts.
//!
//! Private keys are stored unencrypted in the database: whoever can read the
//! database can sign tokens. Protect it accordingly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::db::Database;
use crate::error::{Error, Result};
use crate::identity::jwt::{
    self, AccessClaims, JwtError, KeyAlgorithm, KeySet, SigningKey, StoredKey,
};
use crate::identity::store::{self, SigningKeyRow, micros};

/// Clock skew tolerated on `exp` and `nbf`.
pub(crate) const LEEWAY_SECS: u64 = 30;

/// Least time between two reloads caused by unknown key ids.
const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// How old the loaded keys may get before signing or publishing them
/// re-reads the database, so a rotation made elsewhere (`switchboard keys
/// rotate`, another instance) reaches this one within this time.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Verified tokens remembered at most; past this the memory is cleared.
const VERIFIED_CAPACITY: usize = 10_000;

/// The keys in use, swapped whole on reload.
#[derive(Debug)]
struct Keys {
    signing: Arc<SigningKey>,
    published: KeySet,
}

/// The signing keys of access tokens, and their verification.
#[derive(Debug)]
pub struct KeyRing {
    db: Database,
    algorithm: KeyAlgorithm,
    issuer: String,
    audience: String,
    access_ttl: Duration,
    keys: RwLock<Arc<Keys>>,
    last_reload: RwLock<Instant>,
    /// Tokens whose signature and claims verified, by SHA-256 of the token:
    /// a client sends the same token on every call for its whole life, and
    /// checking its signature again each time costs more than the rest of a
    /// small request. Only the signature check is skipped; expiry is checked
    /// on every use, and revocation is the caller's (per request) business.
    verified: Mutex<HashMap<[u8; 32], AccessClaims>>,
}

fn key_error(error: JwtError) -> Error {
    Error::internal(format!("signing key: {error}"))
}

impl KeyRing {
    /// Loads the keys from the database, generating the first one (with
    /// `algorithm`) when there is none.
    ///
    /// # Errors
    ///
    /// The database error; [`Error::Internal`] for a stored key that cannot
    /// be read.
    pub async fn load(
        db: Database,
        algorithm: KeyAlgorithm,
        issuer: String,
        audience: String,
        access_ttl: Duration,
    ) -> Result<Self> {
        let keys = Self::read(&db, algorithm, access_ttl).await?;
        Ok(Self {
            db,
            algorithm,
            issuer,
            audience,
            access_ttl,
            keys: RwLock::new(Arc::new(keys)),
            last_reload: RwLock::new(Instant::now()),
            verified: Mutex::new(HashMap::new()),
        })
    }

    async fn read(db: &Database, algorithm: KeyAlgorithm, access_ttl: Duration) -> Result<Keys> {
        let horizon = Utc::now()
            - chrono::Duration::from_std(access_ttl + Duration::from_secs(LEEWAY_SECS))
                .unwrap_or_default();
        let mut rows = store::signing_keys(db, horizon).await?;
        if !rows.iter().any(|row| row.retired_at.is_none()) {
            // First start (or every key retired): make one. Two instances
            // starting at once may both do so; the newest then signs and
            // both stay published.
            let key = generate(algorithm).await?;
            store::insert_signing_key(db, &row_of(&key), false).await?;
            rows = store::signing_keys(db, horizon).await?;
        }
        let mut loaded = Vec::with_capacity(rows.len());
        for row in &rows {
            let stored = StoredKey {
                kid: row.kid.clone(),
                algorithm: row.algorithm.clone(),
                private_key: row.private_key.clone(),
                public_jwk: row.public_jwk.clone(),
            };
            loaded.push((
                SigningKey::from_stored(&stored).map_err(key_error)?,
                row.retired_at,
            ));
        }
        let signing = loaded
            .iter()
            .find(|(_, retired)| retired.is_none())
            .map(|(key, _)| Arc::new(key.clone()))
            .ok_or_else(|| Error::internal("no signing key after generating one"))?;
        let keys: Vec<SigningKey> = loaded.into_iter().map(|(key, _)| key).collect();
        Ok(Keys {
            signing,
            published: KeySet::from_signing_keys(&keys),
        })
    }

    fn current(&self) -> Arc<Keys> {
        self.keys
            .read()
            .map(|keys| keys.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Re-reads the keys from the database.
    ///
    /// # Errors
    ///
    /// As [`KeyRing::load`].
    pub async fn reload(&self) -> Result<()> {
        let keys = Self::read(&self.db, self.algorithm, self.access_ttl).await?;
        if let Ok(mut slot) = self.keys.write() {
            *slot = Arc::new(keys);
        }
        // A key may have gone (deleted in an emergency): tokens it signed
        // must be checked again.
        if let Ok(mut verified) = self.verified.lock() {
            verified.clear();
        }
        if let Ok(mut last) = self.last_reload.write() {
            *last = Instant::now();
        }
        Ok(())
    }

    /// Re-reads the keys when the loaded ones are older than a minute; a
    /// failure is logged and the loaded keys stay in use.
    pub async fn reload_if_stale(&self) {
        if self.loaded_before(STALE_AFTER)
            && let Err(error) = self.reload().await
        {
            tracing::warn!(%error, "could not reload signing keys");
        }
    }

    /// Adds a new signing key (of the configured algorithm), retires the
    /// others, and returns the new key's id. Tokens signed by the retired
    /// keys stay valid until they expire.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn rotate(&self) -> Result<String> {
        let key = generate(self.algorithm).await?;
        store::insert_signing_key(&self.db, &row_of(&key), true).await?;
        self.reload().await?;
        Ok(key.kid)
    }

    /// The id of the key that signs now.
    pub fn signing_kid(&self) -> String {
        self.current().signing.kid.clone()
    }

    /// The public keys as a JWK Set, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        self.current().published.jwks()
    }

    /// The issuer this ring signs as.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs an access token for `user_id` in `session_id`; returns it with
    /// its lifetime in seconds.
    ///
    /// # Errors
    ///
    /// [`Error::Internal`] if signing fails.
    pub fn issue(&self, user_id: &str, session_id: &str) -> Result<(String, u64)> {
        let now = Utc::now().timestamp();
        let ttl = self.access_ttl.as_secs();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id.to_owned(),
            exp: now + i64::try_from(ttl).unwrap_or(i64::MAX / 2),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::now_v7().to_string(),
            sid: session_id.to_owned(),
        };
        let token = jwt::sign(&self.current().signing, &claims).map_err(key_error)?;
        Ok((token, ttl))
    }

    /// Verifies an access token this server signed. An unknown `kid` makes
    /// the ring reload from the database once (another instance may have
    /// rotated) before the token is refused.
    ///
    /// # Errors
    ///
    /// The [`JwtError`] that refuses the token.
    pub async fn verify(&self, token: &str) -> std::result::Result<AccessClaims, JwtError> {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let remembered = self
            .verified
            .lock()
            .ok()
            .and_then(|verified| verified.get(&digest).cloned());
        if let Some(claims) = remembered {
            return if expired(&claims, Utc::now().timestamp()) {
                Err(JwtError::Expired)
            } else {
                Ok(claims)
            };
        }
        let claims = self.verify_signed(token).await?;
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
            verified.insert(digest, claims.clone());
        }
        Ok(claims)
    }

    async fn verify_signed(&self, token: &str) -> std::result::Result<AccessClaims, JwtError> {
        let first =
            self.current()
                .published
                .verify(token, &self.issuer, &self.audience, LEEWAY_SECS);
        match first {
            Err(JwtError::UnknownKey) if self.loaded_before(RELOAD_INTERVAL) => {
                if let Err(error) = self.reload().await {
                    tracing::warn!(%error, "could not reload signing keys");
                }
                self.current()
                    .published
                    .verify(token, &self.issuer, &self.audience, LEEWAY_SECS)
            }
            other => other,
        }
    }

    /// Whether the keys were last read at least `age` ago.
    fn loaded_before(&self, age: Duration) -> bool {
        self.last_reload
            .read()
            .map(|last| last.elapsed() >= age)
            .unwrap_or(true)
    }
}

/// Whether remembered `claims` have expired at `now` (Unix seconds), with
/// the same leeway as a full verification.
fn expired(claims: &AccessClaims, now: i64) -> bool {
    claims.exp + i64::try_from(LEEWAY_SECS).unwrap_or_default() < now
}

async fn generate(algorithm: KeyAlgorithm) -> Result<SigningKey> {
    // RSA key generation takes a while: keep it off the async workers.
    tokio::task::spawn_blocking(move || SigningKey::generate(algorithm))
        .await
        .map_err(Error::internal)?
        .map_err(key_error)
}

fn row_of(key: &SigningKey) -> SigningKeyRow {
    let stored = key.to_stored();
    SigningKeyRow {
        kid: stored.kid,
        algorithm: stored.algorithm,
        private_key: stored.private_key,
        public_jwk: stored.public_jwk,
        created_at: micros(Utc::now()),
        retired_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_tokens_still_expire() {
        let claims = AccessClaims {
            iss: "i".into(),
            aud: "a".into(),
            sub: "s".into(),
            exp: 1_000,
            nbf: 0,
            iat: 0,
            jti: "j".into(),
            sid: String::new(),
        };
        assert!(!expired(&claims, 1_000));
        assert!(!expired(&claims, 1_000 + 30), "within the leeway");
        assert!(expired(&claims, 1_000 + 31));
    }
}
