//! The worker's slots with prefetch: never more jobs running than its
//! concurrency, and a stop runs the jobs it had already started (running or
//! prefetched) within the grace while the untaken ones stay queued. On a
//! SQLite file and the SQL transport, so nothing but the worker is tested.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use switchboard_core::config::Config;
use switchboard_core::db::Database;
use switchboard_core::jobs::{
    Job, JobFailure, JobHandler, JobState, JobTransport, Jobs, NewJob, RetryPolicy,
};
use switchboard_core::shutdown::Shutdown;
use switchboard_workers::{SqlTransport, Worker, WorkerConfig};
use tokio::sync::Notify;

const KIND: &str = "slots_test";

/// Sleeps `hold` per run, counting the runs and the most at once.
struct Holding {
    hold: Duration,
    now: AtomicUsize,
    most: AtomicUsize,
    started: AtomicUsize,
    ran: AtomicUsize,
    first_started: Notify,
}

impl Holding {
    fn new(hold: Duration) -> Arc<Self> {
        Arc::new(Self {
            hold,
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            ran: AtomicUsize::new(0),
            first_started: Notify::new(),
        })
    }
}

#[async_trait]
impl JobHandler for Holding {
    async fn run(&self, _job: &Job, _last_attempt: bool) -> Result<(), JobFailure> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        if self.started.fetch_add(1, Ordering::SeqCst) == 0 {
            self.first_started.notify_one();
        }
        tokio::time::sleep(self.hold).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.ran.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A migrated SQLite database in a directory of its own.
struct Scratch {
    dir: PathBuf,
    db: Database,
}

impl Scratch {
    async fn new() -> Self {
        let unique = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("sb-worker-slots-{}-{unique}", std::process::id()));
        let config = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        let db = Database::connect(&config).await.expect("open the database");
        db.migrate().await.expect("migrate");
        Self { dir, db }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running worker (concurrency 2, prefetch 2) over `count` queued jobs
/// that each hold their slot for `hold`.
struct Running {
    _scratch: Scratch,
    jobs: Jobs,
    handler: Arc<Holding>,
    stop: Shutdown,
    worker: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(count: usize, hold: Duration) -> Self {
        let scratch = Scratch::new().await;
        let transport: Arc<dyn JobTransport> = Arc::new(SqlTransport::new(
            scratch.db.clone(),
            Duration::from_millis(50),
        ));
        let jobs = Jobs::new(scratch.db.clone(), transport.clone());
        jobs.enqueue_many((0..count).map(|_| new_job()).collect())
            .await
            .expect("enqueue");
        let handler = Holding::new(hold);
        let config = WorkerConfig {
            name: "slots-test".to_owned(),
            concurrency: 2,
            prefetch: 2,
            lease: Duration::from_secs(10),
            ..WorkerConfig::default()
        };
        let worker = Worker::new(scratch.db.clone(), transport, config).handle(
            KIND,
            RetryPolicy::default(),
            handler.clone(),
        );
        let stop = Shutdown::new();
        let worker = tokio::spawn(Arc::new(worker).run(stop.signal(), Duration::from_secs(5)));
        Self {
            _scratch: scratch,
            jobs,
            handler,
            stop,
            worker,
        }
    }
}

fn new_job() -> NewJob {
    NewJob {
        kind: KIND,
        payload: serde_json::json!({}),
        max_attempts: 3,
    }
}

async fn count(jobs: &Jobs, state: JobState) -> u64 {
    jobs.counts()
        .await
        .expect("count the jobs")
        .into_iter()
        .find_map(|(s, n)| (s == state).then_some(n))
        .unwrap_or(0)
}

#[tokio::test]
async fn prefetch_never_runs_more_jobs_than_the_concurrency() {
    let run = Running::start(20, Duration::from_millis(20)).await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while count(&run.jobs, JobState::Succeeded).await < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("all 20 jobs succeed");
    run.stop.begin();
    run.worker.await.expect("the worker stops");
    assert_eq!(
        run.handler.ran.load(Ordering::SeqCst),
        20,
        "each job ran once"
    );
    assert_eq!(
        run.handler.most.load(Ordering::SeqCst),
        2,
        "two at once, never more, though four were taken"
    );
}

#[tokio::test]
async fn a_stop_runs_the_started_jobs_and_leaves_the_rest_queued() {
    let run = Running::start(10, Duration::from_millis(300)).await;
    run.handler.first_started.notified().await;
    // Two running, two prefetched by now (one batch of four).
    tokio::time::sleep(Duration::from_millis(50)).await;
    run.stop.begin();
    tokio::time::timeout(Duration::from_secs(10), run.worker)
        .await
        .expect("the worker stops within the grace")
        .expect("the worker task");
    let jobs = &run.jobs;
    let ran = run.handler.ran.load(Ordering::SeqCst);
    assert_eq!(ran, 4, "the two running and the two prefetched jobs ran");
    assert_eq!(count(jobs, JobState::Succeeded).await, 4);
    assert_eq!(count(jobs, JobState::Running).await, 0, "none abandoned");
    assert_eq!(count(jobs, JobState::Queued).await, 6, "the rest untaken");
}
