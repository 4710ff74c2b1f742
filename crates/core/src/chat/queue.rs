//! Handing replies to whoever generates them. [`ReplyQueue`] is the seam:
//! [`InProcessReplyQueue`] runs each job as a task of this process (the
//! embedded default); a persistent job queue with separate workers can take
//! its place without any change to [`Chat`](crate::chat::Chat) or the API,
//! because both run the same [`ReplyGenerator::generate`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::chat::generator::ReplyGenerator;
use crate::chat::store;
use crate::db::Database;
use crate::error::{Error, Result};

/// The job of generating one reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyJob {
    /// The id of the pending assistant message.
    pub reply_id: String,
    /// The conversation it belongs to.
    pub conversation_id: String,
}

/// Accepts reply jobs for generation, at least once.
#[async_trait]
pub trait ReplyQueue: Send + Sync {
    /// Queues `job`; returns once it is accepted, not when it has run.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if the queue does not accept jobs (shutting
    /// down, or its backend is unreachable).
    async fn enqueue(&self, job: ReplyJob) -> Result<()>;
}

/// Runs each job as a task of this process, at most
/// `max_concurrent_replies` at a time; the others wait for a permit.
pub struct InProcessReplyQueue {
    generator: Arc<ReplyGenerator>,
    permits: Arc<Semaphore>,
    tasks: Mutex<JoinSet<()>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for InProcessReplyQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessReplyQueue")
            .field("available_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl InProcessReplyQueue {
    /// A queue running `generator` with at most `max_concurrent` jobs at
    /// once (at least 1).
    pub fn new(generator: Arc<ReplyGenerator>, max_concurrent: usize) -> Self {
        Self {
            generator,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            tasks: Mutex::new(JoinSet::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Waits until every job queued so far (and any queued meanwhile) has
    /// run. For tests and orderly shutdown.
    pub async fn wait_idle(&self) {
        loop {
            let mut tasks = std::mem::take(&mut *self.lock());
            if tasks.is_empty() {
                return;
            }
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Stops accepting jobs and waits up to `grace` for the running ones.
    /// Jobs still waiting for a permit are dropped, and jobs still running
    /// after `grace` are aborted: their replies stay pending or streaming in
    /// the database, and [`recover_replies`] redoes them on the next start.
    /// Returns true if everything finished in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        self.permits.close();
        let mut tasks = std::mem::take(&mut *self.lock());
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                .await
                .is_ok();
        if !drained {
            tracing::warn!(
                aborted = tasks.len(),
                "replies still generating after the grace period were stopped"
            );
            tasks.shutdown().await;
        }
        // Replies stopped or never started here end for their subscribers
        // with a retryable error; the next start generates them again.
        self.generator.close_unfinished();
        drained
    }

    fn lock(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl ReplyQueue for InProcessReplyQueue {
    async fn enqueue(&self, job: ReplyJob) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("shutting down".to_owned()));
        }
        let generator = self.generator.clone();
        let permits = self.permits.clone();
        let mut tasks = self.lock();
        // Reap finished tasks so the set only holds live ones.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            // A closed semaphore means shutdown: leave the reply pending.
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            match generator.generate(&job).await {
                Ok(outcome) => {
                    tracing::debug!(reply_id = %job.reply_id, ?outcome, "reply generated");
                }
                Err(err) => {
                    tracing::error!(reply_id = %job.reply_id, error = %err, "reply generation failed");
                }
            }
        });
        Ok(())
    }
}

/// Re-queues the replies a stopped process left unfinished: streaming ones
/// go back to pending first, then every pending reply is queued, oldest
/// first. Returns how many were queued.
///
/// Run it on start while this process is the only one generating replies
/// (the embedded setup): with separate workers, a streaming reply may be
/// one a live worker holds.
///
/// # Errors
///
/// A database error, or the queue refusing a job.
pub async fn recover_replies(db: &Database, queue: &dyn ReplyQueue) -> Result<usize> {
    let replies = store::unfinished_replies(db, store::now()).await?;
    let count = replies.len();
    for (reply_id, conversation_id) in replies {
        queue
            .enqueue(ReplyJob {
                reply_id,
                conversation_id,
            })
            .await?;
    }
    if count > 0 {
        tracing::info!(count, "re-queued unfinished replies");
    }
    Ok(count)
}
