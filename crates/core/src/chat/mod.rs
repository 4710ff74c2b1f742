//! Conversations, messages and the bot's replies.
//!
//! [`Chat`] is the service the transports call. A turn goes like this:
//! [`Chat::send_message`] stores the user's message, a pending reply and a
//! `generate_reply` job ([`ReplyJob`]) in one transaction and hands the job
//! to the queue ([`crate::jobs`]); a worker runs it through
//! [`ReplyJobHandler`], which calls [`ReplyGenerator::generate`]: it claims
//! the reply under a lease, streams the engine's text into the
//! [`ReplyHub`] and stores the finished reply; clients follow it with
//! [`Chat::subscribe_reply`], live from the hub or, once it has finished,
//! rebuilt from the stored message with the same sequence numbers.

mod breaker;
mod bus;
mod engine;
mod engine_status;
mod events;
mod generator;
mod hub;
mod model;
mod queue;
mod service;
mod store;
mod wire;

pub use crate::paging::{
    DEFAULT_CONVERSATION_PAGE_SIZE, DEFAULT_MESSAGE_PAGE_SIZE, MAX_PAGE_SIZE, Page,
};
pub use breaker::{BreakerCall, BreakerState, CircuitBreaker, ResilienceConfig};
pub use bus::ReplyBus;
pub use engine::{DevEngine, EngineEvent, EngineRequest, EngineStream, ReplyEngine, Usage};
pub use engine_status::{EngineStatus, ReportedState};
pub use events::{ATTEMPT_SEQ_SPAN, ReplyEvent, ReplyEventKind};
pub use generator::{GenerateOutcome, ReplyGenerator};
pub use hub::{ReplyHub, ReplyStream};
pub use model::{
    Conversation, ConversationPatch, DEFAULT_TITLE, MAX_CONTENT_CHARS, MAX_TITLE_CHARS, Message,
    MessageStatus, Role, SentMessage,
};
pub use queue::{GENERATE_REPLY, ReplyJob, ReplyJobHandler};
pub use service::{AdmissionCheck, BUS_QUIET, Chat, FOLLOW_POLL, MAX_FEEDBACK_CHARS, REMOTE_POLL};
