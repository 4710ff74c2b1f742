//! `switchboard.v1.UserService` and `switchboard.v1.AuditService` over gRPC:
//! the administration of accounts and the reading of the audit trail.

use std::sync::Arc;

use switchboard_core::identity::{AuditFilter, Identity};
use switchboard_proto::v1 as pb;
use switchboard_proto::v1::audit_service_server::AuditService;
use switchboard_proto::v1::user_service_server::UserService;
use tonic::{Request, Response, Status};

use crate::caller::{context, principal};
use crate::convert::{self, IntoProto};
use crate::convert_identity::user_update;
use crate::status::status_from;

/// The gRPC UserService, backed by the domain's [`Identity`].
#[derive(Debug, Clone)]
pub struct UserApi {
    identity: Arc<Identity>,
}

impl UserApi {
    /// The service over `identity`.
    pub fn new(identity: Arc<Identity>) -> Self {
        Self { identity }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = principal(&request)?;
        let context = context(&request);
        let request = request.into_inner();
        let page_size = convert::page_size(request.page_size).map_err(status_from)?;
        let page = self
            .identity
            .list_users(&context, &caller, page_size, &request.page_token)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::ListUsersResponse {
            users: page.users.into_iter().map(IntoProto::into_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = principal(&request)?;
        let context = context(&request);
        let user = self
            .identity
            .get_user(&context, &caller, &request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(user.into_proto()))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = principal(&request)?;
        let context = context(&request);
        let (id, patch) = user_update(request.into_inner()).map_err(status_from)?;
        let user = self
            .identity
            .update_user(&context, &caller, &id, patch)
            .await
            .map_err(status_from)?;
        Ok(Response::new(user.into_proto()))
    }

    async fn reset_user_second_factor(
        &self,
        request: Request<pb::ResetUserSecondFactorRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = principal(&request)?;
        let context = context(&request);
        let user = self
            .identity
            .reset_user_second_factor(&context, &caller, &request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(user.into_proto()))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let caller = principal(&request)?;
        let context = context(&request);
        self.identity
            .delete_user(&context, &caller, &request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }
}

/// The gRPC AuditService, backed by the domain's [`Identity`].
#[derive(Debug, Clone)]
pub struct AuditApi {
    identity: Arc<Identity>,
}

impl AuditApi {
    /// The service over `identity`.
    pub fn new(identity: Arc<Identity>) -> Self {
        Self { identity }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let request = request.into_inner();
        let page_size = convert::page_size(request.page_size).map_err(status_from)?;
        let time = |field: &str, value: Option<switchboard_proto::Timestamp>| match value {
            Some(time) => time.to_datetime().map(Some).ok_or_else(|| {
                status_from(switchboard_core::Error::invalid_argument(
                    field,
                    "is out of range",
                ))
            }),
            None => Ok(None),
        };
        let filter = AuditFilter {
            actor: Some(request.actor).filter(|a| !a.is_empty()),
            action: Some(request.action).filter(|a| !a.is_empty()),
            since: time("start_time", request.start_time)?,
            before: time("end_time", request.end_time)?,
        };
        let (events, next_page_token) = self
            .identity
            .list_audit_events(&filter, page_size, &request.page_token)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(IntoProto::into_proto).collect(),
            next_page_token,
        }))
    }
}
