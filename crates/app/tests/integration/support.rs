//! Test helpers: a fresh database per test ([`TestDb`]), the services built
//! on it ([`TestApp`]), and a macro that runs each scenario on both engines.
//!
//! PostgreSQL is reached at `SWITCHBOARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test gets a
//! [`ThrowawayPostgres`] database there, dropped afterwards. If PostgreSQL
//! is not reachable the PostgreSQL tests fail, loudly: they are never
//! skipped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use switchboard_app::Services;
use switchboard_core::Result;
use switchboard_core::chat::{
    Chat, DevEngine, ReplyEvent, ReplyGenerator, ReplyHub, ReplyJob, SentMessage,
};
use switchboard_core::config::{Config, EngineConfig, QueueConfig, Secret};
use switchboard_core::db::Database;
use switchboard_core::identity::Principal;
use switchboard_core::jobs::{Delivery, JobTransport, Jobs, RetryPolicy};
use switchboard_testkit::ThrowawayPostgres;
use tempfile::TempDir;

/// Runs each named scenario `async fn name(db: TestDb)` as a test on SQLite
/// (`sqlite::name`) and on PostgreSQL (`postgres::name`).
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::TestDb::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::TestDb::postgres().await).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_databases;

/// A fresh, empty database and the configuration that selects it; removed
/// when dropped.
pub(crate) struct TestDb {
    pub(crate) config: Config,
    /// Held only to be dropped with the `TestDb`.
    _cleanup: Cleanup,
}

/// What removes the database when the [`TestDb`] is dropped.
enum Cleanup {
    /// Someone else's: another `TestDb` removes it.
    None,
    Sqlite(#[allow(dead_code)] TempDir),
    Postgres(#[allow(dead_code)] ThrowawayPostgres),
}

impl TestDb {
    /// A SQLite file in a new temporary directory.
    pub(crate) async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let config = test_config(Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        });
        TestDb {
            config,
            _cleanup: Cleanup::Sqlite(dir),
        }
    }

    /// A new database on the PostgreSQL server of the test environment.
    pub(crate) async fn postgres() -> TestDb {
        let database = ThrowawayPostgres::create().await;
        let config = test_config(Config {
            database_url: Some(Secret::new(database.url().to_owned())),
            ..Config::default()
        });
        TestDb {
            config,
            _cleanup: Cleanup::Postgres(database),
        }
    }

    /// The database `config` names, which another `TestDb` created and
    /// removes: for starting a second app on it, as after a restart.
    pub(crate) fn reopen(config: Config) -> TestDb {
        TestDb {
            config,
            _cleanup: Cleanup::None,
        }
    }

    /// Connects to the database and applies the migrations.
    pub(crate) async fn connect(&self) -> Database {
        let db = Database::connect(&self.config).await.expect("connect");
        db.migrate().await.expect("migrate");
        db
    }
}

/// Retries of reply jobs in tests: one attempt, unless a test asks for more.
pub(crate) const ONE_ATTEMPT: RetryPolicy = RetryPolicy {
    max_attempts: 1,
    backoff_base_ms: 10,
    backoff_max_ms: 50,
};

fn test_config(config: Config) -> Config {
    Config {
        database_max_connections: 5,
        shutdown_grace_secs: 0,
        engine: EngineConfig {
            token_delay_ms: 0,
            max_concurrent_replies: 8,
            ..EngineConfig::default()
        },
        queue: QueueConfig {
            lease_secs: 2,
            poll_interval_ms: 20,
            generate_reply: ONE_ATTEMPT,
            ..QueueConfig::default()
        },
        ..config
    }
}

/// The chat service on a fresh database, as the binary builds it, plus
/// what tests reach into.
pub(crate) struct TestApp {
    pub(crate) chat: Arc<Chat>,
    pub(crate) hub: Arc<ReplyHub>,
    pub(crate) jobs: Arc<Jobs>,
    pub(crate) db: Database,
    pub(crate) me: Principal,
    pub(crate) services: Option<Services>,
    // Last: the database is dropped after everything that uses it.
    _test_db: TestDb,
}

impl TestApp {
    /// [`Services::start`] on `test_db`, with the development engine
    /// answering at once.
    pub(crate) async fn start(test_db: TestDb) -> TestApp {
        Self::start_with(test_db, ONE_ATTEMPT).await
    }

    /// As [`TestApp::start`], retrying reply jobs as `policy` says.
    pub(crate) async fn start_with(test_db: TestDb, policy: RetryPolicy) -> TestApp {
        Self::start_configured(test_db, |config| config.queue.generate_reply = policy).await
    }

    /// As [`TestApp::start`], with the test configuration changed by `change`.
    pub(crate) async fn start_configured(
        mut test_db: TestDb,
        change: impl FnOnce(&mut Config),
    ) -> TestApp {
        change(&mut test_db.config);
        let services = Services::start(&test_db.config)
            .await
            .expect("start services");
        TestApp {
            chat: services.chat(),
            hub: services.hub().clone(),
            jobs: services.jobs(),
            db: services.database().clone(),
            me: Principal::user("alice"),
            services: Some(services),
            _test_db: test_db,
        }
    }

    /// Stops the workers as the binary does at shutdown.
    pub(crate) async fn shutdown(&mut self) {
        if let Some(services) = self.services.take() {
            services.shutdown().await;
        }
    }

    /// Sends `content` in a new conversation.
    pub(crate) async fn send(&self, content: &str) -> SentMessage {
        let conversation = self
            .chat
            .create_conversation(&self.me, "test")
            .await
            .unwrap();
        self.chat
            .send_message(&self.me, &conversation.id, content)
            .await
            .unwrap()
    }

    /// Every event of `sent`'s reply after `after_seq`, until the stream ends.
    pub(crate) async fn events(&self, sent: &SentMessage, after_seq: u32) -> Vec<ReplyEvent> {
        let stream = self
            .chat
            .subscribe_reply(
                &self.me,
                &sent.reply.conversation_id,
                &sent.reply.id,
                after_seq,
            )
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), stream.collect())
            .await
            .expect("the reply stream ends")
    }

    /// Waits until no job is queued, running or waiting to retry.
    pub(crate) async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.jobs.unfinished().await.unwrap() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "jobs still unfinished after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A transport that only records job ids, so tests decide when and how
/// replies run.
#[derive(Default)]
pub(crate) struct ManualTransport {
    pub(crate) sent: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl JobTransport for ManualTransport {
    async fn send(
        &self,
        job_id: &str,
        _not_before: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<()> {
        self.sent.lock().unwrap().push(job_id.to_owned());
        Ok(())
    }

    async fn receive(&self) -> Result<Delivery> {
        std::future::pending().await
    }

    fn name(&self) -> &'static str {
        "manual"
    }
}

/// A chat service whose replies are queued but never run by themselves,
/// with the parts to run them by hand.
pub(crate) struct ManualApp {
    pub(crate) chat: Chat,
    pub(crate) hub: Arc<ReplyHub>,
    pub(crate) transport: Arc<ManualTransport>,
    pub(crate) db: Database,
    pub(crate) me: Principal,
    _test_db: TestDb,
}

impl ManualApp {
    pub(crate) async fn start(test_db: TestDb) -> ManualApp {
        let db = test_db.connect().await;
        let hub = Arc::new(ReplyHub::default());
        let transport = Arc::new(ManualTransport::default());
        let jobs = Arc::new(Jobs::new(db.clone(), transport.clone()));
        ManualApp {
            chat: Chat::new(db.clone(), hub.clone(), jobs, ONE_ATTEMPT),
            hub,
            transport,
            db,
            me: Principal::local(),
            _test_db: test_db,
        }
    }

    /// A generator on this app's database and hub, with the dev engine.
    pub(crate) fn generator(&self) -> ReplyGenerator {
        ReplyGenerator::new(
            self.db.clone(),
            self.hub.clone(),
            Arc::new(DevEngine::default()),
            Duration::from_secs(2),
        )
    }

    /// Sends `content` in a new conversation; the reply stays pending.
    pub(crate) async fn send(&self, content: &str) -> SentMessage {
        let conversation = self.chat.create_conversation(&self.me, "").await.unwrap();
        self.chat
            .send_message(&self.me, &conversation.id, content)
            .await
            .unwrap()
    }

    pub(crate) fn job(sent: &SentMessage) -> ReplyJob {
        ReplyJob {
            reply_id: sent.reply.id.clone(),
            conversation_id: sent.reply.conversation_id.clone(),
        }
    }
}

/// The text a client shows after `events`: the deltas joined, starting
/// over at each reset.
pub(crate) fn text_of(events: &[ReplyEvent]) -> String {
    let mut text = String::new();
    for event in events {
        match &event.kind {
            switchboard_core::chat::ReplyEventKind::Delta(piece) => text.push_str(piece),
            switchboard_core::chat::ReplyEventKind::Reset { .. } => text.clear(),
            _ => {}
        }
    }
    text
}

/// The seqs of `events`.
pub(crate) fn seqs(events: &[ReplyEvent]) -> Vec<u32> {
    events.iter().map(|e| e.seq).collect()
}
