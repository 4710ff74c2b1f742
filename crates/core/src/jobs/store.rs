//! The `jobs` table: every SQL statement about jobs, written once for
//! SQLite and PostgreSQL. State changes of an attempt are conditional on the
//! attempt's number and state, so a worker that lost its lease (and whose
//! job another worker took) cannot overwrite the newer attempt.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use crate::db::direct::numbered;
use crate::db::{Database, from_micros, micros};
use crate::error::{Error, Result};
use crate::jobs::model::{Job, JobState};
use crate::{on_database, on_kept, on_tx, on_writer};

/// The columns of a `JobRow`, as a literal for `concat!`.
macro_rules! job_columns {
    () => {
        "id, kind, payload, state, attempts, max_attempts, last_error, run_at, lease_until, \
         worker, created_at, updated_at, started_at, finished_at, trace_context"
    };
}

/// The UPDATE of [`start_attempts`], `$ids` saying which ids (`$4` on):
/// `$1` the lease, `$2` the worker, `$3` now.
///
/// Which jobs can be taken is a CASE, not `(state IN (…) AND run_at <= $3)
/// OR (…)`, so that no planner can answer it from the partial indexes of
/// due and running jobs: PostgreSQL's generic plan did, while the table's
/// statistics still said those indexes were small, and scanned the whole
/// backlog for every batch (20,000 queued jobs: 5 ms a batch, most of the
/// database's CPU). Only the primary key is left, probed once per id.
macro_rules! start_attempts_sql {
    ($ids:literal) => {
        concat!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = $1, \
             worker = $2, started_at = $3, updated_at = $3 \
             WHERE id ",
            $ids,
            " AND CASE WHEN state IN ('queued', 'retrying') THEN run_at <= $3 \
                 WHEN state = 'running' THEN lease_until < $3 ELSE FALSE END \
             RETURNING ",
            job_columns!()
        )
    };
}

/// Inserts a job row; the binds are those of [`bind_insert`].
pub(crate) const INSERT_JOB: &str = "INSERT INTO jobs (id, kind, payload, state, attempts, \
     max_attempts, run_at, created_at, updated_at, trace_context) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Binds `job` to [`INSERT_JOB`], on either engine.
macro_rules! bind_insert {
    ($query:expr, $job:expr, $payload:expr) => {
        $query
            .bind(&$job.id)
            .bind(&$job.kind)
            .bind($payload)
            .bind($job.state.as_str())
            .bind(i64::from($job.attempts))
            .bind(i64::from($job.max_attempts))
            .bind($crate::db::micros($job.run_at))
            .bind($crate::db::micros($job.created_at))
            .bind($crate::db::micros($job.updated_at))
            .bind(&$job.trace_context)
    };
}
pub(crate) use bind_insert;

/// The parameters of [`INSERT_JOB`] for a direct SQLite statement, in the
/// order of [`bind_insert`].
macro_rules! direct_job_params {
    ($job:expr, $payload:expr) => {
        rusqlite::params![
            &$job.id,
            &$job.kind,
            $payload,
            $job.state.as_str(),
            i64::from($job.attempts),
            i64::from($job.max_attempts),
            $crate::db::micros($job.run_at),
            $crate::db::micros($job.created_at),
            $crate::db::micros($job.updated_at),
            &$job.trace_context,
        ]
    };
}
pub(crate) use direct_job_params;

#[derive(FromRow)]
struct JobRow {
    id: String,
    kind: String,
    payload: String,
    state: String,
    attempts: i64,
    max_attempts: i64,
    last_error: Option<String>,
    run_at: i64,
    lease_until: Option<i64>,
    worker: Option<String>,
    created_at: i64,
    updated_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    trace_context: Option<String>,
}

impl JobRow {
    /// A row of [`job_columns!`] read on a direct connection.
    fn from_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            kind: row.get(1)?,
            payload: row.get(2)?,
            state: row.get(3)?,
            attempts: row.get(4)?,
            max_attempts: row.get(5)?,
            last_error: row.get(6)?,
            run_at: row.get(7)?,
            lease_until: row.get(8)?,
            worker: row.get(9)?,
            created_at: row.get(10)?,
            updated_at: row.get(11)?,
            started_at: row.get(12)?,
            finished_at: row.get(13)?,
            trace_context: row.get(14)?,
        })
    }
}

impl TryFrom<JobRow> for Job {
    type Error = Error;

    fn try_from(row: JobRow) -> Result<Self> {
        let count = |n: i64| u32::try_from(n).map_err(Error::internal);
        let at = |m: Option<i64>| m.map(from_micros).transpose();
        Ok(Job {
            payload: serde_json::from_str(&row.payload).map_err(Error::internal)?,
            state: row.state.parse()?,
            attempts: count(row.attempts)?,
            max_attempts: count(row.max_attempts)?,
            run_at: from_micros(row.run_at)?,
            lease_until: at(row.lease_until)?,
            created_at: from_micros(row.created_at)?,
            updated_at: from_micros(row.updated_at)?,
            started_at: at(row.started_at)?,
            finished_at: at(row.finished_at)?,
            id: row.id,
            kind: row.kind,
            last_error: row.last_error,
            worker: row.worker,
            trace_context: row.trace_context,
        })
    }
}

/// The JSON text of a job's payload.
pub(crate) fn payload_text(job: &Job) -> Result<String> {
    serde_json::to_string(&job.payload).map_err(Error::internal)
}

/// Inserts `job` on its own (jobs not tied to another write).
pub(crate) async fn insert(db: &Database, job: &Job) -> Result<()> {
    let payload = payload_text(job)?;
    on_writer!(db, pool => {
        bind_insert!(sqlx::query(INSERT_JOB), job, &payload).execute(pool).await?;
    });
    Ok(())
}

/// Rows per multi-row statement: [`insert_many`] binds ten values a row,
/// and PostgreSQL takes at most 65,535 binds a statement (SQLite 32,766).
const ROWS_PER_STATEMENT: usize = 500;

/// The placeholders `($first, …)`, `count` of them numbered on from `first`,
/// in groups of `width` (one group a row), separated by commas.
fn placeholders(first: usize, count: usize, width: usize) -> String {
    (0..count)
        .map(|row| {
            let binds: Vec<String> = (0..width)
                .map(|col| format!("${}", first + row * width + col))
                .collect();
            format!("({})", binds.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts `jobs` in one transaction (multi-row INSERTs of up to
/// [`ROWS_PER_STATEMENT`] rows): one commit for all of them.
pub(crate) async fn insert_many(db: &Database, jobs: &[Job]) -> Result<()> {
    let payloads = jobs.iter().map(payload_text).collect::<Result<Vec<_>>>()?;
    // Our own transaction (`Database::begin`), not the pool's: a COMMIT that
    // fails on a full disk must not send the connection back inside it.
    let mut tx = db.begin().await?;
    on_tx!(&mut tx, conn => {
        for (chunk, texts) in jobs.chunks(ROWS_PER_STATEMENT).zip(payloads.chunks(ROWS_PER_STATEMENT)) {
            let sql = format!(
                "INSERT INTO jobs (id, kind, payload, state, attempts, max_attempts, run_at, \
                 created_at, updated_at, trace_context) VALUES {}",
                placeholders(1, chunk.len(), 10)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (job, payload) in chunk.iter().zip(texts) {
                query = bind_insert!(query, job, payload.as_str());
            }
            query.execute(&mut *conn).await?;
        }
    });
    tx.commit().await?;
    Ok(())
}

/// One job.
pub async fn get(db: &Database, id: &str) -> Result<Option<Job>> {
    let sql = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");
    let row: Option<JobRow> =
        on_database!(db, pool => sqlx::query_as(sql).bind(id).fetch_optional(pool).await?);
    row.map(Job::try_from).transpose()
}

/// The id of a job a worker may take now: a due queued or retrying job, or
/// a running one whose lease ran out; oldest due first.
pub async fn next_due(db: &Database, now: DateTime<Utc>) -> Result<Option<String>> {
    let due = "SELECT id FROM jobs WHERE state IN ('queued', 'retrying') AND run_at <= $1 \
               ORDER BY run_at, id LIMIT 1";
    let abandoned = "SELECT id FROM jobs WHERE state = 'running' AND lease_until < $1 \
                     ORDER BY lease_until LIMIT 1";
    let id: Option<String> = on_database!(db, pool => {
        match sqlx::query_scalar(due).bind(micros(now)).fetch_optional(pool).await? {
            Some(id) => Some(id),
            None => sqlx::query_scalar(abandoned).bind(micros(now)).fetch_optional(pool).await?,
        }
    });
    Ok(id)
}

/// Starts an attempt of job `id` for `worker`, if the job may be taken
/// now: due and waiting, or running with an expired lease. The attempt
/// count goes up by one. `None` if another worker has it, it is not due, or
/// it has finished.
pub async fn start_attempt(
    db: &Database,
    id: &str,
    worker: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<Job>> {
    let sql = concat!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = $1, \
         worker = $2, started_at = $3, updated_at = $3 \
         WHERE id = $4 AND ((state IN ('queued', 'retrying') AND run_at <= $3) \
                            OR (state = 'running' AND lease_until < $3)) \
         RETURNING ",
        job_columns!()
    );
    let row: Option<JobRow> = on_writer!(db, pool => {
        sqlx::query_as(sql)
            .bind(micros(lease_until))
            .bind(worker)
            .bind(micros(now))
            .bind(id)
            .fetch_optional(pool)
            .await?
    });
    row.map(Job::try_from).transpose()
}

/// Up to `limit` ids of jobs a worker may take now, as [`next_due`] picks
/// one: due queued or retrying jobs oldest first, or, when there are none,
/// running ones whose lease ran out.
pub async fn next_due_many(db: &Database, now: DateTime<Utc>, limit: usize) -> Result<Vec<String>> {
    let due = "SELECT id FROM jobs WHERE state IN ('queued', 'retrying') AND run_at <= $1 \
               ORDER BY run_at, id LIMIT $2";
    let abandoned = "SELECT id FROM jobs WHERE state = 'running' AND lease_until < $1 \
                     ORDER BY lease_until LIMIT $2";
    let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
    if let Some(direct) = db.direct() {
        let (due, abandoned) = (numbered(due), numbered(abandoned));
        return direct
            .read(|conn| {
                let ids = |sql: &str| -> rusqlite::Result<Vec<String>> {
                    conn.prepare_cached(sql)?
                        .query_map(rusqlite::params![micros(now), limit], |row| row.get(0))?
                        .collect()
                };
                let due = ids(&due)?;
                if due.is_empty() {
                    ids(&abandoned)
                } else {
                    Ok(due)
                }
            })
            .await;
    }
    let ids: Vec<String> = on_database!(db, pool => {
        let ids: Vec<String> = sqlx::query_scalar(due).bind(micros(now)).bind(limit).fetch_all(pool).await?;
        if ids.is_empty() {
            sqlx::query_scalar(abandoned).bind(micros(now)).bind(limit).fetch_all(pool).await?
        } else {
            ids
        }
    });
    Ok(ids)
}

/// Starts an attempt of each of the jobs `ids` that may be taken now, as
/// [`start_attempt`] does for one, in one statement per
/// [`ROWS_PER_STATEMENT`] ids; returns the jobs it started (in no
/// particular order). An id listed twice is started once.
pub async fn start_attempts(
    db: &Database,
    ids: &[String],
    worker: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Vec<Job>> {
    let (lease_micros, now_micros) = (micros(lease_until), micros(now));
    if let Some(kept) = db.kept() {
        // The ids as one array: one statement text (and one prepared plan)
        // whatever their number.
        let rows: Vec<JobRow> = on_kept!(kept, conn => {
            sqlx::query_as(start_attempts_sql!("= ANY($4)"))
                .bind(lease_micros)
                .bind(worker)
                .bind(now_micros)
                .bind(ids)
                .fetch_all(conn)
                .await
        })?;
        return rows.into_iter().map(Job::try_from).collect();
    }
    let mut started = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(start_attempts_sql!("IN ({})"), list.join(", "));
        let rows: Vec<JobRow> = if let Some(direct) = db.direct() {
            let sql = numbered(&sql);
            direct
                .write(|tx| {
                    let mut params: Vec<&dyn rusqlite::ToSql> =
                        vec![&lease_micros, &worker, &now_micros];
                    params.extend(chunk.iter().map(|id| id as &dyn rusqlite::ToSql));
                    tx.prepare_cached(&sql)?
                        .query_map(params.as_slice(), JobRow::from_direct)?
                        .collect()
                })
                .await?
        } else {
            on_writer!(db, pool => {
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(lease_micros)
                    .bind(worker)
                    .bind(now_micros);
                for id in chunk {
                    query = query.bind(id);
                }
                query.fetch_all(pool).await?
            })
        };
        for row in rows {
            started.push(Job::try_from(row)?);
        }
    }
    Ok(started)
}

/// Extends the lease of attempt `attempt` of job `id`; false if the
/// attempt is no longer the job's running one.
pub async fn renew(
    db: &Database,
    id: &str,
    attempt: u32,
    lease_until: DateTime<Utc>,
) -> Result<bool> {
    let sql = "UPDATE jobs SET lease_until = $1 \
               WHERE id = $2 AND attempts = $3 AND state = 'running'";
    let n = on_writer!(db, pool => {
        sqlx::query(sql)
            .bind(micros(lease_until))
            .bind(id)
            .bind(i64::from(attempt))
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(n == 1)
}

/// How an attempt ended, as [`finish_attempt`] records it.
#[derive(Debug, Clone)]
pub enum AttemptEnd {
    /// The job is done.
    Succeeded,
    /// It failed and is tried again at `run_at`.
    Retry {
        /// What went wrong.
        error: String,
        /// When the next attempt may start.
        run_at: DateTime<Utc>,
    },
    /// It failed for good.
    Dead {
        /// What went wrong.
        error: String,
    },
}

/// Records the end of attempt `attempt` of job `id`; false if the attempt
/// is no longer the job's running one (its lease ran out and another
/// worker took the job).
pub async fn finish_attempt(
    db: &Database,
    id: &str,
    attempt: u32,
    end: &AttemptEnd,
    now: DateTime<Utc>,
) -> Result<bool> {
    let (state, error, run_at, finished_at) = match end {
        AttemptEnd::Succeeded => (JobState::Succeeded, None, None, Some(micros(now))),
        AttemptEnd::Retry { error, run_at } => (
            JobState::Retrying,
            Some(error.as_str()),
            Some(micros(*run_at)),
            None,
        ),
        AttemptEnd::Dead { error } => (
            JobState::Dead,
            Some(error.as_str()),
            None,
            Some(micros(now)),
        ),
    };
    let sql = "UPDATE jobs SET state = $1, last_error = COALESCE($2, last_error), \
               run_at = COALESCE($3, run_at), finished_at = $4, lease_until = NULL, \
               updated_at = $5 \
               WHERE id = $6 AND attempts = $7 AND state = 'running'";
    let n = on_writer!(db, pool => {
        sqlx::query(sql)
            .bind(state.as_str())
            .bind(error)
            .bind(run_at)
            .bind(finished_at)
            .bind(micros(now))
            .bind(id)
            .bind(i64::from(attempt))
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(n == 1)
}

/// Records that each attempt `(id, attempt)` of `attempts` succeeded, as
/// [`finish_attempt`] does for one, in one statement per
/// [`ROWS_PER_STATEMENT`] attempts (one commit); returns the ids whose
/// attempt was still the running one (the others were taken over).
pub async fn finish_succeeded_many(
    db: &Database,
    attempts: &[(String, u32)],
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let statement = |n: usize| {
        let matches: Vec<String> = (0..n)
            .map(|i| format!("(id = ${} AND attempts = ${})", 2 + 2 * i, 3 + 2 * i))
            .collect();
        format!(
            "UPDATE jobs SET state = 'succeeded', finished_at = $1, lease_until = NULL, \
             updated_at = $1 WHERE state = 'running' AND ({}) RETURNING id",
            matches.join(" OR ")
        )
    };
    if let Some(direct) = db.direct() {
        let now = micros(now);
        return direct
            .write(|tx| {
                let mut finished = Vec::with_capacity(attempts.len());
                for chunk in attempts.chunks(ROWS_PER_STATEMENT) {
                    let numbers: Vec<i64> = chunk.iter().map(|(_, a)| i64::from(*a)).collect();
                    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&now];
                    for ((id, _), attempt) in chunk.iter().zip(&numbers) {
                        params.push(id);
                        params.push(attempt);
                    }
                    let mut ids = tx
                        .prepare_cached(&numbered(&statement(chunk.len())))?
                        .query_map(params.as_slice(), |row| row.get(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()?;
                    finished.append(&mut ids);
                }
                Ok(finished)
            })
            .await;
    }
    if let Some(kept) = db.kept() {
        // As arrays: one statement (one commit, one prepared plan) for any
        // number of attempts.
        let sql = "UPDATE jobs SET state = 'succeeded', finished_at = $1, lease_until = NULL, \
                   updated_at = $1 FROM unnest($2::text[], $3::bigint[]) AS a(id, attempts) \
                   WHERE jobs.id = a.id AND jobs.attempts = a.attempts \
                     AND jobs.state = 'running' RETURNING jobs.id";
        let (ids, numbers): (Vec<&str>, Vec<i64>) = attempts
            .iter()
            .map(|(id, attempt)| (id.as_str(), i64::from(*attempt)))
            .unzip();
        return on_kept!(kept, conn => {
            sqlx::query_scalar(sql)
                .bind(micros(now))
                .bind(ids)
                .bind(numbers)
                .fetch_all(conn)
                .await
        });
    }
    // Our own transaction, as in `insert_many`.
    let mut finished = Vec::with_capacity(attempts.len());
    let mut tx = db.begin().await?;
    on_tx!(&mut tx, conn => {
        for chunk in attempts.chunks(ROWS_PER_STATEMENT) {
            let sql = statement(chunk.len());
            let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(micros(now));
            for (id, attempt) in chunk {
                query = query.bind(id).bind(i64::from(*attempt));
            }
            let ids: Vec<String> = query.fetch_all(&mut *conn).await?;
            finished.extend(ids);
        }
    });
    tx.commit().await?;
    Ok(finished)
}

/// Dead jobs, newest first, after the keyset `(finished_at, id)` of the
/// previous page.
pub(crate) async fn list_dead(
    db: &Database,
    after: Option<&(i64, String)>,
    limit: u32,
) -> Result<Vec<Job>> {
    let sql = concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE state = 'dead' \
           AND ($1 OR finished_at < $2 OR (finished_at = $2 AND id < $3)) \
         ORDER BY finished_at DESC, id DESC LIMIT $4"
    );
    let (first, at, id) = match after {
        Some((at, id)) => (false, *at, id.as_str()),
        None => (true, 0, ""),
    };
    let rows: Vec<JobRow> = on_database!(db, pool => {
        sqlx::query_as(sql)
            .bind(first)
            .bind(at)
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
    });
    rows.into_iter().map(Job::try_from).collect()
}

/// Puts a dead job back in the queue with a fresh count of attempts; the
/// last error stays for the record. `None` if there is no dead job `id`.
pub(crate) async fn requeue_dead(
    db: &Database,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Option<Job>> {
    let sql = concat!(
        "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $1, finished_at = NULL, \
         lease_until = NULL, updated_at = $1 WHERE id = $2 AND state = 'dead' RETURNING ",
        job_columns!()
    );
    let row: Option<JobRow> = on_writer!(db, pool => {
        sqlx::query_as(sql).bind(micros(now)).bind(id).fetch_optional(pool).await?
    });
    row.map(Job::try_from).transpose()
}

/// Deletes a dead job; false if there is no dead job `id`.
pub(crate) async fn delete_dead(db: &Database, id: &str) -> Result<bool> {
    let sql = "DELETE FROM jobs WHERE id = $1 AND state = 'dead'";
    let n = on_writer!(db, pool => {
        sqlx::query(sql).bind(id).execute(pool).await?.rows_affected()
    });
    Ok(n == 1)
}

/// Jobs a broker may have lost: queued or retrying ones due before
/// `before` and never taken (the process died between committing the row
/// and handing the id over), and running ones whose lease ran out before
/// it (their delivery was acknowledged but their outcome never recorded).
pub async fn stale_queued(db: &Database, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>> {
    let sql = "SELECT id FROM jobs WHERE (state IN ('queued', 'retrying') AND run_at < $1) \
               OR (state = 'running' AND lease_until < $1) ORDER BY run_at LIMIT $2";
    let ids = on_database!(db, pool => {
        sqlx::query_scalar(sql)
            .bind(micros(before))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
    });
    Ok(ids)
}

/// Deletes succeeded jobs that finished before `before`; returns how many.
pub(crate) async fn purge_succeeded(db: &Database, before: DateTime<Utc>) -> Result<u64> {
    let sql = "DELETE FROM jobs WHERE state = 'succeeded' AND finished_at < $1";
    let n = on_writer!(db, pool => {
        sqlx::query(sql).bind(micros(before)).execute(pool).await?.rows_affected()
    });
    Ok(n)
}

/// How many jobs are in each state, for metrics and tests.
/// When the job that has waited longest for a worker became due: the
/// smallest `run_at` of the queued and retrying jobs due by `now`.
pub(crate) async fn oldest_due(db: &Database, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
    let sql = "SELECT MIN(run_at) FROM jobs WHERE state IN ('queued', 'retrying') AND run_at <= $1";
    let oldest: Option<i64> =
        on_database!(db, pool => sqlx::query_scalar(sql).bind(micros(now)).fetch_one(pool).await?);
    oldest.map(from_micros).transpose()
}

pub(crate) async fn count_by_state(db: &Database) -> Result<Vec<(String, i64)>> {
    let sql = "SELECT state, COUNT(*) FROM jobs GROUP BY state";
    let rows = on_database!(db, pool => sqlx::query_as(sql).fetch_all(pool).await?);
    Ok(rows)
}
