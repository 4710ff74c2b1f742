//! The identity tables: every SQL statement about accounts, sessions,
//! refresh tokens, API keys, recovery codes, provider links and pending
//! OpenID Connect sign-ins, each written once for SQLite and PostgreSQL.
//! Statements that belong to a change run inside a [`Tx`], so the change and
//! its audit event commit together.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use crate::db::{Database, Tx};
use crate::error::{Error, Result};
use crate::identity::Role;
use crate::paging::Cursor;
use crate::{on_database, on_tx, on_writer};

/// The columns of a [`UserRow`], as a literal for `concat!`.
macro_rules! user_columns {
    () => {
        "id, email, display_name, role, password_hash, disabled, totp_secret, \
         totp_enabled, totp_last_step, created_at, updated_at, last_login_at"
    };
}

/// An account as stored. Its `Debug` leaves out the password hash and the
/// TOTP secret.
#[derive(Clone, FromRow)]
pub(crate) struct UserRow {
    pub(crate) id: String,
    pub(crate) email: String,
    pub(crate) display_name: String,
    pub(crate) role: String,
    pub(crate) password_hash: Option<String>,
    pub(crate) disabled: bool,
    pub(crate) totp_secret: Option<String>,
    pub(crate) totp_enabled: bool,
    pub(crate) totp_last_step: Option<i64>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) last_login_at: Option<i64>,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .field("totp_enabled", &self.totp_enabled)
            .finish_non_exhaustive()
    }
}

impl UserRow {
    pub(crate) fn role(&self) -> Result<Role> {
        self.role
            .parse()
            .map_err(|_| Error::internal(format!("user {}: stored role {:?}", self.id, self.role)))
    }
}

pub(crate) use crate::db::{from_micros, micros, now};

/// A new account to insert.
pub(crate) struct NewUser<'a> {
    pub(crate) id: &'a str,
    /// The normalised email (`identity::email`): stored as the address and
    /// as its comparison key.
    pub(crate) email: &'a str,
    pub(crate) display_name: &'a str,
    pub(crate) role: Role,
    pub(crate) password_hash: Option<&'a str>,
}

pub(crate) async fn insert_user(tx: &mut Tx, user: &NewUser<'_>, now: DateTime<Utc>) -> Result<()> {
    let sql = "INSERT INTO users (id, email, email_key, display_name, role, password_hash, \
               disabled, totp_enabled, created_at, updated_at) \
               VALUES ($1, $2, $2, $3, $4, $5, FALSE, FALSE, $6, $6)";
    let result = on_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(user.id)
            .bind(user.email)
            .bind(user.display_name)
            .bind(user.role.as_str())
            .bind(user.password_hash)
            .bind(micros(now))
            .execute(conn)
            .await
            .map(drop)
    });
    result.map_err(|e| Error::from_unique_violation(e, "an account with this email exists"))
}

/// The account whose normalised email is `email_key`. A row without a key
/// (written by an older version during a rolling upgrade, or imported) is
/// found by its stored email until the next start gives it one; a row with
/// the key comes first.
pub(crate) async fn user_by_email(db: &Database, email_key: &str) -> Result<Option<UserRow>> {
    let sql = concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE email_key = $1 OR (email_key IS NULL AND email = $1) \
          ORDER BY (email_key IS NULL), created_at LIMIT 1"
    );
    Ok(on_database!(db, pool => sqlx::query_as(sql).bind(email_key).fetch_optional(pool).await?))
}

/// Accounts written before emails had a comparison key: (id, email),
/// oldest first, so the first of two variants of one address keeps it.
pub(crate) async fn users_without_email_key(db: &Database) -> Result<Vec<(String, String)>> {
    let sql = "SELECT id, email FROM users WHERE email_key IS NULL ORDER BY created_at, id";
    Ok(on_database!(db, pool => sqlx::query_as(sql).fetch_all(pool).await?))
}

/// Sets an account's email key (if still unset); false when another
/// account holds that key already.
pub(crate) async fn set_email_key(db: &Database, id: &str, email_key: &str) -> Result<bool> {
    let sql = "UPDATE users SET email_key = $1 WHERE id = $2 AND email_key IS NULL";
    let result = on_writer!(db, pool => {
        sqlx::query(sql).bind(email_key).bind(id).execute(pool).await.map(drop)
    });
    match result {
        Ok(()) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn user_by_id(db: &Database, id: &str) -> Result<Option<UserRow>> {
    let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
    Ok(on_database!(db, pool => sqlx::query_as(sql).bind(id).fetch_optional(pool).await?))
}

pub(crate) async fn user_by_id_in(tx: &mut Tx, id: &str) -> Result<Option<UserRow>> {
    let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
    Ok(on_tx!(tx, conn => sqlx::query_as(sql).bind(id).fetch_optional(conn).await?))
}

/// Users oldest first, after `after`, at most `limit`.
pub(crate) async fn list_users(
    db: &Database,
    after: Option<&Cursor>,
    limit: u32,
) -> Result<Vec<UserRow>> {
    let sql = concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE (created_at > $1 OR (created_at = $1 AND id > $2)) \
          ORDER BY created_at, id LIMIT $3"
    );
    let (created_at, id) = after.map_or((i64::MIN, ""), |c| (c.created_at, c.id.as_str()));
    Ok(on_database!(db, pool => {
        sqlx::query_as(sql)
            .bind(created_at)
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
    }))
}

/// The provider ids an account is linked to.
pub(crate) async fn providers_of(db: &Database, user_id: &str) -> Result<Vec<String>> {
    let sql = "SELECT provider FROM user_identities WHERE user_id = $1 ORDER BY provider";
    Ok(on_database!(db, pool => sqlx::query_scalar(sql).bind(user_id).fetch_all(pool).await?))
}

/// The provider ids each of `user_ids` is linked to, in one query (a page
/// of users must not cost a query per user).
pub(crate) async fn providers_of_users(
    db: &Database,
    user_ids: &[String],
) -> Result<std::collections::HashMap<String, Vec<String>>> {
    let mut links: std::collections::HashMap<String, Vec<String>> = Default::default();
    if user_ids.is_empty() {
        return Ok(links);
    }
    let placeholders: Vec<String> = (1..=user_ids.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "SELECT user_id, provider FROM user_identities WHERE user_id IN ({}) \
         ORDER BY user_id, provider",
        placeholders.join(", ")
    );
    let rows: Vec<(String, String)> = on_database!(db, pool => {
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()));
        for id in user_ids {
            query = query.bind(id);
        }
        query.fetch_all(pool).await?
    });
    for (user_id, provider) in rows {
        links.entry(user_id).or_default().push(provider);
    }
    Ok(links)
}

/// Changes the fields that are `Some`; false if there is no such user.
pub(crate) async fn update_user(
    tx: &mut Tx,
    id: &str,
    display_name: Option<&str>,
    role: Option<Role>,
    disabled: Option<bool>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let sql = "UPDATE users SET display_name = COALESCE($1, display_name), \
               role = COALESCE($2, role), disabled = COALESCE($3, disabled), updated_at = $4 \
               WHERE id = $5";
    let affected = on_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(display_name)
            .bind(role.map(Role::as_str))
            .bind(disabled)
            .bind(micros(now))
            .bind(id)
            .execute(conn)
            .await?
            .rows_affected()
    });
    Ok(affected == 1)
}

/// How many enabled administrators there are, as `tx` sees it.
pub(crate) async fn enabled_admins(tx: &mut Tx) -> Result<i64> {
    let sql = "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = FALSE";
    Ok(on_tx!(tx, conn => sqlx::query_scalar(sql).fetch_one(conn).await?))
}

pub(crate) async fn set_password_hash(tx: &mut Tx, id: &str, hash: &str) -> Result<()> {
    let sql = "UPDATE users SET password_hash = $1 WHERE id = $2";
    on_tx!(tx, conn => {
        sqlx::query(sql).bind(hash).bind(id).execute(conn).await?;
    });
    Ok(())
}

pub(crate) async fn record_login(tx: &mut Tx, id: &str, now: DateTime<Utc>) -> Result<()> {
    let sql = "UPDATE users SET last_login_at = $1 WHERE id = $2";
    on_tx!(tx, conn => {
        sqlx::query(sql).bind(micros(now)).bind(id).execute(conn).await?;
    });
    Ok(())
}

/// Deletes the account, its conversations and messages; everything else
/// of it goes by foreign-key cascade. False if there is no such user.
pub(crate) async fn delete_user(tx: &mut Tx, id: &str) -> Result<bool> {
    let messages = "DELETE FROM messages WHERE conversation_id IN \
                    (SELECT id FROM conversations WHERE owner_id = $1)";
    let conversations = "DELETE FROM conversations WHERE owner_id = $1";
    let user = "DELETE FROM users WHERE id = $1";
    let deleted = on_tx!(tx, conn => {
        sqlx::query(messages).bind(id).execute(&mut *conn).await?;
        sqlx::query(conversations).bind(id).execute(&mut *conn).await?;
        sqlx::query(user).bind(id).execute(&mut *conn).await?.rows_affected()
    });
    Ok(deleted == 1)
}

// --- sessions and refresh tokens -------------------------------------------

/// Whether `user_id` exists and is enabled, holding the row until `tx`
/// ends, so that disabling the account waits for `tx` (PostgreSQL's row
/// lock; SQLite's IMMEDIATE transaction holds the whole database already).
pub(crate) async fn lock_enabled_user(tx: &mut Tx, user_id: &str) -> Result<bool> {
    let sql = match tx {
        Tx::Sqlite(_) => "SELECT disabled FROM users WHERE id = $1",
        Tx::Postgres(_) => "SELECT disabled FROM users WHERE id = $1 FOR UPDATE",
    };
    let disabled: Option<bool> = on_tx!(tx, conn => {
        sqlx::query_scalar(sql).bind(user_id).fetch_optional(conn).await?
    });
    Ok(disabled == Some(false))
}

pub(crate) async fn insert_session(
    tx: &mut Tx,
    id: &str,
    user_id: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<()> {
    let sql = "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)";
    on_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(id)
            .bind(user_id)
            .bind(micros(now))
            .bind(micros(expires_at))
            .execute(conn)
            .await?;
    });
    Ok(())
}

pub(crate) async fn insert_refresh_token(
    tx: &mut Tx,
    token_hash: &str,
    session_id: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<()> {
    let sql = "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
               VALUES ($1, $2, $3, $4)";
    on_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(token_hash)
            .bind(session_id)
            .bind(micros(now))
            .bind(micros(expires_at))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// A refresh token with its session, as found by its hash.
#[derive(Debug, FromRow)]
pub(crate) struct RefreshRow {
    pub(crate) session_id: String,
    pub(crate) user_id: String,
    pub(crate) expires_at: i64,
    pub(crate) used_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
}

pub(crate) async fn refresh_token(tx: &mut Tx, token_hash: &str) -> Result<Option<RefreshRow>> {
    let sql = "SELECT r.session_id, s.user_id, r.expires_at, r.used_at, s.revoked_at \
               FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id \
               WHERE r.token_hash = $1";
    Ok(on_tx!(tx, conn => sqlx::query_as(sql).bind(token_hash).fetch_optional(conn).await?))
}

/// Marks a refresh token used; false if it already was (a concurrent use).
pub(crate) async fn use_refresh_token(
    tx: &mut Tx,
    token_hash: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let sql = "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL";
    let affected = on_tx!(tx, conn => {
        sqlx::query(sql).bind(micros(now)).bind(token_hash).execute(conn).await?.rows_affected()
    });
    Ok(affected == 1)
}

/// Revokes a session (if not revoked already); false if it was not live.
pub(crate) async fn revoke_session(
    tx: &mut Tx,
    session_id: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let sql = "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
               WHERE id = $3 AND revoked_at IS NULL";
    let affected = on_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(micros(now))
            .bind(reason)
            .bind(session_id)
            .execute(conn)
            .await?
            .rows_affected()
    });
    Ok(affected == 1)
}

/// Revokes every live session of `user_id` but `keep` (if any), and with
/// them their refresh tokens and the access tokens that name them; returns
/// how many ended.
pub(crate) async fn revoke_other_sessions(
    tx: &mut Tx,
    user_id: &str,
    keep: Option<&str>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<u64> {
    let sql = "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
               WHERE user_id = $3 AND id <> $4 AND revoked_at IS NULL";
    Ok(on_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(micros(now))
            .bind(reason)
            .bind(user_id)
            .bind(keep.unwrap_or_default())
            .execute(conn)
            .await?
            .rows_affected()
    }))
}

/// What authenticating an access token needs to know, in one query.
#[derive(Debug, FromRow)]
pub(crate) struct TokenHolder {
    pub(crate) role: String,
    pub(crate) disabled: bool,
    pub(crate) totp_enabled: bool,
    pub(crate) session_expires_at: Option<i64>,
    pub(crate) session_revoked_at: Option<i64>,
}

pub(crate) async fn token_holder(
    db: &Database,
    user_id: &str,
    session_id: &str,
) -> Result<Option<TokenHolder>> {
    let sql = "SELECT u.role, u.disabled, u.totp_enabled, \
               s.expires_at AS session_expires_at, s.revoked_at AS session_revoked_at \
               FROM users u LEFT JOIN sessions s ON s.id = $2 AND s.user_id = u.id \
               WHERE u.id = $1";
    Ok(on_database!(db, pool => {
        sqlx::query_as(sql).bind(user_id).bind(session_id).fetch_optional(pool).await?
    }))
}

/// Deletes sessions (with their refresh tokens) that expired before `now`.
pub(crate) async fn purge_expired_sessions(db: &Database, now: DateTime<Utc>) -> Result<u64> {
    let tokens = "DELETE FROM refresh_tokens WHERE session_id IN \
                  (SELECT id FROM sessions WHERE expires_at < $1)";
    let sessions = "DELETE FROM sessions WHERE expires_at < $1";
    let mut tx = db.begin().await?;
    let deleted = on_tx!(&mut tx, conn => {
        sqlx::query(tokens).bind(micros(now)).execute(&mut *conn).await?;
        sqlx::query(sessions).bind(micros(now)).execute(&mut *conn).await?.rows_affected()
    });
    tx.commit().await?;
    Ok(deleted)
}

// --- API keys ---------------------------------------------------------------

/// The columns of an [`ApiKeyRow`], as a literal for `concat!`.
macro_rules! api_key_columns {
    () => {
        "id, user_id, name, prefix, permissions, created_at, last_used_at, expires_at"
    };
}

/// An API key as stored (without its hash).
#[derive(Debug, Clone, FromRow)]
pub(crate) struct ApiKeyRow {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) name: String,
    pub(crate) prefix: String,
    pub(crate) permissions: String,
    pub(crate) created_at: i64,
    pub(crate) last_used_at: Option<i64>,
    pub(crate) expires_at: Option<i64>,
}

pub(crate) async fn insert_api_key(tx: &mut Tx, key: &ApiKeyRow, secret_hash: &str) -> Result<()> {
    let sql = "INSERT INTO api_keys (id, user_id, name, prefix, secret_hash, permissions, \
               created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    on_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(&key.id)
            .bind(&key.user_id)
            .bind(&key.name)
            .bind(&key.prefix)
            .bind(secret_hash)
            .bind(&key.permissions)
            .bind(key.created_at)
            .bind(key.expires_at)
            .execute(conn)
            .await?;
    });
    Ok(())
}

pub(crate) async fn api_keys_of(db: &Database, user_id: &str) -> Result<Vec<ApiKeyRow>> {
    let sql = concat!(
        "SELECT ",
        api_key_columns!(),
        " FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, id DESC"
    );
    Ok(on_database!(db, pool => sqlx::query_as(sql).bind(user_id).fetch_all(pool).await?))
}

/// Revokes a live key of `user_id`; false if it has none by that id.
pub(crate) async fn revoke_api_key(
    tx: &mut Tx,
    user_id: &str,
    id: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let sql = "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND user_id = $3 \
               AND revoked_at IS NULL";
    let affected = on_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(micros(now))
            .bind(id)
            .bind(user_id)
            .execute(conn)
            .await?
            .rows_affected()
    });
    Ok(affected == 1)
}

/// An API key with what authenticating it needs to know of its owner.
#[derive(Debug, FromRow)]
pub(crate) struct KeyHolder {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) permissions: String,
    pub(crate) last_used_at: Option<i64>,
    pub(crate) expires_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) role: String,
    pub(crate) disabled: bool,
    pub(crate) totp_enabled: bool,
}

pub(crate) async fn key_holder(db: &Database, secret_hash: &str) -> Result<Option<KeyHolder>> {
    let sql = "SELECT k.id, k.user_id, k.permissions, k.last_used_at, k.expires_at, k.revoked_at, \
               u.role, u.disabled, u.totp_enabled \
               FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.secret_hash = $1";
    Ok(on_database!(db, pool => {
        sqlx::query_as(sql).bind(secret_hash).fetch_optional(pool).await?
    }))
}

pub(crate) async fn touch_api_key(db: &Database, id: &str, now: DateTime<Utc>) -> Result<()> {
    let sql = "UPDATE api_keys SET last_used_at = $1 WHERE id = $2";
    on_writer!(db, pool => {
        sqlx::query(sql).bind(micros(now)).bind(id).execute(pool).await?;
    });
    Ok(())
}

// --- second factor ---------------------------------------------------------

pub(crate) async fn set_totp(
    tx: &mut Tx,
    user_id: &str,
    secret: Option<&str>,
    enabled: bool,
    last_step: Option<i64>,
    now: DateTime<Utc>,
) -> Result<()> {
    let sql = "UPDATE users SET totp_secret = $1, totp_enabled = $2, totp_last_step = $3, \
               updated_at = $4 WHERE id = $5";
    on_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(secret)
            .bind(enabled)
            .bind(last_step)
            .bind(micros(now))
            .bind(user_id)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Records the TOTP step just used; false if a step as late was already
/// used (a replay racing this one).
pub(crate) async fn use_totp_step(tx: &mut Tx, user_id: &str, step: i64) -> Result<bool> {
    let sql = "UPDATE users SET totp_last_step = $1 WHERE id = $2 \
               AND (totp_last_step IS NULL OR totp_last_step < $1)";
    let affected = on_tx!(tx, conn => {
        sqlx::query(sql).bind(step).bind(user_id).execute(conn).await?.rows_affected()
    });
    Ok(affected == 1)
}

pub(crate) async fn replace_recovery_codes(
    tx: &mut Tx,
    user_id: &str,
    code_hashes: &[String],
) -> Result<()> {
    on_tx!(tx, conn => {
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *conn)
            .await?;
        for hash in code_hashes {
            sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                .bind(user_id)
                .bind(hash)
                .execute(&mut *conn)
                .await?;
        }
    });
    Ok(())
}

/// Uses up an unused recovery code; false if there is none by that hash.
pub(crate) async fn use_recovery_code(
    tx: &mut Tx,
    user_id: &str,
    code_hash: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let sql = "UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 \
               AND used_at IS NULL";
    let affected = on_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(micros(now))
            .bind(user_id)
            .bind(code_hash)
            .execute(conn)
            .await?
            .rows_affected()
    });
    Ok(affected == 1)
}

// --- OpenID Connect --------------------------------------------------------

pub(crate) async fn user_by_identity(
    db: &Database,
    issuer: &str,
    subject: &str,
) -> Result<Option<UserRow>> {
    let sql = concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id = (SELECT user_id FROM user_identities \
          WHERE issuer = $1 AND subject = $2)"
    );
    Ok(on_database!(db, pool => {
        sqlx::query_as(sql).bind(issuer).bind(subject).fetch_optional(pool).await?
    }))
}

pub(crate) async fn link_identity(
    tx: &mut Tx,
    issuer: &str,
    subject: &str,
    provider: &str,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let sql = "INSERT INTO user_identities (issuer, subject, provider, user_id, created_at) \
               VALUES ($1, $2, $3, $4, $5)";
    let result = on_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(issuer)
            .bind(subject)
            .bind(provider)
            .bind(user_id)
            .bind(micros(now))
            .execute(conn)
            .await
            .map(drop)
    });
    result.map_err(|e| Error::from_unique_violation(e, "this identity is linked already"))
}

/// A pending OpenID Connect sign-in, as stored. Its `Debug` leaves out the
/// nonce and the PKCE verifier.
#[derive(FromRow)]
pub(crate) struct OidcLoginRow {
    pub(crate) state: String,
    pub(crate) provider: String,
    pub(crate) nonce: String,
    pub(crate) pkce_verifier: String,
    pub(crate) redirect_uri: String,
    pub(crate) created_at: i64,
}

pub(crate) async fn insert_oidc_login(db: &Database, row: &OidcLoginRow) -> Result<()> {
    let sql = "INSERT INTO oidc_logins (state, provider, nonce, pkce_verifier, redirect_uri, \
               created_at) VALUES ($1, $2, $3, $4, $5, $6)";
    on_writer!(db, pool => {
        sqlx::query(sql)
            .bind(&row.state)
            .bind(&row.provider)
            .bind(&row.nonce)
            .bind(&row.pkce_verifier)
            .bind(&row.redirect_uri)
            .bind(row.created_at)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Takes (reads and deletes) the pending sign-in of `state`: a state works
/// once.
pub(crate) async fn take_oidc_login(db: &Database, state: &str) -> Result<Option<OidcLoginRow>> {
    let sql = "DELETE FROM oidc_logins WHERE state = $1 \
               RETURNING state, provider, nonce, pkce_verifier, redirect_uri, created_at";
    Ok(on_writer!(db, pool => sqlx::query_as(sql).bind(state).fetch_optional(pool).await?))
}

/// Deletes sign-ins started before `before` and never completed.
pub(crate) async fn purge_oidc_logins(db: &Database, before: DateTime<Utc>) -> Result<u64> {
    let sql = "DELETE FROM oidc_logins WHERE created_at < $1";
    Ok(on_writer!(db, pool => {
        sqlx::query(sql).bind(micros(before)).execute(pool).await?.rows_affected()
    }))
}

// --- signing keys ----------------------------------------------------------

/// A signing key as stored. Its `Debug` leaves out the private key.
#[derive(Clone, FromRow)]
pub(crate) struct SigningKeyRow {
    pub(crate) kid: String,
    pub(crate) algorithm: String,
    pub(crate) private_key: String,
    pub(crate) public_jwk: String,
    pub(crate) created_at: i64,
    pub(crate) retired_at: Option<i64>,
}

/// Keys not retired, or retired after `retired_after`, newest first.
pub(crate) async fn signing_keys(
    db: &Database,
    retired_after: DateTime<Utc>,
) -> Result<Vec<SigningKeyRow>> {
    let sql = "SELECT kid, algorithm, private_key, public_jwk, created_at, retired_at \
               FROM signing_keys WHERE retired_at IS NULL OR retired_at > $1 \
               ORDER BY created_at DESC, kid DESC";
    Ok(on_database!(db, pool => {
        sqlx::query_as(sql).bind(micros(retired_after)).fetch_all(pool).await?
    }))
}

/// Inserts a new signing key and retires every older one, in one
/// transaction.
pub(crate) async fn insert_signing_key(
    db: &Database,
    row: &SigningKeyRow,
    retire_others: bool,
) -> Result<()> {
    let insert = "INSERT INTO signing_keys (kid, algorithm, private_key, public_jwk, created_at) \
                  VALUES ($1, $2, $3, $4, $5)";
    let retire = "UPDATE signing_keys SET retired_at = $1 WHERE kid <> $2 AND retired_at IS NULL";
    let mut tx = db.begin().await?;
    on_tx!(&mut tx, conn => {
        sqlx::query(insert)
            .bind(&row.kid)
            .bind(&row.algorithm)
            .bind(&row.private_key)
            .bind(&row.public_jwk)
            .bind(row.created_at)
            .execute(&mut *conn)
            .await?;
        if retire_others {
            sqlx::query(retire).bind(row.created_at).bind(&row.kid).execute(&mut *conn).await?;
        }
    });
    tx.commit().await
}

impl std::fmt::Debug for OidcLoginRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcLoginRow")
            .field("provider", &self.provider)
            .field("redirect_uri", &self.redirect_uri)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}
