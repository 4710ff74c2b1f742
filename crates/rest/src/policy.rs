//! The access rule of each RPC, declared in the proto with
//! `(switchboard.v1.access)` and gathered by the generator into one table
//! per package, and [`authorize`], the one check every transport runs: the
//! generated service guards call it before anything else, whether the call
//! came over native gRPC, gRPC-Web or REST.
//!
//! The edge authenticates a request and records the outcome as a [`Caller`]
//! in its extensions; this module only decides. A request without a
//! [`Caller`] is anonymous.

use std::fmt;
use std::sync::Arc;

/// Who may call one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodPolicy {
    /// The full gRPC method path, such as `/switchboard.v1.ChatService/GetConversation`.
    pub method: &'static str,
    /// The permission the caller must hold, if the method declares one.
    pub permission: Option<&'static str>,
    /// Anyone may call the method, signed in or not.
    pub public: bool,
}

/// What a caller may do: answers whether it holds a permission.
pub trait Grants: Send + Sync + fmt::Debug {
    /// Whether the caller holds `permission`.
    fn allows(&self, permission: &str) -> bool;
    /// Whether the caller may call methods that declare no permission
    /// (only administrators).
    fn allows_undeclared(&self) -> bool;
}

/// What the edge established about the caller of a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No credentials were presented.
    Anonymous,
    /// Credentials were presented and refused (bad signature, expired,
    /// revoked, disabled account, …). Public methods still run, as for an
    /// anonymous caller; every other method answers UNAUTHENTICATED.
    Refused,
    /// Credentials were verified; the caller holds these grants.
    Authenticated(Arc<dyn Grants>),
}

impl Caller {
    /// A caller that holds every permission, for trusted in-process callers
    /// and tests of other layers.
    pub fn trusted() -> Self {
        Self::Authenticated(Arc::new(Trusted))
    }
}

#[derive(Debug)]
struct Trusted;

impl Grants for Trusted {
    fn allows(&self, _permission: &str) -> bool {
        true
    }
    fn allows_undeclared(&self) -> bool {
        true
    }
}

/// Whether `caller` may call the method of `policy`.
///
/// # Errors
/// `UNAUTHENTICATED` when the method is not public and the caller is
/// anonymous or its credentials were refused; `PERMISSION_DENIED` when the
/// caller lacks the method's permission. Neither says more than that.
pub fn authorize(caller: Option<&Caller>, policy: &MethodPolicy) -> Result<(), tonic::Status> {
    if policy.public {
        return Ok(());
    }
    let grants = match caller {
        Some(Caller::Authenticated(grants)) => grants,
        Some(Caller::Refused) => return Err(crate::session::credentials_refused()),
        Some(Caller::Anonymous) | None => {
            return Err(tonic::Status::unauthenticated(
                "sign in: this method needs a bearer token or an API key",
            ));
        }
    };
    let allowed = match policy.permission {
        Some(permission) => grants.allows(permission),
        None => grants.allows_undeclared(),
    };
    if allowed {
        Ok(())
    } else {
        Err(tonic::Status::permission_denied(match policy.permission {
            Some(permission) => format!("this method needs the permission {permission}"),
            None => "this method is for administrators".to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Reader;

    impl Grants for Reader {
        fn allows(&self, permission: &str) -> bool {
            permission == "things.read"
        }
        fn allows_undeclared(&self) -> bool {
            false
        }
    }

    const READ: MethodPolicy = MethodPolicy {
        method: "/t.S/Read",
        permission: Some("things.read"),
        public: false,
    };
    const WRITE: MethodPolicy = MethodPolicy {
        method: "/t.S/Write",
        permission: Some("things.write"),
        public: false,
    };
    const OPEN: MethodPolicy = MethodPolicy {
        method: "/t.S/Open",
        permission: None,
        public: true,
    };
    const UNDECLARED: MethodPolicy = MethodPolicy {
        method: "/t.S/Odd",
        permission: None,
        public: false,
    };

    #[test]
    fn public_methods_admit_everybody() {
        for caller in [None, Some(Caller::Anonymous), Some(Caller::Refused)] {
            assert!(authorize(caller.as_ref(), &OPEN).is_ok());
        }
    }

    #[test]
    fn other_methods_need_verified_credentials() {
        for caller in [None, Some(Caller::Anonymous), Some(Caller::Refused)] {
            let status = authorize(caller.as_ref(), &READ).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
        }
    }

    #[test]
    fn the_permission_decides_for_signed_in_callers() {
        let reader = Caller::Authenticated(Arc::new(Reader));
        assert!(authorize(Some(&reader), &READ).is_ok());
        let denied = authorize(Some(&reader), &WRITE).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("things.write"));
        let odd = authorize(Some(&reader), &UNDECLARED).unwrap_err();
        assert_eq!(odd.code(), tonic::Code::PermissionDenied);
        assert!(authorize(Some(&Caller::trusted()), &UNDECLARED).is_ok());
    }
}
