//! The job queue's own scenarios, each run on SQLite and PostgreSQL:
//! scheduled tasks run once per tick however many schedulers share the
//! database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use switchboard_core::Result;
use switchboard_core::jobs::ScheduledTask;
use switchboard_core::on_database;
use switchboard_workers::Scheduler;

use crate::support::{TestApp, TestDb, on_both_databases};

on_both_databases!(each_tick_of_a_schedule_runs_once_across_schedulers);

/// Counts its runs.
#[derive(Default)]
struct Counter(AtomicU32);

#[async_trait]
impl ScheduledTask for Counter {
    async fn run(&self) -> Result<String> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("run {n}"))
    }
}

async fn each_tick_of_a_schedule_runs_once_across_schedulers(db: TestDb) {
    let app = TestApp::start(db).await;
    let counter = Arc::new(Counter::default());
    let scheduler = || {
        Scheduler::new(app.db.clone())
            .add("count", "0 0 0 1 1 *", counter.clone())
            .unwrap()
    };
    let (a, b) = (scheduler(), scheduler());
    a.register().await.unwrap();
    b.register().await.unwrap();
    // Not due yet (next 1 January): nothing runs.
    let (_, _) = tokio::join!(a.run_due(), b.run_due());
    assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    // Make it due, as if the time had come: both schedulers race for it.
    on_database!(&app.db, pool => {
        sqlx::query("UPDATE schedules SET next_run_at = 0 WHERE name = 'count'")
            .execute(pool).await.unwrap();
    });
    let (next_a, next_b) = tokio::join!(a.run_due(), b.run_due());
    assert_eq!(counter.0.load(Ordering::SeqCst), 1, "one run for one tick");
    assert!(next_a.unwrap().is_some() && next_b.unwrap().is_some());
    let schedules = app.jobs.list_schedules().await.unwrap();
    let count = schedules.iter().find(|s| s.name == "count").unwrap();
    assert_eq!(count.last_outcome.as_deref(), Some("run 1"));
    assert!(!count.last_failed);
    assert!(count.next_run_at > chrono::Utc::now());
    // The binary's own schedules are registered by the workers it started.
    for name in [
        "purge_expired_sessions",
        "apply_retention",
        "purge_finished_jobs",
    ] {
        assert!(schedules.iter().any(|s| s.name == name), "{name} is listed");
    }
    // A bad expression is refused with the key that holds it.
    let err = Scheduler::new(app.db.clone())
        .add("broken", "every tuesday", counter.clone())
        .err()
        .unwrap();
    assert!(err.to_string().contains("schedules.broken"), "{err}");
}
