//! [`Worker`]: takes job ids from a transport, runs each job's handler
//! under a renewed lease, and records the outcome: succeeded, retried after
//! a backoff, or dead.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use switchboard_core::db::{Database, now};
use switchboard_core::jobs::store::{self, AttemptEnd};
use switchboard_core::jobs::{
    Delivery, Job, JobFailure, JobHandler, JobState, JobTransport, Receipt, RetryPolicy,
};
use switchboard_core::shutdown::ShutdownSignal;
use switchboard_core::tasks::AbortOnDrop;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::Instrument;

/// How a [`Worker`] runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's name in job rows and logs (host and process id by
    /// default).
    pub name: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Jobs started ahead of a free slot, at most: each batch then takes
    /// the slots freed while the last one was being taken, not only those
    /// free when it began, so short jobs are started and recorded in fewer,
    /// larger updates (Dramatiq and Celery prefetch the same way). A
    /// prefetched job's row says running and its lease is renewed while it
    /// waits; a stop runs it like the running ones, within the grace. 0
    /// turns it off, as long jobs in a deployment of several workers want:
    /// a job waiting here for a slot is not run by an idle worker elsewhere.
    pub prefetch: usize,
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
            prefetch: 16,
            lease: Duration::from_secs(10),
            resend_after: Duration::from_secs(300),
        }
    }
}

impl WorkerConfig {
    /// The most jobs the worker holds at once: running, and prefetched
    /// (what a broker transport's own prefetch is sized from).
    pub fn most_taken(&self) -> usize {
        self.concurrency.max(1) + self.prefetch
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

/// The most jobs started by one update, or recorded by one.
const MAX_BATCH: usize = 256;

/// A successful attempt waiting to be recorded by `Worker::record_successes`.
struct Completion {
    job_id: String,
    attempt: u32,
    receipt: Arc<dyn Receipt>,
    /// Told once the success is recorded and the delivery acknowledged.
    recorded: oneshot::Sender<()>,
}

/// A job whose attempt `take_many` started, on its way to a slot.
struct Started {
    job: Job,
    receipt: Box<dyn Receipt>,
    /// Its place among the jobs taken (running or prefetched), held until
    /// the attempt ends.
    taken: OwnedSemaphorePermit,
}

/// What a running attempt holds until its handler returns (freed by
/// dropping them).
struct Slots {
    /// Its place among the jobs taken.
    _taken: OwnedSemaphorePermit,
    /// Its place among the jobs running.
    _running: OwnedSemaphorePermit,
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
    /// and waits up to `grace` for the ones it has started, running or
    /// prefetched. Jobs not done after that are abandoned: their leases run
    /// out and another worker (or this one, after a restart) takes them
    /// again.
    pub async fn run(self: Arc<Self>, stop: ShutdownSignal, grace: Duration) {
        let concurrency = self.config.concurrency.max(1);
        let taken = Arc::new(Semaphore::new(self.config.most_taken()));
        let running_slots = Arc::new(Semaphore::new(concurrency));
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
            concurrency,
            prefetch = self.config.prefetch,
            "worker started"
        );
        // Successes are recorded in batches by a task of their own: see
        // `record_successes`.
        let (completions, finished) = mpsc::unbounded_channel();
        let completer = tokio::spawn(self.clone().record_successes(finished));
        // Jobs are taken by a task of their own (`take_jobs`) and arrive
        // here started; the channel closes once that task has stopped and
        // every job it started has arrived.
        let (started_tx, mut started) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().take_jobs(taken, stop.clone(), started_tx));
        let deadline = {
            let feed = self.feed(&mut started, &running_slots, &mut running, &completions);
            tokio::pin!(feed);
            // The feed ends only after a stop, once the taker has stopped.
            let fed = tokio::select! {
                () = &mut feed => true,
                () = stop.requested() => false,
            };
            let deadline = tokio::time::Instant::now() + grace;
            if !fed {
                // The jobs started before the stop still get slots.
                let _ = tokio::time::timeout_at(deadline, &mut feed).await;
            }
            deadline
        };
        let drained = tokio::time::timeout_at(deadline, async {
            while running.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        let mut waiting = 0;
        while started.try_recv().is_ok() {
            waiting += 1;
        }
        if !drained || waiting > 0 {
            tracing::warn!(
                abandoned = running.len() + waiting,
                "jobs still running after the grace period were stopped; they run again once their leases run out"
            );
            running.shutdown().await;
        }
        // The completer records what is left and ends with the last sender.
        drop(completions);
        let _ = completer.await;
        tracing::info!(worker = %self.config.name, "worker stopped");
    }

    /// Gives each job arriving on `started` a running slot and runs it, until
    /// the channel closes. A job's lease is renewed from its arrival, while it
    /// waits for a slot (a prefetched job) and while it runs.
    async fn feed(
        self: &Arc<Self>,
        started: &mut mpsc::UnboundedReceiver<Started>,
        running_slots: &Arc<Semaphore>,
        running: &mut JoinSet<()>,
        completions: &mpsc::UnboundedSender<Completion>,
    ) {
        while let Some(Started {
            job,
            receipt,
            taken,
        }) = started.recv().await
        {
            while running.try_join_next().is_some() {}
            let receipt: Arc<dyn Receipt> = Arc::from(receipt);
            let renewal = AbortOnDrop(tokio::spawn(renew_lease(
                self.db.clone(),
                job.id.clone(),
                job.attempts,
                self.config.lease,
                receipt.clone(),
            )));
            let Ok(slot) = running_slots.clone().acquire_owned().await else {
                return;
            };
            let slots = Slots {
                _taken: taken,
                _running: slot,
            };
            let worker = self.clone();
            let completions = completions.clone();
            running.spawn(async move {
                worker
                    .execute(job, receipt, slots, renewal, &completions)
                    .await;
            });
        }
    }

    /// Takes jobs until `stop` is requested, each with a place among the
    /// `taken` ones: waits for a free place, takes every other place free
    /// by the time the tasks about to free theirs have run, receives as many
    /// deliveries in one call, starts them in one update (`take_many`) and
    /// hands them to `started`.
    async fn take_jobs(
        self: Arc<Self>,
        taken: Arc<Semaphore>,
        stop: ShutdownSignal,
        started: mpsc::UnboundedSender<Started>,
    ) {
        loop {
            let first = tokio::select! {
                place = taken.clone().acquire_owned() => match place {
                    Ok(place) => place,
                    Err(_) => return,
                },
                () = stop.requested() => return,
            };
            // One yield lets the attempts that have just ended give their
            // places back: without it, batches of short jobs alternate
            // between all the places and the one freed first.
            tokio::task::yield_now().await;
            let mut places = vec![first];
            while places.len() < MAX_BATCH {
                match taken.clone().try_acquire_owned() {
                    Ok(place) => places.push(place),
                    Err(_) => break,
                }
            }
            // Only a stop interrupts a receive: the broker transports are
            // not safe to cancel in the middle of a delivery.
            let deliveries = tokio::select! {
                deliveries = self.transport.receive_many(places.len()) => deliveries,
                () = stop.requested() => return,
            };
            let deliveries = match deliveries {
                Ok(deliveries) => deliveries,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot take jobs; trying again in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = stop.requested() => return,
                    }
                }
            };
            for (job, receipt) in self.take_many(deliveries).await {
                // A transport hands out at most as many as asked for; were
                // it more, the extra ones wait for a place.
                let place = match places.pop() {
                    Some(place) => place,
                    None => match taken.clone().acquire_owned().await {
                        Ok(place) => place,
                        Err(_) => return,
                    },
                };
                let _ = started.send(Started {
                    job,
                    receipt,
                    taken: place,
                });
            }
        }
    }

    /// Starts an attempt of each delivered job that can be taken now, all
    /// in one update; settles the other deliveries.
    async fn take_many(&self, deliveries: Vec<Delivery>) -> Vec<(Job, Box<dyn Receipt>)> {
        let at = now();
        let lease_until = at + self.config.lease;
        let ids: Vec<String> = deliveries.iter().map(|d| d.job_id.clone()).collect();
        let mut started: HashMap<String, Job> = match store::start_attempts(
            &self.db,
            &ids,
            &self.config.name,
            at,
            lease_until,
        )
        .await
        {
            Ok(jobs) => jobs.into_iter().map(|job| (job.id.clone(), job)).collect(),
            Err(err) => {
                tracing::warn!(count = ids.len(), error = %err, "cannot start the jobs; they are tried again later");
                for delivery in &deliveries {
                    self.postpone(&delivery.job_id, delivery.receipt.as_ref())
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Vec::new();
            }
        };
        let mut taken = Vec::with_capacity(started.len());
        for Delivery { job_id, receipt } in deliveries {
            // A second copy of an id in the batch is not the one started.
            match started.remove(&job_id) {
                Some(job) => taken.push((job, receipt)),
                None => self.settle_untaken(job_id, receipt).await,
            }
        }
        taken
    }

    /// Settles the delivery of a job that could not be taken now.
    async fn settle_untaken(&self, job_id: String, receipt: Box<dyn Receipt>) {
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
                return;
            }
        };
        if let Some(at) = later
            && let Err(err) = self.transport.send(&job_id, Some(at)).await
        {
            tracing::warn!(%job_id, error = %err, "cannot postpone the job; leaving it unacknowledged");
            return;
        }
        if let Err(err) = receipt.ack().await {
            tracing::warn!(%job_id, error = %err, "cannot acknowledge the delivery");
        }
    }

    /// Runs one attempt (its lease renewed by `renewal`), frees its
    /// `slots` and records how it ended: a success through the batched
    /// `completions`, waiting until it is recorded, anything else at once.
    async fn execute(
        &self,
        job: Job,
        receipt: Arc<dyn Receipt>,
        slots: Slots,
        renewal: AbortOnDrop,
        completions: &mpsc::UnboundedSender<Completion>,
    ) {
        let Some(registered) = self.handlers.get(&job.kind) else {
            drop(renewal);
            drop(slots);
            let error = format!("no handler for jobs of kind {:?}", job.kind);
            self.record(&job, &AttemptEnd::Dead { error }, receipt)
                .await;
            return;
        };
        let last_attempt = job.attempts >= job.max_attempts;
        let started = std::time::Instant::now();
        let span = job_span(&job);
        let result = registered
            .handler
            .run(&job, last_attempt)
            .instrument(span.clone())
            .await;
        drop(renewal);
        drop(slots);
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
        span.record("switchboard.job.outcome", outcome);
        if let AttemptEnd::Retry { error, .. } | AttemptEnd::Dead { error } = &end {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.as_str());
        }
        drop(span);
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
            AttemptEnd::Succeeded => {
                let (recorded, done) = oneshot::channel();
                let completion = Completion {
                    job_id: job.id.clone(),
                    attempt: job.attempts,
                    receipt: receipt.clone(),
                    recorded,
                };
                if completions.send(completion).is_ok() {
                    let _ = done.await;
                    return;
                }
            }
        }
        self.record(&job, &end, receipt).await;
    }

    /// Records the successes sent on `finished` in batches until every
    /// sender is gone: it waits for one, takes every other one already
    /// waiting (up to [`MAX_BATCH`]), marks them all succeeded in one
    /// statement (one commit), and only then acknowledges their deliveries,
    /// all at once (pipelined on the broker's connection). A crash before
    /// the commit leaves the jobs running under leases that run out, and
    /// they are taken again; no delivery is acknowledged before its row
    /// says succeeded.
    async fn record_successes(self: Arc<Self>, mut finished: mpsc::UnboundedReceiver<Completion>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while finished.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let attempts: Vec<(String, u32)> = batch
                .iter()
                .map(|done| (done.job_id.clone(), done.attempt))
                .collect();
            match store::finish_succeeded_many(&self.db, &attempts, now()).await {
                Ok(recorded) => {
                    let recorded: HashSet<String> = recorded.into_iter().collect();
                    for done in batch.iter().filter(|done| !recorded.contains(&done.job_id)) {
                        tracing::warn!(job_id = %done.job_id, "the job was taken over while it ran; its outcome is the newer attempt's");
                    }
                    let acks = batch.iter().map(|done| async move {
                        if let Err(err) = done.receipt.ack().await {
                            tracing::warn!(job_id = %done.job_id, error = %err, "cannot acknowledge the job");
                        }
                    });
                    futures::future::join_all(acks).await;
                }
                Err(err) => {
                    // The rows still say running: the jobs are taken again
                    // once their leases run out (the handlers are idempotent).
                    tracing::error!(count = batch.len(), error = %err, "cannot record the jobs' outcomes");
                    for done in &batch {
                        self.postpone(&done.job_id, done.receipt.as_ref()).await;
                    }
                }
            }
            for done in batch.drain(..) {
                let _ = done.recorded.send(());
            }
        }
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

/// The span of one attempt at `job`, continuing the trace of the request
/// that enqueued it (OpenTelemetry's messaging conventions: a consumer
/// span named `process <kind>`); disabled when tracing is off.
fn job_span(job: &Job) -> tracing::Span {
    let span = switchboard_core::telemetry::traced(|| {
        tracing::info_span!(
            "job",
            otel.name = %format_args!("process {}", job.kind),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            messaging.system = "switchboard",
            messaging.operation.type = "process",
            messaging.destination.name = %job.kind,
            messaging.message.id = %job.id,
            switchboard.job.id = %job.id,
            switchboard.job.attempt = job.attempts,
            switchboard.job.outcome = tracing::field::Empty,
        )
    });
    switchboard_core::telemetry::continue_stored(&span, job.trace_context.as_deref());
    span
}
