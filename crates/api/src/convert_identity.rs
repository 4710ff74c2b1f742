//! Conversions between the identity messages of the protos and the
//! identity domain's types.

use switchboard_core::Error;
use switchboard_core::identity::{
    ApiKey, AuditEvent, AuditOutcome, AuthTokens, IdentityProvider, Role, User, UserPatch,
};
use switchboard_proto::v1 as pb;
use switchboard_proto::{FieldMask, Timestamp};

use crate::convert::IntoProto;

impl IntoProto for Role {
    type Proto = pb::UserRole;

    fn into_proto(self) -> pb::UserRole {
        match self {
            Role::User => pb::UserRole::User,
            Role::Operator => pb::UserRole::Operator,
            Role::Admin => pb::UserRole::Admin,
        }
    }
}

impl IntoProto for User {
    type Proto = pb::User;

    fn into_proto(self) -> pb::User {
        pb::User {
            id: self.id,
            email: self.email,
            display_name: self.display_name,
            role: self.role.into_proto().into(),
            disabled: self.disabled,
            totp_enabled: self.totp_enabled,
            identity_providers: self.identity_providers,
            created_at: Some(Timestamp::from(self.created_at)),
            updated_at: Some(Timestamp::from(self.updated_at)),
            last_login_at: self.last_login_at.map(Timestamp::from),
        }
    }
}

impl IntoProto for AuthTokens {
    type Proto = pb::AuthTokens;

    fn into_proto(self) -> pb::AuthTokens {
        pb::AuthTokens {
            access_token: self.access_token,
            token_type: "Bearer".to_owned(),
            expires_in: i64::try_from(self.expires_in).unwrap_or(i64::MAX),
            refresh_token: self.refresh_token,
            refresh_expires_in: i64::try_from(self.refresh_expires_in).unwrap_or(i64::MAX),
            user: Some(self.user.into_proto()),
        }
    }
}

impl IntoProto for ApiKey {
    type Proto = pb::ApiKey;

    fn into_proto(self) -> pb::ApiKey {
        pb::ApiKey {
            id: self.id,
            name: self.name,
            permissions: self.permissions,
            prefix: self.prefix,
            created_at: Some(Timestamp::from(self.created_at)),
            last_used_at: self.last_used_at.map(Timestamp::from),
            expire_time: self.expires_at.map(Timestamp::from),
        }
    }
}

impl IntoProto for IdentityProvider {
    type Proto = pb::IdentityProvider;

    fn into_proto(self) -> pb::IdentityProvider {
        pb::IdentityProvider {
            id: self.id,
            display_name: self.display_name,
            issuer: self.issuer,
        }
    }
}

impl IntoProto for AuditEvent {
    type Proto = pb::AuditEvent;

    fn into_proto(self) -> pb::AuditEvent {
        pb::AuditEvent {
            seq: self.seq,
            time: Some(Timestamp::from(self.at)),
            actor: self.actor,
            action: self.action,
            target: self.target,
            outcome: match self.outcome {
                AuditOutcome::Success => pb::AuditOutcome::Success,
                AuditOutcome::Failure => pb::AuditOutcome::Failure,
            }
            .into(),
            client_address: self.client_address,
            user_agent: self.user_agent,
            request_id: self.request_id,
            detail: self.detail,
        }
    }
}

/// The domain role of a proto role.
///
/// # Errors
///
/// [`Error::InvalidArgument`] naming `field` for an unspecified or unknown
/// role.
pub fn role_from(role: i32, field: &str) -> Result<Role, Error> {
    match pb::UserRole::try_from(role) {
        Ok(pb::UserRole::User) => Ok(Role::User),
        Ok(pb::UserRole::Operator) => Ok(Role::Operator),
        Ok(pb::UserRole::Admin) => Ok(Role::Admin),
        _ => Err(Error::invalid_argument(
            field,
            "must be USER_ROLE_USER, USER_ROLE_OPERATOR or USER_ROLE_ADMIN",
        )),
    }
}

/// The user id and the changes an UpdateUser request asks for.
/// `update_mask` names the fields to change (`role`, `disabled`,
/// `display_name`, or `*`); without one, every field set to a non-default
/// value changes.
///
/// # Errors
///
/// [`Error::InvalidArgument`] naming `user` if it is missing, `update_mask`
/// for a path that cannot change, `user.role` for an unknown role.
pub fn user_update(request: pb::UpdateUserRequest) -> Result<(String, UserPatch), Error> {
    let user = request
        .user
        .ok_or_else(|| Error::invalid_argument("user", "is required"))?;
    let paths = request
        .update_mask
        .map(|FieldMask { paths }| paths)
        .unwrap_or_default();
    let mut patch = UserPatch::default();
    if paths.is_empty() {
        if user.role != 0 {
            patch.role = Some(role_from(user.role, "user.role")?);
        }
        if user.disabled {
            patch.disabled = Some(true);
        }
        if !user.display_name.is_empty() {
            patch.display_name = Some(user.display_name);
        }
        return Ok((user.id, patch));
    }
    for path in &paths {
        match path.as_str() {
            "role" => patch.role = Some(role_from(user.role, "user.role")?),
            "disabled" => patch.disabled = Some(user.disabled),
            "display_name" => patch.display_name = Some(user.display_name.clone()),
            "*" => {
                patch.role = Some(role_from(user.role, "user.role")?);
                patch.disabled = Some(user.disabled);
                patch.display_name = Some(user.display_name.clone());
            }
            // Output-only fields are ignored in a mask (AIP-203).
            "id" | "email" | "totp_enabled" | "identity_providers" | "created_at"
            | "updated_at" | "last_login_at" => {}
            other => {
                return Err(Error::invalid_argument(
                    "update_mask",
                    format!(
                        "`{other}` cannot be updated; updatable fields: role, disabled, display_name"
                    ),
                ));
            }
        }
    }
    Ok((user.id, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_mask_selects_user_fields() {
        let request = |paths: &[&str]| pb::UpdateUserRequest {
            user: Some(pb::User {
                id: "u".into(),
                role: pb::UserRole::Admin.into(),
                disabled: false,
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
        };
        let (_, patch) = user_update(request(&["disabled"])).unwrap();
        assert_eq!((patch.role, patch.disabled), (None, Some(false)));
        let (_, patch) = user_update(request(&["role", "email"])).unwrap();
        assert_eq!(patch.role, Some(Role::Admin));
        assert!(user_update(request(&["password_hash"])).is_err());
    }

    #[test]
    fn an_unspecified_role_is_refused_when_named() {
        let request = pb::UpdateUserRequest {
            user: Some(pb::User::default()),
            update_mask: Some(FieldMask {
                paths: vec!["role".into()],
            }),
        };
        let err = user_update(request).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { field, .. } if field == "user.role"));
    }
}
