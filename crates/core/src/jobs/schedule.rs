//! Scheduled jobs as the domain knows them: a [`ScheduledTask`] runs on a
//! cron schedule; each schedule has a row (`schedules`) with its next run
//! time and last outcome ([`Schedule`], listed by the API).
//!
//! The scheduler that runs them (`switchboard-workers`) claims a tick by
//! advancing `next_run_at` with a conditional update ([`claim_tick`]) and
//! runs the task only if the update took, so however many workers run a
//! scheduler, each tick runs once. A tick missed while no worker ran is run
//! once when one starts (not once per missed tick).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::FromRow;

use crate::db::{Database, from_micros, micros, now};
use crate::error::Result;
use crate::{on_database, on_writer};

/// A task run on a schedule.
#[async_trait]
pub trait ScheduledTask: Send + Sync {
    /// Runs once; returns a one-line summary for the schedule's record
    /// (such as "deleted 3 sessions").
    async fn run(&self) -> Result<String>;
}

/// A schedule as stored, for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The task's name, such as `purge_expired_sessions`.
    pub name: String,
    /// Its cron expression.
    pub cron: String,
    /// When it runs next.
    pub next_run_at: DateTime<Utc>,
    /// When it last ran.
    pub last_run_at: Option<DateTime<Utc>>,
    /// The summary of its last run, or its error.
    pub last_outcome: Option<String>,
    /// Whether the last run failed.
    pub last_failed: bool,
}

#[derive(FromRow)]
struct ScheduleRow {
    name: String,
    cron: String,
    next_run_at: i64,
    last_run_at: Option<i64>,
    last_outcome: Option<String>,
    last_error: Option<String>,
}

/// Writes the row of schedule `name` with its cron `expression`: a new
/// schedule, or one whose expression changed, runs next at `next`; an
/// unchanged one keeps its next run time.
///
/// # Errors
///
/// A database error.
pub async fn register(
    db: &Database,
    name: &str,
    expression: &str,
    next: DateTime<Utc>,
) -> Result<()> {
    let sql = "INSERT INTO schedules (name, cron, next_run_at, updated_at) \
               VALUES ($1, $2, $3, $4) \
               ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, \
                 next_run_at = CASE WHEN schedules.cron = excluded.cron \
                               THEN schedules.next_run_at ELSE excluded.next_run_at END, \
                 updated_at = excluded.updated_at";
    on_writer!(db, pool => {
        sqlx::query(sql)
            .bind(name)
            .bind(expression)
            .bind(micros(next))
            .bind(micros(now()))
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// When schedule `name` runs next.
///
/// # Errors
///
/// A database error (a missing row included: [`register`] it first).
pub async fn next_run_at(db: &Database, name: &str) -> Result<DateTime<Utc>> {
    let due: i64 = on_database!(db, pool => {
        sqlx::query_scalar("SELECT next_run_at FROM schedules WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await?
    });
    from_micros(due)
}

/// Claims the tick of schedule `name` that was due at `due` by moving its
/// next run to `next`; true if this caller won it (and must run the task).
///
/// # Errors
///
/// A database error.
pub async fn claim_tick(
    db: &Database,
    name: &str,
    due: DateTime<Utc>,
    next: DateTime<Utc>,
) -> Result<bool> {
    let claim = "UPDATE schedules SET next_run_at = $1, updated_at = $2 \
                 WHERE name = $3 AND next_run_at = $4";
    let won = on_writer!(db, pool => {
        sqlx::query(claim)
            .bind(micros(next))
            .bind(micros(now()))
            .bind(name)
            .bind(micros(due))
            .execute(pool)
            .await?
            .rows_affected()
    }) == 1;
    Ok(won)
}

/// Records how the last run of schedule `name` went: its summary, or its
/// error.
///
/// # Errors
///
/// A database error.
pub async fn record_run(
    db: &Database,
    name: &str,
    outcome: std::result::Result<&str, &str>,
) -> Result<()> {
    let record = "UPDATE schedules SET last_run_at = $1, last_outcome = $2, last_error = $3, \
                  updated_at = $1 WHERE name = $4";
    let (summary, error) = match outcome {
        Ok(summary) => (Some(summary), None),
        Err(error) => (None, Some(error)),
    };
    on_writer!(db, pool => {
        sqlx::query(record)
            .bind(micros(now()))
            .bind(summary)
            .bind(error)
            .bind(name)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Every schedule, by name.
pub(crate) async fn list(db: &Database) -> Result<Vec<Schedule>> {
    let sql = "SELECT name, cron, next_run_at, last_run_at, last_outcome, last_error \
               FROM schedules ORDER BY name";
    let rows: Vec<ScheduleRow> =
        on_database!(db, pool => sqlx::query_as(sql).fetch_all(pool).await?);
    rows.into_iter()
        .map(|row| {
            Ok(Schedule {
                next_run_at: from_micros(row.next_run_at)?,
                last_run_at: row.last_run_at.map(from_micros).transpose()?,
                last_failed: row.last_error.is_some(),
                last_outcome: row.last_error.or(row.last_outcome),
                name: row.name,
                cron: row.cron,
            })
        })
        .collect()
}
