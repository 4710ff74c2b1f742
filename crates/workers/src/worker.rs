//! [`Worker`]: takes job ids from a transport, runs each job's handler
//! under a renewed lease, and records the outcome: succeeded, retried after
//! a backoff, or dead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard_core::db::{Database, now};
use switchboard_core::jobs::store::{self, AttemptEnd};
use switchboard_core::jobs::{
    Delivery, Job, JobFailure, JobHandler, JobState, JobTransport, Receipt, RetryPolicy,
};
use switchboard_core::shutdown::ShutdownSignal;
use switchboard_core::tasks::AbortOnDrop;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How a [`Worker`] runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's name in job rows and logs (host and process id by
    /// default).
    pub name: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// How long an attempt holds its job without renewing; the worker
    /// renews every third of it. A job whose worker died is taken again
    /// once its lease runs out.
    pub lease: Duration,
    /// How long a queued job may go untaken before its id is sent again
    /// (a broker may have lost it: the process died between committing the
    /// row and handing the id over). Only for broker transports.
    pub resend_after: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            name: default_worker_name(),
            concurrency: 16,
            lease: Duration::from_secs(10),
            resend_after: Duration::from_secs(300),
        }
    }
}

/// `host-pid`, the default worker name.
pub fn default_worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

struct Registered {
    handler: Arc<dyn JobHandler>,
    policy: RetryPolicy,
}

/// Takes jobs from a transport and runs them.
pub struct Worker {
    db: Database,
    transport: Arc<dyn JobTransport>,
    handlers: HashMap<String, Registered>,
    config: WorkerConfig,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("transport", &self.transport.name())
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish()
    }
}

impl Worker {
    /// A worker recording in `db`, taking ids from `transport`, with no
    /// handlers yet.
    pub fn new(db: Database, transport: Arc<dyn JobTransport>, config: WorkerConfig) -> Self {
        Self {
            db,
            transport,
            handlers: HashMap::new(),
            config,
        }
    }

    /// Runs jobs of `kind` with `handler`, retried as `policy` says.
    #[must_use]
    pub fn handle(mut self, kind: &str, policy: RetryPolicy, handler: Arc<dyn JobHandler>) -> Self {
        self.handlers
            .insert(kind.to_owned(), Registered { handler, policy });
        self
    }

    /// Takes and runs jobs until `stop` is requested; then stops taking jobs
    /// and waits up to `grace` for the running ones. Jobs still running
    /// after that are abandoned: their leases run out and another worker (or
    /// this one, after a restart) takes them again.
    pub async fn run(self: Arc<Self>, stop: ShutdownSignal, grace: Duration) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut running = JoinSet::new();
        let broker = !matches!(self.transport.name(), "sqlite" | "postgres");
        // The ids a broker may have lost are sent again from a task of its
        // own, first after one period.
        let _resender = broker.then(|| {
            let worker = self.clone();
            let stop = stop.clone();
            AbortOnDrop(tokio::spawn(async move {
                let period = worker.config.resend_after.max(Duration::from_secs(1));
                let start = tokio::time::Instant::now() + period;
                let mut resend = tokio::time::interval_at(start, period);
                loop {
                    tokio::select! {
                        _ = resend.tick() => worker.resend_stale().await,
                        () = stop.requested() => return,
                    }
                }
            }))
        });
        tracing::info!(
            worker = %self.config.name,
            transport = self.transport.name(),
            concurrency = self.config.concurrency,
            "worker started"
        );
        loop {
            while running.try_join_next().is_some() {}
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = stop.requested() => break,
            };
            // Only a stop interrupts a receive: the broker transports are
            // not safe to cancel in the middle of a delivery.
            let delivery = tokio::select! {
                delivery = self.transport.receive() => delivery,
                () = stop.requested() => break,
            };
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot take jobs; trying again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Some((job, receipt)) = self.take(delivery).await {
                let worker = self.clone();
                running.spawn(async move {
                    worker.execute(job, receipt).await;
                    drop(permit);
                });
            }
        }
        let drained = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(
                abandoned = running.len(),
                "jobs still running after the grace period were stopped; they run again once their leases run out"
            );
            running.shutdown().await;
        }
        tracing::info!(worker = %self.config.name, "worker stopped");
    }

    /// Starts an attempt of the delivered job, or settles the delivery when
    /// the job cannot be taken now.
    async fn take(&self, delivery: Delivery) -> Option<(Job, Box<dyn Receipt>)> {
        let Delivery { job_id, receipt } = delivery;
        let at = now();
        let lease_until = at + self.config.lease;
        match store::start_attempt(&self.db, &job_id, &self.config.name, at, lease_until).await {
            Ok(Some(job)) => return Some((job, receipt)),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(%job_id, error = %err, "cannot start the job; it is tried again later");
                self.postpone(&job_id, receipt.as_ref()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return None;
            }
        }
        // Not takeable now. A copy is kept for later when the job is waiting
        // out a backoff or held by a live lease (a duplicate delivery, or a
        // broker that redelivered before the lease ran out); a finished or
        // deleted job needs nothing.
        let later = match store::get(&self.db, &job_id).await {
            Ok(Some(job)) => match job.state {
                JobState::Running => job.lease_until,
                JobState::Queued | JobState::Retrying => Some(job.run_at),
                JobState::Succeeded | JobState::Dead => None,
            },
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(%job_id, error = %err, "cannot read the job; it is tried again later");
                self.postpone(&job_id, receipt.as_ref()).await;
                return None;
            }
        };
        if let Some(at) = later
            && let Err(err) = self.transport.send(&job_id, Some(at)).await
        {
            tracing::warn!(%job_id, error = %err, "cannot postpone the job; leaving it unacknowledged");
            return None;
        }
        if let Err(err) = receipt.ack().await {
            tracing::warn!(%job_id, error = %err, "cannot acknowledge the delivery");
        }
        None
    }

    /// Runs one attempt under a renewed lease and records how it ended.
    async fn execute(&self, job: Job, receipt: Box<dyn Receipt>) {
        let receipt: Arc<dyn Receipt> = Arc::from(receipt);
        let Some(registered) = self.handlers.get(&job.kind) else {
            let error = format!("no handler for jobs of kind {:?}", job.kind);
            self.record(&job, &AttemptEnd::Dead { error }, receipt)
                .await;
            return;
        };
        let renewal = AbortOnDrop(tokio::spawn(renew_lease(
            self.db.clone(),
            job.id.clone(),
            job.attempts,
            self.config.lease,
            receipt.clone(),
        )));
        let last_attempt = job.attempts >= job.max_attempts;
        let started = std::time::Instant::now();
        let result = registered.handler.run(&job, last_attempt).await;
        drop(renewal);
        let end = match result {
            Ok(()) => AttemptEnd::Succeeded,
            Err(JobFailure::Retryable(error)) if !last_attempt => AttemptEnd::Retry {
                error,
                run_at: now() + registered.policy.backoff(job.attempts),
            },
            Err(JobFailure::Retryable(error) | JobFailure::Permanent(error)) => {
                AttemptEnd::Dead { error }
            }
        };
        let outcome = match &end {
            AttemptEnd::Succeeded => "succeeded",
            AttemptEnd::Retry { .. } => "retrying",
            AttemptEnd::Dead { .. } => "dead",
        };
        metrics::counter!("switchboard_jobs_total", "kind" => job.kind.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("switchboard_job_duration_seconds", "kind" => job.kind.clone())
            .record(started.elapsed().as_secs_f64());
        match &end {
            AttemptEnd::Dead { error } => {
                tracing::warn!(job_id = %job.id, kind = %job.kind, attempts = job.attempts, %error, "job is dead");
            }
            AttemptEnd::Retry { error, run_at } => {
                tracing::info!(job_id = %job.id, kind = %job.kind, attempts = job.attempts, %error, %run_at, "job will be retried");
            }
            AttemptEnd::Succeeded => {}
        }
        self.record(&job, &end, receipt).await;
    }

    /// Stores the end of the attempt, hands a retry to the transport, and
    /// acknowledges the delivery.
    async fn record(&self, job: &Job, end: &AttemptEnd, receipt: Arc<dyn Receipt>) {
        match store::finish_attempt(&self.db, &job.id, job.attempts, end, now()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(job_id = %job.id, "the job was taken over while it ran; its outcome is the newer attempt's");
            }
            Err(err) => {
                // The row still says running: the job is taken again once
                // its lease runs out (the handlers are idempotent).
                tracing::error!(job_id = %job.id, error = %err, "cannot record the job's outcome");
                self.postpone(&job.id, receipt.as_ref()).await;
                return;
            }
        }
        if let AttemptEnd::Retry { run_at, .. } = end
            && let Err(err) = self.transport.send(&job.id, Some(*run_at)).await
        {
            tracing::warn!(job_id = %job.id, error = %err, "cannot schedule the retry; it is sent again later");
        }
        if let Err(err) = receipt.ack().await {
            tracing::warn!(job_id = %job.id, error = %err, "cannot acknowledge the job");
        }
    }

    /// Hands a copy of `job_id` back for after the lease and acknowledges
    /// this one, so a broker that redelivers only on disconnect (RabbitMQ)
    /// is not left holding an unacknowledged delivery; if the copy cannot be
    /// sent, the delivery stays unacknowledged and is redelivered as the
    /// transport does.
    async fn postpone(&self, job_id: &str, receipt: &dyn Receipt) {
        let later = now() + self.config.lease;
        if self.transport.send(job_id, Some(later)).await.is_ok() {
            let _ = receipt.ack().await;
        }
    }

    /// Sends again the ids of jobs queued long ago and never taken.
    async fn resend_stale(&self) {
        let before = now() - self.config.resend_after;
        match store::stale_queued(&self.db, before, 1000).await {
            Ok(ids) => {
                for id in &ids {
                    if let Err(err) = self.transport.send(id, None).await {
                        tracing::warn!(job_id = %id, error = %err, "cannot send the job again");
                        return;
                    }
                }
                if !ids.is_empty() {
                    tracing::info!(count = ids.len(), "sent untaken jobs again");
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot look for untaken jobs"),
        }
    }
}

/// Renews the lease of an attempt every third of `lease` until aborted.
async fn renew_lease(
    db: Database,
    job_id: String,
    attempt: u32,
    lease: Duration,
    receipt: Arc<dyn Receipt>,
) {
    let mut ticks = tokio::time::interval(lease / 3);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match store::renew(&db, &job_id, attempt, now() + lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%job_id, attempt, "lost the job's lease");
                return;
            }
            Err(err) => tracing::warn!(%job_id, error = %err, "cannot renew the job's lease"),
        }
        if let Err(err) = receipt.keep_alive().await {
            tracing::warn!(%job_id, error = %err, "cannot keep the delivery alive");
        }
    }
}
