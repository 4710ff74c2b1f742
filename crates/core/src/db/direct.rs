//! SQLite statements run on the calling task's own thread: the hot paths
//! of a chat turn (storing the turn, taking its job, claiming, reading the
//! history, finishing the reply, recording the job) on connections of our
//! own, opened with `rusqlite` over the same SQLite library sqlx links.
//!
//! sqlx-sqlite runs each connection on a thread of its own and hands every
//! statement to it over a channel, and its pool pings a connection when it
//! is returned: each statement costs two or three hand-offs between
//! threads, futex waits and wake-ups that on a small machine cost more than
//! SQLite's own work, and a transaction holds SQLite's write lock across
//! all of them. Here a statement is a function call, a transaction holds
//! the lock only while SQLite works, and nothing waits on a thread.
//!
//! [`Direct`] also owns the process's write gate. SQLite lets one
//! connection write at a time; a writer that finds the lock taken sleeps in
//! SQLite's busy handler (1, 2, 5, 10 … 100 ms between tries) even when the
//! lock is free again microseconds later, and a direct writer must never
//! sleep on a runtime thread. So every write of this process, direct or
//! through sqlx ([`Database::begin`](super::Database::begin),
//! [`on_writer!`](crate::on_writer)), first takes the gate, an async mutex
//! that hands itself to the next writer in turn the moment it is released.
//! Only another process writing the same file can still hold SQLite's lock:
//! a direct connection then answers SQLITE_BUSY at once (its busy timeout
//! is zero), and [`Direct::write`] waits asynchronously and tries again, up
//! to the database's busy timeout.
//!
//! Checkpoints: SQLite checkpoints the WAL inside the COMMIT that grows it
//! past 1,000 pages, with an fsync, which would block a runtime thread for
//! milliseconds. The direct writer has automatic checkpoints off; every
//! [`CHECKPOINT_EVERY`] of its commits a task runs a passive checkpoint on
//! a blocking thread instead (readers and writers go on meanwhile).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::OwnedMutexGuard;

use crate::error::{Error, Result};

/// The write gate, held: no other writer of this process runs meanwhile.
pub type WriteGate = OwnedMutexGuard<Connection>;

/// How many direct commits between two checkpoints of the WAL.
const CHECKPOINT_EVERY: u64 = 200;

/// The first wait after SQLITE_BUSY (another process holds the lock); it
/// doubles up to [`MAX_BUSY_WAIT`].
const FIRST_BUSY_WAIT: Duration = Duration::from_millis(1);

/// The longest wait between two tries of a write another process blocks.
const MAX_BUSY_WAIT: Duration = Duration::from_millis(50);

/// How many idle reader connections are kept.
const MAX_IDLE_READERS: usize = 8;

/// Direct SQLite connections to one database file: the writer (which is
/// also the write gate) and a few readers.
pub struct Direct {
    file: PathBuf,
    /// The one direct writer, behind the process's write gate.
    writer: Arc<tokio::sync::Mutex<Connection>>,
    /// Idle reader connections; one is opened when none is idle.
    readers: Mutex<Vec<Connection>>,
    /// `database_sqlite_max_bytes`, shared with the sqlx pool.
    page_cap: Option<Arc<AtomicU64>>,
    /// How long a write waits for another process's lock before it fails.
    busy_timeout: Duration,
    /// Commits of the direct writer, for scheduling checkpoints.
    commits: AtomicU64,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Whether a rusqlite error is SQLITE_BUSY or SQLITE_LOCKED: another
/// process holds the lock.
fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// `sql` with sqlx's `$N` placeholders as SQLite's `?N`, which bind at
/// index N (SQLite numbers `$N` names by first appearance instead), so the
/// statements of the sqlx paths are reused here as they are. (A `$` and
/// digits inside a string literal would be changed too; no statement of
/// ours has one.)
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

impl Direct {
    /// Opens the writer on `file`, an existing database in WAL mode (the
    /// sqlx pool has opened and migrated it). `busy_timeout` bounds the
    /// wait for another process's lock.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if the file cannot be opened.
    pub(super) fn open(
        file: PathBuf,
        page_cap: Option<Arc<AtomicU64>>,
        busy_timeout: Duration,
    ) -> Result<Self> {
        Ok(Self {
            writer: Arc::new(tokio::sync::Mutex::new(open_writer(&file)?)),
            file,
            readers: Mutex::new(Vec::new()),
            page_cap,
            busy_timeout,
            commits: AtomicU64::new(0),
        })
    }

    /// Takes the write gate, waiting for the writer before it in turn.
    pub async fn gate(&self) -> WriteGate {
        self.writer.clone().lock_owned().await
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction on the direct
    /// writer, under the write gate, and commits it; rolled back if `work`
    /// fails. `work` may run again when another process held the lock, so
    /// it must not have effects outside the transaction.
    ///
    /// # Errors
    ///
    /// The database error, as [`Error`] (the transaction is rolled back);
    /// [`Error::Unavailable`] after the busy timeout.
    pub async fn write<T>(
        &self,
        mut work: impl FnMut(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut busy = BusyWait::new(self.busy_timeout);
        loop {
            let mut conn = self.gate().await;
            if let Some(cap) = &self.page_cap {
                apply_size_cap(&conn, cap.load(Ordering::Relaxed))?;
            }
            let outcome = run_transaction(&mut conn, &mut work);
            if !conn.is_autocommit() {
                // A failed COMMIT or ROLLBACK left the transaction open:
                // this connection must not write again.
                tracing::warn!("a direct SQLite transaction did not end; the writer is reopened");
                *conn = open_writer(&self.file)?;
            }
            drop(conn);
            match outcome {
                Ok(value) => {
                    self.committed();
                    return Ok(value);
                }
                Err(err) => busy.wait_or_fail(err).await?,
            }
        }
    }

    /// Runs `work` on a direct reader connection (WAL readers see the last
    /// commit and never wait for the writer).
    ///
    /// # Errors
    ///
    /// The database error, as [`Error`].
    pub async fn read<T>(
        &self,
        mut work: impl FnMut(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut busy = BusyWait::new(self.busy_timeout);
        loop {
            let idle = self
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let conn = match idle {
                Some(conn) => conn,
                None => open_connection(&self.file)?,
            };
            let outcome = work(&conn);
            {
                let mut readers = self
                    .readers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if readers.len() < MAX_IDLE_READERS && conn.is_autocommit() {
                    readers.push(conn);
                }
            }
            match outcome {
                Ok(value) => return Ok(value),
                // A reader waits only while WAL recovery runs elsewhere.
                Err(err) => busy.wait_or_fail(err).await?,
            }
        }
    }

    /// Counts a commit, and every [`CHECKPOINT_EVERY`] schedules a passive
    /// checkpoint on a blocking thread.
    fn committed(&self) {
        let n = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if !n.is_multiple_of(CHECKPOINT_EVERY) {
            return;
        }
        let file = self.file.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn_blocking(move || {
            let checkpoint = open_connection(&file).and_then(|conn| {
                Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?)
            });
            if let Err(err) = checkpoint {
                tracing::warn!(error = %err, "cannot checkpoint the SQLite WAL");
            }
        });
    }
}

/// The waits of one call between tries of a statement another process's
/// lock keeps from running: from [`FIRST_BUSY_WAIT`], doubling up to
/// [`MAX_BUSY_WAIT`], until the busy timeout.
struct BusyWait {
    deadline: tokio::time::Instant,
    wait: Duration,
}

impl BusyWait {
    fn new(busy_timeout: Duration) -> Self {
        Self {
            deadline: tokio::time::Instant::now() + busy_timeout,
            wait: FIRST_BUSY_WAIT,
        }
    }

    /// Waits before the next try if `err` is SQLITE_BUSY or SQLITE_LOCKED
    /// and the busy timeout has not run out; otherwise `err`, as [`Error`].
    async fn wait_or_fail(&mut self, err: rusqlite::Error) -> Result<()> {
        if !is_busy(&err) || tokio::time::Instant::now() >= self.deadline {
            return Err(err.into());
        }
        tokio::time::sleep(self.wait).await;
        self.wait = (self.wait * 2).min(MAX_BUSY_WAIT);
        Ok(())
    }
}

/// BEGIN IMMEDIATE, `work`, COMMIT; ROLLBACK when `work` fails.
fn run_transaction<T>(
    conn: &mut Connection,
    work: &mut impl FnMut(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = work(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// Opens a direct connection to `file` as the sqlx pool's are set up:
/// foreign keys on, `synchronous=NORMAL`; no busy timeout (a busy database
/// is waited for asynchronously by the caller).
fn open_connection(file: &std::path::Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(file, flags).map_err(|e| cannot_open(&e))?;
    conn.busy_timeout(Duration::ZERO)
        .and_then(|()| conn.pragma_update(None, "foreign_keys", true))
        .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
        .map_err(|e| cannot_open(&e))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// [`open_connection`] for the direct writer: automatic checkpoints off
/// (see the module documentation).
fn open_writer(file: &std::path::Path) -> Result<Connection> {
    let writer = open_connection(file)?;
    writer
        .pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(|e| cannot_open(&e))?;
    Ok(writer)
}

/// Sets `max_page_count` to hold the database under `bytes`.
fn apply_size_cap(conn: &Connection, bytes: u64) -> rusqlite::Result<()> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    conn.query_row(&super::max_page_count_pragma(bytes, page_size), [], |_| {
        Ok(())
    })
}

/// A connection that cannot be opened or set up: the database is unavailable.
fn cannot_open(err: &rusqlite::Error) -> Error {
    Error::Unavailable(format!("cannot open SQLite database: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL database with one table, and a [`Direct`] on it waiting at
    /// most `busy_timeout` for another connection's lock.
    fn database(busy_timeout: Duration) -> (tempfile::TempDir, Direct) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("test.db");
        let setup = Connection::open(&file).expect("open the database");
        setup
            .pragma_update(None, "journal_mode", "WAL")
            .expect("WAL mode");
        setup
            .execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
            .expect("create the table");
        let direct = Direct::open(file, None, busy_timeout).expect("open the direct connections");
        (dir, direct)
    }

    async fn count(direct: &Direct) -> i64 {
        direct
            .read(|conn| conn.query_row("SELECT COUNT(*) FROM notes", [], |row| row.get(0)))
            .await
            .expect("count the rows")
    }

    #[test]
    fn numbered_placeholders_bind_at_their_number() {
        assert_eq!(
            numbered("a = $1 AND b IN ($12, $2) AND c = '$' AND d = $x"),
            "a = ?1 AND b IN (?12, ?2) AND c = '$' AND d = $x"
        );
    }

    #[tokio::test]
    async fn a_write_waits_for_another_process_lock_then_commits() {
        let (dir, direct) = database(Duration::from_secs(5));
        // Another process's writer, as far as SQLite can tell: a
        // connection of its own holding the write lock.
        let other = Connection::open(dir.path().join("test.db")).expect("open");
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the lock");
        let write = direct.write(|tx| tx.execute("INSERT INTO notes (text) VALUES ('a')", []));
        tokio::pin!(write);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut write)
                .await
                .is_err(),
            "the write went through while another connection held the lock"
        );
        other.execute_batch("COMMIT").expect("release the lock");
        let inserted = tokio::time::timeout(Duration::from_secs(2), write)
            .await
            .expect("the write goes on once the lock is free")
            .expect("the write commits");
        assert_eq!(inserted, 1);
        assert_eq!(count(&direct).await, 1);
    }

    #[tokio::test]
    async fn a_lock_held_past_the_busy_timeout_is_unavailable() {
        let (dir, direct) = database(Duration::from_millis(100));
        let other = Connection::open(dir.path().join("test.db")).expect("open");
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the lock");
        let err = direct
            .write(|tx| tx.execute("INSERT INTO notes (text) VALUES ('a')", []))
            .await
            .expect_err("the lock is never released");
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        other.execute_batch("ROLLBACK").expect("release the lock");
        assert_eq!(count(&direct).await, 0);
    }

    #[tokio::test]
    async fn a_failed_write_leaves_nothing_and_the_writer_goes_on() {
        let (_dir, direct) = database(Duration::from_secs(5));
        let err = direct
            .write(|tx| {
                tx.execute("INSERT INTO notes (text) VALUES ('kept?')", [])?;
                tx.execute("INSERT INTO missing (text) VALUES ('x')", [])
            })
            .await
            .expect_err("the second statement fails");
        assert!(matches!(err, Error::Internal(_)), "{err:?}");
        assert_eq!(count(&direct).await, 0, "the first insert was rolled back");
        direct
            .write(|tx| tx.execute("INSERT INTO notes (text) VALUES ('b')", []))
            .await
            .expect("the next write commits");
        assert_eq!(count(&direct).await, 1);
    }

    #[tokio::test]
    async fn writers_of_the_process_take_the_gate_in_turn() {
        let (_dir, direct) = database(Duration::from_secs(5));
        let gate = direct.gate().await;
        let write = direct.write(|tx| tx.execute("INSERT INTO notes (text) VALUES ('a')", []));
        tokio::pin!(write);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut write)
                .await
                .is_err(),
            "the write did not wait for the gate"
        );
        drop(gate);
        write
            .await
            .expect("the write commits once the gate is free");
        assert_eq!(count(&direct).await, 1);
    }
}
