//! The events of a streamed reply, and how they are rebuilt from a stored
//! reply so that a client resuming after the reply finished (or after a
//! restart) sees exactly the events, and sequence numbers, it would have
//! seen live.

use crate::chat::model::{Message, MessageStatus};
use crate::chat::store::StoredMessage;
use crate::error::{Error, Result};

/// The code of the final error event of a cancelled reply.
pub(crate) const CANCELLED_CODE: &str = "CANCELLED";

/// The message of the final error event of a cancelled reply.
pub(crate) const CANCELLED_MESSAGE: &str = "the reply was cancelled";

/// One event of a reply. `seq` starts at 1 and has no gaps: the pieces of
/// text are 1..=N and the final event (done or error) is N+1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyEvent {
    /// Position of the event in the reply, from 1.
    pub seq: u32,
    /// What happened.
    pub kind: ReplyEventKind,
}

/// What a [`ReplyEvent`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEventKind {
    /// The next piece of the reply's text.
    Delta(String),
    /// The reply is complete; this is the stored message. Last event.
    Done(Message),
    /// The reply failed or was cancelled. Last event.
    Error {
        /// A gRPC status code name, such as `"UNAVAILABLE"` or `"CANCELLED"`.
        code: String,
        /// What went wrong, for people.
        message: String,
    },
}

impl ReplyEvent {
    /// Whether no event follows this one.
    pub fn is_terminal(&self) -> bool {
        !matches!(self.kind, ReplyEventKind::Delta(_))
    }
}

/// Rebuilds every event of a finished reply from its stored form.
///
/// # Errors
///
/// [`Error::Internal`] if the stored delta boundaries do not fit the
/// stored text, or the reply has not finished.
pub(crate) fn replay(stored: &StoredMessage) -> Result<Vec<ReplyEvent>> {
    let message = &stored.message;
    let content = &message.content;
    let lengths = match &stored.delta_lengths {
        Some(lengths) => lengths.clone(),
        None if content.is_empty() => Vec::new(),
        None => vec![content.len()],
    };
    let mut events = Vec::with_capacity(lengths.len() + 1);
    let mut start = 0usize;
    for len in lengths {
        let piece = start
            .checked_add(len)
            .and_then(|end| content.get(start..end))
            .ok_or_else(|| {
                Error::internal(format!(
                    "reply {}: delta lengths do not fit its text",
                    message.id
                ))
            })?;
        start += len;
        events.push(ReplyEvent {
            seq: seq_after(events.len()),
            kind: ReplyEventKind::Delta(piece.to_owned()),
        });
    }
    if start != content.len() {
        return Err(Error::internal(format!(
            "reply {}: delta lengths do not cover its text",
            message.id
        )));
    }
    let (code, text) = stored
        .error
        .clone()
        .unwrap_or_else(|| ("UNKNOWN".to_owned(), "the reply failed".to_owned()));
    let kind = match message.status {
        MessageStatus::Complete => ReplyEventKind::Done(message.clone()),
        MessageStatus::Failed => ReplyEventKind::Error {
            code,
            message: text,
        },
        MessageStatus::Cancelled => ReplyEventKind::Error {
            code: CANCELLED_CODE.to_owned(),
            message: stored
                .error
                .as_ref()
                .map_or_else(|| CANCELLED_MESSAGE.to_owned(), |(_, m)| m.clone()),
        },
        MessageStatus::Pending | MessageStatus::Streaming => {
            return Err(Error::internal(format!(
                "reply {} has not finished: nothing to replay",
                message.id
            )));
        }
    };
    events.push(ReplyEvent {
        seq: seq_after(events.len()),
        kind,
    });
    Ok(events)
}

/// The seq of the event that follows `count` events.
pub(crate) fn seq_after(count: usize) -> u32 {
    u32::try_from(count).map_or(u32::MAX, |n| n.saturating_add(1))
}
