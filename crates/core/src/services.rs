//! [`Services`]: the running domain, built once from the configuration and
//! shared by the binary and the edge. It owns the database pool, the reply
//! hub, the job queue, the [`Chat`] service and the [`Identity`] service,
//! and, where this process runs them, the job workers and the scheduler;
//! it shuts them down in order.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::chat::{
    Chat, DevEngine, GENERATE_REPLY, ReplyEngine, ReplyGenerator, ReplyHub, ReplyJobHandler,
};
use crate::config::{Config, QueueBackend};
use crate::db::Database;
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::jobs::{
    JobTransport, Jobs, ScheduledTask, Scheduler, SqlTransport, Worker, WorkerConfig,
};

/// What a process runs besides the API.
#[derive(Clone, Default)]
pub struct Startup {
    /// Run job workers and the scheduler in this process (`serve` without
    /// `--no-workers`, and `worker`).
    pub workers: bool,
    /// The reply engine; `None` builds the configured one.
    pub engine: Option<Arc<dyn ReplyEngine>>,
}

impl std::fmt::Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup")
            .field("workers", &self.workers)
            .field("engine", &self.engine.as_ref().map(|e| e.name()))
            .finish()
    }
}

/// The running domain services.
#[derive(Debug)]
pub struct Services {
    db: Database,
    hub: Arc<ReplyHub>,
    chat: Arc<Chat>,
    identity: Arc<Identity>,
    jobs: Arc<Jobs>,
    generator: Arc<ReplyGenerator>,
    stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    shutdown_grace: Duration,
}

impl Services {
    /// Connects to the database, applies migrations, builds the chat service
    /// with the configured engine and queue and the identity service
    /// (loading or creating its signing keys), and starts job workers and
    /// the scheduler in this process.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if the database or the queue's broker cannot be
    /// reached; [`Error::Internal`] if a migration fails.
    pub async fn start(config: &Config) -> Result<Services> {
        Self::start_with(
            config,
            Startup {
                workers: true,
                engine: None,
            },
        )
        .await
    }

    /// As [`Services::start`], with another reply engine.
    ///
    /// # Errors
    ///
    /// As [`Services::start`].
    pub async fn start_with_engine(
        config: &Config,
        engine: Arc<dyn ReplyEngine>,
    ) -> Result<Services> {
        Self::start_with(
            config,
            Startup {
                workers: true,
                engine: Some(engine),
            },
        )
        .await
    }

    /// As [`Services::start`], running what `startup` says.
    ///
    /// # Errors
    ///
    /// As [`Services::start`].
    pub async fn start_with(config: &Config, startup: Startup) -> Result<Services> {
        let db = Database::connect(config).await?;
        db.migrate().await?;
        let engine = match startup.engine {
            Some(engine) => engine,
            None => Arc::new(DevEngine::new(Duration::from_millis(
                config.engine.token_delay_ms,
            ))),
        };
        let hub = Arc::new(ReplyHub::default());
        let lease = Duration::from_secs(config.queue.lease_secs.max(1));
        let generator = Arc::new(ReplyGenerator::new(db.clone(), hub.clone(), engine, lease));
        let reply_handler = Arc::new(ReplyJobHandler::new(generator.clone(), db.clone()));
        let transport = transport(config, &db).await?;
        let jobs = Arc::new(
            Jobs::new(db.clone(), transport.clone())
                .reopening(GENERATE_REPLY, reply_handler.clone()),
        );
        let chat = Arc::new(Chat::new(
            db.clone(),
            hub.clone(),
            jobs.clone(),
            config.queue.generate_reply,
        ));
        let identity = Arc::new(Identity::start(db.clone(), &config.auth).await?);
        let (stop, stopped) = watch::channel(false);
        let shutdown_grace = Duration::from_secs(config.shutdown_grace_secs);
        let mut background = Vec::new();
        if startup.workers {
            let worker = Worker::new(
                db.clone(),
                transport,
                WorkerConfig {
                    concurrency: config.engine.max_concurrent_replies.max(1),
                    lease,
                    ..WorkerConfig::default()
                },
            )
            .handle(GENERATE_REPLY, config.queue.generate_reply, reply_handler);
            background.push(tokio::spawn(
                Arc::new(worker).run(stopped.clone(), shutdown_grace),
            ));
            let scheduler = scheduler(config, &db, &chat, &identity)?;
            // Registered now, so the schedules are listed once start returns.
            scheduler.register().await?;
            let stopped = stopped.clone();
            background.push(tokio::spawn(async move {
                if let Err(err) = scheduler.run(stopped).await {
                    tracing::error!(error = %err, "the scheduler stopped");
                }
            }));
        }
        Ok(Services {
            db,
            hub,
            chat,
            identity,
            jobs,
            generator,
            stop,
            background,
            shutdown_grace,
        })
    }

    /// The chat service.
    pub fn chat(&self) -> Arc<Chat> {
        self.chat.clone()
    }

    /// The identity service.
    pub fn identity(&self) -> Arc<Identity> {
        self.identity.clone()
    }

    /// The job queue and dead-letter store.
    pub fn jobs(&self) -> Arc<Jobs> {
        self.jobs.clone()
    }

    /// The database pool.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The reply hub.
    pub fn hub(&self) -> &Arc<ReplyHub> {
        &self.hub
    }

    /// The reply generator (its engine, for readiness and metrics).
    pub fn generator(&self) -> &Arc<ReplyGenerator> {
        &self.generator
    }

    /// Whether this process runs job workers.
    pub fn runs_workers(&self) -> bool {
        !self.background.is_empty()
    }

    /// Whether the services can take requests (the database answers).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if not.
    pub async fn ready(&self) -> Result<()> {
        self.db.ping().await
    }

    /// Stops taking jobs, waits up to `shutdown_grace_secs` for the running
    /// ones, then closes the database pool. Call it after the listeners
    /// have stopped taking requests. Jobs stopped by the grace period are
    /// taken again (by any worker) once their leases run out.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let grace = self.shutdown_grace + Duration::from_secs(1);
        for task in self.background {
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!("a background task did not stop in time");
            }
        }
        self.generator.close_unfinished();
        self.db.close().await;
    }
}

/// The transport the configuration selects.
async fn transport(config: &Config, db: &Database) -> Result<Arc<dyn JobTransport>> {
    let backend = match config.queue.backend {
        QueueBackend::Auto if config.amqp_url.is_some() => QueueBackend::Amqp,
        QueueBackend::Auto if config.redis_url.is_some() => QueueBackend::Redis,
        QueueBackend::Auto => QueueBackend::Database,
        chosen => chosen,
    };
    let poll = Duration::from_millis(config.queue.poll_interval_ms.max(10));
    match backend {
        QueueBackend::Auto | QueueBackend::Database => {
            Ok(Arc::new(SqlTransport::new(db.clone(), poll)))
        }
        QueueBackend::Redis | QueueBackend::Amqp => Err(Error::Unavailable(
            "this build has no Redis or RabbitMQ queue yet".to_owned(),
        )),
    }
}

/// The scheduler with the maintenance tasks.
fn scheduler(
    config: &Config,
    db: &Database,
    chat: &Arc<Chat>,
    identity: &Arc<Identity>,
) -> Result<Scheduler> {
    let schedules = &config.schedules;
    Scheduler::new(db.clone())
        .add(
            "purge_expired_sessions",
            &schedules.purge_expired_sessions,
            Arc::new(PurgeExpiredSessions(identity.clone())),
        )?
        .add(
            "apply_retention",
            &schedules.apply_retention,
            Arc::new(ApplyRetention {
                chat: chat.clone(),
                days: schedules.retention_days,
            }),
        )?
        .add(
            "purge_finished_jobs",
            &schedules.purge_jobs,
            Arc::new(PurgeFinishedJobs {
                db: db.clone(),
                days: schedules.keep_jobs_days,
            }),
        )
}

/// Deletes ended sessions and abandoned sign-ins.
struct PurgeExpiredSessions(Arc<Identity>);

#[async_trait]
impl ScheduledTask for PurgeExpiredSessions {
    async fn run(&self) -> Result<String> {
        let sessions = self.0.purge_expired().await?;
        Ok(format!("deleted {sessions} expired sessions"))
    }
}

/// Deletes conversations idle longer than the retention.
struct ApplyRetention {
    chat: Arc<Chat>,
    days: u32,
}

#[async_trait]
impl ScheduledTask for ApplyRetention {
    async fn run(&self) -> Result<String> {
        if self.days == 0 {
            return Ok("retention is off (schedules.retention_days = 0)".to_owned());
        }
        let age = Duration::from_secs(u64::from(self.days) * 86_400);
        let deleted = self.chat.delete_idle_conversations(age).await?;
        Ok(format!(
            "deleted {deleted} conversations idle for over {} days",
            self.days
        ))
    }
}

/// Deletes succeeded jobs older than the configured days.
struct PurgeFinishedJobs {
    db: Database,
    days: u32,
}

#[async_trait]
impl ScheduledTask for PurgeFinishedJobs {
    async fn run(&self) -> Result<String> {
        let before = crate::db::now() - chrono::Duration::days(i64::from(self.days));
        let deleted = crate::jobs::store::purge_succeeded(&self.db, before).await?;
        Ok(format!("deleted {deleted} succeeded jobs"))
    }
}
