//! Who is calling, and what they may do.
//!
//! The edge authenticates each request ([`Identity::authenticate`]) and puts
//! the resulting [`Principal`] in its extensions; the generated service
//! guards check the method's permission against it, and services scope every
//! query to [`Principal::user_id`].
//!
//! * [`Role`] and the permissions each role holds ([`Role::permissions`]);
//!   every permission the protos name is in [`ALL_PERMISSIONS`].
//! * [`Identity`] — accounts, sign-in, tokens, API keys, second factor,
//!   OpenID Connect, user administration and the audit trail.
//! * [`password`], [`totp`], [`jwt`], [`oidc`] — the cryptographic pieces.

pub mod audit;
pub mod email;
pub mod jwt;
mod keys;
pub mod oidc;
pub mod password;
mod service;
mod store;
mod throttle;
pub mod totp;

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

pub use audit::{AuditEvent, AuditFilter, AuditOutcome, ChainReport};
pub use email::normalise_email;
pub use keys::KeyRing;
pub use service::{
    ApiKey, ApiKeyCreated, AuthTokens, DEFAULT_AUDIT_PAGE_SIZE, DEFAULT_USER_PAGE_SIZE, Identity,
    IdentityProvider, NewApiKey, OidcStart, TotpEnrollment, User, UserPage, UserPatch,
};
pub use throttle::{LoginLimits, LoginThrottle, SharedRateCounters};

/// Reading one's own conversations and messages.
pub const CONVERSATIONS_READ: &str = "conversations.read";
/// Creating, changing and deleting one's own conversations; sending messages.
pub const CONVERSATIONS_WRITE: &str = "conversations.write";
/// Reading one's own account and API keys.
pub const ACCOUNT_READ: &str = "account.read";
/// Changing one's own account: API keys, second factor.
pub const ACCOUNT_WRITE: &str = "account.write";
/// Reading the job queue and dead letters.
pub const JOBS_READ: &str = "jobs.read";
/// Retrying and deleting jobs and dead letters.
pub const JOBS_WRITE: &str = "jobs.write";
/// Reading usage reports.
pub const REPORTS_READ: &str = "reports.read";
/// Reading every account.
pub const USERS_READ: &str = "users.read";
/// Changing and deleting any account, and resetting its second factor.
pub const USERS_WRITE: &str = "users.write";
/// Reading the audit trail.
pub const AUDIT_READ: &str = "audit.read";

/// Every permission there is. A test checks that each permission the protos
/// declare is one of these.
pub const ALL_PERMISSIONS: &[&str] = &[
    CONVERSATIONS_READ,
    CONVERSATIONS_WRITE,
    ACCOUNT_READ,
    ACCOUNT_WRITE,
    JOBS_READ,
    JOBS_WRITE,
    REPORTS_READ,
    USERS_READ,
    USERS_WRITE,
    AUDIT_READ,
];

const USER_PERMISSIONS: &[&str] = &[
    CONVERSATIONS_READ,
    CONVERSATIONS_WRITE,
    ACCOUNT_READ,
    ACCOUNT_WRITE,
];

const OPERATOR_PERMISSIONS: &[&str] = &[
    CONVERSATIONS_READ,
    CONVERSATIONS_WRITE,
    ACCOUNT_READ,
    ACCOUNT_WRITE,
    JOBS_READ,
    JOBS_WRITE,
    REPORTS_READ,
];

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Own conversations and own API keys.
    User,
    /// A user who also runs the job queue: jobs, dead letters, reports.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// The permissions the role holds.
    pub fn permissions(self) -> &'static [&'static str] {
        match self {
            Self::User => USER_PERMISSIONS,
            Self::Operator => OPERATOR_PERMISSIONS,
            Self::Admin => ALL_PERMISSIONS,
        }
    }

    /// The role's name as stored and configured: `user`, `operator`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "user" => Ok(Self::User),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(Error::invalid_argument(
                "role",
                format!("unknown role {other:?}; expected user, operator or admin"),
            )),
        }
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// An access token this server issued, for session `session_id`.
    AccessToken {
        /// The session (refresh-token family) the token belongs to.
        session_id: String,
    },
    /// An API key.
    ApiKey {
        /// The key's id.
        key_id: String,
    },
    /// A token issued by a configured OpenID Connect provider.
    ProviderToken {
        /// The provider's id.
        provider: String,
    },
    /// Trusted in-process code (tests, the command line).
    Internal,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The caller's user id; conversations are owned by it.
    pub user_id: String,
    /// The account's role.
    pub role: Role,
    /// How the caller proved who it is.
    pub credential: Credential,
    /// The permissions the credential is restricted to (an API key created
    /// with a subset), or `None` for all of the role's.
    pub restricted_to: Option<Vec<String>>,
}

impl Principal {
    /// The user id of [`Principal::local`].
    pub const LOCAL_USER_ID: &'static str = "local";

    /// A trusted in-process user for tools and tests that call the domain
    /// directly.
    pub fn local() -> Self {
        Self::user(Self::LOCAL_USER_ID)
    }

    /// Trusted in-process user `user_id` with the `user` role.
    pub fn user(user_id: impl Into<String>) -> Self {
        Self::with_role(user_id, Role::User)
    }

    /// Trusted in-process user `user_id` with `role`.
    pub fn with_role(user_id: impl Into<String>, role: Role) -> Self {
        Self {
            user_id: user_id.into(),
            role,
            credential: Credential::Internal,
            restricted_to: None,
        }
    }

    /// Whether the caller holds `permission`.
    pub fn allows(&self, permission: &str) -> bool {
        self.role.permissions().contains(&permission)
            && self
                .restricted_to
                .as_ref()
                .is_none_or(|allowed| allowed.iter().any(|p| p == permission))
    }

    /// Whether the caller is an administrator, with no restriction.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin && self.restricted_to.is_none()
    }

    /// The session of the access token the caller used, if any.
    pub fn session_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::AccessToken { session_id } => Some(session_id),
            _ => None,
        }
    }
}

/// Where a request came from, recorded with every audit event it causes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The caller's network address (IP), or empty when unknown.
    pub client_address: String,
    /// The caller's `User-Agent`, cut to 256 characters.
    pub user_agent: String,
    /// The request's `x-request-id`.
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest() {
        for permission in Role::User.permissions() {
            assert!(Role::Operator.permissions().contains(permission));
        }
        for permission in Role::Operator.permissions() {
            assert!(Role::Admin.permissions().contains(permission));
        }
        assert!(!Role::Operator.permissions().contains(&USERS_READ));
        assert!(!Role::User.permissions().contains(&JOBS_READ));
    }

    #[test]
    fn a_restricted_credential_holds_only_what_both_allow() {
        let mut principal = Principal::with_role("u", Role::User);
        principal.restricted_to = Some(vec![CONVERSATIONS_READ.into(), USERS_READ.into()]);
        assert!(principal.allows(CONVERSATIONS_READ));
        assert!(!principal.allows(CONVERSATIONS_WRITE));
        // The restriction never adds what the role lacks.
        assert!(!principal.allows(USERS_READ));
    }
}
