//! [`Chat`], the chat service every transport calls: conversations,
//! messages, and following a reply. Every method takes the caller's
//! [`Principal`] and sees only that user's conversations; another user's
//! conversation is reported as not found, exactly like a missing one.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::chat::events::{self, CANCELLED_CODE, CANCELLED_MESSAGE, ReplyEventKind};
use crate::chat::hub::{ReplyHub, ReplyStream};
use crate::chat::model::{
    self, Conversation, ConversationPatch, Message, MessageStatus, Page, Role, SentMessage,
};
use crate::chat::paging::{
    self, Cursor, DEFAULT_CONVERSATION_PAGE_SIZE, DEFAULT_MESSAGE_PAGE_SIZE, Listing,
};
use crate::chat::queue::{GENERATE_REPLY, ReplyJob};
use crate::chat::store::{self, StoredMessage};
use crate::db::Database;
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::jobs::{Jobs, NewJob, RetryPolicy};

/// How long [`Chat::cancel_reply`] waits for the generator to store the
/// cancelled reply.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// How often [`Chat::cancel_reply`] looks whether the cancel took effect.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// A check run before a message is accepted: SendMessage fails fast with
/// its error (the engine's circuit breaker is open).
pub type AdmissionCheck = Arc<dyn Fn() -> Result<()> + Send + Sync>;

/// The chat service.
pub struct Chat {
    db: Database,
    hub: Arc<ReplyHub>,
    jobs: Arc<Jobs>,
    reply_policy: RetryPolicy,
    admission: Option<AdmissionCheck>,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("db", &self.db.kind())
            .finish_non_exhaustive()
    }
}

impl Chat {
    /// A chat service storing in `db`, following replies through `hub`, and
    /// queueing new replies as jobs on `jobs`, tried as `reply_policy` says.
    pub fn new(
        db: Database,
        hub: Arc<ReplyHub>,
        jobs: Arc<Jobs>,
        reply_policy: RetryPolicy,
    ) -> Self {
        Self {
            db,
            hub,
            jobs,
            reply_policy,
            admission: None,
        }
    }

    /// Runs `check` before every message is accepted.
    #[must_use]
    pub fn with_admission(mut self, check: AdmissionCheck) -> Self {
        self.admission = Some(check);
        self
    }

    /// The hub replies are published to.
    pub fn hub(&self) -> &Arc<ReplyHub> {
        &self.hub
    }

    /// Starts a conversation owned by `who`. The title is trimmed; an empty
    /// one becomes [`DEFAULT_TITLE`](crate::chat::DEFAULT_TITLE).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] (`title`) for a title over 200 characters.
    pub async fn create_conversation(&self, who: &Principal, title: &str) -> Result<Conversation> {
        let now = store::now();
        let conversation = Conversation {
            id: Uuid::now_v7().to_string(),
            owner_id: who.user_id.clone(),
            title: model::title_for_create(title)?,
            created_at: now,
            updated_at: now,
        };
        store::insert_conversation(&self.db, &conversation).await?;
        Ok(conversation)
    }

    /// One page of `who`'s conversations, newest first. `page_size` 0 means
    /// 50; at most 1000 are returned.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] (`page_token`) for a token this listing
    /// did not issue.
    pub async fn list_conversations(
        &self,
        who: &Principal,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<Conversation>> {
        let after = paging::decode(Listing::Conversations, page_token)?;
        let size = paging::page_size(page_size, DEFAULT_CONVERSATION_PAGE_SIZE);
        let items =
            store::list_conversations(&self.db, &who.user_id, after.as_ref(), size + 1).await?;
        Ok(page(items, size, Listing::Conversations, |c| Cursor {
            created_at: c.created_at.timestamp_micros(),
            id: c.id.clone(),
        }))
    }

    /// One of `who`'s conversations.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if `who` has no conversation `id`.
    pub async fn get_conversation(&self, who: &Principal, id: &str) -> Result<Conversation> {
        known_id(id, "conversation")?;
        store::get_conversation(&self.db, &who.user_id, id)
            .await?
            .ok_or(Error::NotFound {
                what: "conversation",
            })
    }

    /// Changes the fields `patch` sets; an empty patch changes nothing and
    /// returns the conversation as it is.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if `who` has no conversation `id`;
    /// [`Error::InvalidArgument`] (`title`) for an empty or too long title.
    pub async fn update_conversation(
        &self,
        who: &Principal,
        id: &str,
        patch: ConversationPatch,
    ) -> Result<Conversation> {
        known_id(id, "conversation")?;
        let Some(title) = patch.title else {
            return self.get_conversation(who, id).await;
        };
        let title = model::title_for_update(&title)?;
        store::update_title(&self.db, &who.user_id, id, &title, store::now())
            .await?
            .ok_or(Error::NotFound {
                what: "conversation",
            })
    }

    /// Deletes a conversation and all of its messages, in one transaction.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if `who` has no conversation `id`.
    pub async fn delete_conversation(&self, who: &Principal, id: &str) -> Result<()> {
        known_id(id, "conversation")?;
        if store::delete_conversation(&self.db, &who.user_id, id).await? {
            Ok(())
        } else {
            Err(Error::NotFound {
                what: "conversation",
            })
        }
    }

    /// One page of a conversation's messages, oldest first. `page_size` 0
    /// means 100; at most 1000 are returned.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if `who` has no such conversation;
    /// [`Error::InvalidArgument`] (`page_token`) for a token this listing did
    /// not issue.
    pub async fn list_messages(
        &self,
        who: &Principal,
        conversation_id: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<Message>> {
        let after = paging::decode(Listing::Messages, page_token)?;
        self.get_conversation(who, conversation_id).await?;
        let size = paging::page_size(page_size, DEFAULT_MESSAGE_PAGE_SIZE);
        let items =
            store::list_messages(&self.db, conversation_id, after.as_ref(), size + 1).await?;
        Ok(page(items, size, Listing::Messages, |m| Cursor {
            created_at: m.created_at.timestamp_micros(),
            id: m.id.clone(),
        }))
    }

    /// Stores the user's message, a pending reply and the job that
    /// generates it (and bumps the conversation's `updated_at`) in one
    /// transaction, then hands the job to the queue. The reply's text
    /// arrives through [`Chat::subscribe_reply`].
    ///
    /// If the queue's broker does not take the job id, the call still
    /// succeeds: the job row is stored, and workers send untaken jobs again.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if `who` has no such conversation;
    /// [`Error::InvalidArgument`] (`content`) for empty or over-long text;
    /// [`Error::Unavailable`] when the engine is known to be down (its
    /// circuit breaker is open): nothing is stored then.
    pub async fn send_message(
        &self,
        who: &Principal,
        conversation_id: &str,
        content: &str,
    ) -> Result<SentMessage> {
        known_id(conversation_id, "conversation")?;
        model::check_content(content)?;
        if let Some(check) = &self.admission {
            check()?;
        }
        let now = store::now();
        // UUID v7 ids from one process are ordered, so with equal timestamps
        // the reply still sorts after the message it answers.
        let message = Message {
            id: Uuid::now_v7().to_string(),
            conversation_id: conversation_id.to_owned(),
            role: Role::User,
            content: content.to_owned(),
            status: MessageStatus::Complete,
            created_at: now,
            updated_at: now,
        };
        let reply = Message {
            id: Uuid::now_v7().to_string(),
            role: Role::Assistant,
            content: String::new(),
            status: MessageStatus::Pending,
            ..message.clone()
        };
        let job = NewJob {
            kind: GENERATE_REPLY,
            payload: ReplyJob {
                reply_id: reply.id.clone(),
                conversation_id: conversation_id.to_owned(),
            }
            .to_payload(),
            max_attempts: self.reply_policy.max_attempts,
        }
        .into_job(now);
        if !store::insert_turn(&self.db, &who.user_id, &message, &reply, &job).await? {
            return Err(Error::NotFound {
                what: "conversation",
            });
        }
        self.jobs.dispatch(&job.id).await;
        self.hub.announce_reply(conversation_id);
        Ok(SentMessage {
            message,
            reply,
            job_id: job.id,
        })
    }

    /// The replies of one of `who`'s conversations as they come: first the
    /// ones not finished yet, then each new one, pending, as it is created.
    /// A reply sent through this instance is seen at once; one sent through
    /// another instance within [`FOLLOW_POLL`] (the database is the source,
    /// so none is missed). The stream ends when the conversation is
    /// deleted. Follow each reply's events with [`Chat::subscribe_reply`].
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if `who` has no such conversation.
    pub async fn follow_conversation(
        &self,
        who: &Principal,
        conversation_id: &str,
    ) -> Result<futures::stream::BoxStream<'static, Message>> {
        use futures::StreamExt as _;
        self.get_conversation(who, conversation_id).await?;
        // Subscribed before the database is read: no new reply slips between.
        let hints = self.hub.new_replies();
        let unfinished = store::unfinished_replies_of(&self.db, conversation_id).await?;
        let newest = store::newest_message(&self.db, conversation_id).await?;
        let follower = Follower {
            db: self.db.clone(),
            owner: who.user_id.clone(),
            conversation_id: conversation_id.to_owned(),
        };
        let later = futures::stream::unfold(
            (follower, hints, newest),
            |(follower, mut hints, mut cursor)| async move {
                loop {
                    let hinted = wait_for_hint(&mut hints, &follower.conversation_id);
                    let _ = tokio::time::timeout(FOLLOW_POLL, hinted).await;
                    match follower.next_replies(&mut cursor).await {
                        Ok(None) => return None,
                        Ok(Some(replies)) if replies.is_empty() => {}
                        Ok(Some(replies)) => {
                            return Some((
                                futures::stream::iter(replies),
                                (follower, hints, cursor),
                            ));
                        }
                        Err(err) => tracing::warn!(error = %err, "cannot follow the conversation"),
                    }
                }
            },
        )
        .flatten();
        Ok(futures::stream::iter(unfinished).chain(later).boxed())
    }

    /// The events of a reply with a seq greater than `after_seq` (0: all),
    /// live while it is generated, ending after `Done` or `Error`. After the
    /// reply has finished, even long after or across a restart, the events
    /// are rebuilt from the stored reply with the same seqs.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if `who` has no such conversation, or it has no
    /// assistant message `message_id`.
    pub async fn subscribe_reply(
        &self,
        who: &Principal,
        conversation_id: &str,
        message_id: &str,
        after_seq: u32,
    ) -> Result<ReplyStream> {
        let stored = self.find_reply(who, conversation_id, message_id).await?;
        if stored.message.status.is_finished() {
            return replayed(&stored, after_seq);
        }
        if let Some(bus) = self.hub.bus() {
            // Follow the bus (registered first), then look again: a reply
            // that finished in between is replayed from the database.
            let live = bus.subscribe(message_id, after_seq);
            let stored = self.find_reply(who, conversation_id, message_id).await?;
            if stored.message.status.is_finished() {
                return replayed(&stored, after_seq);
            }
            return Ok(ReplyStream::from_bus(live));
        }
        // Open the live log before looking again: if the reply finishes in
        // between, the second read sees it finished (the generator stores
        // before it publishes), and otherwise the log will get every event.
        let log = self.hub.open(message_id);
        let stored = self.find_reply(who, conversation_id, message_id).await?;
        if stored.message.status.is_finished() && !log.is_finished() {
            return replayed(&stored, after_seq);
        }
        Ok(log.stream(after_seq))
    }

    /// Cancels a reply that has not finished: a pending one ends at once
    /// with no text; a streaming one, on whichever worker, stops its engine
    /// call and keeps the text so far. Its last event is an `Error` with
    /// code `CANCELLED`. Returns the reply as stored afterwards (waiting up
    /// to 5 s for the worker to store it).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] as for [`Chat::subscribe_reply`];
    /// [`Error::FailedPrecondition`] if the reply has already finished.
    pub async fn cancel_reply(
        &self,
        who: &Principal,
        conversation_id: &str,
        message_id: &str,
    ) -> Result<Message> {
        let stored = self.find_reply(who, conversation_id, message_id).await?;
        if stored.message.status.is_finished() {
            return Err(Error::FailedPrecondition(format!(
                "the reply is already {}",
                stored.message.status
            )));
        }
        if store::cancel_pending(&self.db, message_id, CANCELLED_MESSAGE, store::now()).await? {
            // Subscribers already waiting see the same event a replay gives.
            self.hub
                .begin(message_id, stored.attempt.max(1))
                .await
                .finish(ReplyEventKind::Error {
                    code: CANCELLED_CODE.to_owned(),
                    message: CANCELLED_MESSAGE.to_owned(),
                })
                .await;
            return Ok(self
                .find_reply(who, conversation_id, message_id)
                .await?
                .message);
        }
        // Streaming: a generator in this process hears it at once, one on
        // another instance at its next lease renewal (within a second).
        store::request_cancel(&self.db, message_id).await?;
        self.hub.cancel(message_id);
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        loop {
            let current = self.find_reply(who, conversation_id, message_id).await?;
            if current.message.status.is_finished() || tokio::time::Instant::now() >= deadline {
                return Ok(current.message);
            }
            tokio::time::sleep(CANCEL_POLL).await;
        }
    }

    /// Records `who`'s feedback on a reply: `rating` +1 (good) or -1 (bad)
    /// and an optional comment. Rating again replaces the earlier feedback.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] as for [`Chat::subscribe_reply`];
    /// [`Error::InvalidArgument`] (`rating`) for anything but 1 or -1, or
    /// (`comment`) for a comment over 2000 characters.
    pub async fn rate_reply(
        &self,
        who: &Principal,
        conversation_id: &str,
        message_id: &str,
        rating: i32,
        comment: &str,
    ) -> Result<()> {
        if rating != 1 && rating != -1 {
            return Err(Error::invalid_argument(
                "rating",
                "must be 1 (good) or -1 (bad)",
            ));
        }
        if comment.chars().count() > MAX_FEEDBACK_CHARS {
            return Err(Error::invalid_argument(
                "comment",
                format!("must be at most {MAX_FEEDBACK_CHARS} characters"),
            ));
        }
        self.find_reply(who, conversation_id, message_id).await?;
        if store::rate_reply(
            &self.db,
            conversation_id,
            message_id,
            i64::from(rating),
            comment,
            store::now(),
        )
        .await?
        {
            Ok(())
        } else {
            Err(Error::NotFound { what: "reply" })
        }
    }

    /// Deletes every conversation not updated for `max_age`; returns how
    /// many. The scheduled retention task calls it.
    ///
    /// # Errors
    ///
    /// A database error.
    pub async fn delete_idle_conversations(&self, max_age: Duration) -> Result<u64> {
        let max_age = chrono::Duration::from_std(max_age).map_err(Error::internal)?;
        store::delete_conversations_before(&self.db, store::now() - max_age).await
    }

    /// The assistant message `message_id` of `who`'s conversation.
    async fn find_reply(
        &self,
        who: &Principal,
        conversation_id: &str,
        message_id: &str,
    ) -> Result<StoredMessage> {
        self.get_conversation(who, conversation_id).await?;
        known_id(message_id, "reply")?;
        match store::get_message(&self.db, conversation_id, message_id).await? {
            Some(stored) if store::is_reply(&stored.message) => Ok(stored),
            _ => Err(Error::NotFound { what: "reply" }),
        }
    }
}

/// What [`Chat::follow_conversation`] reads the database with.
struct Follower {
    db: Database,
    owner: String,
    conversation_id: String,
}

impl Follower {
    /// The replies created after `cursor` (which moves past every new
    /// message); `None` once the conversation is gone.
    async fn next_replies(&self, cursor: &mut Option<Cursor>) -> Result<Option<Vec<Message>>> {
        if store::get_conversation(&self.db, &self.owner, &self.conversation_id)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let new =
            store::list_messages(&self.db, &self.conversation_id, cursor.as_ref(), 100).await?;
        if let Some(last) = new.last() {
            *cursor = Some(Cursor {
                created_at: last.created_at.timestamp_micros(),
                id: last.id.clone(),
            });
        }
        Ok(Some(new.into_iter().filter(store::is_reply).collect()))
    }
}

/// Resolves when `hints` announces a new reply of `conversation_id` (or
/// falls behind, when a reply may have been missed); never if the hub is gone.
async fn wait_for_hint(
    hints: &mut tokio::sync::broadcast::Receiver<String>,
    conversation_id: &str,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match hints.recv().await {
            Ok(id) if id == conversation_id => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// How often a conversation's follower looks for replies sent through
/// other instances.
pub const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// The longest feedback comment, in characters.
pub const MAX_FEEDBACK_CHARS: usize = 2000;

/// Ids are UUIDs; any other text names nothing, and never reaches SQL (where
/// PostgreSQL would refuse a NUL with an error, not an empty result).
fn known_id(id: &str, what: &'static str) -> Result<()> {
    match Uuid::try_parse(id) {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::NotFound { what }),
    }
}

fn replayed(stored: &StoredMessage, after_seq: u32) -> Result<ReplyStream> {
    Ok(ReplyStream::from_events(events::replay(stored)?, after_seq))
}

/// Cuts `items` (fetched with one extra row) to `size`, with a token for
/// the next page if the extra row came back.
fn page<T>(
    mut items: Vec<T>,
    size: u32,
    listing: Listing,
    cursor: impl Fn(&T) -> Cursor,
) -> Page<T> {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let more = items.len() > size;
    items.truncate(size);
    let next_page_token = match items.last() {
        Some(last) if more => Some(paging::encode(listing, &cursor(last))),
        _ => None,
    };
    Page {
        items,
        next_page_token,
    }
}
