//! The SQLite database file on disk: made private before SQLite opens it,
//! and checked for damage before the server trusts it.
//!
//! The file holds everything, the token signing keys included, so whoever
//! can read it can mint an administrator's token. It is created `0600` in a
//! `0700` directory; SQLite creates its `-wal` and `-shm` files with the
//! mode of the database file, so they are private too. Files that exist
//! already are left as the operator made them, with a warning when others
//! may read them.

use std::fs::{DirBuilder, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use crate::error::{Error, Result};

/// Permission bits for group and others: none of them should be set.
const OPEN_TO_OTHERS: u32 = 0o077;

/// Creates the directory of `file` (mode 0700) and `file` itself (0600) if
/// they are missing, and warns about any of them, and of the WAL and
/// shared-memory files, that group or others may use.
///
/// # Errors
///
/// [`Error::Unavailable`] if the directory or the file cannot be created.
pub(super) fn prepare(file: &Path) -> Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        warn_if_open(dir);
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::Unavailable(format!(
                "cannot create {}: {e}",
                file.display()
            )));
        }
    }
    for path in [
        file.to_path_buf(),
        sibling(file, "-wal"),
        sibling(file, "-shm"),
    ] {
        warn_if_open(&path);
    }
    Ok(())
}

/// `file` with `suffix` appended to its name, as SQLite names its WAL and
/// shared-memory files.
fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The mode bits of `path` that give group or others access, if any
/// (nothing for a path that does not exist).
fn open_bits(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    Some(mode & OPEN_TO_OTHERS).filter(|bits| *bits != 0)
}

fn warn_if_open(path: &Path) {
    if let Some(bits) = open_bits(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", bits),
            "the database path is open to other users; it holds the token signing keys, \
             so anyone who can read it can sign in as anyone (chmod go-rwx)"
        );
    }
}

/// Runs `PRAGMA quick_check` on its own connection and waits at most
/// `limit_secs` for it (0 skips the check). A check still running then goes
/// on in the background and logs what it finds; start-up does not wait.
///
/// # Errors
///
/// [`Error::Unavailable`] naming the damage if the check finds any, or if
/// the file is not a database at all.
pub(super) async fn check_integrity(options: &SqliteConnectOptions, limit_secs: u64) -> Result<()> {
    if limit_secs == 0 {
        return Ok(());
    }
    let path = options.get_filename().display().to_string();
    let options = options.clone();
    let check_path = path.clone();
    let mut check = tokio::spawn(async move {
        match quick_check(&options).await {
            Ok(None) => Ok(()),
            Ok(Some(problem)) => Err(damaged(&check_path, &problem)),
            Err(err) if is_damage(&err) => Err(damaged(&check_path, &err.to_string())),
            Err(err) => Err(Error::Unavailable(format!(
                "cannot open SQLite database {check_path}: {err}"
            ))),
        }
    });
    match tokio::time::timeout(Duration::from_secs(limit_secs), &mut check).await {
        Ok(joined) => joined.map_err(Error::internal)?,
        Err(_) => {
            tracing::warn!(
                path,
                limit_secs,
                "the SQLite integrity check did not finish in time; start-up goes on and \
                 the check's result will be logged"
            );
            tokio::spawn(async move {
                match check.await {
                    Ok(Ok(())) => {
                        tracing::info!(path, "the SQLite integrity check found no damage")
                    }
                    Ok(Err(error)) => {
                        tracing::error!(%error, "the SQLite integrity check found damage")
                    }
                    Err(error) => tracing::error!(%error, "the SQLite integrity check failed"),
                }
            });
            Ok(())
        }
    }
}

/// What `quick_check` reports: `None` for "ok", else the first problems.
async fn quick_check(options: &SqliteConnectOptions) -> sqlx::Result<Option<String>> {
    let mut conn = SqliteConnection::connect_with(options).await?;
    // At most 10 problems: enough to say what is wrong.
    let rows: Vec<String> = sqlx::query_scalar("PRAGMA quick_check(10)")
        .fetch_all(&mut conn)
        .await?;
    conn.close().await.ok();
    Ok((rows != ["ok"]).then(|| rows.join("; ")))
}

/// Whether SQLite says the file is damaged: SQLITE_CORRUPT (11) or
/// SQLITE_NOTADB (26), in their primary or extended forms.
fn is_damage(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = err else {
        return false;
    };
    db.code()
        .and_then(|code| code.parse::<u32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 11 | 26))
}

/// The start-up error for a damaged database file.
fn damaged(path: &str, problem: &str) -> Error {
    Error::Unavailable(format!(
        "the SQLite database {path} is damaged ({problem}); the server will not start on it. \
         Restore it from a backup, or salvage what is left with `sqlite3 {path} .recover`"
    ))
}
