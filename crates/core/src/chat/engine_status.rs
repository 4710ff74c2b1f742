//! [`EngineStatus`]: whether the core chatbot engine is taking calls, as
//! SendMessage, readiness and metrics see it.
//!
//! The engine's [`CircuitBreaker`] lives where the engine is called: in the
//! workers. A process running workers answers from its own breaker and
//! writes each change to the `engine_breakers` table; an API-only process
//! (`serve --no-workers`) reads the latest report from that table every
//! second, so it fails SendMessage fast too while the workers' circuit is
//! open.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::shutdown::ShutdownSignal;

use crate::chat::breaker::{BreakerState, CircuitBreaker};
use crate::db::{Database, from_micros, micros, now};
use crate::error::{Error, Result};
use crate::{on_database, on_writer};

/// How often an API-only process reads the workers' reports.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The breaker state as reported, for readiness and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedState {
    /// Calls go through.
    Closed,
    /// Calls are refused until `until`.
    Open {
        /// When the circuit turns half-open.
        until: DateTime<Utc>,
    },
    /// One probe call is let through.
    HalfOpen,
}

impl ReportedState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportedState::Closed => "closed",
            ReportedState::Open { .. } => "open",
            ReportedState::HalfOpen => "half_open",
        }
    }

    /// The metric value: 0 closed, 1 half-open, 2 open.
    fn gauge(self) -> f64 {
        match self {
            ReportedState::Closed => 0.0,
            ReportedState::HalfOpen => 1.0,
            ReportedState::Open { .. } => 2.0,
        }
    }

    fn from_breaker(state: BreakerState) -> Self {
        match state {
            BreakerState::Closed => ReportedState::Closed,
            BreakerState::HalfOpen => ReportedState::HalfOpen,
            BreakerState::Open { until } => {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                ReportedState::Open {
                    until: now() + chrono::Duration::from_std(left).unwrap_or_default(),
                }
            }
        }
    }
}

/// Whether the engine is taking calls.
#[derive(Debug, Clone)]
pub struct EngineStatus {
    engine: &'static str,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// This process calls the engine.
    Local(Arc<CircuitBreaker>),
    /// The workers' latest report, refreshed in the background.
    Mirrored(Arc<Mutex<ReportedState>>),
}

impl EngineStatus {
    /// The status of `breaker`, which this process's workers use; each
    /// change is written to the database as `worker`'s report (and to the
    /// `switchboard_engine_breaker_state` gauge) until `stop`.
    pub fn local(
        engine: &'static str,
        breaker: Arc<CircuitBreaker>,
        db: Database,
        worker: String,
        stop: ShutdownSignal,
    ) -> Self {
        tokio::spawn(report_changes(
            engine,
            breaker.subscribe(),
            db,
            worker,
            stop,
        ));
        Self {
            engine,
            source: Source::Local(breaker),
        }
    }

    /// The workers' latest report, read from `db` every second until `stop`.
    pub fn mirrored(engine: &'static str, db: Database, stop: ShutdownSignal) -> Self {
        let state = Arc::new(Mutex::new(ReportedState::Closed));
        tokio::spawn(follow_reports(engine, db, state.clone(), stop));
        Self {
            engine,
            source: Source::Mirrored(state),
        }
    }

    /// The engine's name: `dev`, `grpc`, `openai`.
    pub fn engine(&self) -> &'static str {
        self.engine
    }

    /// The breaker's state.
    pub fn state(&self) -> ReportedState {
        match &self.source {
            Source::Local(breaker) => ReportedState::from_breaker(breaker.state()),
            Source::Mirrored(state) => {
                let state = *state.lock().unwrap_or_else(|p| p.into_inner());
                match state {
                    ReportedState::Open { until } if until <= now() => ReportedState::HalfOpen,
                    other => other,
                }
            }
        }
    }

    /// What SendMessage asks first: refused while the circuit is open.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] naming when to try again.
    pub fn check(&self) -> Result<()> {
        match &self.source {
            Source::Local(breaker) => breaker.check(),
            Source::Mirrored(_) => match self.state() {
                ReportedState::Open { until } => Err(Error::Unavailable(format!(
                    "the chatbot engine is unavailable (circuit open); try again in {} s",
                    (until - now()).num_seconds().max(1)
                ))),
                _ => Ok(()),
            },
        }
    }
}

/// Writes every change of the local breaker as `worker`'s report.
async fn report_changes(
    engine: &'static str,
    mut changes: watch::Receiver<BreakerState>,
    db: Database,
    worker: String,
    stop: ShutdownSignal,
) {
    loop {
        let state = ReportedState::from_breaker(*changes.borrow_and_update());
        metrics::gauge!("switchboard_engine_breaker_state", "engine" => engine).set(state.gauge());
        if let Err(err) = write_report(&db, &worker, state).await {
            tracing::warn!(error = %err, "cannot record the engine breaker's state");
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = stop.requested() => return,
        }
    }
}

async fn write_report(db: &Database, worker: &str, state: ReportedState) -> Result<()> {
    let sql = "INSERT INTO engine_breakers (worker, state, open_until, updated_at) \
               VALUES ($1, $2, $3, $4) \
               ON CONFLICT (worker) DO UPDATE SET state = excluded.state, \
                 open_until = excluded.open_until, updated_at = excluded.updated_at";
    let until = match state {
        ReportedState::Open { until } => Some(micros(until)),
        _ => None,
    };
    on_writer!(db, pool => {
        sqlx::query(sql)
            .bind(worker)
            .bind(state.as_str())
            .bind(until)
            .bind(micros(now()))
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Reads the latest report into `state` every second.
async fn follow_reports(
    engine: &'static str,
    db: Database,
    state: Arc<Mutex<ReportedState>>,
    stop: ShutdownSignal,
) {
    let sql = "SELECT state, open_until FROM engine_breakers ORDER BY updated_at DESC LIMIT 1";
    loop {
        let latest: Result<Option<(String, Option<i64>)>> = async {
            Ok(on_database!(&db, pool => sqlx::query_as(sql).fetch_optional(pool).await?))
        }
        .await;
        match latest {
            Ok(report) => {
                let reported = match report {
                    Some((name, Some(until))) if name == "open" => match from_micros(until) {
                        Ok(until) => ReportedState::Open { until },
                        Err(_) => ReportedState::Closed,
                    },
                    Some((name, _)) if name == "half_open" => ReportedState::HalfOpen,
                    _ => ReportedState::Closed,
                };
                metrics::gauge!("switchboard_engine_breaker_state", "engine" => engine)
                    .set(reported.gauge());
                *state.lock().unwrap_or_else(|p| p.into_inner()) = reported;
            }
            Err(err) => tracing::debug!(error = %err, "cannot read the engine breaker's reports"),
        }
        tokio::select! {
            () = tokio::time::sleep(REFRESH_INTERVAL) => {}
            () = stop.requested() => return,
        }
    }
}
