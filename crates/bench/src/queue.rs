//! `queue`: job-queue throughput, enqueue → done, through the real job
//! machinery: [`Jobs::enqueue`] on one side, a [`Worker`] on the other, the
//! transport of the chosen backend in between, in one process (as in
//! `switchboard serve` with its in-process workers).
//!
//! A run owns its places ([`crate::scratch`]): the job rows go to a SQLite
//! file in a temporary directory or a new PostgreSQL database, the Redis keys
//! and RabbitMQ queues live under a prefix of its own, and all of it is
//! removed at the end, even after a failure or Ctrl-C.
//!
//! The job kind `bench_noop` does nothing but count itself, so the figure is
//! the queue's cost per job; with Switchboard that cost includes what makes
//! a job durable and inspectable: a row inserted per job and updated when an
//! attempt starts and ends, a lease, and on RabbitMQ a publisher confirm per
//! message. The run mirrors `scripts/bench/dramatiq_bench.py`: `warmup` jobs
//! run to completion first, then `jobs` jobs are enqueued one after the
//! other from one task (`enqueue_s`; `--producers` splits them among tasks
//! enqueueing at once, as a server's concurrent requests do), and `total_s`
//! runs from the first enqueue until every job's row says `succeeded`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use async_trait::async_trait;
use serde::Serialize;
use switchboard_core::db::{Database, Pool};
use switchboard_core::jobs::{
    Job, JobFailure, JobHandler, JobState, JobTransport, Jobs, NewJob, RetryPolicy,
};
use switchboard_core::shutdown::Shutdown;
use switchboard_workers::amqp::{AmqpTransport, AmqpTransportConfig};
use switchboard_workers::redis::{RedisTransport, RedisTransportConfig};
use switchboard_workers::{SqlTransport, Worker, WorkerConfig};
use tokio::sync::Notify;

use crate::scratch::{self, ScratchDatabase};
use crate::stats::round;

/// The kind of the bench's jobs.
const KIND: &str = "bench_noop";

/// Where a scratch PostgreSQL database is created by default.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long the AMQP consumer is given to start: see [`start_consuming`].
const AMQP_CONSUMER_START: Duration = Duration::from_millis(1500);

/// Twice the Redis transport's blocking read (its poll interval, 1 s), so
/// that a read the worker dropped has expired before the first job is sent:
/// see [`start_consuming`].
const REDIS_SETTLE: Duration = Duration::from_secs(2);

/// How long the worker may take to finish its running jobs at the end.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The transport that carries job ids to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The `jobs` table of a SQLite database (the embedded default).
    Sqlite,
    /// The `jobs` table of a PostgreSQL database.
    Postgres,
    /// A Redis stream.
    Redis,
    /// RabbitMQ.
    #[value(alias = "rabbitmq")]
    Amqp,
}

impl Backend {
    /// The broker column of the report, in Dramatiq's words where they
    /// share a broker (`rabbitmq` for AMQP).
    fn broker(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Redis => "redis",
            Backend::Amqp => "rabbitmq",
        }
    }
}

/// Where the job rows of a broker backend live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RowStore {
    /// A SQLite file (a single node with a broker).
    Sqlite,
    /// A PostgreSQL database, as when several processes share the queue.
    Postgres,
}

/// What the `queue` subcommand runs.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueOptions {
    /// The transport between `Jobs::enqueue` and the worker.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// Measured jobs.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Jobs the worker runs at once (Dramatiq's reference: 2 processes × 8
    /// threads = 16).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Tasks enqueueing at once, each one job after the other. 1, the
    /// default, is how dramatiq_bench.py sends; more is how a server's
    /// concurrent requests enqueue.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Jobs run to completion before the measured ones (0 for none).
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// The broker: Redis for `redis` (default redis://127.0.0.1:6379),
    /// RabbitMQ for `amqp` (default amqp://guest:guest@127.0.0.1:5672/%2f);
    /// for `postgres`, the PostgreSQL server (as --postgres-url).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Where the job rows live with `redis` and `amqp` (default postgres).
    /// `sqlite` and `postgres` keep them in their own database.
    #[arg(long, value_enum, value_name = "sqlite|postgres")]
    pub rows: Option<RowStore>,
    /// The PostgreSQL server on which a database is created for the run
    /// and dropped after it.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_POSTGRES_URL",
        default_value = DEFAULT_POSTGRES_URL,
        value_name = "URL",
        hide_env_values = true
    )]
    pub postgres_url: String,
    /// Give up when a batch is not done this many seconds after its first
    /// enqueue.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Enqueue with `Jobs::enqueue_many`, this many jobs a call (one
    /// transaction and one broker round trip each), instead of one
    /// `Jobs::enqueue` per job. 0, the default, enqueues one by one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub enqueue_batch: usize,
    /// Finished (succeeded) jobs put in the jobs table before the run, in
    /// one statement, to measure the queue on a table that has grown.
    #[arg(long, default_value_t = 0, value_name = "ROWS")]
    pub seed_rows: usize,
}

/// What a `queue` run measured: the one JSON line it prints, in the shape
/// of `dramatiq_bench.py`'s.
#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    /// `switchboard`.
    pub system: &'static str,
    /// `sqlite`, `postgres`, `redis` or `rabbitmq`.
    pub broker: &'static str,
    /// Measured jobs.
    pub jobs: usize,
    /// Enqueueing the measured jobs.
    pub enqueue_s: f64,
    /// From the first enqueue until every measured job had succeeded.
    pub total_s: f64,
    /// `jobs / total_s`.
    pub jobs_per_s: f64,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Where the job rows were: `sqlite` or `postgres`.
    pub rows: &'static str,
    /// Jobs run before the measured ones.
    pub warmup: usize,
    /// Tasks that enqueued at once.
    pub producers: usize,
    /// Jobs per `Jobs::enqueue_many` call; 0 when enqueued one by one.
    pub enqueue_batch: usize,
    /// Finished jobs already in the table when the run began.
    pub seeded_rows: usize,
}

/// Runs the warm-up and the measured batch, then removes the run's
/// database, keys and queues.
///
/// # Errors
///
/// When a service cannot be reached, the scratch database cannot be made,
/// a job cannot be enqueued, the jobs do not finish within the timeout, or
/// the run is interrupted (Ctrl-C, SIGTERM). Failing to clean up is only
/// logged.
pub async fn run(options: &QueueOptions) -> anyhow::Result<QueueReport> {
    let rows = match (options.backend, options.rows) {
        (Backend::Sqlite, None | Some(RowStore::Sqlite)) => RowStore::Sqlite,
        (Backend::Postgres, None | Some(RowStore::Postgres)) => RowStore::Postgres,
        (Backend::Sqlite | Backend::Postgres, Some(_)) => {
            bail!("--rows is for the broker backends (redis, amqp)")
        }
        (Backend::Redis | Backend::Amqp, rows) => rows.unwrap_or(RowStore::Postgres),
    };
    let postgres_url = match (options.backend, &options.url) {
        (Backend::Postgres, Some(url)) => url.as_str(),
        _ => options.postgres_url.as_str(),
    };
    let database = match rows {
        RowStore::Sqlite => ScratchDatabase::sqlite()?,
        RowStore::Postgres => ScratchDatabase::postgres(postgres_url).await?,
    };
    let broker = match options.backend {
        Backend::Sqlite | Backend::Postgres => None,
        Backend::Redis => Some(ScratchBroker::Redis {
            url: url_or(options, DEFAULT_REDIS_URL),
            prefix: scratch::unique_name(),
        }),
        Backend::Amqp => Some(ScratchBroker::Amqp {
            url: url_or(options, DEFAULT_AMQP_URL),
            prefix: scratch::unique_name(),
        }),
    };
    let rows = database.kind();
    let outcome = tokio::select! {
        outcome = measure(options, &database, broker.as_ref()) => outcome,
        () = interrupted() => Err(anyhow!("interrupted")),
    };
    // The measurement's connections are closed (or its future dropped) by
    // now; what is left of the run goes.
    if let Some(broker) = broker
        && let Err(err) = broker.remove().await
    {
        tracing::warn!(
            error = format!("{err:#}"),
            "cannot remove the run's broker state"
        );
    }
    if let Err(err) = database.remove().await {
        tracing::warn!(
            error = format!("{err:#}"),
            "cannot remove the run's database"
        );
    }
    let (enqueue, total) = outcome?;
    let total_s = total.as_secs_f64();
    Ok(QueueReport {
        system: "switchboard",
        broker: options.backend.broker(),
        jobs: options.jobs,
        enqueue_s: round(enqueue.as_secs_f64(), 4),
        total_s: round(total_s, 4),
        jobs_per_s: round(options.jobs as f64 / total_s, 1),
        concurrency: options.concurrency,
        rows,
        warmup: options.warmup,
        producers: options.producers.max(1),
        enqueue_batch: options.enqueue_batch,
        seeded_rows: options.seed_rows,
    })
}

/// `--url`, or the backend's default.
fn url_or(options: &QueueOptions, default: &str) -> String {
    options.url.clone().unwrap_or_else(|| default.to_owned())
}

/// The broker state of one run, under a prefix nobody else uses.
enum ScratchBroker {
    Redis { url: String, prefix: String },
    Amqp { url: String, prefix: String },
}

impl ScratchBroker {
    /// Deletes the run's keys or queues.
    async fn remove(self) -> anyhow::Result<()> {
        match self {
            ScratchBroker::Redis { url, prefix } => {
                scratch::remove_redis_keys(&url, &prefix).await.map(drop)
            }
            ScratchBroker::Amqp { url, prefix } => scratch::remove_amqp_queues(&url, &prefix).await,
        }
    }
}

/// Connects, starts the worker, runs the warm-up and the measured batch;
/// `(enqueue time, total time)` of the measured one.
async fn measure(
    options: &QueueOptions,
    database: &ScratchDatabase,
    broker: Option<&ScratchBroker>,
) -> anyhow::Result<(Duration, Duration)> {
    let config = database.config();
    let db = Database::connect(&config)
        .await
        .context("cannot open the database")?;
    db.migrate().await.context("cannot migrate the database")?;
    seed_finished_jobs(&db, options.seed_rows).await?;
    let lease = Duration::from_secs(config.queue.lease_secs.max(1));
    // The library's defaults but for these: prefetch as many as run.
    let worker_config = WorkerConfig {
        name: format!("bench-{}", std::process::id()),
        concurrency: options.concurrency.max(1),
        lease,
        ..WorkerConfig::default()
    };
    // The AMQP transport is also kept by its own type, to be closed.
    let mut amqp = None;
    let transport: Arc<dyn JobTransport> = match broker {
        None => Arc::new(SqlTransport::new(
            db.clone(),
            Duration::from_millis(config.queue.poll_interval_ms),
        )),
        Some(ScratchBroker::Redis { url, prefix }) => Arc::new(
            RedisTransport::connect(RedisTransportConfig {
                url: url.clone(),
                prefix: prefix.clone(),
                lease,
                poll_interval: Duration::from_secs(1),
            })
            .await
            .context("cannot connect to Redis")?,
        ),
        Some(ScratchBroker::Amqp { url, prefix }) => {
            let transport = Arc::new(
                AmqpTransport::connect(AmqpTransportConfig {
                    url: url.clone(),
                    prefix: prefix.clone(),
                    concurrency: u16::try_from(worker_config.most_taken()).unwrap_or(u16::MAX),
                })
                .await
                .context("cannot connect to RabbitMQ")?,
            );
            amqp = Some(transport.clone());
            transport
        }
    };
    let counter = Arc::new(Counter::default());
    let worker = Worker::new(db.clone(), transport.clone(), worker_config).handle(
        KIND,
        RetryPolicy::default(),
        counter.clone(),
    );
    let stop = Shutdown::new();
    // Both steps work around a start-up race of the worker; see
    // `start_consuming`.
    if let Some(ScratchBroker::Amqp { .. }) = broker {
        start_consuming(transport.as_ref()).await;
    }
    let worker = tokio::spawn(Arc::new(worker).run(stop.signal(), STOP_GRACE));
    if let Some(ScratchBroker::Redis { .. }) = broker {
        tokio::time::sleep(REDIS_SETTLE).await;
    }
    let jobs = Jobs::new(db.clone(), transport);
    let timeout = Duration::from_secs(options.timeout_secs.max(1));

    let enqueue = Enqueue {
        producers: options.producers.max(1),
        batch: options.enqueue_batch,
    };
    let batches = async {
        if options.warmup > 0 {
            batch(&jobs, &db, &counter, options.warmup, 0, enqueue, timeout)
                .await
                .context("warm-up")?;
        }
        let measured = batch(
            &jobs,
            &db,
            &counter,
            options.jobs,
            options.warmup,
            enqueue,
            timeout,
        )
        .await?;
        let succeeded = succeeded(&jobs).await?;
        let expected = options.seed_rows + options.warmup + options.jobs;
        if succeeded != expected {
            bail!("{succeeded} jobs succeeded, not {expected}");
        }
        Ok(measured)
    }
    .await;

    stop.begin();
    let _ = worker.await;
    if let Some(amqp) = amqp {
        amqp.close().await.ok();
    }
    db.close().await;
    batches
}

/// Opens the AMQP transport's consumer before the worker starts, on the
/// still empty queue.
///
/// This and [`REDIS_SETTLE`] work around a start-up race of the worker,
/// which is not what the bench measures: the first tick of the worker's
/// resend interval is immediate, and when it wins the `select!` against a
/// `receive` already under way, that `receive` is dropped mid-way. On
/// RabbitMQ a consumer whose start was dropped stays subscribed and holds
/// up to `concurrency` jobs that nobody runs until the connection closes;
/// here the consumer is started by a `receive` that is given time to finish
/// setting up (nothing is queued, so it then just waits, and dropping it is
/// safe), and the worker's `receive` only waits on it. On Redis a dropped
/// blocking read (XREADGROUP … BLOCK, one poll interval) can still take the
/// next entry, which then waits out the lease (10 s): the first job is sent
/// only after [`REDIS_SETTLE`], once any such read has expired.
async fn start_consuming(transport: &dyn JobTransport) {
    if let Ok(Ok(delivery)) = tokio::time::timeout(AMQP_CONSUMER_START, transport.receive()).await {
        // Cannot happen on the run's fresh queue; acknowledged all the same.
        delivery.receipt.ack().await.ok();
    }
}

/// How a batch is enqueued.
#[derive(Debug, Clone, Copy)]
struct Enqueue {
    /// Tasks enqueueing at once.
    producers: usize,
    /// Jobs per `Jobs::enqueue_many` call; 0 for one `Jobs::enqueue` each.
    batch: usize,
}

/// Enqueues `count` jobs as `enqueue` says and waits until the handler has
/// run for all of them (and the `before` jobs of earlier batches) and no
/// row is left unfinished; `(enqueue time, total time)`.
async fn batch(
    jobs: &Jobs,
    db: &Database,
    counter: &Counter,
    count: usize,
    before: usize,
    enqueue: Enqueue,
    timeout: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let target = before + count;
    let new_job = || NewJob {
        kind: KIND,
        payload: serde_json::json!({}),
        max_attempts: RetryPolicy::default().max_attempts,
    };
    let start = Instant::now();
    let step = enqueue.producers;
    // Producer p enqueues jobs p, p + producers, …, one after the other or
    // `batch` at a time.
    let producers = (0..step).map(|p| async move {
        let mine = (p..count).step_by(step).count();
        if enqueue.batch == 0 {
            for _ in 0..mine {
                jobs.enqueue(new_job()).await.context("cannot enqueue")?;
            }
        } else {
            let mut left = mine;
            while left > 0 {
                let n = left.min(enqueue.batch);
                jobs.enqueue_many((0..n).map(|_| new_job()).collect())
                    .await
                    .context("cannot enqueue")?;
                left -= n;
            }
        }
        anyhow::Ok(())
    });
    futures::future::try_join_all(producers).await?;
    let enqueued = start.elapsed();
    let deadline = start + timeout;
    // The handlers first (no database reads while the jobs run), then the
    // rows: a handler returns before its worker records the success. Only
    // the unfinished rows are counted (through the partial indexes of
    // due and running jobs), so the finished rows of a grown table cost
    // the check nothing.
    counter.wait_for(target, deadline).await?;
    loop {
        let unfinished = unfinished(db).await?;
        if unfinished == 0 {
            return Ok((enqueued, start.elapsed()));
        }
        if Instant::now() > deadline {
            bail!("{unfinished} of {count} jobs unfinished after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Rows not finished: queued, retrying or running.
async fn unfinished(db: &Database) -> anyhow::Result<i64> {
    let sql = "SELECT (SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'retrying')) \
               + (SELECT COUNT(*) FROM jobs WHERE state = 'running')";
    let n: i64 = match db.pool() {
        Pool::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Pool::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
    };
    Ok(n)
}

/// Puts `rows` succeeded jobs in the table in one statement (PostgreSQL:
/// `generate_series`; SQLite: a recursive CTE), then updates the planner's
/// statistics, as autovacuum would on a table that grew over time.
async fn seed_finished_jobs(db: &Database, rows: usize) -> anyhow::Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let rows = i64::try_from(rows)?;
    // A day ago, in the table's Unix microseconds.
    let day_ago = std::time::SystemTime::now() - Duration::from_secs(86_400);
    let at = i64::try_from(day_ago.duration_since(std::time::UNIX_EPOCH)?.as_micros())?;
    let columns = "INSERT INTO jobs (id, kind, payload, state, attempts, max_attempts, run_at, \
                   worker, created_at, updated_at, started_at, finished_at) ";
    let values = "'seed-' || n, 'bench_seed', '{}', 'succeeded', 1, 5, $2 + n, 'seed', \
                  $2 + n, $2 + n, $2 + n, $2 + n";
    match db.pool() {
        Pool::Postgres(pool) => {
            let sql = format!("{columns} SELECT {values} FROM generate_series(1, $1::BIGINT) AS n");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(rows)
                .bind(at)
                .execute(pool)
                .await?;
            sqlx::query("ANALYZE jobs").execute(pool).await?;
        }
        Pool::Sqlite(pool) => {
            let sql = format!(
                "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1) \
                 {columns} SELECT {values} FROM seq"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(rows)
                .bind(at)
                .execute(pool)
                .await?;
            sqlx::query("ANALYZE jobs").execute(pool).await?;
        }
    }
    Ok(())
}

/// Jobs whose row says `succeeded`.
async fn succeeded(jobs: &Jobs) -> anyhow::Result<usize> {
    let counts = jobs.counts().await.context("cannot count the jobs")?;
    let succeeded = counts
        .into_iter()
        .find(|(state, _)| *state == JobState::Succeeded)
        .map_or(0, |(_, n)| n);
    Ok(usize::try_from(succeeded).unwrap_or(usize::MAX))
}

/// The handler of `bench_noop`: counts its runs.
#[derive(Debug, Default)]
struct Counter {
    ran: AtomicUsize,
    progress: Notify,
}

impl Counter {
    /// Waits until the handler has run `target` times in all.
    async fn wait_for(&self, target: usize, deadline: Instant) -> anyhow::Result<()> {
        loop {
            // Registered before the check, so a run in between wakes us.
            let progress = self.progress.notified();
            let ran = self.ran.load(Ordering::Acquire);
            if ran >= target {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("only {ran} of {target} jobs ran in time");
            }
            let _ = tokio::time::timeout(left, progress).await;
        }
    }
}

#[async_trait]
impl JobHandler for Counter {
    async fn run(&self, _job: &Job, _last_attempt: bool) -> Result<(), JobFailure> {
        self.ran.fetch_add(1, Ordering::AcqRel);
        self.progress.notify_waiters();
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM, so that the run still cleans up.
async fn interrupted() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_job_of_a_sqlite_run_succeeds() {
        let options = QueueOptions {
            backend: Backend::Sqlite,
            jobs: 40,
            concurrency: 4,
            producers: 3,
            warmup: 5,
            url: None,
            rows: None,
            postgres_url: DEFAULT_POSTGRES_URL.to_owned(),
            timeout_secs: 60,
            enqueue_batch: 0,
            seed_rows: 0,
        };
        let report = run(&options).await.expect("the run succeeds");
        assert_eq!(
            (report.broker, report.rows, report.jobs),
            ("sqlite", "sqlite", 40)
        );
        assert!(
            report.enqueue_s <= report.total_s && report.jobs_per_s > 0.0,
            "{report:?}"
        );
    }

    #[tokio::test]
    async fn rows_are_chosen_only_for_broker_backends() {
        let options = QueueOptions {
            backend: Backend::Postgres,
            jobs: 1,
            concurrency: 1,
            producers: 1,
            warmup: 0,
            url: None,
            rows: Some(RowStore::Sqlite),
            postgres_url: DEFAULT_POSTGRES_URL.to_owned(),
            timeout_secs: 1,
            enqueue_batch: 0,
            seed_rows: 0,
        };
        let err = run(&options).await.expect_err("refused");
        assert!(err.to_string().contains("--rows"), "{err:#}");
    }
}
