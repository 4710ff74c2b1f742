//! Who presents a credential: [`Identity::authenticate`] reads an access
//! token of this server, an API key or a provider's token into the
//! [`Principal`] every request carries.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::cache::{ENTRY_TTL, ReadCache};

use crate::error::{Error, Result};
use crate::identity::jwt::Unverified;
use crate::identity::oidc::{ExternalIdentity, OidcError};
use crate::identity::store::{self, micros};
use crate::identity::{ACCOUNT_READ, ACCOUNT_WRITE, Credential, Principal, RequestContext, Role};

use super::api_keys::API_KEY_PREFIX;
use super::{Identity, sha256_hex};

/// How often an API key's `last_used_at` is written at most.
const KEY_TOUCH_INTERVAL: chrono::Duration = chrono::Duration::seconds(60);

/// An accepted credential's principal, and until when the answer may be
/// cached (`None`: not at all).
type Accepted = (Principal, Option<Instant>);

/// The moment `at` (Unix microseconds) on the monotonic clock; `None`
/// stays `None`, a moment already past is now.
fn instant_of(at: Option<i64>) -> Option<Instant> {
    let left = at? - micros(Utc::now());
    Some(Instant::now() + Duration::from_micros(u64::try_from(left).unwrap_or_default()))
}

impl Identity {
    /// Who presents `credential` (a bearer token, an API key, or a provider's
    /// token), or `None` when it is refused: bad signature, wrong algorithm,
    /// expired, not yet valid, wrong issuer or audience, unknown key,
    /// revoked session or key, disabled or deleted account.
    ///
    /// # Errors
    ///
    /// Only for failures that are not the credential's fault (the database
    /// or a provider cannot be reached).
    ///
    /// An access token or API key accepted in the last moment is answered
    /// from the credentials cache ([`crate::cache`]): every change of the
    /// account invalidates it, and no entry outlives
    /// [`ENTRY_TTL`](crate::cache::ENTRY_TTL), the token's expiry or the
    /// session's or key's end.
    pub async fn authenticate(&self, credential: &str) -> Result<Option<Principal>> {
        let credential = credential.trim();
        let cache = self.caches.credentials();
        if let Some(principal) = cache.and_then(|cache| cache.get(credential)) {
            return Ok(Some(principal));
        }
        let ticket = cache.map(ReadCache::ticket);
        let found = self.authenticate_uncached(credential).await?;
        if let (Some(cache), Some(ticket), Some((principal, Some(until)))) = (cache, ticket, &found)
        {
            cache.insert(ticket, credential, principal.clone(), Some(*until));
        }
        Ok(found.map(|(principal, _)| principal))
    }

    /// As [`Identity::authenticate`], from the database, with the moment
    /// the answer may be believed until when it may be cached at all.
    async fn authenticate_uncached(&self, credential: &str) -> Result<Option<Accepted>> {
        if credential.starts_with(API_KEY_PREFIX) {
            return self.authenticate_api_key(credential).await;
        }
        let issuer = Unverified::read(credential)
            .ok()
            .and_then(|token| token.issuer());
        if issuer.as_deref() == Some(self.keys.issuer()) || self.config.oidc_providers.is_empty() {
            return self.authenticate_access_token(credential).await;
        }
        match self.oidc.verify_bearer(credential).await {
            // A provider's token is not cached: its account is provisioned
            // on each use.
            Ok(Some(identity)) => Ok(self
                .authenticate_provider_identity(identity)
                .await?
                .map(|principal| (principal, None))),
            Ok(None) => self.authenticate_access_token(credential).await,
            Err(OidcError::Discovery(message) | OidcError::Unreachable(message)) => {
                tracing::warn!(%message, "identity provider unreachable while checking a bearer token");
                Err(Error::Unavailable(
                    "the identity provider cannot be reached; try again".to_owned(),
                ))
            }
            Err(error) => {
                tracing::info!(%error, "provider token refused");
                Ok(None)
            }
        }
    }

    async fn authenticate_access_token(&self, token: &str) -> Result<Option<Accepted>> {
        let claims = match self.keys.verify(token).await {
            Ok(claims) => claims,
            Err(error) => {
                tracing::info!(%error, "access token refused");
                return Ok(None);
            }
        };
        let Some(holder) = store::token_holder(&self.db, &claims.sub, &claims.sid).await? else {
            return Ok(None);
        };
        let live_session = holder.session_revoked_at.is_none()
            && holder
                .session_expires_at
                .is_some_and(|at| at > micros(Utc::now()));
        if holder.disabled || !live_session {
            return Ok(None);
        }
        let role: Role = holder.role.parse()?;
        let until = [
            Some(claims.exp.saturating_mul(1_000_000)),
            holder.session_expires_at,
        ];
        Ok(Some((
            self.principal(
                claims.sub,
                role,
                holder.totp_enabled,
                Credential::AccessToken {
                    session_id: claims.sid,
                },
                None,
            ),
            instant_of(until.into_iter().flatten().min()),
        )))
    }

    async fn authenticate_api_key(&self, key: &str) -> Result<Option<Accepted>> {
        let Some(holder) = store::key_holder(&self.db, &sha256_hex(key)).await? else {
            return Ok(None);
        };
        let now = Utc::now();
        let expired = holder.expires_at.is_some_and(|at| at <= micros(now));
        if holder.revoked_at.is_some() || expired || holder.disabled {
            return Ok(None);
        }
        let stale = holder
            .last_used_at
            .is_none_or(|at| at < micros(now - KEY_TOUCH_INTERVAL));
        if stale {
            store::touch_api_key(&self.db, &holder.id, now).await?;
        }
        let role: Role = holder.role.parse()?;
        let permissions: Vec<String> = holder
            .permissions
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        Ok(Some((
            self.principal(
                holder.user_id,
                role,
                holder.totp_enabled,
                Credential::ApiKey { key_id: holder.id },
                (!permissions.is_empty()).then_some(permissions),
            ),
            Some(instant_of(holder.expires_at).unwrap_or_else(|| Instant::now() + ENTRY_TTL)),
        )))
    }

    async fn authenticate_provider_identity(
        &self,
        identity: ExternalIdentity,
    ) -> Result<Option<Principal>> {
        let context = RequestContext {
            user_agent: "provider token".to_owned(),
            ..RequestContext::default()
        };
        let row = self.provision(&context, &identity).await?;
        if row.disabled {
            return Ok(None);
        }
        let role = row.role()?;
        Ok(Some(self.principal(
            row.id,
            role,
            row.totp_enabled,
            Credential::ProviderToken {
                provider: identity.provider,
            },
            None,
        )))
    }

    /// The principal of an account, with an admin who must have a second
    /// factor and has none held to their own account.
    fn principal(
        &self,
        user_id: String,
        role: Role,
        totp_enabled: bool,
        credential: Credential,
        restricted_to: Option<Vec<String>>,
    ) -> Principal {
        let mut restricted_to = restricted_to;
        if self.config.require_totp_for_admins
            && role == Role::Admin
            && !totp_enabled
            && !matches!(credential, Credential::ProviderToken { .. })
        {
            // Narrow, never widen: what the credential allowed, of the
            // account permissions.
            let account = [ACCOUNT_READ, ACCOUNT_WRITE];
            restricted_to = Some(match restricted_to {
                Some(allowed) => allowed
                    .into_iter()
                    .filter(|p| account.contains(&p.as_str()))
                    .collect(),
                None => account.map(str::to_owned).to_vec(),
            });
        }
        Principal {
            user_id,
            role,
            credential,
            restricted_to,
        }
    }
}
