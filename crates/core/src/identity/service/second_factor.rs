//! The TOTP second factor: enrolling it ([`TotpEnrollment`]), putting it in
//! force with recovery codes, removing it, and using up a code at sign-in.

use chrono::{DateTime, Utc};

use crate::db::Tx;
use crate::error::{Error, Result};
use crate::identity::audit::{self, AuditOutcome, AuditRecord};
use crate::identity::store::{self, UserRow};
use crate::identity::totp::{self, TotpSecret};
use crate::identity::{Principal, RequestContext};

use super::{Identity, refuse_api_keys};

/// How many recovery codes a second factor comes with.
const RECOVERY_CODES: usize = 10;

/// A second factor being enrolled. Its `Debug` leaves out the secret.
#[derive(Clone)]
pub struct TotpEnrollment {
    /// The shared secret, base32.
    pub secret: String,
    /// The `otpauth://` URI.
    pub otpauth_uri: String,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrollment").finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap_or_default()
}

impl Identity {
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
        self.commit_account_change(tx, &row.id).await?;
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
        self.commit_account_change(tx, &row.id).await
    }

    /// Checks a TOTP code or a recovery code inside `tx`, using it up.
    pub(super) async fn use_second_factor(
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
}
