//! The audit trail: an append-only table of who did what, written in the
//! same transaction as the change it records, and hash-chained so that an
//! edit or a deletion is found by [`verify_chain`].
//!
//! Each event's hash is SHA-256 over its fields and the previous event's
//! hash. `audit_head` holds the newest seq and hash: appending first bumps
//! it (`UPDATE … RETURNING`), which also serialises concurrent appenders on
//! its row lock, so the chain never forks. The database refuses updates and
//! deletes of audit rows by trigger; the chain catches whoever gets past
//! that (a superuser, a file editor).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::FromRow;

use crate::db::{Database, Tx};
use crate::error::{Error, Result};
use crate::identity::RequestContext;
use crate::{on_database, on_tx};

/// How an audited attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    /// It was done.
    Success,
    /// It was refused or failed.
    Failure,
}

impl AuditOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "success" => Ok(Self::Success),
            "failure" => Ok(Self::Failure),
            other => Err(Error::internal(format!("stored audit outcome {other:?}"))),
        }
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub(crate) struct AuditRecord<'a> {
    /// The acting user id; empty when unknown.
    pub(crate) actor: &'a str,
    /// What was done, such as `auth.login`.
    pub(crate) action: &'a str,
    /// What it was done to, such as `user:<id>`.
    pub(crate) target: &'a str,
    /// How it ended.
    pub(crate) outcome: AuditOutcome,
    /// More about it.
    pub(crate) detail: &'a str,
}

/// A recorded audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The acting user id; empty when unknown.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// The caller's network address.
    pub client_address: String,
    /// The caller's User-Agent.
    pub user_agent: String,
    /// The request id of the call.
    pub request_id: String,
    /// More about it.
    pub detail: String,
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only events by this actor.
    pub actor: Option<String>,
    /// Only events of this action.
    pub action: Option<String>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events before this time.
    pub before: Option<DateTime<Utc>>,
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// How many events were read.
    pub events: u64,
    /// Each break in the chain, by seq, in order; empty when intact.
    pub problems: Vec<String>,
}

impl ChainReport {
    /// Whether the chain is intact.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(FromRow)]
struct EventRow {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    target: String,
    outcome: String,
    client_address: String,
    user_agent: String,
    request_id: String,
    detail: String,
    prev_hash: String,
    hash: String,
}

macro_rules! event_columns {
    () => {
        "seq, at, actor, action, target, outcome, client_address, user_agent, \
         request_id, detail, prev_hash, hash"
    };
}

impl EventRow {
    fn into_event(self) -> Result<AuditEvent> {
        Ok(AuditEvent {
            seq: self.seq,
            at: DateTime::from_timestamp_micros(self.at)
                .ok_or_else(|| Error::internal(format!("audit event {}: bad time", self.seq)))?,
            actor: self.actor,
            action: self.action,
            target: self.target,
            outcome: AuditOutcome::parse(&self.outcome)?,
            client_address: self.client_address,
            user_agent: self.user_agent,
            request_id: self.request_id,
            detail: self.detail,
        })
    }

    fn computed_hash(&self) -> String {
        chain_hash(
            &self.prev_hash,
            &[
                &self.seq.to_string(),
                &self.at.to_string(),
                &self.actor,
                &self.action,
                &self.target,
                &self.outcome,
                &self.client_address,
                &self.user_agent,
                &self.request_id,
                &self.detail,
            ],
        )
    }
}

/// SHA-256 (hex) of the previous hash and the fields, each length-prefixed
/// so that no two field lists hash alike.
fn chain_hash(prev_hash: &str, fields: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in std::iter::once(prev_hash).chain(fields.iter().copied()) {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    data_encoding::HEXLOWER.encode(&hasher.finalize())
}

/// Appends `record` to the chain inside `tx`; it is kept only if `tx`
/// commits. Returns the event's seq.
///
/// # Errors
///
/// The database error.
pub(crate) async fn append(
    tx: &mut Tx,
    context: &RequestContext,
    record: AuditRecord<'_>,
    at: DateTime<Utc>,
) -> Result<i64> {
    let bump = "UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash";
    let (seq, prev_hash): (i64, String) =
        on_tx!(tx, conn => sqlx::query_as(bump).fetch_one(conn).await?);
    let at = at.timestamp_micros();
    let row = EventRow {
        seq,
        at,
        actor: record.actor.to_owned(),
        action: record.action.to_owned(),
        target: record.target.to_owned(),
        outcome: record.outcome.as_str().to_owned(),
        client_address: context.client_address.clone(),
        user_agent: context.user_agent.clone(),
        request_id: context.request_id.clone(),
        detail: record.detail.to_owned(),
        prev_hash,
        hash: String::new(),
    };
    let hash = row.computed_hash();
    let insert = concat!(
        "INSERT INTO audit_events (",
        event_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    );
    on_tx!(tx, conn => {
        sqlx::query(insert)
            .bind(row.seq)
            .bind(row.at)
            .bind(&row.actor)
            .bind(&row.action)
            .bind(&row.target)
            .bind(&row.outcome)
            .bind(&row.client_address)
            .bind(&row.user_agent)
            .bind(&row.request_id)
            .bind(&row.detail)
            .bind(&row.prev_hash)
            .bind(&hash)
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
            .bind(&hash)
            .execute(&mut *conn)
            .await?;
    });
    Ok(seq)
}

/// Appends `record` in a transaction of its own, for events that change
/// nothing else (a failed login).
///
/// # Errors
///
/// The database error.
pub(crate) async fn append_alone(
    db: &Database,
    context: &RequestContext,
    record: AuditRecord<'_>,
    at: DateTime<Utc>,
) -> Result<()> {
    let mut tx = db.begin().await?;
    append(&mut tx, context, record, at).await?;
    tx.commit().await
}

fn encode_token(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("audit|{seq}"))
}

fn decode_token(token: &str) -> Result<Option<i64>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid_argument("page_token", "not a token of this listing");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    raw.strip_prefix("audit|")
        .and_then(|seq| seq.parse().ok())
        .map(Some)
        .ok_or_else(invalid)
}

/// Events matching `filter`, newest first, `limit` at a time after the page
/// `token`; returns the events and the next page's token (empty on the last).
///
/// # Errors
///
/// [`Error::InvalidArgument`] for a bad page token; the database error.
pub(crate) async fn list(
    db: &Database,
    filter: &AuditFilter,
    token: &str,
    limit: u32,
) -> Result<(Vec<AuditEvent>, String)> {
    let before_seq = decode_token(token)?.unwrap_or(i64::MAX);
    let sql = concat!(
        "SELECT ",
        event_columns!(),
        " FROM audit_events WHERE seq < $1 \
          AND ($2 = '' OR actor = $2) AND ($3 = '' OR action = $3) \
          AND at >= $4 AND at < $5 \
          ORDER BY seq DESC LIMIT $6"
    );
    let rows: Vec<EventRow> = on_database!(db, pool => {
        sqlx::query_as(sql)
            .bind(before_seq)
            .bind(filter.actor.as_deref().unwrap_or_default())
            .bind(filter.action.as_deref().unwrap_or_default())
            .bind(filter.since.map_or(i64::MIN, |t| t.timestamp_micros()))
            .bind(filter.before.map_or(i64::MAX, |t| t.timestamp_micros()))
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await?
    });
    let more = rows.len() > limit as usize;
    let events = rows
        .into_iter()
        .take(limit as usize)
        .map(EventRow::into_event)
        .collect::<Result<Vec<_>>>()?;
    let next = match (more, events.last()) {
        (true, Some(last)) => encode_token(last.seq),
        _ => String::new(),
    };
    Ok((events, next))
}

/// Reads the whole chain in order and checks that seqs run from 1 without a
/// gap, that each event names the hash of the one before, that each hash
/// matches its fields, and that the head names the last event.
///
/// # Errors
///
/// The database error; a broken chain is a report, not an error.
pub async fn verify_chain(db: &Database) -> Result<ChainReport> {
    const PAGE: i64 = 1000;
    let mut problems = Vec::new();
    let mut events = 0u64;
    let mut expected_seq = 1i64;
    let mut prev_hash = String::new();
    loop {
        let sql = concat!(
            "SELECT ",
            event_columns!(),
            " FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT $2"
        );
        let rows: Vec<EventRow> = on_database!(db, pool => {
            sqlx::query_as(sql).bind(expected_seq).bind(PAGE).fetch_all(pool).await?
        });
        let last_page = (rows.len() as i64) < PAGE;
        for row in rows {
            events += 1;
            if row.seq != expected_seq {
                problems.push(format!(
                    "seq {}: events {expected_seq}..{} are missing",
                    row.seq,
                    row.seq - 1
                ));
            }
            if row.prev_hash != prev_hash {
                problems.push(format!(
                    "seq {}: does not follow the event before it (deleted or altered)",
                    row.seq
                ));
            }
            if row.computed_hash() != row.hash {
                problems.push(format!(
                    "seq {}: its fields do not match its hash (edited)",
                    row.seq
                ));
            }
            expected_seq = row.seq + 1;
            prev_hash = row.hash;
        }
        if last_page {
            break;
        }
    }
    let head: (i64, String) = on_database!(db, pool => {
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(pool).await?
    });
    if head.0 != expected_seq - 1 || head.1 != prev_hash {
        problems.push(format!(
            "head: the newest event should be seq {}, the table ends at seq {} (events cut off the end)",
            head.0,
            expected_seq - 1
        ));
    }
    Ok(ChainReport { events, problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_depend_on_every_field_and_on_boundaries() {
        let a = chain_hash("", &["ab", "c"]);
        assert_ne!(a, chain_hash("", &["a", "bc"]));
        assert_ne!(a, chain_hash("x", &["ab", "c"]));
        assert_eq!(a, chain_hash("", &["ab", "c"]));
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_strangers() {
        assert_eq!(decode_token(&encode_token(42)).unwrap(), Some(42));
        assert_eq!(decode_token("").unwrap(), None);
        assert!(decode_token("bm9wZQ").is_err());
    }
}
