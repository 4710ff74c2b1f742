//! The chat domain's types: conversations, messages, their roles and
//! statuses, pages of results, and the rules for titles and message text.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// The title a conversation gets when it is created without one.
pub const DEFAULT_TITLE: &str = "New conversation";

/// The longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// The longest message a user may send, in characters.
pub const MAX_CONTENT_CHARS: usize = 16_000;

/// A conversation between one user and the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Opaque identifier (a UUID v7 string).
    pub id: String,
    /// The user id of the owner; nobody else can see the conversation.
    pub owner_id: String,
    /// A short title shown in conversation lists.
    pub title: String,
    /// When the conversation was created (microsecond precision).
    pub created_at: DateTime<Utc>,
    /// When the conversation or one of its messages last changed.
    pub updated_at: DateTime<Utc>,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The person using the chat.
    User,
    /// The bot.
    Assistant,
}

/// Where a message is in its life. User messages are always `Complete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageStatus {
    /// A reply accepted but not started.
    Pending,
    /// A reply whose text is being generated.
    Streaming,
    /// A finished message.
    Complete,
    /// A reply that could not be generated.
    Failed,
    /// A reply cancelled before it finished.
    Cancelled,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Opaque identifier (a UUID v7 string).
    pub id: String,
    /// The conversation the message belongs to.
    pub conversation_id: String,
    /// Who wrote it.
    pub role: Role,
    /// The text. For a reply that has not finished, the stored text is empty:
    /// its pieces are only in the live event stream until it finishes.
    pub content: String,
    /// Where the message is in its life.
    pub status: MessageStatus,
    /// When the message was created (microsecond precision).
    pub created_at: DateTime<Utc>,
    /// When the message last changed.
    pub updated_at: DateTime<Utc>,
}

/// The changes [`Chat::update_conversation`](crate::chat::Chat::update_conversation)
/// makes: each `Some` field is set, each `None` left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationPatch {
    /// A new title: trimmed, not empty, at most [`MAX_TITLE_CHARS`].
    pub title: Option<String>,
}

/// What [`Chat::send_message`](crate::chat::Chat::send_message) stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The user's message, complete.
    pub message: Message,
    /// The bot's reply, pending: pass its id to `subscribe_reply`.
    pub reply: Message,
    /// The id of the job that generates the reply.
    pub job_id: String,
}

impl Role {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

impl MessageStatus {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Streaming => "streaming",
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the message will not change any more.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Complete | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "user" => Ok(Self::User),
            "assistant" => Ok(Self::Assistant),
            other => Err(Error::internal(format!("unknown stored role `{other}`"))),
        }
    }
}

impl FromStr for MessageStatus {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(Self::Pending),
            "streaming" => Ok(Self::Streaming),
            "complete" => Ok(Self::Complete),
            "failed" => Ok(Self::Failed),
            "cancelled" => Ok(Self::Cancelled),
            other => Err(Error::internal(format!("unknown stored status `{other}`"))),
        }
    }
}

/// The title to store for a new conversation: trimmed; empty becomes
/// [`DEFAULT_TITLE`].
pub(crate) fn title_for_create(title: &str) -> Result<String> {
    let title = title.trim();
    if title.is_empty() {
        return Ok(DEFAULT_TITLE.to_owned());
    }
    checked_title(title)
}

/// The title to store on update: trimmed, and it must not be empty.
pub(crate) fn title_for_update(title: &str) -> Result<String> {
    let title = title.trim();
    if title.is_empty() {
        return Err(Error::invalid_argument("title", "must not be empty"));
    }
    checked_title(title)
}

/// Text is stored in TEXT columns, and PostgreSQL's cannot hold U+0000:
/// refuse it on every backend alike.
fn reject_nul(field: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::invalid_argument(
            field,
            "must not contain the NUL character (U+0000)",
        ));
    }
    Ok(())
}

fn checked_title(title: &str) -> Result<String> {
    reject_nul("title", title)?;
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(Error::invalid_argument(
            "title",
            format!("must be at most {MAX_TITLE_CHARS} characters"),
        ));
    }
    Ok(title.to_owned())
}

/// Checks the text of a user's message; it is stored as written.
pub(crate) fn check_content(content: &str) -> Result<()> {
    reject_nul("content", content)?;
    if content.trim().is_empty() {
        return Err(Error::invalid_argument("content", "must not be empty"));
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(Error::invalid_argument(
            "content",
            format!("must be at most {MAX_CONTENT_CHARS} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_and_defaulted() {
        assert_eq!(title_for_create("  Trip  ").unwrap(), "Trip");
        assert_eq!(title_for_create(" ").unwrap(), DEFAULT_TITLE);
        assert!(title_for_update(" ").is_err());
        assert!(title_for_create(&"x".repeat(MAX_TITLE_CHARS + 1)).is_err());
    }

    #[test]
    fn nul_characters_are_refused_in_titles_and_content() {
        assert!(title_for_create("a\0b").is_err());
        assert!(check_content("hi\0").is_err());
        assert!(check_content("hi").is_ok());
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            MessageStatus::Pending,
            MessageStatus::Streaming,
            MessageStatus::Complete,
            MessageStatus::Failed,
            MessageStatus::Cancelled,
        ] {
            assert_eq!(status.as_str().parse::<MessageStatus>().unwrap(), status);
        }
    }
}
