//! The chat tables: every SQL statement of the chat domain, each written
//! once for both SQLite and PostgreSQL and run through [`on_database!`].
//! Owner checks live in the SQL (`AND owner_id = $n`), so a conversation of
//! another user is indistinguishable from a missing one.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use crate::chat::engine::Usage;
use crate::chat::model::{Conversation, Message, MessageStatus, Role};
use crate::db::Database;
use crate::db::direct::numbered;
use crate::error::{Error, Result};
use crate::jobs::Job;
use crate::jobs::store::{INSERT_JOB, bind_insert, direct_job_params, payload_text};
use crate::paging::Cursor;
use crate::{on_database, on_kept, on_tx, on_writer};
use rusqlite::OptionalExtension as _;

/// The columns of a `ConversationRow`, as a literal for `concat!`.
macro_rules! conversation_columns {
    () => {
        "id, owner_id, title, created_at, updated_at"
    };
}

/// The `FROM` … `LIMIT` of [`history_of_reply`]: `$1` the conversation,
/// `$2` the reply, `$3` the limit; newest first.
macro_rules! history_of_reply_from {
    () => {
        " FROM messages \
         WHERE conversation_id = $1 AND status = 'complete' \
           AND EXISTS (SELECT 1 FROM messages r WHERE r.id = $2 AND r.conversation_id = $1 \
             AND (messages.created_at < r.created_at \
               OR (messages.created_at = r.created_at AND messages.id < r.id))) \
         ORDER BY created_at DESC, id DESC LIMIT $3"
    };
}

/// The columns of a `MessageRow`, as a literal for `concat!`.
macro_rules! message_columns {
    () => {
        "id, conversation_id, role, content, status, delta_lengths, \
         error_code, error_message, created_at, updated_at, attempt, prompt_tokens, \
         completion_tokens"
    };
}

use crate::db::from_micros;
pub(crate) use crate::db::now;

#[derive(FromRow)]
struct ConversationRow {
    id: String,
    owner_id: String,
    title: String,
    created_at: i64,
    updated_at: i64,
}

#[derive(FromRow)]
struct MessageRow {
    id: String,
    conversation_id: String,
    role: String,
    content: String,
    status: String,
    delta_lengths: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    created_at: i64,
    updated_at: i64,
    attempt: i64,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
}

impl MessageRow {
    /// A row of [`message_columns!`] read on a direct connection.
    fn from_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            conversation_id: row.get(1)?,
            role: row.get(2)?,
            content: row.get(3)?,
            status: row.get(4)?,
            delta_lengths: row.get(5)?,
            error_code: row.get(6)?,
            error_message: row.get(7)?,
            created_at: row.get(8)?,
            updated_at: row.get(9)?,
            attempt: row.get(10)?,
            prompt_tokens: row.get(11)?,
            completion_tokens: row.get(12)?,
        })
    }
}

/// A message with what the database keeps beside it for replaying a reply.
#[derive(Debug, Clone)]
pub(crate) struct StoredMessage {
    pub(crate) message: Message,
    /// Byte lengths of the streamed pieces of a finished reply.
    pub(crate) delta_lengths: Option<Vec<usize>>,
    /// Code and message of a failed or cancelled reply's final event.
    pub(crate) error: Option<(String, String)>,
    /// How many attempts have claimed the reply (0 while never claimed).
    pub(crate) attempt: u32,
    /// The token usage the engine reported.
    pub(crate) usage: Option<Usage>,
}

/// How a reply ended, as [`finish_reply`] stores it.
pub(crate) struct ReplyEnding<'a> {
    pub(crate) content: &'a str,
    pub(crate) delta_lengths: &'a [usize],
    pub(crate) status: MessageStatus,
    pub(crate) error: Option<(&'a str, &'a str)>,
    pub(crate) usage: Option<Usage>,
}

impl TryFrom<ConversationRow> for Conversation {
    type Error = Error;

    fn try_from(row: ConversationRow) -> Result<Self> {
        Ok(Self {
            id: row.id,
            owner_id: row.owner_id,
            title: row.title,
            created_at: from_micros(row.created_at)?,
            updated_at: from_micros(row.updated_at)?,
        })
    }
}

impl TryFrom<MessageRow> for StoredMessage {
    type Error = Error;

    fn try_from(row: MessageRow) -> Result<Self> {
        let delta_lengths = row
            .delta_lengths
            .as_deref()
            .map(serde_json::from_str::<Vec<usize>>)
            .transpose()
            .map_err(|e| Error::internal(format!("message {}: delta_lengths: {e}", row.id)))?;
        let error = row
            .error_code
            .map(|code| (code, row.error_message.unwrap_or_default()));
        let tokens = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        let usage = match (row.prompt_tokens, row.completion_tokens) {
            (None, None) => None,
            (prompt, completion) => Some(Usage {
                prompt_tokens: prompt.map_or(0, tokens),
                completion_tokens: completion.map_or(0, tokens),
            }),
        };
        Ok(Self {
            message: Message {
                id: row.id,
                conversation_id: row.conversation_id,
                role: row.role.parse()?,
                content: row.content,
                status: row.status.parse()?,
                created_at: from_micros(row.created_at)?,
                updated_at: from_micros(row.updated_at)?,
            },
            delta_lengths,
            error,
            attempt: u32::try_from(row.attempt).unwrap_or(u32::MAX),
            usage,
        })
    }
}

fn conversations(rows: Vec<ConversationRow>) -> Result<Vec<Conversation>> {
    rows.into_iter().map(Conversation::try_from).collect()
}

fn messages(rows: Vec<MessageRow>) -> Result<Vec<Message>> {
    rows.into_iter()
        .map(|row| StoredMessage::try_from(row).map(|stored| stored.message))
        .collect()
}

pub(crate) async fn insert_conversation(db: &Database, c: &Conversation) -> Result<()> {
    let sql = "INSERT INTO conversations (id, owner_id, title, created_at, updated_at) \
               VALUES ($1, $2, $3, $4, $5)";
    on_writer!(db, pool => {
        sqlx::query(sql)
            .bind(&c.id)
            .bind(&c.owner_id)
            .bind(&c.title)
            .bind(c.created_at.timestamp_micros())
            .bind(c.updated_at.timestamp_micros())
            .execute(pool)
            .await?;
    });
    Ok(())
}

pub(crate) async fn get_conversation(
    db: &Database,
    owner_id: &str,
    id: &str,
) -> Result<Option<Conversation>> {
    let sql = concat!(
        "SELECT ",
        conversation_columns!(),
        " FROM conversations WHERE id = $1 AND owner_id = $2"
    );
    let row: Option<ConversationRow> = on_database!(db, pool => {
        sqlx::query_as(sql).bind(id).bind(owner_id).fetch_optional(pool).await?
    });
    row.map(Conversation::try_from).transpose()
}

/// The owner's conversations after `cursor`, newest first.
pub(crate) async fn list_conversations(
    db: &Database,
    owner_id: &str,
    after: Option<&Cursor>,
    limit: u32,
) -> Result<Vec<Conversation>> {
    let sql = concat!(
        "SELECT ",
        conversation_columns!(),
        " FROM conversations \
         WHERE owner_id = $1 AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    // The first page starts after a position newer than any row.
    let (created_at, id) = after.map_or((i64::MAX, ""), |c| (c.created_at, c.id.as_str()));
    let rows: Vec<ConversationRow> = on_database!(db, pool => {
        sqlx::query_as(sql)
            .bind(owner_id)
            .bind(created_at)
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
    });
    conversations(rows)
}

pub(crate) async fn update_title(
    db: &Database,
    owner_id: &str,
    id: &str,
    title: &str,
    now: DateTime<Utc>,
) -> Result<Option<Conversation>> {
    let sql = concat!(
        "UPDATE conversations SET title = $1, updated_at = $2 \
         WHERE id = $3 AND owner_id = $4 RETURNING ",
        conversation_columns!()
    );
    let row: Option<ConversationRow> = on_writer!(db, pool => {
        sqlx::query_as(sql)
            .bind(title)
            .bind(now.timestamp_micros())
            .bind(id)
            .bind(owner_id)
            .fetch_optional(pool)
            .await?
    });
    row.map(Conversation::try_from).transpose()
}

/// Deletes the conversation and its messages in one transaction; false if
/// the owner has no such conversation.
pub(crate) async fn delete_conversation(db: &Database, owner_id: &str, id: &str) -> Result<bool> {
    // Messages go first, explicitly: the foreign key cascades too, but the
    // transaction should not depend on the connection's foreign_keys pragma.
    let delete_messages = "DELETE FROM messages WHERE conversation_id IN \
                           (SELECT id FROM conversations WHERE id = $1 AND owner_id = $2)";
    let delete_conversation = "DELETE FROM conversations WHERE id = $1 AND owner_id = $2";
    let mut tx = db.begin().await?;
    let deleted = on_tx!(&mut tx, conn => {
        sqlx::query(delete_messages).bind(id).bind(owner_id).execute(&mut *conn).await?;
        sqlx::query(delete_conversation)
            .bind(id)
            .bind(owner_id)
            .execute(&mut *conn)
            .await?
            .rows_affected()
    });
    tx.commit().await?;
    Ok(deleted == 1)
}

/// The conversation's messages after `cursor`, oldest first.
pub(crate) async fn list_messages(
    db: &Database,
    conversation_id: &str,
    after: Option<&Cursor>,
    limit: u32,
) -> Result<Vec<Message>> {
    let sql = concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages \
         WHERE conversation_id = $1 AND (created_at > $2 OR (created_at = $2 AND id > $3)) \
         ORDER BY created_at, id LIMIT $4"
    );
    // The first page starts after a position older than any row.
    let (created_at, id) = after.map_or((i64::MIN, ""), |c| (c.created_at, c.id.as_str()));
    let rows: Vec<MessageRow> = on_database!(db, pool => {
        sqlx::query_as(sql)
            .bind(conversation_id)
            .bind(created_at)
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
    });
    messages(rows)
}

/// The replies of a conversation that have not finished, oldest first.
pub(crate) async fn unfinished_replies_of(
    db: &Database,
    conversation_id: &str,
) -> Result<Vec<Message>> {
    let sql = concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE conversation_id = $1 AND role = 'assistant' \
           AND status IN ('pending', 'streaming') ORDER BY created_at, id"
    );
    let rows: Vec<MessageRow> = on_database!(db, pool => {
        sqlx::query_as(sql).bind(conversation_id).fetch_all(pool).await?
    });
    messages(rows)
}

/// The position of the newest message of a conversation, if it has one.
pub(crate) async fn newest_message(db: &Database, conversation_id: &str) -> Result<Option<Cursor>> {
    let sql = "SELECT created_at, id FROM messages WHERE conversation_id = $1 \
               ORDER BY created_at DESC, id DESC LIMIT 1";
    let row: Option<(i64, String)> = on_database!(db, pool => {
        sqlx::query_as(sql).bind(conversation_id).fetch_optional(pool).await?
    });
    Ok(row.map(|(created_at, id)| Cursor { created_at, id }))
}

/// The finished messages before `before` (the reply being generated), the
/// most recent `limit` of them, oldest first: the engine's context.
pub(crate) async fn history(db: &Database, before: &Message, limit: u32) -> Result<Vec<Message>> {
    let sql = concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages \
         WHERE conversation_id = $1 AND status = 'complete' \
           AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    let rows: Vec<MessageRow> = on_database!(db, pool => {
        sqlx::query_as(sql)
            .bind(&before.conversation_id)
            .bind(before.created_at.timestamp_micros())
            .bind(&before.id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
    });
    let mut history = messages(rows)?;
    history.reverse();
    Ok(history)
}

/// [`history`] of the reply `reply_id`, found by its id: the position is
/// read in the same statement, so this can run beside the claim of the
/// reply instead of after it. Empty if there is no such reply.
pub(crate) async fn history_of_reply(
    db: &Database,
    conversation_id: &str,
    reply_id: &str,
    limit: u32,
) -> Result<Vec<Message>> {
    let sql = concat!("SELECT ", message_columns!(), history_of_reply_from!());
    let rows: Vec<MessageRow> = if let Some(direct) = db.direct() {
        direct
            .read(|conn| {
                conn.prepare_cached(&numbered(sql))?
                    .query_map(
                        rusqlite::params![conversation_id, reply_id, i64::from(limit)],
                        MessageRow::from_direct,
                    )?
                    .collect()
            })
            .await?
    } else {
        on_database!(db, pool => {
            sqlx::query_as(sql)
                .bind(conversation_id)
                .bind(reply_id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        })
    };
    let mut history = messages(rows)?;
    history.reverse();
    Ok(history)
}

/// Stores a user's message and the pending reply, and touches the
/// conversation, in one transaction; false if the owner has no such
/// conversation (nothing is written then).
pub(crate) async fn insert_turn(
    db: &Database,
    owner_id: &str,
    message: &Message,
    reply: &Message,
    job: &Job,
) -> Result<bool> {
    let payload = payload_text(job)?;
    let touch = "UPDATE conversations SET updated_at = $1 WHERE id = $2 AND owner_id = $3";
    // Both messages in one statement: one round trip fewer per turn.
    let insert = "INSERT INTO messages (id, conversation_id, role, content, status, \
                  created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7), \
                  ($8, $9, $10, $11, $12, $13, $14)";
    // The UPDATE comes first: it checks ownership before anything is
    // inserted.
    if let Some(direct) = db.direct() {
        let (touch, insert, insert_job) = (numbered(touch), numbered(insert), numbered(INSERT_JOB));
        return direct
            .write(|tx| {
                let touched = tx.prepare_cached(&touch)?.execute(rusqlite::params![
                    reply.created_at.timestamp_micros(),
                    &message.conversation_id,
                    owner_id
                ])?;
                if touched != 1 {
                    return Ok(false);
                }
                tx.prepare_cached(&insert)?.execute(rusqlite::params![
                    &message.id,
                    &message.conversation_id,
                    message.role.as_str(),
                    &message.content,
                    message.status.as_str(),
                    message.created_at.timestamp_micros(),
                    message.updated_at.timestamp_micros(),
                    &reply.id,
                    &reply.conversation_id,
                    reply.role.as_str(),
                    &reply.content,
                    reply.status.as_str(),
                    reply.created_at.timestamp_micros(),
                    reply.updated_at.timestamp_micros(),
                ])?;
                tx.prepare_cached(&insert_job)?
                    .execute(direct_job_params!(job, &payload))?;
                Ok(true)
            })
            .await;
    }
    if let Some(kept) = db.kept() {
        // One statement is one transaction and one round trip: the
        // inserts see the conversation's UPDATE and run only if it matched.
        let sql = "WITH touched AS (UPDATE conversations SET updated_at = $1 \
                     WHERE id = $2 AND owner_id = $3 RETURNING id), \
                   inserted AS (INSERT INTO messages (id, conversation_id, role, content, status, \
                     created_at, updated_at) \
                     SELECT v.* FROM (VALUES ($4, $2, $5, $6, $7, $8, $9), \
                       ($10, $2, $11, $12, $13, $14, $15)) \
                       AS v(id, conversation_id, role, content, status, created_at, updated_at) \
                     WHERE EXISTS (SELECT 1 FROM touched)), \
                   job AS (INSERT INTO jobs (id, kind, payload, state, attempts, max_attempts, \
                     run_at, created_at, updated_at, trace_context) \
                     SELECT $16, $17, $18, $19, $20, $21, $22, $23, $24, $25 FROM touched) \
                   SELECT COUNT(*) FROM touched";
        let mut query = sqlx::query_scalar::<_, i64>(sql)
            .bind(reply.created_at.timestamp_micros())
            .bind(&message.conversation_id)
            .bind(owner_id);
        for m in [message, reply] {
            query = query
                .bind(&m.id)
                .bind(m.role.as_str())
                .bind(&m.content)
                .bind(m.status.as_str())
                .bind(m.created_at.timestamp_micros())
                .bind(m.updated_at.timestamp_micros());
        }
        let touched =
            on_kept!(kept, conn => bind_insert!(query, job, &payload).fetch_one(conn).await)?;
        return Ok(touched == 1);
    }
    let mut tx = db.begin().await?;
    let inserted = on_tx!(&mut tx, conn => {
        let touched = sqlx::query(touch)
            .bind(reply.created_at.timestamp_micros())
            .bind(&message.conversation_id)
            .bind(owner_id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if touched == 1 {
            let mut query = sqlx::query(insert);
            for m in [message, reply] {
                query = query
                    .bind(&m.id)
                    .bind(&m.conversation_id)
                    .bind(m.role.as_str())
                    .bind(&m.content)
                    .bind(m.status.as_str())
                    .bind(m.created_at.timestamp_micros())
                    .bind(m.updated_at.timestamp_micros());
            }
            query.execute(&mut *conn).await?;
            bind_insert!(sqlx::query(INSERT_JOB), job, &payload).execute(&mut *conn).await?;
        }
        touched == 1
    });
    if inserted {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(inserted)
}

/// One message of a conversation, with its replay data.
pub(crate) async fn get_message(
    db: &Database,
    conversation_id: &str,
    id: &str,
) -> Result<Option<StoredMessage>> {
    let sql = concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE id = $1 AND conversation_id = $2"
    );
    let row: Option<MessageRow> = on_database!(db, pool => {
        sqlx::query_as(sql).bind(id).bind(conversation_id).fetch_optional(pool).await?
    });
    row.map(StoredMessage::try_from).transpose()
}

/// What [`get_owned_message`] found.
pub(crate) enum OwnedMessage {
    /// The owner has no such conversation.
    NoConversation,
    /// The conversation is the owner's, but has no message with that id.
    NoMessage,
    /// The message.
    Found(Box<StoredMessage>),
}

/// One message of one of `owner_id`'s conversations, with its replay data,
/// in one statement: the conversation's ownership and the message are read
/// together (a LEFT JOIN), so a missing conversation and a missing message
/// are still told apart.
pub(crate) async fn get_owned_message(
    db: &Database,
    owner_id: &str,
    conversation_id: &str,
    id: &str,
) -> Result<OwnedMessage> {
    let sql = "SELECT m.id, c.id AS conversation_id, m.role, m.content, m.status, \
               m.delta_lengths, m.error_code, m.error_message, m.created_at, m.updated_at, \
               m.attempt, m.prompt_tokens, m.completion_tokens \
               FROM conversations c LEFT JOIN messages m \
               ON m.id = $1 AND m.conversation_id = c.id \
               WHERE c.id = $2 AND c.owner_id = $3";
    // `None`: no such conversation of the owner; `Some(None)`: no such
    // message in it.
    let found: Option<Option<MessageRow>> = if let Some(direct) = db.direct() {
        direct
            .read(|conn| {
                conn.prepare_cached(&numbered(sql))?
                    .query_row(rusqlite::params![id, conversation_id, owner_id], |row| {
                        match row.get::<_, Option<String>>(0)? {
                            Some(_) => MessageRow::from_direct(row).map(Some),
                            None => Ok(None),
                        }
                    })
                    .optional()
            })
            .await?
    } else {
        let row: Option<OwnedMessageRow> = if let Some(kept) = db.kept() {
            on_kept!(kept, conn => {
                sqlx::query_as(sql)
                    .bind(id)
                    .bind(conversation_id)
                    .bind(owner_id)
                    .fetch_optional(conn)
                    .await
            })?
        } else {
            on_database!(db, pool => {
                sqlx::query_as(sql)
                    .bind(id)
                    .bind(conversation_id)
                    .bind(owner_id)
                    .fetch_optional(pool)
                    .await?
            })
        };
        row.map(OwnedMessageRow::into_message_row)
    };
    let Some(found) = found else {
        return Ok(OwnedMessage::NoConversation);
    };
    let Some(message) = found else {
        return Ok(OwnedMessage::NoMessage);
    };
    Ok(OwnedMessage::Found(Box::new(StoredMessage::try_from(
        message,
    )?)))
}

/// A [`MessageRow`] read through an outer join: every message column may
/// be NULL (no such message).
#[derive(FromRow)]
struct OwnedMessageRow {
    id: Option<String>,
    conversation_id: String,
    role: Option<String>,
    content: Option<String>,
    status: Option<String>,
    delta_lengths: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
    attempt: Option<i64>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
}

impl OwnedMessageRow {
    /// The message's row, or `None` when the join found no message.
    fn into_message_row(self) -> Option<MessageRow> {
        Some(MessageRow {
            id: self.id?,
            conversation_id: self.conversation_id,
            role: self.role?,
            content: self.content?,
            status: self.status?,
            delta_lengths: self.delta_lengths,
            error_code: self.error_code,
            error_message: self.error_message,
            created_at: self.created_at?,
            updated_at: self.updated_at?,
            attempt: self.attempt?,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        })
    }
}

/// Starts a new attempt at a reply: a pending reply, or a streaming one
/// whose lease ran out (its worker died), moves to streaming with its text
/// cleared, its attempt count up by one and a lease until `lease_until`.
/// The condition makes the claim exclusive: of two workers racing for one
/// reply, one gets `Some`.
pub(crate) async fn claim_reply(
    db: &Database,
    id: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<StoredMessage>> {
    let sql = concat!(
        "UPDATE messages SET status = 'streaming', content = '', attempt = attempt + 1, \
         lease_until = $1, updated_at = $2 \
         WHERE id = $3 AND role = 'assistant' \
           AND (status = 'pending' OR (status = 'streaming' AND lease_until < $2)) RETURNING ",
        message_columns!()
    );
    let row: Option<MessageRow> = if let Some(direct) = db.direct() {
        let sql = numbered(sql);
        direct
            .write(|tx| {
                tx.prepare_cached(&sql)?
                    .query_row(
                        rusqlite::params![
                            lease_until.timestamp_micros(),
                            now.timestamp_micros(),
                            id
                        ],
                        MessageRow::from_direct,
                    )
                    .optional()
            })
            .await?
    } else {
        on_writer!(db, pool => {
            sqlx::query_as(sql)
                .bind(lease_until.timestamp_micros())
                .bind(now.timestamp_micros())
                .bind(id)
                .fetch_optional(pool)
                .await?
        })
    };
    row.map(StoredMessage::try_from).transpose()
}

/// [`claim_reply`] and [`history_of_reply`] at once, for the first claim of
/// an attempt: on PostgreSQL one statement (one round trip, the history
/// read in the snapshot the claim's UPDATE sees, where the reply is still
/// what it was: the history never holds it); elsewhere both side by side.
pub(crate) async fn claim_reply_with_history(
    db: &Database,
    conversation_id: &str,
    id: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: u32,
) -> (Result<Option<StoredMessage>>, Result<Vec<Message>>) {
    let Some(kept) = db.kept() else {
        return tokio::join!(
            claim_reply(db, id, now, lease_until),
            history_of_reply(db, conversation_id, id, limit),
        );
    };
    #[derive(FromRow)]
    struct ClaimOrHistoryRow {
        claimed: bool,
        #[sqlx(flatten)]
        message: MessageRow,
    }
    let sql = concat!(
        "WITH claimed AS (UPDATE messages SET status = 'streaming', content = '', \
           attempt = attempt + 1, lease_until = $4, updated_at = $5 \
           WHERE id = $2 AND role = 'assistant' \
             AND (status = 'pending' OR (status = 'streaming' AND lease_until < $5)) \
           RETURNING ",
        message_columns!(),
        ") SELECT TRUE AS claimed, ",
        message_columns!(),
        " FROM claimed UNION ALL (SELECT FALSE AS claimed, ",
        message_columns!(),
        history_of_reply_from!(),
        ")"
    );
    let taken: Result<Vec<ClaimOrHistoryRow>> = on_kept!(kept, conn => {
        sqlx::query_as(sql)
            .bind(conversation_id)
            .bind(id)
            .bind(i64::from(limit))
            .bind(lease_until.timestamp_micros())
            .bind(now.timestamp_micros())
            .fetch_all(conn)
            .await
    });
    let rows = match taken {
        Ok(rows) => rows,
        // The claim's error is the one that counts: without a claim the
        // history is not used.
        Err(err) => return (Err(err), Ok(Vec::new())),
    };
    let mut claimed = None;
    let mut history = Vec::with_capacity(rows.len());
    for row in rows {
        if row.claimed {
            claimed = Some(row.message);
        } else {
            history.push(row.message);
        }
    }
    let history = messages(history).map(|mut history| {
        history.reverse();
        history
    });
    (claimed.map(StoredMessage::try_from).transpose(), history)
}

/// Extends the lease of attempt `attempt` at a reply. `None` if the attempt
/// no longer holds the reply (it finished, was deleted, or another attempt
/// took over); otherwise whether a cancel was requested.
pub(crate) async fn renew_reply(
    db: &Database,
    id: &str,
    attempt: u32,
    lease_until: DateTime<Utc>,
) -> Result<Option<bool>> {
    let sql = "UPDATE messages SET lease_until = $1 \
               WHERE id = $2 AND attempt = $3 AND status = 'streaming' RETURNING cancel_requested";
    let cancel = on_writer!(db, pool => {
        sqlx::query_scalar(sql)
            .bind(lease_until.timestamp_micros())
            .bind(id)
            .bind(i64::from(attempt))
            .fetch_optional(pool)
            .await?
    });
    Ok(cancel)
}

/// Puts a reply attempt `attempt` was streaming back to pending, its text
/// dropped, for the job's next attempt; false if the attempt no longer
/// holds it.
pub(crate) async fn release_reply(
    db: &Database,
    id: &str,
    attempt: u32,
    now: DateTime<Utc>,
) -> Result<bool> {
    let sql = "UPDATE messages SET status = 'pending', content = '', lease_until = NULL, \
               updated_at = $1 WHERE id = $2 AND attempt = $3 AND status = 'streaming'";
    let n = on_writer!(db, pool => {
        sqlx::query(sql)
            .bind(now.timestamp_micros())
            .bind(id)
            .bind(i64::from(attempt))
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(n == 1)
}

/// Puts a failed reply back to pending for an operator's retry; false if
/// it is not failed.
pub(crate) async fn reopen_failed(db: &Database, id: &str, now: DateTime<Utc>) -> Result<bool> {
    let sql = "UPDATE messages SET status = 'pending', content = '', delta_lengths = NULL, \
               error_code = NULL, error_message = NULL, prompt_tokens = NULL, \
               completion_tokens = NULL, cancel_requested = $3, updated_at = $1 \
               WHERE id = $2 AND role = 'assistant' AND status = 'failed'";
    let n = on_writer!(db, pool => {
        sqlx::query(sql)
            .bind(now.timestamp_micros())
            .bind(id)
            .bind(false)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(n == 1)
}

/// Asks whoever streams a reply to stop; false if it is not streaming.
pub(crate) async fn request_cancel(db: &Database, id: &str) -> Result<bool> {
    let sql = "UPDATE messages SET cancel_requested = $1 WHERE id = $2 AND status = 'streaming'";
    let n = on_writer!(db, pool => {
        sqlx::query(sql).bind(true).bind(id).execute(pool).await?.rows_affected()
    });
    Ok(n == 1)
}

/// Records feedback on a finished reply; false if there is no such reply.
pub(crate) async fn rate_reply(
    db: &Database,
    conversation_id: &str,
    id: &str,
    rating: i64,
    comment: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let sql = "UPDATE messages SET rating = $1, feedback = $2, rated_at = $3 \
               WHERE id = $4 AND conversation_id = $5 AND role = 'assistant'";
    let n = on_writer!(db, pool => {
        sqlx::query(sql)
            .bind(rating)
            .bind(comment)
            .bind(now.timestamp_micros())
            .bind(id)
            .bind(conversation_id)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(n == 1)
}

/// Deletes conversations (and their messages) not updated since `before`;
/// returns how many.
pub(crate) async fn delete_conversations_before(
    db: &Database,
    before: DateTime<Utc>,
) -> Result<u64> {
    let sql = "DELETE FROM conversations WHERE updated_at < $1";
    let n = on_writer!(db, pool => {
        sqlx::query(sql).bind(before.timestamp_micros()).execute(pool).await?.rows_affected()
    });
    Ok(n)
}

/// Stores how attempt `attempt` at a streaming reply ended, and touches
/// its conversation, in one transaction. `None` if the attempt no longer
/// holds the reply (deleted, or taken over by a newer attempt).
pub(crate) async fn finish_reply(
    db: &Database,
    id: &str,
    attempt: u32,
    ending: &ReplyEnding<'_>,
    now: DateTime<Utc>,
) -> Result<Option<Message>> {
    let sql = concat!(
        "UPDATE messages SET content = $1, delta_lengths = $2, status = $3, error_code = $4, \
         error_message = $5, updated_at = $6, prompt_tokens = $8, completion_tokens = $9, \
         lease_until = NULL \
         WHERE id = $7 AND status = 'streaming' AND attempt = $10 RETURNING ",
        message_columns!()
    );
    let touch = "UPDATE conversations SET updated_at = $1 WHERE id = $2";
    let lengths = serde_json::to_string(ending.delta_lengths).map_err(Error::internal)?;
    let (code, message) = ending.error.unzip();
    if let Some(direct) = db.direct() {
        let (sql, touch) = (numbered(sql), numbered(touch));
        let row = direct
            .write(|tx| {
                let row = tx
                    .prepare_cached(&sql)?
                    .query_row(
                        rusqlite::params![
                            ending.content,
                            &lengths,
                            ending.status.as_str(),
                            code,
                            message,
                            now.timestamp_micros(),
                            id,
                            ending.usage.map(|u| i64::from(u.prompt_tokens)),
                            ending.usage.map(|u| i64::from(u.completion_tokens)),
                            i64::from(attempt),
                        ],
                        MessageRow::from_direct,
                    )
                    .optional()?;
                if let Some(row) = &row {
                    tx.prepare_cached(&touch)?.execute(rusqlite::params![
                        now.timestamp_micros(),
                        &row.conversation_id
                    ])?;
                }
                Ok(row)
            })
            .await?;
        return row
            .map(|row| StoredMessage::try_from(row).map(|s| s.message))
            .transpose();
    }
    // The binds of the reply's UPDATE ($1 … $10), on either sqlx driver.
    macro_rules! bind_ending {
        ($query:expr) => {
            $query
                .bind(ending.content)
                .bind(&lengths)
                .bind(ending.status.as_str())
                .bind(code)
                .bind(message)
                .bind(now.timestamp_micros())
                .bind(id)
                .bind(ending.usage.map(|u| i64::from(u.prompt_tokens)))
                .bind(ending.usage.map(|u| i64::from(u.completion_tokens)))
                .bind(i64::from(attempt))
        };
    }
    if let Some(kept) = db.kept() {
        // The reply and its conversation in one statement: one round trip.
        let sql = concat!(
            "WITH r AS (UPDATE messages SET content = $1, delta_lengths = $2, status = $3, \
               error_code = $4, error_message = $5, updated_at = $6, prompt_tokens = $8, \
               completion_tokens = $9, lease_until = NULL \
               WHERE id = $7 AND status = 'streaming' AND attempt = $10 RETURNING ",
            message_columns!(),
            "), t AS (UPDATE conversations SET updated_at = $6 \
               WHERE id IN (SELECT conversation_id FROM r)) \
             SELECT * FROM r"
        );
        let row: Option<MessageRow> =
            on_kept!(kept, conn => bind_ending!(sqlx::query_as(sql)).fetch_optional(conn).await)?;
        return row
            .map(|row| StoredMessage::try_from(row).map(|s| s.message))
            .transpose();
    }
    let mut tx = db.begin().await?;
    let row: Option<MessageRow> = on_tx!(&mut tx, conn => {
        let row: Option<MessageRow> = bind_ending!(sqlx::query_as(sql))
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = &row {
            sqlx::query(touch)
                .bind(now.timestamp_micros())
                .bind(&row.conversation_id)
                .execute(&mut *conn)
                .await?;
        }
        row
    });
    tx.commit().await?;
    row.map(|row| StoredMessage::try_from(row).map(|s| s.message))
        .transpose()
}

/// Cancels a pending reply: it ends with no text. A reply an earlier
/// attempt already streamed (and released for a retry) ends as one more
/// attempt, so its events go on from a reset. Returns the attempt whose
/// events the cancellation ends, or `None` if the reply was not pending.
pub(crate) async fn cancel_pending(
    db: &Database,
    id: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Result<Option<u32>> {
    let sql = "UPDATE messages SET status = 'cancelled', delta_lengths = '[]', \
               error_code = 'CANCELLED', error_message = $1, updated_at = $2, \
               attempt = CASE WHEN attempt > 0 THEN attempt + 1 ELSE attempt END \
               WHERE id = $3 AND status = 'pending' RETURNING attempt";
    let attempt: Option<i64> = on_writer!(db, pool => {
        sqlx::query_scalar(sql)
            .bind(message)
            .bind(now.timestamp_micros())
            .bind(id)
            .fetch_optional(pool)
            .await?
    });
    Ok(attempt.map(|n| u32::try_from(n).unwrap_or(u32::MAX)))
}

/// Until when a streaming reply is held by its attempt's lease; `None` if
/// it is not streaming.
pub(crate) async fn reply_lease(db: &Database, id: &str) -> Result<Option<DateTime<Utc>>> {
    let sql = "SELECT lease_until FROM messages WHERE id = $1 AND status = 'streaming'";
    let until: Option<Option<i64>> = on_database!(db, pool => {
        sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await?
    });
    until.flatten().map(from_micros).transpose()
}

/// Whether `role` is the role of a reply.
pub(crate) fn is_reply(message: &Message) -> bool {
    message.role == Role::Assistant
}
