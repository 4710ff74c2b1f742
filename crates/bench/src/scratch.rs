//! Places a queue run owns and removes afterwards: the database of its job
//! rows (a SQLite file in a temporary directory, or a new PostgreSQL
//! database on the server), its Redis keys and its RabbitMQ queues (both
//! under a prefix of the run's own), so that runs never see each other's
//! jobs and leave nothing behind.

use anyhow::Context;
use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use switchboard_core::config::{Config, Secret};
use switchboard_testkit::ThrowawayPostgres;
use tempfile::TempDir;

/// The most delay buckets the AMQP transport declares per prefix
/// (`{prefix}.jobs.delayed.{2^k}ms`, k < 32).
const AMQP_DELAY_BUCKETS: u32 = 32;

/// What the names of a run's places start with.
const UNIQUE_PREFIX: &str = "sb_bench_";

/// A name no other run uses: `sb_bench_` and a UUID v7 without dashes, valid
/// as a PostgreSQL database name, a Redis key prefix and a queue prefix.
pub(crate) fn unique_name() -> String {
    format!("{UNIQUE_PREFIX}{}", uuid::Uuid::now_v7().simple())
}

/// The empty database of one run's job rows.
#[derive(Debug)]
pub(crate) enum ScratchDatabase {
    /// `switchboard.db` in a temporary directory, removed with it.
    Sqlite(TempDir),
    /// A database created on a PostgreSQL server for this run.
    Postgres(ThrowawayPostgres),
}

impl ScratchDatabase {
    /// A SQLite file in a new temporary directory.
    pub(crate) fn sqlite() -> anyhow::Result<ScratchDatabase> {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-bench.")
            .tempdir()
            .context("cannot create a temporary directory")?;
        Ok(ScratchDatabase::Sqlite(dir))
    }

    /// A new database on the PostgreSQL server at `server_url`.
    pub(crate) async fn postgres(server_url: &str) -> anyhow::Result<ScratchDatabase> {
        Ok(ScratchDatabase::Postgres(
            ThrowawayPostgres::create_on(server_url, UNIQUE_PREFIX).await?,
        ))
    }

    /// `sqlite` or `postgres`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ScratchDatabase::Sqlite(_) => "sqlite",
            ScratchDatabase::Postgres(_) => "postgres",
        }
    }

    /// The server's default configuration pointed at this database.
    pub(crate) fn config(&self) -> Config {
        match self {
            ScratchDatabase::Sqlite(dir) => Config {
                data_dir: dir.path().join("data"),
                ..Config::default()
            },
            ScratchDatabase::Postgres(database) => Config {
                database_url: Some(Secret::new(database.url().to_owned())),
                ..Config::default()
            },
        }
    }

    /// Deletes the database (FORCE ends connections still open).
    pub(crate) async fn remove(self) -> anyhow::Result<()> {
        match self {
            ScratchDatabase::Sqlite(dir) => {
                dir.close().context("cannot remove the SQLite directory")
            }
            ScratchDatabase::Postgres(database) => Ok(database.remove().await?),
        }
    }
}

/// Deletes every Redis key under `{prefix}:`; returns how many there were.
pub(crate) async fn remove_redis_keys(url: &str, prefix: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(url).context("bad Redis URL")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("cannot connect to Redis")?;
    let mut cursor = 0u64;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            removed += redis::cmd("DEL")
                .arg(&keys)
                .query_async::<u64>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// Deletes the job queue `{prefix}.jobs` and every delay bucket the AMQP
/// transport may have declared under `prefix`. RabbitMQ answers a delete of
/// a queue that does not exist with success, so every bucket name is tried.
pub(crate) async fn remove_amqp_queues(url: &str, prefix: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("cannot connect to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    let buckets = (0..AMQP_DELAY_BUCKETS).map(|k| format!("{prefix}.jobs.delayed.{}ms", 1u64 << k));
    for name in std::iter::once(format!("{prefix}.jobs")).chain(buckets) {
        channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("cannot delete the queue {name}"))?;
    }
    connection.close(200, "done".into()).await.ok();
    Ok(())
}
