//! [`Identity`]: accounts and everything that proves who a caller is —
//! registration, password sign-in with an optional second factor, sessions
//! with rotating refresh tokens, API keys, OpenID Connect sign-in and
//! provider tokens, user administration, and the audit trail of all of it.
//!
//! Every change that is audited commits in the same transaction as its
//! audit event. Slow work (password hashing, provider calls) happens before
//! a transaction begins, never inside one.
//!
//! This file holds the struct, its construction ([`Identity::start`]) and
//! the helpers every part shares; each part of its `impl` lives in a file
//! of its own:
//!
//! * [`accounts`] — registration, accounts made on the command line, the
//!   caller's own account and password;
//! * [`sessions`] — password sign-in and the sessions it opens, refresh,
//!   sign-out, purging what expired;
//! * [`authentication`] — who presents a credential, for every request;
//! * [`api_keys`] — the caller's API keys;
//! * [`second_factor`] — TOTP enrolment, removal and its codes at sign-in;
//! * [`oidc_sign_in`] — sign-in through OpenID Connect providers and the
//!   accounts it provisions;
//! * [`administration`] — other people's accounts, and the audit trail.

mod accounts;
mod administration;
mod api_keys;
mod authentication;
mod oidc_sign_in;
mod second_factor;
mod sessions;

use std::sync::Arc;
use std::time::Duration;

use openidconnect::reqwest;
use sha2::{Digest, Sha256};

use crate::cache::{Caches, Invalidation};
use crate::config::AuthConfig;
use crate::db::{Database, Tx};
use crate::error::{Error, Result};
use crate::identity::audit::{self, AuditOutcome, AuditRecord};
use crate::identity::email::normalise_email;
use crate::identity::jwt::KeyAlgorithm;
use crate::identity::oidc::OidcProviders;
use crate::identity::password::{self, PasswordPolicy};
use crate::identity::store::{self, UserRow};
use crate::identity::{
    Credential, KeyRing, LoginLimits, LoginThrottle, Principal, RequestContext, SharedRateCounters,
};

use accounts::user_from;

pub use accounts::User;
pub use administration::{DEFAULT_AUDIT_PAGE_SIZE, DEFAULT_USER_PAGE_SIZE, UserPage, UserPatch};
pub use api_keys::{ApiKey, ApiKeyCreated, NewApiKey};
pub use oidc_sign_in::{IdentityProvider, OidcStart};
pub use second_factor::TotpEnrollment;
pub use sessions::AuthTokens;

/// The identity domain.
#[derive(Debug)]
pub struct Identity {
    db: Database,
    keys: KeyRing,
    throttle: LoginThrottle,
    oidc: OidcProviders,
    policy: PasswordPolicy,
    config: AuthConfig,
    /// Who presents each credential, believed for a moment
    /// ([`crate::cache`]); every change of an account invalidates it.
    caches: Arc<Caches>,
}

/// The SHA-256 of `text`, lower-case hex: how refresh tokens and API keys
/// are stored.
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

impl Identity {
    /// Counts sign-in attempts in `counters`, shared with every instance,
    /// instead of in this process only.
    pub fn share_login_throttle(&mut self, counters: Arc<dyn SharedRateCounters>) {
        self.throttle.share_through(counters);
    }

    /// Keeps who presents a credential in `caches` (shared with the chat
    /// service and, through their bus, invalidated by every instance)
    /// instead of caches of its own.
    pub fn use_caches(&mut self, caches: Arc<Caches>) {
        self.caches = caches;
    }

    /// The caches [`Identity::authenticate`] answers from.
    pub fn caches(&self) -> &Arc<Caches> {
        &self.caches
    }

    /// Commits a change of `user_id`'s sessions, keys, role, state or
    /// second factor, then forgets what the caches hold about the account,
    /// here and on every other instance, before the caller answers. Also
    /// when the COMMIT failed: a failed COMMIT may still have been written.
    async fn commit_account_change(&self, tx: Tx, user_id: &str) -> Result<()> {
        let committed = tx.commit().await;
        self.caches.invalidate(Invalidation::Account {
            user_id: user_id.to_owned(),
        });
        committed
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
            caches: Arc::new(Caches::new()),
            db,
        })
    }

    /// The signing keys.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The account of `row` with the providers it is linked to.
    async fn user_with_links(&self, row: UserRow) -> Result<User> {
        let providers = store::providers_of(&self.db, &row.id).await?;
        user_from(row, providers)
    }

    /// The stored account `id`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no such account.
    async fn fetch_user(&self, id: &str) -> Result<UserRow> {
        refuse_nul("id", id)?;
        store::user_by_id(&self.db, id)
            .await?
            .ok_or(Error::NotFound { what: "user" })
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

    /// Refuses a password the policy does not allow, naming `password`.
    fn check_password_policy(&self, password: &str, email: &str) -> Result<()> {
        self.policy
            .check(password, email)
            .map_err(|violation| Error::invalid_argument("password", violation.to_string()))
    }

    /// Records a refused attempt in the audit trail, in a transaction of its
    /// own.
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
}
