//! Password sign-in and the sessions it opens: [`AuthTokens`], a session's
//! rotating refresh tokens, sign-out, and purging what has expired.

use chrono::{DateTime, Utc};

use crate::db::Tx;
use crate::error::{Error, Result};
use crate::identity::audit::{self, AuditOutcome, AuditRecord};
use crate::identity::email::normalise_email;
use crate::identity::password::{self, Verified};
use crate::identity::store::{self, from_micros, micros};
use crate::identity::{Principal, RequestContext};

use super::accounts::User;
use super::oidc_sign_in::OIDC_LOGIN_TTL;
use super::{Identity, random_token, sha256_hex};

/// The one answer to every failed password sign-in.
const BAD_CREDENTIALS: &str = "invalid email or password";

/// The tokens of a new or refreshed session. Its `Debug` leaves out the
/// tokens.
#[derive(Clone)]
pub struct AuthTokens {
    /// A signed JWT.
    pub access_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// An opaque refresh token, good once.
    pub refresh_token: String,
    /// Seconds until the session ends.
    pub refresh_expires_in: u64,
    /// The signed-in account.
    pub user: User,
}

impl std::fmt::Debug for AuthTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthTokens")
            .field("expires_in", &self.expires_in)
            .field("refresh_expires_in", &self.refresh_expires_in)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn refused() -> Error {
    Error::Unauthenticated(BAD_CREDENTIALS.to_owned())
}

impl Identity {
    /// Signs in with an email, a password and, for accounts with a second
    /// factor, a TOTP or recovery code.
    ///
    /// # Errors
    ///
    /// [`Error::Unauthenticated`] with one message for an unknown email, a
    /// wrong password or a disabled account; [`Error::Unauthenticated`]
    /// asking for the second factor when it is missing or wrong;
    /// [`Error::ResourceExhausted`] when the account or address is
    /// throttled; [`Error::InvalidArgument`] for an email with invisible or
    /// control characters.
    pub async fn login(
        &self,
        context: &RequestContext,
        email: &str,
        password: &str,
        second_factor: &str,
    ) -> Result<AuthTokens> {
        let email = normalise_email("email", email)?;
        self.throttle
            .attempt(&format!("email:{email}"), &context.client_address)
            .await?;
        let row = store::user_by_email(&self.db, &email).await?;
        let target = format!("email:{email}");
        // Verify first, whatever the account's state, so every refusal takes
        // the time of one password check.
        let verdict = {
            let password = password.to_owned();
            let stored = row.as_ref().and_then(|row| row.password_hash.clone());
            self.password_work(move || match stored {
                Some(stored) => password::verify_password(&password, &stored).ok(),
                None => {
                    password::burn_verification_time(&password);
                    None
                }
            })
            .await?
        };
        let (row, needs_rehash) = match (row, verdict) {
            (Some(row), Some(Verified::Match { needs_rehash })) if !row.disabled => {
                (row, needs_rehash)
            }
            (row, verdict) => {
                let (actor, detail) = match (&row, verdict) {
                    (None, _) => (String::new(), "unknown email"),
                    (Some(row), Some(Verified::Match { .. })) => {
                        (row.id.clone(), "account disabled")
                    }
                    (Some(row), _) => (row.id.clone(), "wrong password"),
                };
                self.audit_failure(context, &actor, "auth.login", &target, detail)
                    .await?;
                return Err(refused());
            }
        };
        // Slow work before the transaction: SQLite's write lock is held from
        // its first statement.
        let new_hash = if needs_rehash {
            Some(self.hash(password).await?)
        } else {
            None
        };
        self.keys.reload_if_stale().await;
        let now = store::now();
        let mut tx = self.db.begin().await?;
        if row.totp_enabled {
            if second_factor.trim().is_empty() {
                drop(tx);
                self.audit_failure(
                    context,
                    &row.id,
                    "auth.login",
                    &target,
                    "second factor missing",
                )
                .await?;
                return Err(Error::Unauthenticated(
                    "this account has a second factor: send totp_code".to_owned(),
                ));
            }
            if !self
                .use_second_factor(&mut tx, &row, second_factor, now)
                .await?
            {
                drop(tx);
                self.audit_failure(
                    context,
                    &row.id,
                    "auth.login",
                    &target,
                    "wrong second factor",
                )
                .await?;
                return Err(Error::Unauthenticated(
                    "invalid second factor code".to_owned(),
                ));
            }
        }
        if let Some(hash) = &new_hash {
            store::set_password_hash(&mut tx, &row.id, hash).await?;
        }
        let (session_id, access, refresh) = self.open_session(&mut tx, &row.id, now).await?;
        store::record_login(&mut tx, &row.id, now).await?;
        let detail = format!(
            "session {session_id}{}",
            if needs_rehash {
                "; password re-hashed with argon2id"
            } else {
                ""
            }
        );
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: &row.id,
                action: "auth.login",
                target: &target,
                outcome: AuditOutcome::Success,
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        let user = self
            .user_with_links(self.fetch_user(&row.id).await?)
            .await?;
        Ok(self.tokens(access, refresh, user))
    }

    /// Opens a session for `user_id` inside `tx`; returns its tokens.
    pub(super) async fn open_session(
        &self,
        tx: &mut Tx,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, String, String)> {
        let session_id = uuid::Uuid::now_v7().to_string();
        let expires_at = now + self.refresh_ttl();
        // Checked again here, under the row's lock: a sign-in that read the
        // account before an administrator disabled it must not leave a
        // session that would come back when the account is enabled again.
        if !store::lock_enabled_user(tx, user_id).await? {
            return Err(refused());
        }
        store::insert_session(tx, &session_id, user_id, now, expires_at).await?;
        let refresh = random_token(32);
        store::insert_refresh_token(tx, &sha256_hex(&refresh), &session_id, now, expires_at)
            .await?;
        let (access, _) = self.keys.issue(user_id, &session_id)?;
        Ok((session_id, access, refresh))
    }

    fn refresh_ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(
            i64::try_from(self.config.refresh_token_ttl_secs).unwrap_or(i64::MAX / 2_000_000),
        )
    }

    pub(super) fn tokens(&self, access: String, refresh: String, user: User) -> AuthTokens {
        AuthTokens {
            access_token: access,
            expires_in: self.config.access_token_ttl_secs,
            refresh_token: refresh,
            refresh_expires_in: self.config.refresh_token_ttl_secs,
            user,
        }
    }

    /// Trades a refresh token for new tokens. A token that was used before
    /// revokes its whole session (someone holds a copy) and is audited.
    ///
    /// # Errors
    ///
    /// [`Error::Unauthenticated`] for an unknown, used, expired or revoked
    /// token, or a disabled account.
    pub async fn refresh(
        &self,
        context: &RequestContext,
        refresh_token: &str,
    ) -> Result<AuthTokens> {
        let invalid = || {
            Error::Unauthenticated("the refresh token is invalid, expired or revoked".to_owned())
        };
        let hash = sha256_hex(refresh_token.trim());
        let now = store::now();
        self.keys.reload_if_stale().await;
        let mut tx = self.db.begin().await?;
        let Some(found) = store::refresh_token(&mut tx, &hash).await? else {
            return Err(invalid());
        };
        let reused =
            found.used_at.is_some() || !store::use_refresh_token(&mut tx, &hash, now).await?;
        if reused {
            let revoked =
                store::revoke_session(&mut tx, &found.session_id, "refresh token reuse", now)
                    .await?;
            audit::append(
                &mut tx,
                context,
                AuditRecord {
                    actor: &found.user_id,
                    action: "auth.refresh_token_reuse",
                    target: &format!("session:{}", found.session_id),
                    outcome: AuditOutcome::Failure,
                    detail: if revoked {
                        "a rotated refresh token was presented again; session revoked"
                    } else {
                        "a rotated refresh token of a revoked session was presented again"
                    },
                },
                now,
            )
            .await?;
            self.commit_account_change(tx, &found.user_id).await?;
            return Err(invalid());
        }
        if found.revoked_at.is_some() || found.expires_at < micros(now) {
            return Err(invalid());
        }
        let Some(row) = store::user_by_id_in(&mut tx, &found.user_id).await? else {
            return Err(invalid());
        };
        if row.disabled {
            return Err(invalid());
        }
        let refresh = random_token(32);
        let expires_at = from_micros(found.expires_at)?;
        store::insert_refresh_token(
            &mut tx,
            &sha256_hex(&refresh),
            &found.session_id,
            now,
            expires_at,
        )
        .await?;
        tx.commit().await?;
        let (access, _) = self.keys.issue(&row.id, &found.session_id)?;
        let mut tokens = self.tokens(access, refresh, self.user_with_links(row).await?);
        tokens.refresh_expires_in =
            u64::try_from((expires_at - now).num_seconds()).unwrap_or_default();
        Ok(tokens)
    }

    /// Ends the session of `refresh_token`, or else the session of the
    /// caller's access token.
    ///
    /// # Errors
    ///
    /// [`Error::Unauthenticated`] when neither names a session.
    pub async fn logout(
        &self,
        context: &RequestContext,
        caller: Option<&Principal>,
        refresh_token: &str,
    ) -> Result<()> {
        let now = store::now();
        let mut tx = self.db.begin().await?;
        let (session_id, user_id) = if !refresh_token.trim().is_empty() {
            let found = store::refresh_token(&mut tx, &sha256_hex(refresh_token.trim())).await?;
            match found {
                Some(found) => (found.session_id, found.user_id),
                None => {
                    return Err(Error::Unauthenticated(
                        "the refresh token is invalid".to_owned(),
                    ));
                }
            }
        } else {
            match caller.and_then(|p| p.session_id().map(|s| (s.to_owned(), p.user_id.clone()))) {
                Some(found) => found,
                None => {
                    return Err(Error::Unauthenticated(
                        "send the refresh token, or call with the access token of the session"
                            .to_owned(),
                    ));
                }
            }
        };
        store::revoke_session(&mut tx, &session_id, "logout", now).await?;
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: &user_id,
                action: "auth.logout",
                target: &format!("session:{session_id}"),
                outcome: AuditOutcome::Success,
                detail: "",
            },
            now,
        )
        .await?;
        self.commit_account_change(tx, &user_id).await
    }

    /// Deletes sessions that ended and sign-ins never completed; returns
    /// how many sessions went.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn purge_expired(&self) -> Result<u64> {
        let now = store::now();
        store::purge_oidc_logins(
            &self.db,
            now - chrono::Duration::from_std(OIDC_LOGIN_TTL).unwrap_or_default(),
        )
        .await?;
        let purged = store::purge_expired_sessions(&self.db, now).await;
        self.caches
            .invalidate(crate::cache::Invalidation::AllCredentials);
        purged
    }
}
