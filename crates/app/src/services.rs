//! [`Services`]: the running domain, built once from the configuration and
//! shared by the binary, the edge and the tests. It owns the database pool, the reply
//! hub, the job queue, the [`Chat`] service and the [`Identity`] service,
//! and, where this process runs them, the job workers and the scheduler;
//! it shuts them down in order.

use std::sync::Arc;
use std::time::Duration;

use switchboard_core::cache::Caches;
use switchboard_core::chat::{
    Chat, DevEngine, EngineStatus, GENERATE_REPLY, ReplyEngine, ReplyGenerator, ReplyHub,
    ReplyJobHandler,
};
use switchboard_core::config::{Config, EngineConfig, EngineKind, QueueBackend};
use switchboard_core::db::Database;
use switchboard_core::identity::Identity;
use switchboard_core::jobs::{JobState, JobTransport, Jobs, maintenance};
use switchboard_core::shutdown::{Shutdown, ShutdownSignal};
use switchboard_core::{Error, Result};
use switchboard_engines::{
    GrpcEngine, GrpcEngineConfig, OpenAiEngine, OpenAiEngineConfig, ResilientEngine,
};
use switchboard_redis::{RedisInvalidations, RedisRateCounters, RedisReplyBus};
use switchboard_workers::{
    AmqpTransport, AmqpTransportConfig, RedisTransport, RedisTransportConfig, Scheduler,
    SqlTransport, Worker, WorkerConfig,
};
use tokio::task::JoinHandle;

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
    engine_status: EngineStatus,
    workers: bool,
    stop: Shutdown,
    background: Vec<JoinHandle<()>>,
    shutdown_grace: Duration,
    /// When [`Services::stop_workers`] first ran: the grace counts from it.
    stopping_since: Option<tokio::time::Instant>,
}

/// How long past the grace the workers get to stop the jobs still running
/// (they abort them at the grace; this is only the aborting).
const WORKERS_STOP_MARGIN: Duration = Duration::from_secs(1);

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
            None => build_engine(&config.engine)?,
        };
        let engine = Arc::new(ResilientEngine::new(
            engine,
            config.engine.resilience.clone(),
        ));
        let breaker = engine.breaker().clone();
        let engine: Arc<dyn ReplyEngine> = engine;
        let stop = Shutdown::new();
        let stopped = stop.signal();
        let worker_name = WorkerConfig::default().name;
        let engine_status = if startup.workers {
            EngineStatus::local(
                engine.name(),
                breaker,
                db.clone(),
                worker_name.clone(),
                stopped.clone(),
            )
        } else {
            EngineStatus::mirrored(engine.name(), db.clone(), stopped.clone())
        };
        let hub = Arc::new(match &config.redis_url {
            Some(url) => ReplyHub::with_bus(Arc::new(
                RedisReplyBus::connect(url.expose(), &config.queue.prefix).await?,
            )),
            None => ReplyHub::default(),
        });
        // One set of read caches for identity and chat; with Redis, every
        // instance's invalidations reach every other's.
        let caches = Arc::new(Caches::new());
        if let Some(url) = &config.redis_url {
            let bus =
                RedisInvalidations::connect(url.expose(), &config.queue.prefix, &caches).await?;
            caches.share_through(Arc::new(bus));
        }
        let lease = Duration::from_secs(config.queue.lease_secs.max(1));
        let generator = Arc::new(
            ReplyGenerator::new(db.clone(), hub.clone(), engine, lease).with_caches(caches.clone()),
        );
        let reply_handler = Arc::new(ReplyJobHandler::new(generator.clone(), db.clone()));
        let transport = transport(config, &db).await?;
        let jobs = Arc::new(
            Jobs::new(db.clone(), transport.clone())
                .reopening(GENERATE_REPLY, reply_handler.clone()),
        );
        let admission = engine_status.clone();
        let mut chat = Chat::new(
            db.clone(),
            hub.clone(),
            jobs.clone(),
            config.queue.generate_reply,
        )
        .with_admission(Arc::new(move || admission.check()))
        .with_caches(caches.clone());
        if !startup.workers && hub.bus().is_none() {
            chat = chat.with_remote_generation();
        }
        let chat = Arc::new(chat);
        let mut identity = Identity::start(db.clone(), &config.auth).await?;
        identity.use_caches(caches);
        if let Some(url) = &config.redis_url {
            let counters = RedisRateCounters::connect(url.expose(), &config.queue.prefix).await?;
            identity.share_login_throttle(Arc::new(counters));
        }
        let identity = Arc::new(identity);
        tokio::spawn(sample_gauges(jobs.clone(), db.clone(), stopped.clone()));
        let shutdown_grace = Duration::from_secs(config.shutdown_grace_secs);
        let mut background = Vec::new();
        if startup.workers {
            let worker = Worker::new(
                db.clone(),
                transport,
                WorkerConfig {
                    name: worker_name,
                    concurrency: config.engine.max_concurrent_replies.max(1),
                    // A reply lasts as long as its engine call: one waiting
                    // here for a slot would keep its user waiting while
                    // another worker may be idle.
                    prefetch: 0,
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
            engine_status,
            workers: startup.workers,
            stop,
            background,
            shutdown_grace,
            stopping_since: None,
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
        self.workers
    }

    /// Whether the engine takes calls (its circuit breaker), for readiness.
    pub fn engine_status(&self) -> &EngineStatus {
        &self.engine_status
    }

    /// Whether the services can take requests (the database answers).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if not.
    pub async fn ready(&self) -> Result<()> {
        self.db.check_writable().await
    }

    /// Stops taking jobs and waits for the running ones, at most until
    /// `shutdown_grace_secs` after the first call (and a moment for the
    /// workers to stop the jobs still running then; those are taken again,
    /// by any worker, once their leases run out). Call it when shutdown
    /// begins, alongside the listeners' drain, so both use the same grace
    /// rather than one after the other; calling it again waits for nothing.
    pub async fn stop_workers(&mut self) {
        self.stop.begin();
        let stopping_since = *self
            .stopping_since
            .get_or_insert_with(tokio::time::Instant::now);
        let deadline = stopping_since + self.shutdown_grace + WORKERS_STOP_MARGIN;
        for mut task in self.background.drain(..) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("a background task did not stop in time; stopping it");
                task.abort();
            }
        }
    }

    /// Stops the workers (see [`Services::stop_workers`]; at once if that
    /// already ran), ends the streams of replies this process will not
    /// finish, and closes the database pool. Call it last, after the
    /// listeners have stopped.
    pub async fn shutdown(mut self) {
        self.stop_workers().await;
        self.generator.close_unfinished();
        self.db.close().await;
    }
}

/// The engine the configuration selects.
fn build_engine(config: &EngineConfig) -> Result<Arc<dyn ReplyEngine>> {
    Ok(match config.kind {
        EngineKind::Dev => Arc::new(DevEngine::new(Duration::from_millis(config.token_delay_ms))),
        EngineKind::Grpc => Arc::new(
            GrpcEngine::new(GrpcEngineConfig {
                endpoint: config.grpc.endpoint.clone(),
                bearer_token: config
                    .grpc
                    .bearer_token
                    .as_ref()
                    .map(|t| t.expose().clone()),
                metadata: config.grpc.metadata.clone().into_iter().collect(),
            })
            .map_err(|e| e.nested_under("engine.grpc"))?,
        ),
        EngineKind::Openai => {
            let settings = &config.openai;
            Arc::new(
                OpenAiEngine::new(OpenAiEngineConfig {
                    api_key: settings.api_key.as_ref().map(|k| k.expose().clone()),
                    system_prompt: settings.system_prompt.clone(),
                    context_budget_chars: settings.context_budget_chars,
                    ..OpenAiEngineConfig::new(settings.base_url.clone(), settings.model.clone())
                })
                .map_err(|e| e.nested_under("engine.openai"))?,
            )
        }
    })
}

/// How often the sampled gauges are read.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the sampled gauges current (every [`GAUGE_INTERVAL`]) until
/// `stop`: jobs by state (`switchboard_jobs`), how long the oldest due job
/// has waited for a worker (`switchboard_jobs_oldest_due_age_seconds`), and
/// the database pool (`switchboard_db_connections` by `state`, `in_use` or
/// `idle`, `switchboard_db_connections_max`, and how long taking a
/// connection took, `switchboard_db_pool_acquire_seconds`).
async fn sample_gauges(jobs: Arc<Jobs>, db: Database, stop: ShutdownSignal) {
    let states = [
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Dead,
    ];
    loop {
        // First: the statements below would wait for a connection too.
        let waited = db.pool_acquire_wait().await;
        metrics::gauge!("switchboard_db_pool_acquire_seconds").set(waited.as_secs_f64());
        if let Ok(counts) = jobs.counts().await {
            for state in states {
                let n = counts
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("switchboard_jobs", "state" => state.as_str()).set(n as f64);
            }
        }
        if let Ok(age) = jobs.oldest_due_age().await {
            metrics::gauge!("switchboard_jobs_oldest_due_age_seconds").set(age.as_secs_f64());
        }
        let (open, idle) = db.pool_usage();
        let in_use = f64::from(open) - idle as f64;
        metrics::gauge!("switchboard_db_connections", "state" => "in_use").set(in_use.max(0.0));
        metrics::gauge!("switchboard_db_connections", "state" => "idle").set(idle as f64);
        metrics::gauge!("switchboard_db_connections_max").set(f64::from(db.pool_max()));
        tokio::select! {
            () = tokio::time::sleep(GAUGE_INTERVAL) => {}
            () = stop.requested() => return,
        }
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
        QueueBackend::Redis => {
            let url = config.redis_url.as_ref().ok_or_else(|| {
                Error::invalid_argument("queue.backend", "`redis` needs redis_url")
            })?;
            Ok(Arc::new(
                RedisTransport::connect(RedisTransportConfig {
                    url: url.expose().clone(),
                    prefix: config.queue.prefix.clone(),
                    lease: Duration::from_secs(config.queue.lease_secs.max(1)),
                    poll_interval: Duration::from_secs(1),
                })
                .await?,
            ))
        }
        QueueBackend::Amqp => {
            let url = config
                .amqp_url
                .as_ref()
                .ok_or_else(|| Error::invalid_argument("queue.backend", "`amqp` needs amqp_url"))?;
            let concurrency =
                u16::try_from(config.engine.max_concurrent_replies).unwrap_or(u16::MAX);
            Ok(Arc::new(
                AmqpTransport::connect(AmqpTransportConfig {
                    url: url.expose().clone(),
                    prefix: config.queue.prefix.clone(),
                    concurrency,
                })
                .await?,
            ))
        }
    }
}

/// The scheduler with the domain's maintenance tasks.
fn scheduler(
    config: &Config,
    db: &Database,
    chat: &Arc<Chat>,
    identity: &Arc<Identity>,
) -> Result<Scheduler> {
    maintenance::tasks(&config.schedules, db, chat, identity)
        .into_iter()
        .try_fold(Scheduler::new(db.clone()), |scheduler, entry| {
            scheduler.add(entry.name, &entry.cron, entry.task)
        })
}
