//! [`Identity`]: accounts and everything that proves who a caller is —
//! registration, password sign-in with an optional second factor, sessions
//! with rotating refresh tokens, API keys, OpenID Connect sign-in and
//! provider tokens, user administration, and the audit trail of all of it.
//!
//! Every change that is audited commits in the same transaction as its
//! audit event. Slow work (password hashing, provider calls) happens before
//! a transaction begins, never inside one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::chat::paging::{self, Cursor, Listing};
use crate::config::AuthConfig;
use crate::db::{Database, Tx};
use crate::error::{Error, Result};
use crate::identity::audit::{self, AuditEvent, AuditFilter, AuditOutcome, AuditRecord};
use crate::identity::email::normalise_email;
use crate::identity::jwt::{KeyAlgorithm, Unverified};
use crate::identity::oidc::{ExternalIdentity, OidcError, OidcProviders, PendingLogin};
use crate::identity::password::{self, PasswordPolicy, Verified};
use crate::identity::store::{
    self, ApiKeyRow, NewUser, OidcLoginRow, UserRow, from_micros, micros,
};
use crate::identity::totp::{self, TotpSecret};
use crate::identity::{
    ACCOUNT_READ, ACCOUNT_WRITE, Credential, KeyRing, LoginLimits, LoginThrottle, Principal,
    RequestContext, Role,
};

/// Users per page when a listing asks for 0.
const DEFAULT_USER_PAGE_SIZE: u32 = 50;
/// Audit events per page when a listing asks for 0.
const DEFAULT_AUDIT_PAGE_SIZE: u32 = 100;
/// The start of every API key, so a leaked one is recognisable (and secret
/// scanners can look for it).
const API_KEY_PREFIX: &str = "sbk_";
/// How long an OpenID Connect sign-in may take from start to completion.
const OIDC_LOGIN_TTL: Duration = Duration::from_secs(600);
/// How often an API key's `last_used_at` is written at most.
const KEY_TOUCH_INTERVAL: chrono::Duration = chrono::Duration::seconds(60);
/// How many recovery codes a second factor comes with.
const RECOVERY_CODES: usize = 10;
/// The one answer to every failed password sign-in.
const BAD_CREDENTIALS: &str = "invalid email or password";

/// An account, as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Opaque identifier.
    pub id: String,
    /// The sign-in email, lower case.
    pub email: String,
    /// A name to show.
    pub display_name: String,
    /// What the account may do.
    pub role: Role,
    /// Whether the account is disabled.
    pub disabled: bool,
    /// Whether sign-in needs a TOTP code.
    pub totp_enabled: bool,
    /// The OpenID Connect providers the account is linked to.
    pub identity_providers: Vec<String>,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// When the account last changed.
    pub updated_at: DateTime<Utc>,
    /// When the account last signed in.
    pub last_login_at: Option<DateTime<Utc>>,
}

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

/// A page of users.
#[derive(Debug, Clone)]
pub struct UserPage {
    /// The users, oldest first.
    pub users: Vec<User>,
    /// Token of the next page; empty on the last.
    pub next_page_token: String,
}

/// Changes to an account; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// A new display name.
    pub display_name: Option<String>,
    /// A new role.
    pub role: Option<Role>,
    /// Disable or enable the account.
    pub disabled: Option<bool>,
}

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

/// A configured OpenID Connect provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityProvider {
    /// Its id, used in paths.
    pub id: String,
    /// A name to show.
    pub display_name: String,
    /// Its issuer URL.
    pub issuer: String,
}

/// A started OpenID Connect sign-in.
#[derive(Debug, Clone)]
pub struct OidcStart {
    /// Where to send the browser.
    pub authorization_url: String,
    /// The state the provider will send back.
    pub state: String,
}

/// A second factor being enrolled. Its `Debug` leaves out the secret.
#[derive(Clone)]
pub struct TotpEnrollment {
    /// The shared secret, base32.
    pub secret: String,
    /// The `otpauth://` URI.
    pub otpauth_uri: String,
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

impl std::fmt::Debug for ApiKeyCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyCreated")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrollment").finish_non_exhaustive()
    }
}

/// The identity domain.
#[derive(Debug)]
pub struct Identity {
    db: Database,
    keys: KeyRing,
    throttle: LoginThrottle,
    oidc: OidcProviders,
    policy: PasswordPolicy,
    config: AuthConfig,
}

fn sha256_hex(text: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(text.as_bytes()))
}

/// `bytes` random bytes, URL-safe base64.
fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::fill(&mut buffer[..]);
    data_encoding::BASE64URL_NOPAD.encode(&buffer)
}

/// Refuses text PostgreSQL cannot store (a NUL character), the same way on
/// both databases.
fn refuse_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid_argument(
            field,
            "must not contain NUL characters",
        ));
    }
    Ok(())
}

/// Refuses a caller that holds an API key. Changing how an account signs
/// in (password, second factor, sessions) needs a session the account's own
/// credentials opened: a leaked key must not be able to lock its owner out
/// or keep itself in.
fn refuse_api_keys(caller: &Principal) -> Result<()> {
    if matches!(caller.credential, Credential::ApiKey { .. }) {
        return Err(Error::PermissionDenied(
            "this needs a session signed in with the account's password; API keys cannot change sign-in settings".to_owned(),
        ));
    }
    Ok(())
}

/// Gives the accounts written before emails had a comparison key their
/// key (see the `email_key` migration), oldest first.
///
/// An account whose stored email is already in normalised form goes first,
/// so that of `mıke@x` (older) and `mike@x`, the key `mike@x` goes to the
/// account that was registered with exactly that address.
async fn backfill_email_keys(db: &Database) -> Result<()> {
    let mut rows = store::users_without_email_key(db).await?;
    // Stable: the oldest first within each group.
    rows.sort_by_key(|(_, email)| normalise_email("email", email).ok().as_deref() != Some(email));
    for (id, email) in rows {
        match normalise_email("email", &email) {
            Ok(key) => {
                if !store::set_email_key(db, &id, &key).await? {
                    tracing::warn!(
                        user = %id,
                        %email,
                        "another account holds this email in its normalised form; this one cannot sign in by email until an administrator resolves it"
                    );
                }
            }
            Err(error) => tracing::warn!(
                user = %id,
                %error,
                "the stored email is refused now; this account cannot sign in by email until an administrator resolves it"
            ),
        }
    }
    Ok(())
}

fn unix_now() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap_or_default()
}

fn refused() -> Error {
    Error::Unauthenticated(BAD_CREDENTIALS.to_owned())
}

fn oidc_error(error: OidcError) -> Error {
    match error {
        OidcError::UnknownProvider(_) => Error::NotFound {
            what: "identity provider",
        },
        OidcError::Discovery(message) | OidcError::Unreachable(message) => {
            tracing::warn!(%message, "identity provider unreachable");
            Error::Unavailable("the identity provider cannot be reached; try again".to_owned())
        }
        OidcError::Config(message) => Error::invalid_argument("redirect_uri", message),
        other => {
            tracing::info!(error = %other, "identity provider sign-in refused");
            Error::Unauthenticated("the identity provider's answer was refused".to_owned())
        }
    }
}

fn user_from(row: UserRow, identity_providers: Vec<String>) -> Result<User> {
    Ok(User {
        role: row.role()?,
        id: row.id,
        email: row.email,
        display_name: row.display_name,
        disabled: row.disabled,
        totp_enabled: row.totp_enabled,
        identity_providers,
        created_at: from_micros(row.created_at)?,
        updated_at: from_micros(row.updated_at)?,
        last_login_at: row.last_login_at.map(from_micros).transpose()?,
    })
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
    /// Counts sign-in attempts in Redis at `url` (keys under `prefix`),
    /// shared with every instance, instead of in this process only.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if Redis cannot be reached.
    pub async fn share_login_throttle(&mut self, url: &str, prefix: &str) -> Result<()> {
        self.throttle.share_through(url, prefix).await
    }

    /// The identity domain over `db`, with the keys stored there (the first
    /// one is generated on first start). Accounts stored before emails were
    /// normalised get their comparison key here.
    ///
    /// # Errors
    ///
    /// The database error; [`Error::Internal`] for an unreadable stored key.
    pub async fn start(db: Database, config: &AuthConfig) -> Result<Self> {
        let algorithm = match config.signing_algorithm.as_str() {
            "RS256" => KeyAlgorithm::Rs256,
            _ => KeyAlgorithm::EdDsa,
        };
        let keys = KeyRing::load(
            db.clone(),
            algorithm,
            config.issuer.clone(),
            config.audience.clone(),
            Duration::from_secs(config.access_token_ttl_secs),
        )
        .await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::internal)?;
        backfill_email_keys(&db).await?;
        Ok(Self {
            keys,
            throttle: LoginThrottle::new(LoginLimits {
                per_account_and_address: config.login_attempts_per_account,
                per_account: config.login_attempts_per_account_ceiling,
                per_address: config.login_attempts_per_address,
                refill: Duration::from_secs(config.login_attempt_refill_secs),
            }),
            oidc: OidcProviders::new(config.oidc_providers.clone(), http),
            policy: PasswordPolicy {
                min_len: config.password_min_length,
                ..PasswordPolicy::default()
            },
            config: config.clone(),
            db,
        })
    }

    /// The signing keys.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    async fn user_with_links(&self, row: UserRow) -> Result<User> {
        let providers = store::providers_of(&self.db, &row.id).await?;
        user_from(row, providers)
    }

    // --- sessions -----------------------------------------------------------

    /// Opens a session for `user_id` inside `tx`; returns its tokens.
    async fn open_session(
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

    fn tokens(&self, access: String, refresh: String, user: User) -> AuthTokens {
        AuthTokens {
            access_token: access,
            expires_in: self.config.access_token_ttl_secs,
            refresh_token: refresh,
            refresh_expires_in: self.config.refresh_token_ttl_secs,
            user,
        }
    }

    /// Runs password work (argon2id: tens of milliseconds and 19 MiB each,
    /// by design) on a blocking thread, at most a few at a time in the
    /// process, so a burst of sign-ins queues instead of exhausting memory
    /// and every core ([`password::run_in_slot`]).
    async fn password_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        password::run_in_slot(work).await.map_err(Error::internal)
    }

    /// Hashes a password with argon2id.
    async fn hash(&self, password: &str) -> Result<String> {
        let password = password.to_owned();
        self.password_work(move || password::hash_password(&password))
            .await?
            .map_err(Error::internal)
    }

    fn check_password_policy(&self, password: &str, email: &str) -> Result<()> {
        self.policy
            .check(password, email)
            .map_err(|violation| Error::invalid_argument("password", violation.to_string()))
    }

    // --- registration and sign-in -------------------------------------------

    /// Creates an account with the `user` role and signs it in.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`] when registration is closed;
    /// [`Error::InvalidArgument`] for a password the policy refuses or an
    /// email with invisible or control characters;
    /// [`Error::AlreadyExists`] for a taken email, however it is written
    /// ([`normalise_email`]); [`Error::ResourceExhausted`]
    /// when the client address registers too often.
    pub async fn register(
        &self,
        context: &RequestContext,
        email: &str,
        password: &str,
        display_name: &str,
    ) -> Result<AuthTokens> {
        if !self.config.allow_registration {
            return Err(Error::PermissionDenied(
                "registration is closed; ask an administrator for an account".to_owned(),
            ));
        }
        let email = normalise_email("email", email)?;
        refuse_nul("display_name", display_name)?;
        // Per client address (both buckets), never one bucket for everyone.
        self.throttle
            .attempt(
                &format!("register:{}", context.client_address),
                &context.client_address,
            )
            .await?;
        self.check_password_policy(password, &email)?;
        let hash = self.hash(password).await?;
        let user = self
            .create_account(
                context,
                "",
                &email,
                Some(&hash),
                display_name,
                Role::User,
                true,
            )
            .await?;
        let now = store::now();
        self.keys.reload_if_stale().await;
        let mut tx = self.db.begin().await?;
        let (_, access, refresh) = self.open_session(&mut tx, &user.id, now).await?;
        store::record_login(&mut tx, &user.id, now).await?;
        tx.commit().await?;
        Ok(self.tokens(access, refresh, user))
    }

    /// Creates an account (audited as `user.create` by `actor`).
    #[allow(clippy::too_many_arguments)]
    async fn create_account(
        &self,
        context: &RequestContext,
        actor: &str,
        email: &str,
        password_hash: Option<&str>,
        display_name: &str,
        role: Role,
        self_registered: bool,
    ) -> Result<User> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = store::now();
        let mut tx = self.db.begin().await?;
        store::insert_user(
            &mut tx,
            &NewUser {
                id: &id,
                email,
                display_name,
                role,
                password_hash,
            },
            now,
        )
        .await?;
        let detail = format!(
            "role {role}{}",
            if self_registered {
                ", self-registered"
            } else {
                ""
            }
        );
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: if actor.is_empty() { &id } else { actor },
                action: "user.create",
                target: &format!("user:{id}"),
                outcome: AuditOutcome::Success,
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        let row = store::user_by_id(&self.db, &id)
            .await?
            .ok_or_else(|| Error::internal("account vanished after creation"))?;
        user_from(row, Vec::new())
    }

    /// Creates an account with a password and a role, for the command line
    /// (`switchboard user create`).
    ///
    /// # Errors
    ///
    /// As [`Identity::register`], without the registration switch.
    pub async fn create_user(&self, email: &str, password: &str, role: Role) -> Result<User> {
        let email = normalise_email("email", email)?;
        self.check_password_policy(password, &email)?;
        let hash = self.hash(password).await?;
        let context = RequestContext {
            client_address: "local".to_owned(),
            user_agent: "switchboard user create".to_owned(),
            request_id: String::new(),
        };
        self.create_account(&context, "cli", &email, Some(&hash), "", role, false)
            .await
    }

    async fn audit_failure(
        &self,
        context: &RequestContext,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<()> {
        audit::append_alone(
            &self.db,
            context,
            AuditRecord {
                actor,
                action,
                target,
                outcome: AuditOutcome::Failure,
                detail,
            },
            store::now(),
        )
        .await
    }

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

    /// Checks a TOTP code or a recovery code inside `tx`, using it up.
    async fn use_second_factor(
        &self,
        tx: &mut Tx,
        row: &UserRow,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if digits.len() == 6 && digits.chars().all(|c| c.is_ascii_digit()) {
            let Some(secret) = row.totp_secret.as_deref() else {
                return Ok(false);
            };
            let secret = TotpSecret::from_base32(secret).map_err(Error::internal)?;
            let last = row.totp_last_step.and_then(|step| u64::try_from(step).ok());
            return match secret.verify(&digits, unix_now(), last) {
                Some(step) => {
                    store::use_totp_step(tx, &row.id, i64::try_from(step).unwrap_or(i64::MAX)).await
                }
                None => Ok(false),
            };
        }
        let hash = totp::hash_recovery_code(code);
        store::use_recovery_code(tx, &row.id, &hash, now).await
    }

    async fn fetch_user(&self, id: &str) -> Result<UserRow> {
        refuse_nul("id", id)?;
        store::user_by_id(&self.db, id)
            .await?
            .ok_or(Error::NotFound { what: "user" })
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
            tx.commit().await?;
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
        tx.commit().await
    }

    // --- authentication of requests -----------------------------------------

    /// Who presents `credential` (a bearer token, an API key, or a provider's
    /// token), or `None` when it is refused: bad signature, wrong algorithm,
    /// expired, not yet valid, wrong issuer or audience, unknown key,
    /// revoked session or key, disabled or deleted account.
    ///
    /// # Errors
    ///
    /// Only for failures that are not the credential's fault (the database
    /// or a provider cannot be reached).
    pub async fn authenticate(&self, credential: &str) -> Result<Option<Principal>> {
        let credential = credential.trim();
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
            Ok(Some(identity)) => self.authenticate_provider_identity(identity).await,
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

    async fn authenticate_access_token(&self, token: &str) -> Result<Option<Principal>> {
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
        Ok(Some(self.principal(
            claims.sub,
            role,
            holder.totp_enabled,
            Credential::AccessToken {
                session_id: claims.sid,
            },
            None,
        )))
    }

    async fn authenticate_api_key(&self, key: &str) -> Result<Option<Principal>> {
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
        Ok(Some(self.principal(
            holder.user_id,
            role,
            holder.totp_enabled,
            Credential::ApiKey { key_id: holder.id },
            (!permissions.is_empty()).then_some(permissions),
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

    // --- the caller's account -----------------------------------------------

    /// The caller's account.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if it was deleted meanwhile.
    pub async fn current_user(&self, caller: &Principal) -> Result<User> {
        let row = self.fetch_user(&caller.user_id).await?;
        self.user_with_links(row).await
    }

    /// Changes the caller's password and ends their other sessions.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming `current_password` when it is wrong
    /// or `new_password` when the policy refuses it;
    /// [`Error::FailedPrecondition`] for an account that signs in only
    /// through an identity provider; [`Error::ResourceExhausted`] after too
    /// many attempts; [`Error::PermissionDenied`] for an API key.
    pub async fn change_password(
        &self,
        context: &RequestContext,
        caller: &Principal,
        current: &str,
        new: &str,
    ) -> Result<()> {
        refuse_api_keys(caller)?;
        self.throttle
            .attempt(&format!("user:{}", caller.user_id), &context.client_address)
            .await?;
        let row = self.fetch_user(&caller.user_id).await?;
        let Some(stored) = row.password_hash.clone() else {
            return Err(Error::FailedPrecondition(
                "this account signs in through an identity provider and has no password".to_owned(),
            ));
        };
        let current_owned = current.to_owned();
        let verdict = self
            .password_work(move || password::verify_password(&current_owned, &stored))
            .await?
            .map_err(Error::internal)?;
        if !matches!(verdict, Verified::Match { .. }) {
            self.audit_failure(
                context,
                &row.id,
                "auth.password_change",
                &format!("user:{}", row.id),
                "wrong current password",
            )
            .await?;
            return Err(Error::invalid_argument(
                "current_password",
                "is not the account's password",
            ));
        }
        self.policy
            .check(new, &row.email)
            .map_err(|violation| Error::invalid_argument("new_password", violation.to_string()))?;
        let hash = self.hash(new).await?;
        let now = store::now();
        let mut tx = self.db.begin().await?;
        store::set_password_hash(&mut tx, &row.id, &hash).await?;
        let ended = store::revoke_other_sessions(
            &mut tx,
            &row.id,
            caller.session_id(),
            "password changed",
            now,
        )
        .await?;
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: &row.id,
                action: "auth.password_change",
                target: &format!("user:{}", row.id),
                outcome: AuditOutcome::Success,
                detail: &format!("{ended} other sessions ended"),
            },
            now,
        )
        .await?;
        tx.commit().await
    }

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
        tx.commit().await
    }

    // --- second factor ------------------------------------------------------

    /// Starts enrolling a TOTP second factor: stores a new secret, not yet
    /// in force.
    ///
    /// # Errors
    ///
    /// [`Error::FailedPrecondition`] if the caller has one in force already;
    /// [`Error::PermissionDenied`] for an API key.
    pub async fn enroll_totp(&self, caller: &Principal) -> Result<TotpEnrollment> {
        refuse_api_keys(caller)?;
        let row = self.fetch_user(&caller.user_id).await?;
        if row.totp_enabled {
            return Err(Error::FailedPrecondition(
                "a second factor is in force already; remove it first".to_owned(),
            ));
        }
        let secret = TotpSecret::generate();
        let now = store::now();
        let mut tx = self.db.begin().await?;
        store::set_totp(
            &mut tx,
            &row.id,
            Some(&secret.to_base32()),
            false,
            None,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(TotpEnrollment {
            otpauth_uri: secret.otpauth_uri(&self.config.issuer, &row.email),
            secret: secret.to_base32(),
        })
    }

    /// Puts the enrolled second factor in force with a current code and
    /// returns fresh recovery codes.
    ///
    /// # Errors
    ///
    /// [`Error::FailedPrecondition`] without an enrolment;
    /// [`Error::InvalidArgument`] for a wrong code; [`Error::ResourceExhausted`]
    /// after too many attempts; [`Error::PermissionDenied`] for an API key.
    pub async fn confirm_totp(
        &self,
        context: &RequestContext,
        caller: &Principal,
        code: &str,
    ) -> Result<Vec<String>> {
        refuse_api_keys(caller)?;
        self.throttle
            .attempt(&format!("user:{}", caller.user_id), &context.client_address)
            .await?;
        let row = self.fetch_user(&caller.user_id).await?;
        let Some(secret) = row.totp_secret.as_deref().filter(|_| !row.totp_enabled) else {
            return Err(Error::FailedPrecondition(
                "call EnrollTotp first".to_owned(),
            ));
        };
        let secret = TotpSecret::from_base32(secret).map_err(Error::internal)?;
        let Some(step) = secret.verify(code.trim(), unix_now(), None) else {
            return Err(Error::invalid_argument(
                "code",
                "does not match the authenticator; check its clock",
            ));
        };
        let codes = totp::generate_recovery_codes(RECOVERY_CODES);
        let hashes: Vec<String> = codes
            .iter()
            .map(|code| totp::hash_recovery_code(code))
            .collect();
        let now = store::now();
        let mut tx = self.db.begin().await?;
        store::set_totp(
            &mut tx,
            &row.id,
            Some(&secret.to_base32()),
            true,
            i64::try_from(step).ok(),
            now,
        )
        .await?;
        store::replace_recovery_codes(&mut tx, &row.id, &hashes).await?;
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: &row.id,
                action: "totp.enable",
                target: &format!("user:{}", row.id),
                outcome: AuditOutcome::Success,
                detail: "",
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(codes)
    }

    /// Removes the caller's second factor, given a current code or a
    /// recovery code.
    ///
    /// # Errors
    ///
    /// [`Error::FailedPrecondition`] without one in force;
    /// [`Error::InvalidArgument`] for a wrong code; [`Error::PermissionDenied`]
    /// for an API key.
    pub async fn remove_totp(
        &self,
        context: &RequestContext,
        caller: &Principal,
        code: &str,
    ) -> Result<()> {
        refuse_api_keys(caller)?;
        self.throttle
            .attempt(&format!("user:{}", caller.user_id), &context.client_address)
            .await?;
        let row = self.fetch_user(&caller.user_id).await?;
        if !row.totp_enabled {
            return Err(Error::FailedPrecondition(
                "no second factor is in force".to_owned(),
            ));
        }
        let now = store::now();
        let mut tx = self.db.begin().await?;
        if !self.use_second_factor(&mut tx, &row, code, now).await? {
            return Err(Error::invalid_argument(
                "code",
                "is not a current code or an unused recovery code",
            ));
        }
        store::set_totp(&mut tx, &row.id, None, false, None, now).await?;
        store::replace_recovery_codes(&mut tx, &row.id, &[]).await?;
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: &row.id,
                action: "totp.disable",
                target: &format!("user:{}", row.id),
                outcome: AuditOutcome::Success,
                detail: "",
            },
            now,
        )
        .await?;
        tx.commit().await
    }

    // --- OpenID Connect -----------------------------------------------------

    /// The configured OpenID Connect providers.
    pub fn identity_providers(&self) -> Vec<IdentityProvider> {
        self.oidc
            .configs()
            .iter()
            .map(|config| IdentityProvider {
                id: config.id.clone(),
                display_name: if config.display_name.is_empty() {
                    config.id.clone()
                } else {
                    config.display_name.clone()
                },
                issuer: config.issuer.clone(),
            })
            .collect()
    }

    /// Starts a sign-in with `provider`; the browser comes back to
    /// `redirect_uri`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an unknown provider; [`Error::Unavailable`]
    /// when it cannot be reached.
    pub async fn start_oidc_login(
        &self,
        context: &RequestContext,
        provider: &str,
        redirect_uri: &str,
    ) -> Result<OidcStart> {
        // Each start stores a row for ten minutes: not without limit.
        self.throttle
            .attempt(
                &format!("oidc-start:{}", context.client_address),
                &context.client_address,
            )
            .await?;
        let (pending, url) = self
            .oidc
            .start_login(provider, redirect_uri)
            .await
            .map_err(oidc_error)?;
        let now = store::now();
        store::purge_oidc_logins(
            &self.db,
            now - chrono::Duration::from_std(OIDC_LOGIN_TTL).unwrap_or_default(),
        )
        .await?;
        store::insert_oidc_login(
            &self.db,
            &OidcLoginRow {
                state: pending.state.clone(),
                provider: pending.provider,
                nonce: pending.nonce,
                pkce_verifier: pending.pkce_verifier,
                redirect_uri: pending.redirect_uri,
                created_at: micros(now),
            },
        )
        .await?;
        Ok(OidcStart {
            authorization_url: url,
            state: pending.state,
        })
    }

    /// Completes a sign-in with the provider's `code` and `state`; a first
    /// sign-in creates the account, linked by (issuer, subject).
    ///
    /// # Errors
    ///
    /// [`Error::Unauthenticated`] for an unknown, expired or reused state, or
    /// an answer from the provider that does not verify.
    pub async fn complete_oidc_login(
        &self,
        context: &RequestContext,
        provider: &str,
        state: &str,
        code: &str,
    ) -> Result<AuthTokens> {
        refuse_nul("state", state)?;
        refuse_nul("provider", provider)?;
        let expired_before =
            micros(store::now() - chrono::Duration::from_std(OIDC_LOGIN_TTL).unwrap_or_default());
        let pending = match store::take_oidc_login(&self.db, state).await? {
            Some(row) if row.provider == provider && row.created_at >= expired_before => row,
            _ => {
                return Err(Error::Unauthenticated(
                    "this sign-in is unknown or expired; start again".to_owned(),
                ));
            }
        };
        let pending = PendingLogin {
            provider: pending.provider,
            state: pending.state,
            nonce: pending.nonce,
            pkce_verifier: pending.pkce_verifier,
            redirect_uri: pending.redirect_uri,
        };
        let identity = match self.oidc.complete_login(&pending, code).await {
            Ok(identity) => identity,
            Err(error) => {
                self.audit_failure(
                    context,
                    "",
                    "auth.oidc_login",
                    &format!("provider:{provider}"),
                    &error.to_string(),
                )
                .await?;
                return Err(oidc_error(error));
            }
        };
        let row = self.provision(context, &identity).await?;
        if row.disabled {
            self.audit_failure(
                context,
                &row.id,
                "auth.oidc_login",
                &format!("provider:{provider}"),
                "account disabled",
            )
            .await?;
            return Err(Error::Unauthenticated(
                "this account is disabled".to_owned(),
            ));
        }
        let now = store::now();
        self.keys.reload_if_stale().await;
        let mut tx = self.db.begin().await?;
        let (session_id, access, refresh) = self.open_session(&mut tx, &row.id, now).await?;
        store::record_login(&mut tx, &row.id, now).await?;
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: &row.id,
                action: "auth.oidc_login",
                target: &format!("provider:{provider}"),
                outcome: AuditOutcome::Success,
                detail: &format!("subject {}; session {session_id}", identity.subject),
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

    /// The account linked to a provider identity: found by (issuer,
    /// subject), else linked to a password-less account with the same
    /// email the provider verified, else created. When the provider maps
    /// roles (`role_claim`), its claims decide the account's role on every
    /// sign-in: the highest mapped role, or `user` when none maps, so a
    /// person removed from a group at the provider loses the role here too.
    async fn provision(
        &self,
        context: &RequestContext,
        identity: &ExternalIdentity,
    ) -> Result<UserRow> {
        let maps_roles = self
            .config
            .oidc_providers
            .iter()
            .any(|p| p.id == identity.provider && p.role_claim.is_some());
        let mapped_role = identity
            .roles
            .iter()
            .filter_map(|role| role.parse::<Role>().ok())
            .max()
            .or(maps_roles.then_some(Role::User));
        if let Some(row) =
            store::user_by_identity(&self.db, &identity.issuer, &identity.subject).await?
        {
            if let Some(role) = mapped_role.filter(|role| Some(*role) != row.role().ok()) {
                let now = store::now();
                let mut tx = self.db.begin().await?;
                store::update_user(&mut tx, &row.id, None, Some(role), None, now).await?;
                audit::append(
                    &mut tx,
                    context,
                    AuditRecord {
                        actor: &row.id,
                        action: "user.role_change",
                        target: &format!("user:{}", row.id),
                        outcome: AuditOutcome::Success,
                        detail: &format!(
                            "role {} -> {role} from provider {}",
                            row.role, identity.provider
                        ),
                    },
                    now,
                )
                .await?;
                tx.commit().await?;
                return self.fetch_user(&row.id).await;
            }
            return Ok(row);
        }
        let email = identity
            .email
            .as_deref()
            .and_then(|email| normalise_email("email", email).ok())
            .unwrap_or_else(|| format!("{}@{}.invalid", identity.subject, identity.provider));
        let now = store::now();
        if let Some(existing) = store::user_by_email(&self.db, &email).await? {
            // Linking by email is only safe when neither side could have
            // claimed the address: the provider verified it, and the account
            // has no password (anyone may register any email with one).
            // And only for the very address: the normalised form merges
            // variants (`straße` and `strasse`, `ı` and `i`) to refuse
            // look-alike registrations, which is no proof that two
            // providers' addresses are one mailbox.
            let plain = identity
                .email
                .as_deref()
                .map(|email| email.trim().to_lowercase());
            if !identity.email_verified
                || existing.password_hash.is_some()
                || plain.as_deref() != Some(existing.email.as_str())
            {
                return Err(Error::FailedPrecondition(
                    "an account with this email exists already; sign in with its password (linking it to this provider needs an administrator)".to_owned(),
                ));
            }
            let mut tx = self.db.begin().await?;
            store::link_identity(
                &mut tx,
                &identity.issuer,
                &identity.subject,
                &identity.provider,
                &existing.id,
                now,
            )
            .await?;
            audit::append(
                &mut tx,
                context,
                AuditRecord {
                    actor: &existing.id,
                    action: "user.link_identity",
                    target: &format!("user:{}", existing.id),
                    outcome: AuditOutcome::Success,
                    detail: &format!(
                        "provider {} subject {}",
                        identity.provider, identity.subject
                    ),
                },
                now,
            )
            .await?;
            tx.commit().await?;
            return Ok(existing);
        }
        let id = uuid::Uuid::now_v7().to_string();
        let role = mapped_role.unwrap_or(Role::User);
        let mut tx = self.db.begin().await?;
        store::insert_user(
            &mut tx,
            &NewUser {
                id: &id,
                email: &email,
                display_name: identity.name.as_deref().unwrap_or_default(),
                role,
                password_hash: None,
            },
            now,
        )
        .await?;
        store::link_identity(
            &mut tx,
            &identity.issuer,
            &identity.subject,
            &identity.provider,
            &id,
            now,
        )
        .await?;
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: &id,
                action: "user.create",
                target: &format!("user:{id}"),
                outcome: AuditOutcome::Success,
                detail: &format!(
                    "role {role}; provisioned by provider {} subject {}",
                    identity.provider, identity.subject
                ),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        self.fetch_user(&id).await
    }

    // --- administration -----------------------------------------------------

    /// Every account, oldest first, a page at a time. Audited as
    /// `user.list`: it is an administrator reading other people's accounts.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad page token.
    pub async fn list_users(
        &self,
        context: &RequestContext,
        caller: &Principal,
        page_size: u32,
        page_token: &str,
    ) -> Result<UserPage> {
        let limit = paging::page_size(page_size, DEFAULT_USER_PAGE_SIZE);
        let after = paging::decode(Listing::Users, page_token)?;
        let mut rows = store::list_users(&self.db, after.as_ref(), limit + 1).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => paging::encode(
                Listing::Users,
                &Cursor {
                    created_at: last.created_at,
                    id: last.id.clone(),
                },
            ),
            _ => String::new(),
        };
        audit::append_alone(
            &self.db,
            context,
            AuditRecord {
                actor: &caller.user_id,
                action: "user.list",
                target: "users",
                outcome: AuditOutcome::Success,
                detail: &format!("{} accounts listed", rows.len()),
            },
            store::now(),
        )
        .await?;
        let ids: Vec<String> = rows.iter().map(|row| row.id.clone()).collect();
        let mut links = store::providers_of_users(&self.db, &ids).await?;
        let users = rows
            .into_iter()
            .map(|row| {
                let providers = links.remove(&row.id).unwrap_or_default();
                user_from(row, providers)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(UserPage {
            users,
            next_page_token,
        })
    }

    /// One account. An administrator reading another user's account is
    /// audited.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no such account.
    pub async fn get_user(
        &self,
        context: &RequestContext,
        caller: &Principal,
        id: &str,
    ) -> Result<User> {
        let row = self.fetch_user(id).await?;
        if caller.user_id != id {
            audit::append_alone(
                &self.db,
                context,
                AuditRecord {
                    actor: &caller.user_id,
                    action: "user.read",
                    target: &format!("user:{id}"),
                    outcome: AuditOutcome::Success,
                    detail: "administrator read another user's account",
                },
                store::now(),
            )
            .await?;
        }
        self.user_with_links(row).await
    }

    /// Changes an account. Administrators cannot demote or disable
    /// themselves (so the last one cannot lock everyone out). Disabling an
    /// account revokes every session it has, with their refresh tokens and
    /// access tokens, so enabling it again brings none of them back.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no such account;
    /// [`Error::FailedPrecondition`] for a change to oneself that would
    /// lose administration.
    pub async fn update_user(
        &self,
        context: &RequestContext,
        caller: &Principal,
        id: &str,
        patch: UserPatch,
    ) -> Result<User> {
        let before = self.fetch_user(id).await?;
        let old_role = before.role()?;
        if caller.user_id == id
            && (patch.disabled == Some(true)
                || patch
                    .role
                    .is_some_and(|role| role != Role::Admin && old_role == Role::Admin))
        {
            return Err(Error::FailedPrecondition(
                "you cannot demote or disable yourself; ask another administrator".to_owned(),
            ));
        }
        let mut changes = Vec::new();
        if let Some(role) = patch.role.filter(|role| *role != old_role) {
            changes.push(format!("role {old_role} -> {role}"));
        }
        if let Some(disabled) = patch.disabled.filter(|d| *d != before.disabled) {
            changes.push(format!("disabled {} -> {disabled}", before.disabled));
        }
        if let Some(name) = patch
            .display_name
            .as_deref()
            .filter(|name| *name != before.display_name)
        {
            changes.push(format!("display name -> {name:?}"));
        }
        let now = store::now();
        let mut tx = self.db.begin().await?;
        if !store::update_user(
            &mut tx,
            id,
            patch.display_name.as_deref(),
            patch.role,
            patch.disabled,
            now,
        )
        .await?
        {
            return Err(Error::NotFound { what: "user" });
        }
        if patch.disabled == Some(true) {
            // Even when it was disabled already: a session opened in a race
            // with an earlier disable ends here too.
            let ended =
                store::revoke_other_sessions(&mut tx, id, None, "account disabled", now).await?;
            if ended > 0 {
                changes.push(format!("{ended} sessions ended"));
            }
        }
        if !changes.is_empty() {
            let action = if patch.role.is_some_and(|role| role != old_role) {
                "user.role_change"
            } else if patch.disabled.is_some_and(|d| d != before.disabled) {
                if patch.disabled == Some(true) {
                    "user.disable"
                } else {
                    "user.enable"
                }
            } else {
                "user.update"
            };
            audit::append(
                &mut tx,
                context,
                AuditRecord {
                    actor: &caller.user_id,
                    action,
                    target: &format!("user:{id}"),
                    outcome: AuditOutcome::Success,
                    detail: &changes.join("; "),
                },
                now,
            )
            .await?;
            // After the audit append, which serialises these transactions
            // on the audit head: two admins demoting each other at once
            // cannot both see the other one still in office.
            if old_role == Role::Admin && !before.disabled {
                self.keep_an_admin(&mut tx).await?;
            }
        }
        tx.commit().await?;
        self.user_with_links(self.fetch_user(id).await?).await
    }

    /// Removes another account's second factor (in force or being
    /// enrolled) and recovery codes, and ends its sessions (whoever enrolled the factor may hold one). Audited as
    /// `totp.reset`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no such account;
    /// [`Error::FailedPrecondition`] for one's own account (RemoveTotp does
    /// that, with a code); [`Error::PermissionDenied`] for an API key. An
    /// account without a second factor is no error: the reset is done.
    pub async fn reset_user_second_factor(
        &self,
        context: &RequestContext,
        caller: &Principal,
        id: &str,
    ) -> Result<User> {
        refuse_api_keys(caller)?;
        if caller.user_id == id {
            return Err(Error::FailedPrecondition(
                "you cannot reset your own second factor; remove it with RemoveTotp and a code, or ask another administrator".to_owned(),
            ));
        }
        let row = self.fetch_user(id).await?;
        let now = store::now();
        let mut tx = self.db.begin().await?;
        store::set_totp(&mut tx, id, None, false, None, now).await?;
        store::replace_recovery_codes(&mut tx, id, &[]).await?;
        let ended =
            store::revoke_other_sessions(&mut tx, id, None, "second factor reset", now).await?;
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: &caller.user_id,
                action: "totp.reset",
                target: &format!("user:{id}"),
                outcome: AuditOutcome::Success,
                detail: &format!(
                    "{} by an administrator; {ended} sessions ended",
                    match (row.totp_enabled, row.totp_secret.is_some()) {
                        (true, _) => "second factor in force removed",
                        (false, true) => "second factor being enrolled removed",
                        (false, false) => "no second factor to remove; reset",
                    }
                ),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        self.user_with_links(self.fetch_user(id).await?).await
    }

    /// Refuses a change that leaves no enabled administrator.
    async fn keep_an_admin(&self, tx: &mut Tx) -> Result<()> {
        if store::enabled_admins(tx).await? == 0 {
            return Err(Error::FailedPrecondition(
                "this would leave no enabled administrator".to_owned(),
            ));
        }
        Ok(())
    }

    /// Deletes an account with its conversations, sessions and keys.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no such account;
    /// [`Error::FailedPrecondition`] for deleting oneself.
    pub async fn delete_user(
        &self,
        context: &RequestContext,
        caller: &Principal,
        id: &str,
    ) -> Result<()> {
        if caller.user_id == id {
            return Err(Error::FailedPrecondition(
                "you cannot delete yourself; ask another administrator".to_owned(),
            ));
        }
        let now = store::now();
        let mut tx = self.db.begin().await?;
        let Some(row) = store::user_by_id_in(&mut tx, id).await? else {
            return Err(Error::NotFound { what: "user" });
        };
        store::delete_user(&mut tx, id).await?;
        audit::append(
            &mut tx,
            context,
            AuditRecord {
                actor: &caller.user_id,
                action: "user.delete",
                target: &format!("user:{id}"),
                outcome: AuditOutcome::Success,
                detail: &format!("email {}", row.email),
            },
            now,
        )
        .await?;
        if row.role == Role::Admin.as_str() && !row.disabled {
            self.keep_an_admin(&mut tx).await?;
        }
        tx.commit().await
    }

    /// Audit events, newest first.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad page token.
    pub async fn list_audit_events(
        &self,
        filter: &AuditFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<AuditEvent>, String)> {
        let limit = paging::page_size(page_size, DEFAULT_AUDIT_PAGE_SIZE);
        audit::list(&self.db, filter, page_token, limit).await
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
        store::purge_expired_sessions(&self.db, now).await
    }
}
