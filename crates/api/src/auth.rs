//! `switchboard.v1.AuthService` over gRPC: sign-in, sessions, the caller's
//! account, API keys, second factor and OpenID Connect, each RPC a thin
//! call into [`Identity`].

use std::sync::Arc;

use switchboard_core::identity::{Identity, NewApiKey};
use switchboard_proto::v1 as pb;
use switchboard_proto::v1::auth_service_server::AuthService;
use tonic::{Request, Response, Status};

use crate::caller::{context, optional_principal, principal};
use crate::convert::IntoProto;
use crate::status::status_from;

/// The gRPC AuthService, backed by the domain's [`Identity`].
#[derive(Debug, Clone)]
pub struct AuthApi {
    identity: Arc<Identity>,
}

impl AuthApi {
    /// The service over `identity`.
    pub fn new(identity: Arc<Identity>) -> Self {
        Self { identity }
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::AuthTokens>, Status> {
        let context = context(&request);
        let request = request.into_inner();
        let tokens = self
            .identity
            .register(
                &context,
                &request.email,
                &request.password,
                &request.display_name,
            )
            .await
            .map_err(status_from)?;
        Ok(Response::new(tokens.into_proto()))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::AuthTokens>, Status> {
        let context = context(&request);
        let request = request.into_inner();
        let tokens = self
            .identity
            .login(
                &context,
                &request.email,
                &request.password,
                &request.totp_code,
            )
            .await
            .map_err(status_from)?;
        Ok(Response::new(tokens.into_proto()))
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::AuthTokens>, Status> {
        let context = context(&request);
        let tokens = self
            .identity
            .refresh(&context, &request.into_inner().refresh_token)
            .await
            .map_err(status_from)?;
        Ok(Response::new(tokens.into_proto()))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let context = context(&request);
        let caller = optional_principal(&request);
        self.identity
            .logout(
                &context,
                caller.as_ref(),
                &request.into_inner().refresh_token,
            )
            .await
            .map_err(status_from)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn get_current_user(
        &self,
        request: Request<pb::GetCurrentUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = principal(&request)?;
        let user = self
            .identity
            .current_user(&caller)
            .await
            .map_err(status_from)?;
        Ok(Response::new(user.into_proto()))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let caller = principal(&request)?;
        let context = context(&request);
        let request = request.into_inner();
        self.identity
            .change_password(
                &context,
                &caller,
                &request.current_password,
                &request.new_password,
            )
            .await
            .map_err(status_from)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = principal(&request)?;
        let context = context(&request);
        let key = request.into_inner().api_key.unwrap_or_default();
        let expires_at = match key.expire_time {
            Some(time) => Some(time.to_datetime().ok_or_else(|| {
                status_from(switchboard_core::Error::invalid_argument(
                    "api_key.expire_time",
                    "is out of range",
                ))
            })?),
            None => None,
        };
        let created = self
            .identity
            .create_api_key(
                &context,
                &caller,
                NewApiKey {
                    name: key.name,
                    permissions: key.permissions,
                    expires_at,
                },
            )
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(created.key.into_proto()),
            secret: created.secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = principal(&request)?;
        let keys = self
            .identity
            .list_api_keys(&caller)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.into_iter().map(IntoProto::into_proto).collect(),
        }))
    }

    async fn delete_api_key(
        &self,
        request: Request<pb::DeleteApiKeyRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let caller = principal(&request)?;
        let context = context(&request);
        self.identity
            .delete_api_key(&context, &caller, &request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn list_identity_providers(
        &self,
        _request: Request<pb::ListIdentityProvidersRequest>,
    ) -> Result<Response<pb::ListIdentityProvidersResponse>, Status> {
        Ok(Response::new(pb::ListIdentityProvidersResponse {
            providers: self
                .identity
                .identity_providers()
                .into_iter()
                .map(IntoProto::into_proto)
                .collect(),
        }))
    }

    async fn start_oidc_login(
        &self,
        request: Request<pb::StartOidcLoginRequest>,
    ) -> Result<Response<pb::StartOidcLoginResponse>, Status> {
        let context = context(&request);
        let request = request.into_inner();
        let start = self
            .identity
            .start_oidc_login(&context, &request.provider, &request.redirect_uri)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::StartOidcLoginResponse {
            authorization_url: start.authorization_url,
            state: start.state,
        }))
    }

    async fn complete_oidc_login(
        &self,
        request: Request<pb::CompleteOidcLoginRequest>,
    ) -> Result<Response<pb::AuthTokens>, Status> {
        let context = context(&request);
        let request = request.into_inner();
        let tokens = self
            .identity
            .complete_oidc_login(&context, &request.provider, &request.state, &request.code)
            .await
            .map_err(status_from)?;
        Ok(Response::new(tokens.into_proto()))
    }

    async fn enroll_totp(
        &self,
        request: Request<pb::EnrollTotpRequest>,
    ) -> Result<Response<pb::EnrollTotpResponse>, Status> {
        let caller = principal(&request)?;
        let enrollment = self
            .identity
            .enroll_totp(&caller)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::EnrollTotpResponse {
            secret: enrollment.secret,
            otpauth_uri: enrollment.otpauth_uri,
        }))
    }

    async fn confirm_totp(
        &self,
        request: Request<pb::ConfirmTotpRequest>,
    ) -> Result<Response<pb::ConfirmTotpResponse>, Status> {
        let caller = principal(&request)?;
        let context = context(&request);
        let recovery_codes = self
            .identity
            .confirm_totp(&context, &caller, &request.into_inner().code)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::ConfirmTotpResponse { recovery_codes }))
    }

    async fn remove_totp(
        &self,
        request: Request<pb::RemoveTotpRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let caller = principal(&request)?;
        let context = context(&request);
        self.identity
            .remove_totp(&context, &caller, &request.into_inner().code)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }
}
