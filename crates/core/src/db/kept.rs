//! [`Kept`]: PostgreSQL connections kept out of the pool for the hot
//! path's single statements.
//!
//! sqlx tests every connection that comes back to its pool with a round
//! trip (a Sync message and its ReadyForQuery: `PoolConnection`'s return to
//! the pool pings, unconditionally), so a statement run on the pool costs
//! two round trips, and the database a wake-up for each. The statements a
//! chat turn runs (the turn's insert, the reply's claim and end, a job's
//! start and success, the reply read of a stream) take a connection from
//! here instead and give it back without that test, when they succeeded.
//! One that failed, or whose future was dropped halfway (the connection may
//! be in the middle of a reply), goes back to the pool and gets sqlx's test.
//!
//! At most half the pool's connections are kept idle here, so the pool
//! always has the other half for everything else (transactions, reads, the
//! migrations). A kept connection that died while idle (the server
//! restarted) fails its next statement, which is answered UNAVAILABLE and
//! goes back to the pool, as an idle pool connection would without
//! `test_before_acquire`.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool};

use crate::error::Result;

/// Connections taken from a PostgreSQL pool and kept for single statements.
#[derive(Debug)]
pub struct Kept {
    pool: PgPool,
    idle: Mutex<Idle>,
    /// The most kept idle at once.
    most: usize,
}

/// The kept connections not in use, and whether keeping has stopped.
#[derive(Debug, Default)]
struct Idle {
    connections: Vec<PoolConnection<Postgres>>,
    /// Set by [`Kept::release_all`]: from then on every connection goes
    /// back to the pool, or the pool's close would wait for it for ever.
    released: bool,
}

impl Kept {
    /// Keeps up to half of `pool`'s connections for single statements
    /// (none of a pool of one: its only connection must stay the pool's).
    pub(crate) fn new(pool: PgPool, max_connections: u32) -> Self {
        let most = usize::try_from(max_connections / 2).unwrap_or(0);
        Self {
            pool,
            idle: Mutex::new(Idle::default()),
            most,
        }
    }

    /// A kept connection, or a new one from the pool if none is idle. Run
    /// one statement on it, then [`KeptConnection::keep`] it.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Unavailable`] if the pool has no connection to give.
    pub async fn take(&self) -> Result<KeptConnection<'_>> {
        let idle = self.lock().connections.pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(KeptConnection {
            kept: self,
            conn: Some(conn),
            clean: false,
        })
    }

    /// Gives every idle kept connection back to the pool and keeps none
    /// from now on, including those in use now (before the pool is closed,
    /// which waits for all of them).
    pub(crate) fn release_all(&self) {
        let mut idle = self.lock();
        idle.released = true;
        idle.connections.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection from [`Kept::take`]: kept again by [`keep`](Self::keep),
/// given back to the pool (and tested there) if dropped without it.
#[derive(Debug)]
pub struct KeptConnection<'a> {
    kept: &'a Kept,
    conn: Option<PoolConnection<Postgres>>,
    clean: bool,
}

impl KeptConnection<'_> {
    /// Gives the connection back to be kept: call it once the statement
    /// run on it has succeeded, so the connection is between statements.
    pub fn keep(mut self) {
        self.clean = true;
    }
}

impl Deref for KeptConnection<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("a connection until dropped")
    }
}

impl DerefMut for KeptConnection<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a connection until dropped")
    }
}

impl Drop for KeptConnection<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.clean {
            let mut idle = self.kept.lock();
            if !idle.released && idle.connections.len() < self.kept.most {
                idle.connections.push(conn);
                return;
            }
        }
        // Back to the pool, which tests it first.
        drop(conn);
    }
}
