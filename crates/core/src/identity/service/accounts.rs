//! Accounts: [`User`] as callers see it, self-registration, accounts made on
//! the command line, and the caller's own account and password.

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::identity::audit::{self, AuditOutcome, AuditRecord};
use crate::identity::email::normalise_email;
use crate::identity::password::{self, Verified};
use crate::identity::store::{self, NewUser, UserRow, from_micros};
use crate::identity::{Principal, RequestContext, Role};

use super::sessions::AuthTokens;
use super::{Identity, refuse_api_keys, refuse_nul};

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

pub(super) fn user_from(row: UserRow, identity_providers: Vec<String>) -> Result<User> {
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

impl Identity {
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
        self.commit_account_change(tx, &row.id).await
    }
}
