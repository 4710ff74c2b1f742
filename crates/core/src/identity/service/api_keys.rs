//! The caller's API keys: [`ApiKey`] as listed, creating one
//! ([`ApiKeyCreated`] carries its secret, shown once), listing and revoking.

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::identity::audit::{self, AuditOutcome, AuditRecord};
use crate::identity::store::{self, ApiKeyRow, from_micros, micros};
use crate::identity::{Credential, Principal, RequestContext};

use super::{Identity, random_token, refuse_nul, sha256_hex};

/// The start of every API key, so a leaked one is recognisable (and secret
/// scanners can look for it).
pub(super) const API_KEY_PREFIX: &str = "sbk_";

/// An API key, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Opaque identifier.
    pub id: String,
    /// What the key is for.
    pub name: String,
    /// The permissions it is restricted to; empty for all of its owner's.
    pub permissions: Vec<String>,
    /// The first characters of the key.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (to within a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What a new API key should be.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    /// What the key is for.
    pub name: String,
    /// A subset of the caller's permissions; empty for all of them.
    pub permissions: Vec<String>,
    /// When the key stops working.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key just created, with its secret (shown once). Its `Debug` leaves out
/// the secret.
#[derive(Clone)]
pub struct ApiKeyCreated {
    /// The key as it will be listed.
    pub key: ApiKey,
    /// The key itself.
    pub secret: String,
}

impl std::fmt::Debug for ApiKeyCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyCreated")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn api_key_from(row: ApiKeyRow) -> Result<ApiKey> {
    Ok(ApiKey {
        permissions: row
            .permissions
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        id: row.id,
        name: row.name,
        prefix: row.prefix,
        created_at: from_micros(row.created_at)?,
        last_used_at: row.last_used_at.map(from_micros).transpose()?,
        expires_at: row.expires_at.map(from_micros).transpose()?,
    })
}

impl Identity {
    /// Creates an API key for the caller.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an empty name, a permission the
    /// caller does not hold, or an expiry in the past.
    pub async fn create_api_key(
        &self,
        context: &RequestContext,
        caller: &Principal,
        key: NewApiKey,
    ) -> Result<ApiKeyCreated> {
        if matches!(caller.credential, Credential::ApiKey { .. }) {
            return Err(Error::PermissionDenied(
                "API keys cannot create API keys; sign in to create one".to_owned(),
            ));
        }
        let mut key = key;
        let name = key.name.trim().to_owned();
        let name = name.as_str();
        if name.is_empty() {
            return Err(Error::invalid_argument("api_key.name", "must not be empty"));
        }
        refuse_nul("api_key.name", name)?;
        // A restricted caller's "all my permissions" is its restriction.
        if key.permissions.is_empty()
            && let Some(restricted) = &caller.restricted_to
        {
            key.permissions = restricted.clone();
        }
        for permission in &key.permissions {
            if !caller.allows(permission) {
                return Err(Error::invalid_argument(
                    "api_key.permissions",
                    format!("{permission} is not a permission you hold"),
                ));
            }
        }
        let now = store::now();
        if key.expires_at.is_some_and(|at| at <= now) {
            return Err(Error::invalid_argument(
                "api_key.expire_time",
                "must be in the future",
            ));
        }
        let secret = format!("{API_KEY_PREFIX}{}", random_token(30));
        let mut permissions = key.permissions.clone();
        permissions.sort();
        permissions.dedup();
        let row = ApiKeyRow {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: caller.user_id.clone(),
            name: name.to_owned(),
            prefix: secret.chars().take(API_KEY_PREFIX.len() + 6).collect(),
            permissions: permissions.join(" "),
            created_at: micros(now),
            last_used_at: None,
            expires_at: key.expires_at.map(micros),
        };
        let mut tx = self.db.begin().await?;
        store::insert_api_key(&mut tx, &row, &sha256_hex(&secret)).await?;
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: &caller.user_id,
                action: "api_key.create",
                target: &format!("api_key:{}", row.id),
                outcome: AuditOutcome::Success,
                detail: &format!("name {name:?}; permissions [{}]", row.permissions),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(ApiKeyCreated {
            key: api_key_from(row)?,
            secret,
        })
    }

    /// The caller's live API keys, newest first.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn list_api_keys(&self, caller: &Principal) -> Result<Vec<ApiKey>> {
        store::api_keys_of(&self.db, &caller.user_id)
            .await?
            .into_iter()
            .map(api_key_from)
            .collect()
    }

    /// Revokes one of the caller's API keys.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the caller has no live key by that id.
    pub async fn delete_api_key(
        &self,
        context: &RequestContext,
        caller: &Principal,
        id: &str,
    ) -> Result<()> {
        refuse_nul("id", id)?;
        let now = store::now();
        let mut tx = self.db.begin().await?;
        if !store::revoke_api_key(&mut tx, &caller.user_id, id, now).await? {
            return Err(Error::NotFound { what: "API key" });
        }
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: &caller.user_id,
                action: "api_key.revoke",
                target: &format!("api_key:{id}"),
                outcome: AuditOutcome::Success,
                detail: "",
            },
            now,
        )
        .await?;
        self.commit_account_change(tx, &caller.user_id).await
    }
}
