//! `apalis-peer`: apalis's queue throughput, enqueue -> done, for the
//! queue section of `scripts/bench.sh`, beside `switchboard-bench queue`
//! and `dramatiq_bench.py`.
//!
//! usage: `apalis-peer --backend redis|postgres [--jobs N] [--concurrency C]
//! [--warmup W] [--url URL]`
//!
//! One process: a worker of `concurrency` tasks at once (apalis's
//! `concurrency` layer, tasks spawned on the tokio runtime) on the apalis
//! backend, `warmup` jobs run to completion first, then `jobs` no-op jobs
//! pushed one after the other (`enqueue_s`); `total_s` runs from the first
//! push until the handler has run for every job, as Dramatiq's bench counts.
//! The job does nothing but count itself. Every run uses a queue of its own
//! (Redis: its own key namespace, deleted afterwards; PostgreSQL: a database
//! of its own, dropped afterwards). Prints one JSON line:
//! `{"system": "apalis", "broker", "jobs", "enqueue_s", "total_s",
//! "jobs_per_s", "concurrency", "apalis_version"}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::{PgPool, PostgresStorage};
use apalis_redis::RedisStorage;
use serde::{Deserialize, Serialize};

/// The release of apalis this peer is built with (Cargo.toml pins it).
const APALIS_VERSION: &str = "1.0.0";

/// The no-op job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    n: usize,
}

/// Counts the handler's runs.
#[derive(Debug, Default)]
struct Counter(AtomicUsize);

async fn noop(_job: Noop, counter: Data<Arc<Counter>>) -> Result<(), BoxDynError> {
    let counter: &Counter = &counter;
    counter.0.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

/// Starts a worker on `$backend`, pushes through `$sink` (a handle on
/// the same queue), runs the warm-up and the measured batch; evaluates to
/// `(enqueue time, total time)` of the measured one. A macro, not a generic
/// function: apalis's backend, sink and codec bounds are long to spell out.
macro_rules! measure {
    ($backend:expr, $sink:expr, $options:expr, $counter:expr) => {{
        let options: &Options = $options;
        let counter: &Arc<Counter> = $counter;
        let backend = $backend;
        let mut sink = $sink;
        let worker = WorkerBuilder::new("apalis-peer")
            .backend(backend)
            .concurrency(options.concurrency)
            .parallelize(tokio::spawn)
            .data(counter.clone())
            .build(noop);
        // The worker's future is driven beside the pushes in this task (it
        // is not `Send` for every lifetime, so it cannot be spawned).
        let running = worker.run();
        tokio::pin!(running);
        let batches = async {
            let mut batches = Vec::new();
            for (first, count) in [(0, options.warmup), (options.warmup, options.jobs)] {
                let start = Instant::now();
                for n in first..first + count {
                    sink.push(Noop { n }).await.expect("cannot push a job");
                }
                let enqueued = start.elapsed();
                wait_for(counter, first + count, start).await;
                batches.push((enqueued, start.elapsed()));
            }
            batches
        };
        let batches = tokio::select! {
            outcome = &mut running => panic!("the apalis worker stopped: {:?}", outcome.err()),
            batches = batches => batches,
        };
        batches[1]
    }};
}

/// What the command line asks for.
struct Options {
    backend: String,
    jobs: usize,
    concurrency: usize,
    warmup: usize,
    url: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        backend: String::new(),
        jobs: 2000,
        concurrency: 16,
        warmup: 200,
        url: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = || {
            value
                .parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: not a number")))
        };
        match flag.as_str() {
            "--backend" => options.backend = value.clone(),
            "--jobs" => options.jobs = number(),
            "--concurrency" => options.concurrency = number(),
            "--warmup" => options.warmup = number(),
            "--url" => options.url = Some(value.clone()),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    options
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "apalis-peer: {problem}\nusage: apalis-peer --backend redis|postgres [--jobs N] [--concurrency C] [--warmup W] [--url URL]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let options = options();
    let name = format!("apalis-peer-{}", std::process::id());
    let counter = Arc::new(Counter::default());
    let measured = match options.backend.as_str() {
        "redis" => {
            let url = options
                .url
                .clone()
                .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
            let conn = apalis_redis::connect(url.as_str())
                .await
                .expect("cannot connect to Redis");
            let config = apalis_redis::Config::default().queue(&name);
            let storage = RedisStorage::<Noop>::new(conn.clone()).with_config(config);
            let measured = measure!(storage.clone(), storage, &options, &counter);
            remove_redis_keys(conn, &name).await;
            measured
        }
        "postgres" => {
            let url = options
                .url
                .clone()
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
            let admin = PgPool::connect(&url)
                .await
                .expect("cannot connect to PostgreSQL");
            let database = name.replace('-', "_");
            sqlx_execute(&admin, &format!("CREATE DATABASE {database}")).await;
            let pool = PgPool::connect(&database_url(&url, &database))
                .await
                .expect("cannot connect to the run's database");
            PostgresStorage::setup(&pool)
                .await
                .expect("cannot set up apalis's tables");
            let config = apalis_postgres::Config::default().queue(&name);
            // The worker is woken by LISTEN/NOTIFY (apalis's pubsub), not a
            // poll interval; pushes go through a plain handle on the queue.
            let sink = PostgresStorage::<Noop>::new(&pool).with_config(config.clone());
            let backend = PostgresStorage::<Noop>::new(&pool)
                .with_config(config)
                .with_pubsub();
            let measured = measure!(backend, sink, &options, &counter);
            pool.close().await;
            sqlx_execute(
                &admin,
                &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            )
            .await;
            measured
        }
        other => usage(&format!("unknown backend {other:?}")),
    };
    let (enqueue, total) = measured;
    let total_s = total.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "system": "apalis",
            "broker": options.backend,
            "jobs": options.jobs,
            "enqueue_s": round(enqueue.as_secs_f64()),
            "total_s": round(total_s),
            "jobs_per_s": (options.jobs as f64 / total_s * 10.0).round() / 10.0,
            "concurrency": options.concurrency,
            "apalis_version": APALIS_VERSION,
        })
    );
    // The worker task still runs; the process ends here.
    std::process::exit(0);
}

/// Waits until the handler has run `target` times in all.
async fn wait_for(counter: &Counter, target: usize, start: Instant) {
    while counter.0.load(Ordering::Acquire) < target {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {} of {target} jobs ran within 300 s",
            counter.0.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Deletes every key of the run's namespace.
async fn remove_redis_keys(mut conn: apalis_redis::ConnectionManager, namespace: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// Runs one statement on `pool`, failing the run if it fails.
async fn sqlx_execute(pool: &PgPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
}

/// `url` with its database replaced by `database`.
fn database_url(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

fn round(seconds: f64) -> f64 {
    (seconds * 10_000.0).round() / 10_000.0
}
