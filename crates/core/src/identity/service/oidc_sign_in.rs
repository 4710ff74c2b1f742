//! Sign-in through OpenID Connect providers: the providers on offer
//! ([`IdentityProvider`]), starting a sign-in ([`OidcStart`]), completing
//! it, and the account a provider identity is linked to or provisions.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::identity::audit::{self, AuditOutcome, AuditRecord};
use crate::identity::email::normalise_email;
use crate::identity::oidc::{ExternalIdentity, OidcError, PendingLogin};
use crate::identity::store::{self, NewUser, OidcLoginRow, UserRow, micros};
use crate::identity::{RequestContext, Role};

use super::sessions::AuthTokens;
use super::{Identity, refuse_nul};

/// How long an OpenID Connect sign-in may take from start to completion.
pub(super) const OIDC_LOGIN_TTL: Duration = Duration::from_secs(600);

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

impl Identity {
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
    pub(super) async fn provision(
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
}
