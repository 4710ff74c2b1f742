//! The domain's scheduled maintenance: what runs on the schedules of the
//! `schedules` configuration table, in every process with workers.
//!
//! A new scheduled task is a [`ScheduledTask`] here, its cron expression in
//! [`SchedulesConfig`](crate::config::SchedulesConfig), and one entry in
//! [`tasks`]; the scheduler (`switchboard-workers`) runs whatever this
//! list holds.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::chat::Chat;
use crate::config::SchedulesConfig;
use crate::db::{Database, now};
use crate::error::Result;
use crate::identity::Identity;
use crate::jobs::{ScheduledTask, store};

/// One scheduled task with its name and cron expression.
#[derive(Clone)]
pub struct Maintenance {
    /// The schedule's name, such as `purge_expired_sessions`.
    pub name: &'static str,
    /// Its cron expression, from the configuration.
    pub cron: String,
    /// What runs.
    pub task: Arc<dyn ScheduledTask>,
}

impl std::fmt::Debug for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintenance")
            .field("name", &self.name)
            .field("cron", &self.cron)
            .finish_non_exhaustive()
    }
}

/// Every maintenance task, on the schedules `schedules` configures.
pub fn tasks(
    schedules: &SchedulesConfig,
    db: &Database,
    chat: &Arc<Chat>,
    identity: &Arc<Identity>,
) -> Vec<Maintenance> {
    vec![
        Maintenance {
            name: "purge_expired_sessions",
            cron: schedules.purge_expired_sessions.clone(),
            task: Arc::new(PurgeExpiredSessions(identity.clone())),
        },
        Maintenance {
            name: "apply_retention",
            cron: schedules.apply_retention.clone(),
            task: Arc::new(ApplyRetention {
                chat: chat.clone(),
                days: schedules.retention_days,
            }),
        },
        Maintenance {
            name: "purge_finished_jobs",
            cron: schedules.purge_jobs.clone(),
            task: Arc::new(PurgeFinishedJobs {
                db: db.clone(),
                days: schedules.keep_jobs_days,
            }),
        },
    ]
}

/// Deletes ended sessions and abandoned sign-ins.
struct PurgeExpiredSessions(Arc<Identity>);

#[async_trait]
impl ScheduledTask for PurgeExpiredSessions {
    async fn run(&self) -> Result<String> {
        let sessions = self.0.purge_expired().await?;
        Ok(format!("deleted {sessions} expired sessions"))
    }
}

/// Deletes conversations idle longer than the retention.
struct ApplyRetention {
    chat: Arc<Chat>,
    days: u32,
}

#[async_trait]
impl ScheduledTask for ApplyRetention {
    async fn run(&self) -> Result<String> {
        if self.days == 0 {
            return Ok("retention is off (schedules.retention_days = 0)".to_owned());
        }
        let age = Duration::from_secs(u64::from(self.days) * 86_400);
        let deleted = self.chat.delete_idle_conversations(age).await?;
        Ok(format!(
            "deleted {deleted} conversations idle for over {} days",
            self.days
        ))
    }
}

/// Deletes succeeded jobs older than the configured days.
struct PurgeFinishedJobs {
    db: Database,
    days: u32,
}

#[async_trait]
impl ScheduledTask for PurgeFinishedJobs {
    async fn run(&self) -> Result<String> {
        let before = now() - chrono::Duration::days(i64::from(self.days));
        let deleted = store::purge_succeeded(&self.db, before).await?;
        Ok(format!("deleted {deleted} succeeded jobs"))
    }
}
