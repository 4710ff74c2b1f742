//! The events of a streamed reply, and how they are rebuilt from a stored
//! reply so that a client resuming after the reply finished (or after a
//! restart) sees exactly the events, and sequence numbers, it would have
//! seen live.

use crate::chat::engine::Usage;
use crate::chat::model::{Message, MessageStatus};
use crate::chat::store::StoredMessage;
use crate::error::{Error, Result};

/// The code of the final error event of a cancelled reply.
pub(crate) const CANCELLED_CODE: &str = "CANCELLED";

/// The message of the final error event of a cancelled reply.
pub(crate) const CANCELLED_MESSAGE: &str = "the reply was cancelled";

/// How far apart the seqs of two attempts at a reply start: attempt `a`
/// numbers its events from `(a - 1) × ATTEMPT_SEQ_SPAN`.
pub const ATTEMPT_SEQ_SPAN: u32 = 1_000_000;

/// One event of a reply. Seqs only grow. The first attempt numbers its
/// events 1, 2, 3…: the pieces of text, then the usage if the engine
/// reported it, then the final event (done or error). A later attempt (the
/// first one's worker died, or its engine call failed and is retried)
/// starts with a `Reset` at `(attempt - 1) × ATTEMPT_SEQ_SPAN`, telling the
/// client to drop the text so far, and numbers its events on from there.
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
    /// The text so far is dropped: attempt `attempt` generates the reply
    /// again from the start.
    Reset {
        /// The attempt that starts, from 2.
        attempt: u32,
    },
    /// The next piece of the reply's text.
    Delta(String),
    /// Tokens the engine counted for this reply; just before `Done`.
    Usage(Usage),
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
        matches!(
            self.kind,
            ReplyEventKind::Done(_) | ReplyEventKind::Error { .. }
        )
    }
}

/// The seq just before the first event of attempt `attempt` (1 and up):
/// the seq of its `Reset`, if it has one.
pub(crate) fn attempt_base(attempt: u32) -> u32 {
    attempt.saturating_sub(1).saturating_mul(ATTEMPT_SEQ_SPAN)
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
    let base = attempt_base(stored.attempt);
    let mut events = Vec::with_capacity(lengths.len() + 3);
    if stored.attempt > 1 {
        events.push(ReplyEvent {
            seq: base,
            kind: ReplyEventKind::Reset {
                attempt: stored.attempt,
            },
        });
    }
    let mut seq = base;
    let mut next_seq = move || {
        seq = seq.saturating_add(1);
        seq
    };
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
            seq: next_seq(),
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
    if let Some(usage) = stored.usage {
        events.push(ReplyEvent {
            seq: next_seq(),
            kind: ReplyEventKind::Usage(usage),
        });
    }
    events.push(ReplyEvent {
        seq: next_seq(),
        kind,
    });
    Ok(events)
}
