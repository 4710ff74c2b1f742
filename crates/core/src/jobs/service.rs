//! [`Jobs`]: enqueueing jobs and what operators do with them (JobService):
//! read a job's state, list, inspect, retry and delete dead letters.

use std::collections::HashMap;
use std::sync::Arc;

use crate::db::{Database, now};
use crate::error::{Error, Result};
use crate::jobs::handler::JobHandler;
use crate::jobs::model::{Job, JobState, NewJob};
use crate::jobs::schedule::{self, Schedule};
use crate::jobs::store;
use crate::jobs::transport::JobTransport;
use crate::paging::{self, Cursor, Listing, Page};

/// Dead letters per page when the request asks for 0.
pub const DEFAULT_DEAD_LETTER_PAGE_SIZE: u32 = 50;

/// Enqueues jobs and manages them.
pub struct Jobs {
    db: Database,
    transport: Arc<dyn JobTransport>,
    reopeners: HashMap<String, Arc<dyn JobHandler>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("transport", &self.transport.name())
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// Jobs recorded in `db` and carried by `transport`.
    pub fn new(db: Database, transport: Arc<dyn JobTransport>) -> Self {
        Self {
            db,
            transport,
            reopeners: HashMap::new(),
        }
    }

    /// Lets `handler` prepare dead jobs of `kind` before an operator's
    /// retry ([`JobHandler::reopen`]).
    #[must_use]
    pub fn reopening(mut self, kind: &str, handler: Arc<dyn JobHandler>) -> Self {
        self.reopeners.insert(kind.to_owned(), handler);
        self
    }

    /// The transport's name: `sqlite`, `postgres`, `redis` or `amqp`.
    pub fn backend(&self) -> &'static str {
        self.transport.name()
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn JobTransport> {
        &self.transport
    }

    /// Stores a job and hands it to the transport.
    ///
    /// # Errors
    ///
    /// A database error; the transport refusing the id is only logged (the
    /// row is stored, and workers send it again later).
    pub async fn enqueue(&self, job: NewJob) -> Result<Job> {
        let job = job.into_job(now());
        store::insert(&self.db, &job).await?;
        self.dispatch(&job.id).await;
        Ok(job)
    }

    /// Stores many jobs in one transaction and hands their ids to the
    /// transport together (one commit and, on Redis and RabbitMQ, one
    /// round trip for all of them); returns them in the order given. Like
    /// [`enqueue`](Self::enqueue), it returns once every row is committed
    /// and the transport holds every id (or refused them, which is only
    /// logged: workers send untaken jobs again).
    ///
    /// # Errors
    ///
    /// A database error; then no job of the batch is stored.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>> {
        let at = now();
        let jobs: Vec<Job> = jobs.into_iter().map(|job| job.into_job(at)).collect();
        if jobs.is_empty() {
            return Ok(jobs);
        }
        store::insert_many(&self.db, &jobs).await?;
        let ids: Vec<String> = jobs.iter().map(|job| job.id.clone()).collect();
        if let Err(err) = self.transport.send_many(&ids).await {
            tracing::warn!(count = ids.len(), error = %err, "the queue did not take the jobs; they are sent again later");
        }
        Ok(jobs)
    }

    /// Hands a stored job to the transport. A failure is logged, not
    /// returned: the row is committed, and workers send untaken jobs again.
    pub async fn dispatch(&self, job_id: &str) {
        if let Err(err) = self.transport.send(job_id, None).await {
            tracing::warn!(%job_id, error = %err, "the queue did not take the job; it is sent again later");
        }
    }

    /// One job.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no job `id`.
    pub async fn get(&self, id: &str) -> Result<Job> {
        store::get(&self.db, id)
            .await?
            .ok_or(Error::NotFound { what: "job" })
    }

    /// One page of dead letters, newest first.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] (`page_token`) for a token this listing
    /// did not issue.
    pub async fn list_dead_letters(&self, page_size: u32, page_token: &str) -> Result<Page<Job>> {
        let after = paging::decode(Listing::DeadLetters, page_token)?
            .map(|cursor| (cursor.created_at, cursor.id));
        let size = paging::page_size(page_size, DEFAULT_DEAD_LETTER_PAGE_SIZE);
        let items = store::list_dead(&self.db, after.as_ref(), size + 1).await?;
        Ok(paging::page(items, size, Listing::DeadLetters, |job| {
            Cursor {
                created_at: job.finished_at.map_or(0, |at| at.timestamp_micros()),
                id: job.id.clone(),
            }
        }))
    }

    /// Puts a dead job back in the queue with its attempts reset.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no dead job `id`.
    pub async fn retry_dead_letter(&self, id: &str) -> Result<Job> {
        let job = store::get(&self.db, id)
            .await?
            .filter(|job| job.state == JobState::Dead)
            .ok_or(Error::NotFound {
                what: "dead letter",
            })?;
        if let Some(handler) = self.reopeners.get(&job.kind) {
            handler.reopen(&job).await?;
        }
        let job = store::requeue_dead(&self.db, id, now())
            .await?
            .ok_or(Error::NotFound {
                what: "dead letter",
            })?;
        self.dispatch(&job.id).await;
        Ok(job)
    }

    /// Deletes a dead job for good.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no dead job `id`.
    pub async fn delete_dead_letter(&self, id: &str) -> Result<()> {
        if store::delete_dead(&self.db, id).await? {
            Ok(())
        } else {
            Err(Error::NotFound {
                what: "dead letter",
            })
        }
    }

    /// How long the job that has waited longest for a worker has been due
    /// (zero when none is waiting): the queue's backlog, in time.
    ///
    /// # Errors
    ///
    /// A database error.
    pub async fn oldest_due_age(&self) -> Result<std::time::Duration> {
        let now = now();
        Ok(store::oldest_due(&self.db, now)
            .await?
            .and_then(|due| (now - due).to_std().ok())
            .unwrap_or_default())
    }

    /// How many jobs are in each state (states with none are left out).
    ///
    /// # Errors
    ///
    /// A database error.
    pub async fn counts(&self) -> Result<Vec<(JobState, u64)>> {
        store::count_by_state(&self.db)
            .await?
            .into_iter()
            .map(|(state, n)| Ok((state.parse()?, u64::try_from(n).unwrap_or(0))))
            .collect()
    }

    /// How many jobs are queued, running or waiting to retry.
    ///
    /// # Errors
    ///
    /// A database error.
    pub async fn unfinished(&self) -> Result<u64> {
        Ok(self
            .counts()
            .await?
            .into_iter()
            .filter(|(state, _)| !state.is_finished())
            .map(|(_, n)| n)
            .sum())
    }

    /// The scheduled jobs, with their next run time.
    ///
    /// # Errors
    ///
    /// A database error.
    pub async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        schedule::list(&self.db).await
    }
}
