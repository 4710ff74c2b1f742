//! `switchboard.v1.JobService` over gRPC: a job's state, the dead letters
//! and the schedules, for operators, backed by the domain's [`Jobs`].

use std::sync::Arc;

use switchboard_core::jobs::{Job, JobState, Jobs, Schedule};
use switchboard_proto::Timestamp;
use switchboard_proto::v1 as pb;
use switchboard_proto::v1::job_service_server::JobService;
use tonic::{Request, Response, Status};

use crate::convert::{self, IntoProto};
use crate::status::status_from;

/// The gRPC JobService.
#[derive(Debug, Clone)]
pub struct JobApi {
    jobs: Arc<Jobs>,
}

impl JobApi {
    /// The service over `jobs`.
    pub fn new(jobs: Arc<Jobs>) -> Self {
        Self { jobs }
    }
}

impl IntoProto for Job {
    type Proto = pb::Job;

    fn into_proto(self) -> pb::Job {
        let state = match self.state {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Retrying => pb::JobState::Retrying,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Dead => pb::JobState::Dead,
        };
        let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        pb::Job {
            payload: self.payload.to_string(),
            state: state.into(),
            attempts: count(self.attempts),
            max_attempts: count(self.max_attempts),
            last_error: self.last_error.unwrap_or_default(),
            worker: self.worker.unwrap_or_default(),
            run_at: Some(Timestamp::from(self.run_at)),
            created_at: Some(Timestamp::from(self.created_at)),
            updated_at: Some(Timestamp::from(self.updated_at)),
            started_at: self.started_at.map(Timestamp::from),
            finished_at: self.finished_at.map(Timestamp::from),
            id: self.id,
            kind: self.kind,
        }
    }
}

impl IntoProto for Schedule {
    type Proto = pb::Schedule;

    fn into_proto(self) -> pb::Schedule {
        pb::Schedule {
            name: self.name,
            cron: self.cron,
            next_run_at: Some(Timestamp::from(self.next_run_at)),
            last_run_at: self.last_run_at.map(Timestamp::from),
            last_outcome: self.last_outcome.unwrap_or_default(),
            last_failed: self.last_failed,
        }
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let job = self
            .jobs
            .get(&request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(job.into_proto()))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let page_size = convert::page_size(request.page_size).map_err(status_from)?;
        let page = self
            .jobs
            .list_dead_letters(page_size, &request.page_token)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: page.items.into_iter().map(IntoProto::into_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn retry_dead_letter(
        &self,
        request: Request<pb::RetryDeadLetterRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let job = self
            .jobs
            .retry_dead_letter(&request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(job.into_proto()))
    }

    async fn delete_dead_letter(
        &self,
        request: Request<pb::DeleteDeadLetterRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        self.jobs
            .delete_dead_letter(&request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn list_schedules(
        &self,
        _request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let schedules = self.jobs.list_schedules().await.map_err(status_from)?;
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: schedules.into_iter().map(IntoProto::into_proto).collect(),
        }))
    }
}
