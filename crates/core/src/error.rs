//! The domain error of every Switchboard operation, and the one table that
//! turns each kind into a gRPC status code and an HTTP status
//! ([`Error::status_codes`]). Every transport (gRPC, gRPC-Web, REST, the
//! WebSocket's error frames, a stream's error event) maps errors through
//! it, so a client sees the same class of failure whichever door it came
//! through.

use std::error::Error as StdError;

/// A boxed error source, for [`Error::Internal`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The result of a Switchboard operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing does not exist, or belongs to someone else (the two are
    /// indistinguishable on purpose). gRPC `NOT_FOUND`, HTTP 404.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, such as "conversation".
        what: &'static str,
    },
    /// A request field has a value the operation cannot accept. gRPC
    /// `INVALID_ARGUMENT` with a google.rpc.BadRequest field violation, HTTP 400.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field's path in the request, such as "page_token".
        field: String,
        /// Why the value is refused.
        message: String,
    },
    /// The operation does not apply to the thing's current state (a reply
    /// that has already finished cannot be cancelled). gRPC
    /// `FAILED_PRECONDITION`, HTTP 400.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The thing to create exists already. gRPC `ALREADY_EXISTS`, HTTP 409.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A dependency (database, engine) cannot serve now; trying later may
    /// work. gRPC `UNAVAILABLE`, HTTP 503.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The caller is not authenticated, or its credentials are refused; the
    /// message says what to do, never why a credential failed. gRPC
    /// `UNAUTHENTICATED`, HTTP 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is authenticated but may not do this. gRPC
    /// `PERMISSION_DENIED`, HTTP 403.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Too many attempts; try again after `retry_after_secs`. gRPC
    /// `RESOURCE_EXHAUSTED` with a google.rpc.RetryInfo, HTTP 429 with
    /// `Retry-After`.
    #[error("too many attempts; try again in {retry_after_secs} s")]
    ResourceExhausted {
        /// Seconds until an attempt may succeed.
        retry_after_secs: u64,
    },
    /// A bug or an unexpected failure. Logged in full; clients see only
    /// "internal error". gRPC `INTERNAL`, HTTP 500.
    #[error("internal error: {0}")]
    Internal(#[source] BoxError),
}

/// How one kind of [`Error`] reaches a client, as [`Error::status_codes`]
/// gives it. The gRPC code is a number, not a `tonic::Code`: the domain has
/// no transport code, and the adapters convert it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCodes {
    /// The gRPC status code number, as in `google.rpc.Code` (the
    /// `grpc-status` of a gRPC answer, the `code` of a google.rpc.Status).
    pub grpc: i32,
    /// The gRPC status code's name, such as `"NOT_FOUND"`.
    pub grpc_name: &'static str,
    /// The HTTP status of the REST answer.
    pub http: u16,
}

impl Error {
    /// An [`Error::Internal`] from any error or message.
    pub fn internal(source: impl Into<BoxError>) -> Self {
        Self::Internal(source.into())
    }

    /// An [`Error::InvalidArgument`] about `field`.
    pub fn invalid_argument(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error with an [`Error::InvalidArgument`] field path placed
    /// under `parent` (`title` becomes `conversation.title`), for adapters
    /// whose request nests the domain's fields.
    pub fn nested_under(self, parent: &str) -> Self {
        match self {
            Self::InvalidArgument { field, message } => Self::InvalidArgument {
                field: format!("{parent}.{field}"),
                message,
            },
            other => other,
        }
    }

    /// The one table of how each kind of error reaches a client: its gRPC
    /// code and the HTTP status of the REST answer. The adapters turn a
    /// domain error into a gRPC status of this code (`switchboard_api`'s
    /// `status_from`), which every door answers with: gRPC and gRPC-Web as
    /// `grpc-status`, REST and the WebSocket's error frames as a
    /// google.rpc.Status under the HTTP status `switchboard_rest` gives the
    /// code, and a reply's error event by [`Error::grpc_code_name`]. A test
    /// of the facade walks every variant through those doors and holds them
    /// to this table.
    pub fn status_codes(&self) -> StatusCodes {
        let (grpc, grpc_name, http) = match self {
            Self::InvalidArgument { .. } => (3, "INVALID_ARGUMENT", 400),
            Self::FailedPrecondition(_) => (9, "FAILED_PRECONDITION", 400),
            Self::Unauthenticated(_) => (16, "UNAUTHENTICATED", 401),
            Self::PermissionDenied(_) => (7, "PERMISSION_DENIED", 403),
            Self::NotFound { .. } => (5, "NOT_FOUND", 404),
            Self::AlreadyExists(_) => (6, "ALREADY_EXISTS", 409),
            Self::ResourceExhausted { .. } => (8, "RESOURCE_EXHAUSTED", 429),
            Self::Internal(_) => (13, "INTERNAL", 500),
            Self::Unavailable(_) => (14, "UNAVAILABLE", 503),
        };
        StatusCodes {
            grpc,
            grpc_name,
            http,
        }
    }

    /// The gRPC status code number (as in `google.rpc.Code`), from
    /// [`Error::status_codes`].
    pub fn grpc_code(&self) -> i32 {
        self.status_codes().grpc
    }

    /// The gRPC status code name, such as `"NOT_FOUND"`, from
    /// [`Error::status_codes`].
    pub fn grpc_code_name(&self) -> &'static str {
        self.status_codes().grpc_name
    }

    /// The message a client may see: everything but [`Error::Internal`]'s
    /// details, which stay in the logs.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Turns a unique-constraint violation into [`Error::AlreadyExists`]
    /// with `message`, and any other database error into [`Error::Internal`].
    pub fn from_unique_violation(err: sqlx::Error, message: impl Into<String>) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::AlreadyExists(message.into())
            }
            _ => err.into(),
        }
    }
}

/// Database errors are internal. A missing row is not turned into
/// [`Error::NotFound`] here: the code that looked for it says what it was.
impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err
            && db.code().as_deref() == Some("22021")
        {
            // PostgreSQL cannot store a NUL character in text; SQLite can.
            // Either way it is the input's fault, not the server's.
            return Self::invalid_argument("", "text must not contain NUL characters");
        }
        let code = database_code(&err);
        if let Some(problem) = code.and_then(storage_problem) {
            return Self::storage_unavailable(&err, problem);
        }
        if matches!(
            err,
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
        ) || code.is_some_and(is_transient)
        {
            return Self::transient_unavailable(&err);
        }
        Self::Internal(Box::new(err))
    }
}

/// The errors of the direct SQLite connections (`db::direct`), by the same
/// SQLite codes as [`From<sqlx::Error>`](Error).
impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        let code = err
            .sqlite_error()
            .and_then(|e| u32::try_from(e.extended_code).ok())
            .map(|code| DatabaseCode::Sqlite(code & 0xff));
        if let Some(problem) = code.and_then(storage_problem) {
            return Self::storage_unavailable(&err, problem);
        }
        if code.is_some_and(is_transient) {
            return Self::transient_unavailable(&err);
        }
        Self::Internal(Box::new(err))
    }
}

impl Error {
    /// The disk (or the configured size cap) is full, or the disk fails:
    /// nothing was stored, and the write may work once the operator frees
    /// space. Readiness reports the same.
    fn storage_unavailable(err: &dyn std::fmt::Display, problem: &str) -> Self {
        tracing::error!(error = %err, "database cannot store data");
        Self::Unavailable(format!("the database {problem}; try again later"))
    }

    /// Worth retrying; the client learns that much and no more.
    fn transient_unavailable(err: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %err, "database unavailable");
        Self::Unavailable("the database is unavailable; try again".to_owned())
    }
}

/// A database error's code, by engine: SQLite's result codes are numbers
/// whose low byte is the primary code; PostgreSQL's are five-character
/// SQLSTATEs (most of them digits too, so the engine cannot be told from
/// the text).
#[derive(Clone, Copy)]
enum DatabaseCode<'a> {
    Sqlite(u32),
    Postgres(&'a str),
}

fn database_code(err: &sqlx::Error) -> Option<DatabaseCode<'_>> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return Some(DatabaseCode::Postgres(pg.code()));
    }
    let code = db.code()?.parse::<u32>().ok()?;
    Some(DatabaseCode::Sqlite(code & 0xff))
}

/// What keeps the database from storing anything, if that is the error:
/// SQLite's SQLITE_FULL (13) or SQLITE_READONLY (8);
/// PostgreSQL's disk_full (53100), out_of_memory (53200) or
/// read_only_sql_transaction (25006). Nothing was stored then, so "try
/// again" is true. SQLITE_IOERR is not among them: an I/O error during a
/// COMMIT may come after the commit record was written, so the outcome is
/// unknown and the error stays INTERNAL rather than inviting a retry that
/// could store the write twice.
fn storage_problem(code: DatabaseCode<'_>) -> Option<&'static str> {
    match code {
        DatabaseCode::Sqlite(13) | DatabaseCode::Postgres("53100") => Some("is full"),
        DatabaseCode::Sqlite(8) | DatabaseCode::Postgres("25006") => Some("is read-only"),
        DatabaseCode::Postgres("53200") => Some("is out of memory"),
        _ => None,
    }
}

/// Whether a database error code goes away by itself: SQLite busy or
/// locked past its timeout, PostgreSQL out of connections, a serialization
/// failure or deadlock, a server shutting down or a lost connection (no
/// connection or pool at all is told by sqlx's own variants).
fn is_transient(code: DatabaseCode<'_>) -> bool {
    match code {
        // 5 SQLITE_BUSY, 6 SQLITE_LOCKED.
        DatabaseCode::Sqlite(code) => matches!(code, 5 | 6),
        DatabaseCode::Postgres(code) => matches!(
            code,
            "53300" | "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006"
        ),
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        Self::Internal(Box::new(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_stay_private() {
        let err = Error::internal("disk on fire");
        assert_eq!(err.public_message(), "internal error");
        let codes = err.status_codes();
        assert_eq!(
            (codes.grpc, codes.grpc_name, codes.http),
            (13, "INTERNAL", 500)
        );
    }

    #[test]
    fn field_paths_nest() {
        let err = Error::invalid_argument("title", "too long").nested_under("conversation");
        assert!(
            matches!(err, Error::InvalidArgument { field, .. } if field == "conversation.title")
        );
    }
}
