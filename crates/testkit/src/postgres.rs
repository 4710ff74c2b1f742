//! A throwaway PostgreSQL database: created empty under a name nobody else
//! uses, on the server of the test environment (`SWITCHBOARD_TEST_POSTGRES_URL`,
//! by default `postgres://postgres@127.0.0.1:5432/postgres`) or on one
//! given, and dropped afterwards — explicitly with
//! [`ThrowawayPostgres::remove`], or when the value is dropped.
//!
//! A test that needs PostgreSQL and cannot reach it fails, loudly, naming
//! the variable to set: it is never skipped.

use sqlx::Connection as _;

/// The variable naming the PostgreSQL server tests create databases on.
pub const SERVER_URL_VARIABLE: &str = "SWITCHBOARD_TEST_POSTGRES_URL";

/// The server tests use when [`SERVER_URL_VARIABLE`] is not set.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The PostgreSQL server of the test environment: [`SERVER_URL_VARIABLE`],
/// or [`DEFAULT_SERVER_URL`].
pub fn server_url() -> String {
    std::env::var(SERVER_URL_VARIABLE).unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

/// Why a throwaway database could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The server URL is not of the form `postgres://…`.
    #[error("not a PostgreSQL URL (postgres://…)")]
    NotAUrl,
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] sqlx::Error),
    /// `CREATE DATABASE` failed.
    #[error("cannot create the database {name}")]
    Create {
        /// The database.
        name: String,
        /// What PostgreSQL said.
        #[source]
        source: sqlx::Error,
    },
    /// `DROP DATABASE` failed.
    #[error("cannot drop the database {name}")]
    Drop {
        /// The database.
        name: String,
        /// What PostgreSQL said.
        #[source]
        source: sqlx::Error,
    },
}

/// An empty database created for one test, suite or run; dropped (with
/// `FORCE`, which ends connections still open) by [`Self::remove`] or,
/// failing that, when this value is dropped.
#[derive(Debug)]
pub struct ThrowawayPostgres {
    /// The server, as given; its own database is where we connect to create
    /// and drop ours.
    server_url: String,
    /// Our database.
    name: String,
    /// The server URL naming our database.
    url: String,
    /// Set once [`Self::remove`] ran, so that dropping does not try again.
    removed: bool,
}

impl ThrowawayPostgres {
    /// A new database `sb_test_<uuid>` on the server of the test
    /// environment ([`server_url`]).
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or refuses to create the database:
    /// with a message naming [`SERVER_URL_VARIABLE`]. Tests that need
    /// PostgreSQL fail without it; they are never skipped.
    pub async fn create() -> ThrowawayPostgres {
        let server_url = server_url();
        match Self::create_on(&server_url, "sb_test_").await {
            Ok(database) => database,
            Err(error @ PostgresError::Connect(_)) => panic!(
                "\n\n*** PostgreSQL is not reachable at {server_url}: {}\n\
                 *** These tests need a real PostgreSQL server; they are never skipped.\n\
                 *** Start it (e.g. `service postgresql start` or `pg_ctlcluster <version> main start`)\n\
                 *** or point {SERVER_URL_VARIABLE} at one (trust auth, may CREATE DATABASE).\n\n",
                describe(&error)
            ),
            Err(error) => panic!(
                "\n\n*** No test database on {server_url}: {}\n\
                 *** Point {SERVER_URL_VARIABLE} at a server and a role that may CREATE DATABASE.\n\n",
                describe(&error)
            ),
        }
    }

    /// A new database `<prefix><uuid>` (the UUID v7 without dashes) on the
    /// server at `server_url`; `prefix` must be a valid start of an SQL
    /// identifier, such as `sb_bench_`.
    ///
    /// # Errors
    ///
    /// [`PostgresError::NotAUrl`], [`PostgresError::Connect`] or
    /// [`PostgresError::Create`].
    pub async fn create_on(
        server_url: &str,
        prefix: &str,
    ) -> Result<ThrowawayPostgres, PostgresError> {
        let name = format!("{prefix}{}", uuid::Uuid::now_v7().simple());
        let url = database_url(server_url, &name)?;
        let mut admin = sqlx::PgConnection::connect(server_url)
            .await
            .map_err(PostgresError::Connect)?;
        // The name is ours: a fixed prefix and a UUID.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .map_err(|source| PostgresError::Create {
                name: name.clone(),
                source,
            })?;
        admin.close().await.ok();
        Ok(ThrowawayPostgres {
            server_url: server_url.to_owned(),
            name,
            url,
            removed: false,
        })
    }

    /// The URL of the database: the server's, with our database's name.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database now.
    ///
    /// # Errors
    ///
    /// [`PostgresError::Connect`] or [`PostgresError::Drop`]; the database
    /// is then left behind (dropping the value does not try again).
    pub async fn remove(mut self) -> Result<(), PostgresError> {
        self.removed = true;
        drop_database(&self.server_url, &self.name).await
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        // Drop cannot await, and the test's runtime may be gone or busy: use
        // a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime
                .block_on(drop_database(&server_url, &name))
                .map_err(|error| describe(&error))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "warning: could not drop the test database {}: {dropped:?}",
                self.name
            );
        }
    }
}

/// `error` and its causes, one after the other.
fn describe(error: &PostgresError) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        text.push_str(&format!(": {error}"));
        cause = error.source();
    }
    text
}

/// `DROP DATABASE IF EXISTS name WITH (FORCE)` on the server.
async fn drop_database(server_url: &str, name: &str) -> Result<(), PostgresError> {
    let mut admin = sqlx::PgConnection::connect(server_url)
        .await
        .map_err(PostgresError::Connect)?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .map_err(|source| PostgresError::Drop {
        name: name.to_owned(),
        source,
    })?;
    admin.close().await.ok();
    Ok(())
}

/// `server_url` with its database (the URL path) replaced by `name`; the
/// query string is kept.
fn database_url(server_url: &str, name: &str) -> Result<String, PostgresError> {
    let (base, query) = match server_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server_url, None),
    };
    let Some(scheme_end) = base.find("://") else {
        return Err(PostgresError::NotAUrl);
    };
    let authority = scheme_end + 3;
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |offset| authority + offset);
    let mut url = format!("{}/{name}", &base[..path]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_url_names_the_new_database_and_keeps_the_rest() {
        let url = |server| database_url(server, "sb_x").unwrap();
        assert_eq!(
            url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/sb_x"
        );
        assert_eq!(url("postgres://u:p@db"), "postgres://u:p@db/sb_x");
        assert_eq!(
            url("postgresql://db/app?sslmode=disable"),
            "postgresql://db/sb_x?sslmode=disable"
        );
        assert!(database_url("db:5432", "sb_x").is_err());
    }

    #[tokio::test]
    async fn a_throwaway_database_is_there_until_it_is_removed() {
        let database = ThrowawayPostgres::create().await;
        let mut connection = sqlx::PgConnection::connect(database.url())
            .await
            .expect("the new database accepts connections");
        let current: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(current, database.name());
        connection.close().await.unwrap();
        let name = database.name().to_owned();
        database.remove().await.expect("the database is dropped");
        let mut admin = sqlx::PgConnection::connect(&server_url()).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(left, 0, "{name} is gone");
    }

    #[tokio::test]
    async fn a_dropped_throwaway_database_is_removed_too() {
        let database = ThrowawayPostgres::create().await;
        let name = database.name().to_owned();
        drop(database);
        let mut admin = sqlx::PgConnection::connect(&server_url()).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(left, 0, "{name} is gone");
    }
}
