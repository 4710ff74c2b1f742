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
//! For a SQLite file, the hot paths of a chat turn bypass sqlx and run on
//! direct connections of our own ([`direct`]), and every write of the
//! process, direct or through sqlx, takes one write gate first.
//!
//! Migrations are embedded, one set per engine (`migrations/sqlite`,
//! `migrations/postgres`). The migrator ignores applied migrations it does
//! not know, so a database that a newer version migrated still starts an
//! older binary during a rolling upgrade.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::{Config, DatabaseTarget, SqliteLocation};
use crate::error::{Error, Result};

pub mod direct;
pub mod kept;
mod sqlite_file;

use direct::{Direct, WriteGate};
use kept::Kept;

/// How long a caller waits for a pooled connection before the database
/// counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long SQLite waits on a locked database before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Below this much free space on the SQLite file's filesystem the database
/// counts as not writable: SQLite needs room for the WAL and new pages, and
/// a write that runs out of it half way fails.
const MIN_FREE_BYTES: u64 = 128 * 1024;

/// How much the readiness probe asks SQLite to allocate (and then rolls
/// back): enough new pages that a database at its size cap, or without free
/// pages to reuse, refuses it.
const PROBE_BYTES: u32 = 64 * 1024;

/// A connection pool to the configured database. Cloning is cheap and
/// shares the pool.
#[derive(Debug, Clone)]
pub struct Database {
    pool: Pool,
    /// Direct connections and the write gate, for a SQLite file; `None`
    /// for PostgreSQL and in-memory SQLite. See [`direct`].
    direct: Option<Arc<Direct>>,
    /// Connections kept for single statements, for PostgreSQL; see
    /// [`kept`].
    kept: Option<Arc<Kept>>,
    /// The SQLite file, for its permissions and its filesystem's free space;
    /// `None` for PostgreSQL and in-memory SQLite.
    sqlite_file: Option<PathBuf>,
    /// `database_sqlite_max_bytes` as SQLite pages, applied to every
    /// connection before it is handed out; `None` when uncapped.
    page_cap: Option<Arc<AtomicU64>>,
    /// The last writability probe: when it finished, and what it found.
    last_probe: Arc<tokio::sync::Mutex<Option<ProbeOutcome>>>,
}

/// When a writability probe finished, and what it found (the reason when
/// the database cannot take writes).
type ProbeOutcome = (std::time::Instant, Result<(), String>);

/// The pool inside a [`Database`], one variant per engine. Reach it through
/// [`on_database!`].
#[derive(Debug, Clone)]
pub enum Pool {
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
///
/// This is the pool for reads. A single-statement write goes through
/// [`on_writer!`]; writes of more than one statement go through
/// [`Database::begin`] and [`on_tx!`], never through the pool's own
/// `begin`: see [`Tx`].
#[macro_export]
macro_rules! on_database {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db.pool() {
            $crate::db::Pool::Sqlite($pool) => $body,
            $crate::db::Pool::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body`, one statement on `$conn` (a `&mut PgConnection`) that
/// evaluates to a `sqlx::Result`, on a connection of `$kept` ([`kept`]),
/// keeping the connection again if it succeeded. Evaluates to the crate's
/// `Result`: the statement's outcome, or the error of taking a connection.
#[macro_export]
macro_rules! on_kept {
    ($kept:expr, $conn:ident => $body:expr) => {
        match $kept.take().await {
            Err(err) => Err(err),
            Ok(mut kept_connection) => {
                let $conn: &mut sqlx::PgConnection = &mut kept_connection;
                let result = $body;
                if result.is_ok() {
                    kept_connection.keep();
                }
                result.map_err($crate::Error::from)
            }
        }
    };
}

/// [`on_database!`] for a single-statement write: the body runs holding
/// the process's write gate ([`Database::write_gate`]), so it never meets
/// another writer of this process inside SQLite. A write sent through
/// [`on_database!`] instead is still correct, only slower when writers meet
/// (it waits in SQLite's busy handler).
#[macro_export]
macro_rules! on_writer {
    ($db:expr, $pool:ident => $body:expr) => {{
        let _gate = $db.write_gate().await;
        match $db.pool() {
            $crate::db::Pool::Sqlite($pool) => $body,
            $crate::db::Pool::Postgres($pool) => $body,
        }
    }};
}

/// The current time, truncated to what the database keeps (microseconds),
/// so a value returned by a write equals the value read back later.
pub fn now() -> DateTime<Utc> {
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
/// [`on_tx!`]; [`Tx::commit`] ends it.
///
/// The transaction is our own `BEGIN … COMMIT` on a pooled connection, not
/// sqlx's `Transaction`, because of what happens when it fails. SQLite may
/// roll a transaction back by itself when a statement or the COMMIT fails
/// (SQLITE_FULL, SQLITE_IOERR) or keep it open (a ROLLBACK refused while a
/// statement is still in progress), and sqlx's bookkeeping of the nesting
/// depth then no longer matches the connection: the connection went back to
/// the pool still inside a transaction, later writes on it answered success
/// without ever committing, and its write lock made every other writer wait
/// out its busy timeout. So here a connection whose transaction did not end
/// cleanly is closed, never reused:
///
/// * [`Tx::commit`] answers success only after COMMIT succeeded; if COMMIT
///   fails the connection is closed (closing rolls back whatever is left);
/// * a `Tx` dropped without a commit (an error, an early return, a cancelled
///   request) is rolled back on a background task, and its connection is
///   closed instead of returned if the ROLLBACK fails.
#[derive(Debug)]
pub enum Tx {
    /// A SQLite transaction, begun `IMMEDIATE` so that it holds the write
    /// lock from its first statement and never fails to upgrade later.
    Sqlite(TxConnection<sqlx::Sqlite>),
    /// A PostgreSQL transaction.
    Postgres(TxConnection<sqlx::Postgres>),
}

/// The pooled connection of an open [`Tx`]. It dereferences to the driver's
/// connection, which is what statements run on.
#[derive(Debug)]
pub struct TxConnection<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    /// Always `Some` until [`TxConnection::commit`] or `drop` takes it.
    conn: Option<PoolConnection<DB>>,
    /// The write gate (SQLite), held until the transaction has ended.
    gate: Option<WriteGate>,
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

impl<DB> TxConnection<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    /// Sends `begin` on `conn`.
    ///
    /// Every await here and in [`TxConnection::commit`] and
    /// [`TxConnection::rollback`] happens with the connection inside the
    /// guard: a request cancelled in the middle (a deadline, a client gone)
    /// drops the guard, whose rollback runs after the statement the driver
    /// still finishes, so the pool never gets back a connection that a
    /// late BEGIN left inside a transaction.
    async fn begin(
        conn: PoolConnection<DB>,
        gate: Option<WriteGate>,
        begin: &'static str,
    ) -> Result<Self> {
        let mut tx = Self {
            conn: Some(conn),
            gate,
        };
        if let Err(err) = sqlx::raw_sql(begin).execute(&mut *tx).await {
            // Not in a transaction: the connection goes back as it is.
            tx.conn.take();
            return Err(err.into());
        }
        Ok(tx)
    }

    /// Sends COMMIT. On failure the connection is closed, so the pool never
    /// hands out a connection whose transaction may still be open.
    async fn commit(mut self) -> Result<()> {
        let committed = sqlx::raw_sql("COMMIT").execute(&mut *self).await;
        let Some(mut conn) = self.conn.take() else {
            return Err(Error::internal("the transaction has already ended"));
        };
        match committed {
            Ok(_) => Ok(()),
            Err(err) => {
                tracing::warn!(error = %err, "COMMIT failed; the connection is closed");
                // Best effort: the close rolls back too, but a ROLLBACK now
                // releases SQLite's write lock before the close is scheduled.
                let _ = rollback(&mut conn).await;
                conn.close_on_drop();
                Err(err.into())
            }
        }
    }

    /// Sends ROLLBACK now, closing the connection if it fails.
    async fn rollback(mut self) -> Result<()> {
        let rolled_back = rollback(&mut self).await;
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        rolled_back.map_err(|err| {
            conn.close_on_drop();
            err.into()
        })
    }
}

impl<DB> Deref for TxConnection<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        // Taken only by a failed begin, by commit and rollback (both of which
        // consume the value) and by drop.
        self.conn
            .as_ref()
            .expect("an open transaction has its connection")
    }
}

impl<DB> DerefMut for TxConnection<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.conn
            .as_mut()
            .expect("an open transaction has its connection")
    }
}

impl<DB> Drop for TxConnection<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // Dropped without a commit: roll back before the connection is
        // reused, and before the next writer is let in. Drop cannot await,
        // so a task does it; without a runtime (the process is ending)
        // closing the connection rolls back.
        let gate = self.gate.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(err) = rollback(&mut conn).await {
                        tracing::warn!(error = %err, "ROLLBACK failed; the connection is closed");
                        conn.close_on_drop();
                    }
                    drop(conn);
                    drop(gate);
                });
            }
            Err(_) => conn.close_on_drop(),
        }
    }
}

/// Sends ROLLBACK on `conn`.
async fn rollback<DB>(conn: &mut DB::Connection) -> sqlx::Result<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    sqlx::raw_sql("ROLLBACK").execute(conn).await.map(drop)
}

impl Tx {
    /// Rolls the transaction back now, instead of in the background as a
    /// drop does.
    ///
    /// # Errors
    ///
    /// The database error, as [`Error`]; the connection is then closed.
    pub async fn rollback(self) -> Result<()> {
        match self {
            Self::Sqlite(tx) => tx.rollback().await,
            Self::Postgres(tx) => tx.rollback().await,
        }
    }

    /// Commits the transaction: success means the writes are stored.
    ///
    /// # Errors
    ///
    /// The database error, as [`Error`]; the transaction is then rolled
    /// back and its connection closed.
    pub async fn commit(self) -> Result<()> {
        match self {
            Self::Sqlite(tx) => tx.commit().await,
            Self::Postgres(tx) => tx.commit().await,
        }
    }
}

/// The readiness error for a database that cannot take writes.
fn not_writable(err: Error) -> Error {
    Error::Unavailable(format!("database: not writable: {}", err.public_message()))
}

/// Caps the database reached through `conn` at `bytes`, in the file's own
/// page size.
async fn apply_size_cap(conn: &mut sqlx::SqliteConnection, bytes: u64) -> sqlx::Result<()> {
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut *conn)
        .await?;
    let pragma = max_page_count_pragma(bytes, page_size);
    sqlx::raw_sql(sqlx::AssertSqlSafe(pragma))
        .execute(&mut *conn)
        .await
        .map(drop)
}

/// The `PRAGMA max_page_count` that holds a database of `page_size`-byte
/// pages under `bytes` (at least one page).
fn max_page_count_pragma(bytes: u64, page_size: i64) -> String {
    let pages = (bytes / u64::try_from(page_size).unwrap_or(4096).max(512)).max(1);
    format!("PRAGMA max_page_count = {pages}")
}

/// Bytes free to unprivileged writers on the filesystem holding `file`.
fn free_bytes(file: &Path) -> Result<u64> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stats = rustix::fs::statvfs(dir)
        .map_err(|e| Error::Unavailable(format!("database: cannot stat {}: {e}", dir.display())))?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Whether the configured SQLite database lives in a file (not in memory),
/// and where.
fn sqlite_file(options: &SqliteConnectOptions) -> Option<PathBuf> {
    let path = options.get_filename();
    let name = path.as_os_str();
    (!name.is_empty() && name != ":memory:").then(|| path.to_path_buf())
}

impl Database {
    /// The pool for reads, for [`on_database!`].
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The pool's connections now: `(open, idle)`. Kept PostgreSQL
    /// connections ([`kept`]) count as open and not idle: they are out of
    /// the pool's hands.
    pub fn pool_usage(&self) -> (u32, usize) {
        match &self.pool {
            Pool::Sqlite(pool) => (pool.size(), pool.num_idle()),
            Pool::Postgres(pool) => (pool.size(), pool.num_idle()),
        }
    }

    /// How long taking a connection from the pool takes now (it is given
    /// back at once): about nothing while one is free, the wait for one
    /// while all are in use. A pool that cannot give one by its acquire
    /// timeout counts as having waited that long.
    pub async fn pool_acquire_wait(&self) -> std::time::Duration {
        let started = std::time::Instant::now();
        let _ = match &self.pool {
            Pool::Sqlite(pool) => pool.acquire().await.map(drop),
            Pool::Postgres(pool) => pool.acquire().await.map(drop),
        };
        started.elapsed()
    }

    /// The pool's ceiling (`database_max_connections`).
    pub fn pool_max(&self) -> u32 {
        match &self.pool {
            Pool::Sqlite(pool) => pool.options().get_max_connections(),
            Pool::Postgres(pool) => pool.options().get_max_connections(),
        }
    }

    /// The direct SQLite connections ([`direct`]), for a SQLite file.
    pub fn direct(&self) -> Option<&Direct> {
        self.direct.as_deref()
    }

    /// The connections kept for single statements ([`kept`]), for
    /// PostgreSQL.
    pub fn kept(&self) -> Option<&Kept> {
        self.kept.as_deref()
    }

    /// Takes the process's write gate (see [`direct`]) for a SQLite file;
    /// `None`, at once, otherwise. Every writer of this process holds it
    /// while it writes.
    pub async fn write_gate(&self) -> Option<WriteGate> {
        match &self.direct {
            Some(direct) => Some(direct.gate().await),
            None => None,
        }
    }

    /// Begins a transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if no connection can be had or the database
    /// is locked past its busy timeout.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match &self.pool {
            Pool::Sqlite(pool) => {
                let gate = self.write_gate().await;
                let conn = pool.acquire().await?;
                Tx::Sqlite(TxConnection::begin(conn, gate, "BEGIN IMMEDIATE").await?)
            }
            Pool::Postgres(pool) => {
                Tx::Postgres(TxConnection::begin(pool.acquire().await?, None, "BEGIN").await?)
            }
        })
    }

    /// Opens a pool to the database `config` selects.
    ///
    /// For SQLite: creates the data directory (mode 0700) and the database
    /// file (0600; SQLite gives its WAL and shared-memory files the same
    /// mode) if missing, and warns if an existing one is open to others,
    /// since the file holds the token signing keys; runs `PRAGMA
    /// quick_check` for at most `database_integrity_check_secs` and refuses
    /// a damaged file; sets WAL journaling, `synchronous=NORMAL` (durable
    /// across application crashes, cheap fsyncs), foreign keys on, a 5 s
    /// busy timeout, and the size cap of `database_sqlite_max_bytes`.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if the directory cannot be created, the
    /// database cannot be reached or the SQLite file is damaged;
    /// [`Error::Internal`] for a malformed URL.
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
                let file = sqlite_file(&options);
                if let Some(file) = &file {
                    sqlite_file::prepare(file)?;
                    sqlite_file::check_integrity(&options, config.database_integrity_check_secs)
                        .await?;
                }
                let page_cap = config
                    .database_sqlite_max_bytes
                    .map(|bytes| Arc::new(AtomicU64::new(bytes)));
                let mut pool = SqlitePoolOptions::new()
                    .max_connections(config.database_max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    // A connection to a local file does not go away by
                    // itself: pinging it before each use was a hand-off to
                    // its thread and back for nothing.
                    .test_before_acquire(false);
                if let Some(cap) = &page_cap {
                    // max_page_count belongs to the connection, not the file:
                    // set it on every connection when it opens and each time
                    // it is handed out, so a changed cap reaches them all.
                    let on_connect = cap.clone();
                    let on_acquire = cap.clone();
                    pool = pool
                        .after_connect(move |conn, _| {
                            let bytes = on_connect.load(Ordering::Relaxed);
                            Box::pin(async move { apply_size_cap(conn, bytes).await })
                        })
                        .before_acquire(move |conn, _| {
                            let bytes = on_acquire.load(Ordering::Relaxed);
                            Box::pin(async move {
                                apply_size_cap(conn, bytes).await?;
                                Ok(true)
                            })
                        });
                }
                let pool = pool
                    .connect_with(options)
                    .await
                    .map_err(|e| Error::Unavailable(format!("cannot open SQLite database: {e}")))?;
                // An in-memory database lives in its connections: it has no
                // file for direct connections to open.
                let direct = match &file {
                    Some(file) => Some(Arc::new(Direct::open(
                        file.clone(),
                        page_cap.clone(),
                        SQLITE_BUSY_TIMEOUT,
                    )?)),
                    None => None,
                };
                Ok(Database {
                    kept: None,
                    pool: Pool::Sqlite(pool),
                    direct,
                    sqlite_file: file,
                    page_cap,
                    last_probe: Arc::default(),
                })
            }
            DatabaseTarget::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(config.database_max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    // No ping (a round trip) before each use: sqlx pings a
                    // connection when it comes back to the pool already, and
                    // one that died in between fails its query, which is
                    // answered UNAVAILABLE and retried by the client.
                    .test_before_acquire(false)
                    .connect(url.expose())
                    .await
                    .map_err(|e| {
                        Error::Unavailable(format!("cannot connect to PostgreSQL: {e}"))
                    })?;
                Ok(Database {
                    kept: Some(Arc::new(Kept::new(
                        pool.clone(),
                        config.database_max_connections,
                    ))),
                    pool: Pool::Postgres(pool),
                    direct: None,
                    sqlite_file: None,
                    page_cap: None,
                    last_probe: Arc::default(),
                })
            }
        }
    }

    /// A client span for one database operation worth seeing in a trace
    /// (OpenTelemetry's database conventions); disabled when tracing is off.
    pub fn span(&self, operation: &'static str) -> tracing::Span {
        crate::telemetry::traced(|| {
            let system = match self.kind() {
                DatabaseKind::Sqlite => "sqlite",
                DatabaseKind::Postgres => "postgresql",
            };
            tracing::info_span!(
                "db",
                otel.name = operation,
                otel.kind = "client",
                db.system.name = system,
                db.operation.name = operation,
            )
        })
    }

    /// Which database engine this is.
    pub fn kind(&self) -> DatabaseKind {
        match self.pool {
            Pool::Sqlite(_) => DatabaseKind::Sqlite,
            Pool::Postgres(_) => DatabaseKind::Postgres,
        }
    }

    /// Changes the SQLite size cap (`database_sqlite_max_bytes`) while the
    /// pool runs; every connection takes it the next time it is handed
    /// out. A cap below the current size holds the database at its size.
    ///
    /// # Errors
    ///
    /// [`Error::FailedPrecondition`] if the database was opened without a
    /// cap (or is not SQLite).
    pub fn set_sqlite_max_bytes(&self, bytes: u64) -> Result<()> {
        let cap = self.page_cap.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "the database was opened without database_sqlite_max_bytes".to_owned(),
            )
        })?;
        cap.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Applies the embedded migrations that have not run yet.
    ///
    /// # Errors
    ///
    /// [`Error::Internal`] if a migration fails or an applied one was edited.
    pub async fn migrate(&self) -> Result<()> {
        let _gate = self.write_gate().await;
        match &self.pool {
            Pool::Sqlite(pool) => {
                let mut migrator = sqlx::migrate!("./migrations/sqlite");
                migrator.set_ignore_missing(true);
                migrator.run(pool).await?;
            }
            Pool::Postgres(pool) => {
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

    /// Checks that the database answers and can take writes: what
    /// readiness reports.
    ///
    /// SQLite: the file's filesystem has at least 128 KiB free, and a
    /// transaction can take the write lock and allocate new pages (an
    /// insert that is rolled back, so nothing is written). PostgreSQL: the
    /// server answers and is not read-only (a standby, or
    /// `default_transaction_read_only`).
    ///
    /// Health checks are unauthenticated and may come in floods, and the
    /// SQLite probe takes the write lock: callers that arrive while a probe
    /// runs share its result instead of each running one, so at most one
    /// probe runs at a time and every answer is no older than its request.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] saying what is wrong.
    pub async fn check_writable(&self) -> Result<()> {
        let asked = std::time::Instant::now();
        let mut last = self.last_probe.lock().await;
        let outcome = match last.as_ref() {
            Some((finished, outcome)) if *finished >= asked => outcome.clone(),
            _ => {
                let outcome = self.probe_writable().await.map_err(|err| match err {
                    Error::Unavailable(message) => message,
                    other => other.public_message(),
                });
                *last = Some((std::time::Instant::now(), outcome.clone()));
                outcome
            }
        };
        outcome.map_err(Error::Unavailable)
    }

    /// One writability probe; see [`Database::check_writable`].
    async fn probe_writable(&self) -> Result<()> {
        self.ping().await?;
        match &self.pool {
            Pool::Sqlite(_) => {
                if let Some(file) = &self.sqlite_file {
                    let free = free_bytes(file)?;
                    if free < MIN_FREE_BYTES {
                        return Err(Error::Unavailable(format!(
                            "database: not writable, {free} bytes free on the disk of {}",
                            file.display()
                        )));
                    }
                }
                // Rolled back, so it writes nothing; but allocating the
                // pages fails as a real write would (SQLITE_FULL at the cap),
                // and BEGIN IMMEDIATE fails if the write lock is held for
                // longer than the busy timeout.
                let mut tx = self.begin().await.map_err(not_writable)?;
                let insert = "INSERT INTO storage_probe (filler) VALUES (zeroblob($1))";
                let probe = on_tx!(&mut tx, conn => {
                    sqlx::query(insert).bind(i64::from(PROBE_BYTES)).execute(conn).await.map(drop)
                });
                tx.rollback().await.map_err(not_writable)?;
                probe.map_err(|err| not_writable(err.into()))
            }
            Pool::Postgres(pool) => {
                let read_only: bool = sqlx::query_scalar(
                    "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'",
                )
                .fetch_one(pool)
                .await?;
                if read_only {
                    return Err(Error::Unavailable(
                        "database: PostgreSQL is read-only".to_owned(),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        if let Some(kept) = &self.kept {
            // The pool's close waits for every connection to come back.
            kept.release_all();
        }
        on_database!(self, pool => pool.close().await);
    }
}
