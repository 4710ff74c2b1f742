//! Conversations, messages and the bot's replies.
//!
//! [`Chat`] is the service the transports call. A turn goes like this:
//! [`Chat::send_message`] stores the user's message and a pending reply in
//! one transaction and hands a [`ReplyJob`] to a [`ReplyQueue`]; whoever runs
//! the job calls [`ReplyGenerator::generate`], which streams the engine's
//! tokens into the [`ReplyHub`] and stores the finished reply; clients follow
//! it with [`Chat::subscribe_reply`], live from the hub or, once it has
//! finished, rebuilt from the stored message with the same sequence numbers.

mod engine;
mod events;
mod generator;
mod hub;
mod model;
pub(crate) mod paging;
mod queue;
mod service;
mod store;

pub use engine::{DevEngine, ReplyEngine, TokenStream};
pub use events::{ReplyEvent, ReplyEventKind};
pub use generator::{GenerateOutcome, ReplyGenerator};
pub use hub::{ReplyHub, ReplyStream};
pub use model::{
    Conversation, ConversationPatch, DEFAULT_TITLE, MAX_CONTENT_CHARS, MAX_TITLE_CHARS, Message,
    MessageStatus, Page, Role, SentMessage,
};
pub use paging::{DEFAULT_CONVERSATION_PAGE_SIZE, DEFAULT_MESSAGE_PAGE_SIZE, MAX_PAGE_SIZE};
pub use queue::{InProcessReplyQueue, ReplyJob, ReplyQueue, recover_replies};
pub use service::Chat;
