//! The database: SQLite (the embedded default) or PostgreSQL, chosen by the
//! configuration, behind one [`Database`] enum.
//!
//! Queries are plain runtime SQL (`sqlx::query` / `query_as`), written once
//! in the dialect both engines accept: `$1` placeholders (sqlx's SQLite
//! driver binds `$N` by number), `TEXT` ids (UUID v7 strings) and `BIGINT`
//! timestamps in Unix microseconds. The [`on_database!`] macro runs the same
//! code against whichever pool is configured; each arm is type-checked for
//! its own driver.
//!
//! Migrations are embedded, one set per engine (`migrations/sqlite`,
//! `migrations/postgres`). The migrator ignores applied migrations it does
//! not know, so a database that a newer version migrated still starts an
//! older binary during a rolling upgrade.

use std::time::Duration;

use chrono::{DateTime, Utc};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::{Config, DatabaseTarget, SqliteLocation};
use crate::error::{Error, Result};

/// How long a caller waits for a pooled connection before the database
/// counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long SQLite waits on a locked database before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection pool to the configured database. Cloning is cheap and
/// shares the pool.
#[derive(Debug, Clone)]
pub enum Database {
    /// An embedded SQLite database file.
    Sqlite(SqlitePool),
    /// A PostgreSQL server.
    Postgres(PgPool),
}

/// Which engine a [`Database`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Runs the same code against either pool: `$pool` is bound to the
/// `SqlitePool` or the `PgPool`, and `$body` is compiled once for each.
///
/// ```no_run
/// # async fn demo(db: &switchboard_core::db::Database) -> switchboard_core::Result<()> {
/// use switchboard_core::on_database;
/// let sql = "SELECT COUNT(*) FROM conversations";
/// let count: i64 = on_database!(db, pool => sqlx::query_scalar(sql).fetch_one(pool).await?);
/// # Ok(())
/// # }
/// ```
#[macro_export]
macro_rules! on_database {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Database::Sqlite($pool) => $body,
            $crate::db::Database::Postgres($pool) => $body,
        }
    };
}

/// The current time, truncated to what the database keeps (microseconds),
/// so a value returned by a write equals the value read back later.
pub(crate) fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap_or_default()
}

/// A time as stored: Unix microseconds.
pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// A stored time (Unix microseconds) as a time.
///
/// # Errors
///
/// [`Error::Internal`] for a value out of range (a corrupt row).
pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| Error::internal(format!("stored timestamp {micros} is out of range")))
}

/// An open transaction on either engine. Statements run in it through
/// [`on_tx!`]; it rolls back when dropped without [`Tx::commit`].
#[derive(Debug)]
pub enum Tx {
    /// A SQLite transaction, begun `IMMEDIATE` so that it holds the write
    /// lock from its first statement and never fails to upgrade later.
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    /// A PostgreSQL transaction.
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Runs the same code on the connection of a [`Tx`]: `$conn` is bound to
/// `&mut SqliteConnection` or `&mut PgConnection`.
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::db::Tx::Sqlite(transaction) => {
                let $conn = &mut **transaction;
                $body
            }
            $crate::db::Tx::Postgres(transaction) => {
                let $conn = &mut **transaction;
                $body
            }
        }
    };
}

impl Tx {
    /// Commits the transaction.
    ///
    /// # Errors
    ///
    /// The database error, as [`Error`].
    pub async fn commit(self) -> Result<()> {
        match self {
            Self::Sqlite(tx) => tx.commit().await?,
            Self::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

impl Database {
    /// Begins a transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if no connection can be had.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match self {
            Self::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Self::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Opens a pool to the database `config` selects. For SQLite, creates
    /// the data directory and the database file if missing, and sets WAL
    /// journaling, `synchronous=NORMAL` (durable across application crashes,
    /// cheap fsyncs), foreign keys on and a 5 s busy timeout.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if the directory cannot be created or the
    /// database cannot be reached; [`Error::Internal`] for a malformed URL.
    pub async fn connect(config: &Config) -> Result<Database> {
        match config.database_target() {
            DatabaseTarget::Sqlite(location) => {
                let options = match location {
                    SqliteLocation::File(path) => SqliteConnectOptions::new().filename(path),
                    SqliteLocation::Url(url) => url
                        .parse::<SqliteConnectOptions>()
                        .map_err(|e| Error::internal(format!("database_url: {e}")))?,
                };
                let options = options
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT);
                if let Some(dir) = options.get_filename().parent()
                    && !dir.as_os_str().is_empty()
                {
                    tokio::fs::create_dir_all(dir).await.map_err(|e| {
                        Error::Unavailable(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(config.database_max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(|e| Error::Unavailable(format!("cannot open SQLite database: {e}")))?;
                Ok(Database::Sqlite(pool))
            }
            DatabaseTarget::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(config.database_max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect(url.expose())
                    .await
                    .map_err(|e| {
                        Error::Unavailable(format!("cannot connect to PostgreSQL: {e}"))
                    })?;
                Ok(Database::Postgres(pool))
            }
        }
    }

    /// Which engine this is.
    pub fn kind(&self) -> DatabaseKind {
        match self {
            Self::Sqlite(_) => DatabaseKind::Sqlite,
            Self::Postgres(_) => DatabaseKind::Postgres,
        }
    }

    /// Applies the embedded migrations that have not run yet.
    ///
    /// # Errors
    ///
    /// [`Error::Internal`] if a migration fails or an applied one was edited.
    pub async fn migrate(&self) -> Result<()> {
        match self {
            Self::Sqlite(pool) => {
                let mut migrator = sqlx::migrate!("./migrations/sqlite");
                migrator.set_ignore_missing(true);
                migrator.run(pool).await?;
            }
            Self::Postgres(pool) => {
                let mut migrator = sqlx::migrate!("./migrations/postgres");
                migrator.set_ignore_missing(true);
                migrator.run(pool).await?;
            }
        }
        Ok(())
    }

    /// Checks that the database answers a trivial query.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if it does not.
    pub async fn ping(&self) -> Result<()> {
        on_database!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
            .map_err(|e| Error::Unavailable(format!("database: {e}")))
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        on_database!(self, pool => pool.close().await);
    }
}
