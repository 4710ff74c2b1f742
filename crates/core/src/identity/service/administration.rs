//! User administration: listing, reading, changing and deleting other
//! people's accounts ([`UserPage`], [`UserPatch`]), resetting their second
//! factor, never leaving no administrator, and reading the audit trail.

use crate::db::Tx;
use crate::error::{Error, Result};
use crate::identity::audit::{self, AuditEvent, AuditFilter, AuditOutcome, AuditRecord};
use crate::identity::store;
use crate::identity::{Principal, RequestContext, Role};
use crate::paging::{self, Cursor, Listing};

use super::accounts::{User, user_from};
use super::{Identity, refuse_api_keys};

/// Users per page when a listing asks for 0.
pub const DEFAULT_USER_PAGE_SIZE: u32 = 50;

/// Audit events per page when a listing asks for 0.
pub const DEFAULT_AUDIT_PAGE_SIZE: u32 = 100;

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

impl Identity {
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
        self.commit_account_change(tx, id).await?;
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
        self.commit_account_change(tx, id).await?;
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
        self.commit_account_change(tx, id).await
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
}
