//! [`ReplyBus`]: the seam through which reply events travel between
//! processes. Without one (the embedded default) a reply's events live only
//! in the [`ReplyHub`](crate::chat::ReplyHub) of the process generating it,
//! and other processes see the reply once it is stored; with one (Redis,
//! in `switchboard-redis`), every event is also published, and a subscriber
//! on any instance follows it live.

use futures::stream::BoxStream;

use crate::error::Result;

/// Carries reply events (a seq and the event's JSON, `chat::wire`) from
/// the process generating a reply to every process following it.
#[async_trait::async_trait]
pub trait ReplyBus: Send + Sync + std::fmt::Debug {
    /// Appends event `seq` of `reply_id` to its backlog and announces it to
    /// every process. Publishing the reply's last seq again does nothing
    /// and succeeds, so a publish that failed with
    /// [`Error::Unavailable`](crate::Error::Unavailable) can be retried.
    ///
    /// # Errors
    ///
    /// [`Error::FailedPrecondition`](crate::Error::FailedPrecondition) (and
    /// nothing is written) if the reply already has an event after `seq`;
    /// [`Error::Unavailable`](crate::Error::Unavailable) if the bus cannot
    /// be reached.
    async fn publish(&self, reply_id: &str, seq: u32, event_json: &str) -> Result<()>;

    /// [`ReplyBus::publish`] of several events of `reply_id`, in the order
    /// given (their seqs growing): a bus may send them all at once. Each
    /// event is published once, also when the call is retried.
    ///
    /// # Errors
    ///
    /// As [`ReplyBus::publish`], for the first event that fails.
    async fn publish_many(&self, reply_id: &str, events: &[(u32, String)]) -> Result<()> {
        for (seq, event_json) in events {
            self.publish(reply_id, *seq, event_json).await?;
        }
        Ok(())
    }

    /// The events of `reply_id` with a seq above `after_seq`, in order,
    /// each once: the backlog first, then live ones as they are published.
    /// The stream does not end by itself (the caller knows which event is
    /// last); an `Err` item, once the bus has failed for good, ends it.
    fn subscribe(
        &self,
        reply_id: &str,
        after_seq: u32,
    ) -> BoxStream<'static, Result<(u32, String)>>;
}
