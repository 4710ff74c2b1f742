//! The job record and the retry policy of a kind of job.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// A worker has it (and renews its lease).
    Running,
    /// An attempt failed; the next waits until `run_at`.
    Retrying,
    /// Done.
    Succeeded,
    /// Every attempt failed, or the failure was permanent: a dead letter.
    Dead,
}

impl JobState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
        }
    }

    /// Whether no worker will take the job again by itself.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "retrying" => JobState::Retrying,
            "succeeded" => JobState::Succeeded,
            "dead" => JobState::Dead,
            other => return Err(Error::internal(format!("unknown job state {other:?}"))),
        })
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Opaque id (a UUID v7).
    pub id: String,
    /// What the job does, such as `generate_reply`.
    pub kind: String,
    /// Its arguments, as JSON.
    pub payload: serde_json::Value,
    /// Where it is in its life.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed before the job is dead.
    pub max_attempts: u32,
    /// Why the latest failed attempt failed.
    pub last_error: Option<String>,
    /// Not taken before this time.
    pub run_at: DateTime<Utc>,
    /// While running: when the attempt counts as abandoned.
    pub lease_until: Option<DateTime<Utc>>,
    /// The worker of the latest attempt.
    pub worker: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When the latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it succeeded or died.
    pub finished_at: Option<DateTime<Utc>>,
    /// The trace context of the span that enqueued it (see
    /// [`crate::telemetry::stored_context`]), continued by the worker that
    /// runs it; `None` when tracing is off.
    pub trace_context: Option<String>,
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// What the job does.
    pub kind: &'static str,
    /// Its arguments.
    pub payload: serde_json::Value,
    /// Attempts allowed.
    pub max_attempts: u32,
}

impl NewJob {
    /// The row of this job, queued now with a fresh id, in the trace of the
    /// current span.
    pub(crate) fn into_job(self, now: DateTime<Utc>) -> Job {
        Job {
            id: uuid::Uuid::now_v7().to_string(),
            kind: self.kind.to_owned(),
            payload: self.payload,
            state: JobState::Queued,
            attempts: 0,
            max_attempts: self.max_attempts.max(1),
            last_error: None,
            run_at: now,
            lease_until: None,
            worker: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            trace_context: crate::telemetry::stored_context(&tracing::Span::current()),
        }
    }
}

/// How often a kind of job is tried, and how long it waits in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts before the job is dead (at least 1). Default 5.
    pub max_attempts: u32,
    /// The wait after the first failure, in milliseconds; it doubles after
    /// each further failure. Default 1000.
    pub backoff_base_ms: u64,
    /// The longest wait, in milliseconds. Default 60000.
    pub backoff_max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_base_ms: 1000,
            backoff_max_ms: 60_000,
        }
    }
}

impl RetryPolicy {
    /// The wait before the attempt after `failed_attempts` failures:
    /// exponential (`base × 2^(n-1)`, capped at the maximum) with "equal
    /// jitter" (a uniformly random half of it is taken off), so retries of
    /// many jobs that failed together spread out.
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let exponent = failed_attempts.saturating_sub(1).min(32);
        let full = self
            .backoff_base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.backoff_max_ms);
        let jitter = rand::random_range(0..=full / 2);
        Duration::from_millis(full - jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_at_most_half_taken_off() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
        };
        for (failures, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            for _ in 0..50 {
                let wait = policy.backoff(failures).as_millis();
                assert!((full / 2..=full).contains(&wait), "{failures}: {wait}");
            }
        }
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in [
            JobState::Queued,
            JobState::Running,
            JobState::Retrying,
            JobState::Succeeded,
            JobState::Dead,
        ] {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
        }
    }
}
