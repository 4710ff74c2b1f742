//! [`Scheduler`]: runs the domain's scheduled tasks on their cron schedules
//! (seconds, minutes, hours, day of month, month, day of week, as in
//! `0 */15 * * * *`), in every process with workers.
//!
//! Each tick is claimed in the schedule's row first
//! ([`schedule::claim_tick`]), so however many schedulers run, each tick
//! runs once; a tick missed while no worker ran is run once when one starts.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use switchboard_core::db::{Database, now};
use switchboard_core::jobs::{ScheduledTask, schedule};
use switchboard_core::shutdown::ShutdownSignal;
use switchboard_core::{Error, Result};

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
    /// run time), then runs due tasks until `stop` is requested.
    ///
    /// # Errors
    ///
    /// A database error while writing the rows.
    pub async fn run(self, stop: ShutdownSignal) -> Result<()> {
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
                () = stop.requested() => return Ok(()),
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
        let at = now();
        for entry in &self.entries {
            let next = next_after(&entry.schedule, at)?;
            schedule::register(&self.db, &entry.name, &entry.expression, next).await?;
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
        let mut earliest: Option<DateTime<Utc>> = None;
        for entry in &self.entries {
            let due = schedule::next_run_at(&self.db, &entry.name).await?;
            let at = now();
            if due > at {
                earliest = Some(earliest.map_or(due, |e| e.min(due)));
                continue;
            }
            let next = next_after(&entry.schedule, at)?;
            earliest = Some(earliest.map_or(next, |e| e.min(next)));
            if !schedule::claim_tick(&self.db, &entry.name, due, next).await? {
                continue;
            }
            let outcome = entry.task.run().await.map_err(|err| err.to_string());
            match &outcome {
                Ok(summary) => tracing::info!(task = %entry.name, %summary, "scheduled task ran"),
                Err(error) => tracing::warn!(task = %entry.name, %error, "scheduled task failed"),
            }
            metrics::counter!(
                "switchboard_scheduled_runs_total",
                "task" => entry.name.clone(),
                "outcome" => if outcome.is_err() { "failed" } else { "succeeded" }
            )
            .increment(1);
            let outcome = outcome.as_deref().map_err(String::as_str);
            schedule::record_run(&self.db, &entry.name, outcome).await?;
        }
        Ok(earliest)
    }
}
