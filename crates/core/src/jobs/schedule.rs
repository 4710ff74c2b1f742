//! Scheduled jobs: tasks that run on a cron schedule (seconds, minutes,
//! hours, day of month, month, day of week, as in `0 */15 * * * *`).
//!
//! Each schedule has a row with its next run time. A scheduler claims a
//! tick by advancing `next_run_at` with a conditional update and runs the
//! task only if the update took, so however many workers run a scheduler,
//! each tick runs once. A tick missed while no worker ran is run once when
//! one starts (not once per missed tick).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::FromRow;
use tokio::sync::watch;

use crate::db::{Database, from_micros, micros, now};
use crate::error::{Error, Result};
use crate::jobs::stop_requested;
use crate::on_database;

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

struct Entry {
    name: String,
    expression: String,
    schedule: cron::Schedule,
    task: Arc<dyn ScheduledTask>,
}

/// Runs scheduled tasks.
pub struct Scheduler {
    db: Database,
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field(
                "tasks",
                &self.entries.iter().map(|e| &e.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The next time `schedule` fires after `at`.
fn next_after(schedule: &cron::Schedule, at: DateTime<Utc>) -> Result<DateTime<Utc>> {
    schedule
        .after(&at)
        .next()
        .ok_or_else(|| Error::internal("the schedule never fires again"))
}

impl Scheduler {
    /// A scheduler recording in `db`, with no tasks yet.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            entries: Vec::new(),
        }
    }

    /// Runs `task` as `name` on the cron `expression`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] (`expression`) if it does not parse.
    pub fn add(
        mut self,
        name: &str,
        expression: &str,
        task: Arc<dyn ScheduledTask>,
    ) -> Result<Self> {
        let schedule = cron::Schedule::from_str(expression)
            .map_err(|e| Error::invalid_argument(format!("schedules.{name}"), e.to_string()))?;
        self.entries.push(Entry {
            name: name.to_owned(),
            expression: expression.to_owned(),
            schedule,
            task,
        });
        Ok(self)
    }

    /// Writes each schedule's row (a changed expression gets a new next
    /// run time), then runs due tasks until `stop` turns true.
    ///
    /// # Errors
    ///
    /// A database error while writing the rows.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<()> {
        self.register().await?;
        loop {
            let wait = match self.run_due().await {
                Ok(next) => next
                    .map(|at| (at - now()).to_std().unwrap_or(Duration::ZERO))
                    .unwrap_or(Duration::from_secs(60))
                    .clamp(Duration::from_millis(100), Duration::from_secs(30)),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot run scheduled tasks; trying again in 5 s");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop_requested(&mut stop) => return Ok(()),
            }
        }
    }

    /// Writes each schedule's row; a changed expression gets a new next
    /// run time. [`Scheduler::run`] does this first.
    ///
    /// # Errors
    ///
    /// A database error.
    pub async fn register(&self) -> Result<()> {
        let sql = "INSERT INTO schedules (name, cron, next_run_at, updated_at) \
                   VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, \
                     next_run_at = CASE WHEN schedules.cron = excluded.cron \
                                   THEN schedules.next_run_at ELSE excluded.next_run_at END, \
                     updated_at = excluded.updated_at";
        let at = now();
        for entry in &self.entries {
            let next = next_after(&entry.schedule, at)?;
            on_database!(&self.db, pool => {
                sqlx::query(sql)
                    .bind(&entry.name)
                    .bind(&entry.expression)
                    .bind(micros(next))
                    .bind(micros(at))
                    .execute(pool)
                    .await?;
            });
        }
        Ok(())
    }

    /// Runs every due task this scheduler wins the claim for; returns the
    /// earliest next run time. [`Scheduler::run`] calls it in a loop.
    ///
    /// # Errors
    ///
    /// A database error.
    pub async fn run_due(&self) -> Result<Option<DateTime<Utc>>> {
        let claim = "UPDATE schedules SET next_run_at = $1, updated_at = $2 \
                     WHERE name = $3 AND next_run_at = $4";
        let record = "UPDATE schedules SET last_run_at = $1, last_outcome = $2, last_error = $3, \
                      updated_at = $1 WHERE name = $4";
        let mut earliest: Option<DateTime<Utc>> = None;
        for entry in &self.entries {
            let due: i64 = on_database!(&self.db, pool => {
                sqlx::query_scalar("SELECT next_run_at FROM schedules WHERE name = $1")
                    .bind(&entry.name)
                    .fetch_one(pool)
                    .await?
            });
            let at = now();
            let due = from_micros(due)?;
            if due > at {
                earliest = Some(earliest.map_or(due, |e| e.min(due)));
                continue;
            }
            let next = next_after(&entry.schedule, at)?;
            earliest = Some(earliest.map_or(next, |e| e.min(next)));
            let won = on_database!(&self.db, pool => {
                sqlx::query(claim)
                    .bind(micros(next))
                    .bind(micros(at))
                    .bind(&entry.name)
                    .bind(micros(due))
                    .execute(pool)
                    .await?
                    .rows_affected()
            }) == 1;
            if !won {
                continue;
            }
            let (outcome, error) = match entry.task.run().await {
                Ok(summary) => {
                    tracing::info!(task = %entry.name, %summary, "scheduled task ran");
                    (Some(summary), None)
                }
                Err(err) => {
                    tracing::warn!(task = %entry.name, error = %err, "scheduled task failed");
                    (None, Some(err.to_string()))
                }
            };
            metrics::counter!(
                "switchboard_scheduled_runs_total",
                "task" => entry.name.clone(),
                "outcome" => if error.is_some() { "failed" } else { "succeeded" }
            )
            .increment(1);
            on_database!(&self.db, pool => {
                sqlx::query(record)
                    .bind(micros(now()))
                    .bind(outcome)
                    .bind(error)
                    .bind(&entry.name)
                    .execute(pool)
                    .await?;
            });
        }
        Ok(earliest)
    }
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
