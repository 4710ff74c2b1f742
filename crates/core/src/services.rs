//! [`Services`]: the running domain, built once from the configuration and
//! shared by the binary and the edge. It owns the database pool, the reply
//! hub, the in-process reply queue, the [`Chat`] service and the
//! [`Identity`] service, and shuts them down in order.

use std::sync::Arc;
use std::time::Duration;

use crate::chat::{
    Chat, DevEngine, InProcessReplyQueue, ReplyEngine, ReplyGenerator, ReplyHub, recover_replies,
};
use crate::config::Config;
use crate::db::Database;
use crate::error::Result;
use crate::identity::Identity;

/// The running domain services.
#[derive(Debug)]
pub struct Services {
    db: Database,
    hub: Arc<ReplyHub>,
    chat: Arc<Chat>,
    identity: Arc<Identity>,
    queue: Arc<InProcessReplyQueue>,
    shutdown_grace: Duration,
}

impl Services {
    /// Connects to the database, applies migrations, builds the chat
    /// service with the development engine and the in-process queue and the
    /// identity service (loading or creating its signing keys), and re-queues
    /// replies a previous process left unfinished.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`](crate::Error::Unavailable) if the database
    /// cannot be reached; [`Error::Internal`](crate::Error::Internal) if a
    /// migration fails.
    pub async fn start(config: &Config) -> Result<Services> {
        let engine = DevEngine::new(Duration::from_millis(config.engine.token_delay_ms));
        Self::start_with_engine(config, Arc::new(engine)).await
    }

    /// As [`Services::start`], with another reply engine.
    ///
    /// # Errors
    ///
    /// As [`Services::start`].
    pub async fn start_with_engine(
        config: &Config,
        engine: Arc<dyn ReplyEngine>,
    ) -> Result<Services> {
        let db = Database::connect(config).await?;
        db.migrate().await?;
        let hub = Arc::new(ReplyHub::default());
        let generator = Arc::new(ReplyGenerator::new(db.clone(), hub.clone(), engine));
        let queue = Arc::new(InProcessReplyQueue::new(
            generator,
            config.engine.max_concurrent_replies,
        ));
        let chat = Arc::new(Chat::new(db.clone(), hub.clone(), queue.clone()));
        recover_replies(&db, queue.as_ref()).await?;
        let identity = Arc::new(Identity::start(db.clone(), &config.auth).await?);
        Ok(Services {
            db,
            hub,
            chat,
            identity,
            queue,
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
        })
    }

    /// The chat service.
    pub fn chat(&self) -> Arc<Chat> {
        self.chat.clone()
    }

    /// The identity service.
    pub fn identity(&self) -> Arc<Identity> {
        self.identity.clone()
    }

    /// The database pool.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The reply hub.
    pub fn hub(&self) -> &Arc<ReplyHub> {
        &self.hub
    }

    /// The in-process reply queue.
    pub fn queue(&self) -> &Arc<InProcessReplyQueue> {
        &self.queue
    }

    /// Whether the services can take requests (the database answers).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`](crate::Error::Unavailable) if not.
    pub async fn ready(&self) -> Result<()> {
        self.db.ping().await
    }

    /// Stops taking replies, waits up to `shutdown_grace_secs` for the ones
    /// being generated, then closes the database pool. Call it after the
    /// listeners have stopped taking requests.
    pub async fn shutdown(self) {
        self.queue.shutdown(self.shutdown_grace).await;
        self.db.close().await;
    }
}
