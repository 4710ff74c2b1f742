//! The read caches' revocation bound: whatever the credentials and
//! conversations caches hold, a logout, a disabled account, a revoked API
//! key or a deleted conversation takes effect at once on the instance that
//! made the change, and on another instance sharing the database and Redis
//! within the Pub/Sub delivery, bounded by [`ENTRY_TTL`] when a message is
//! lost.
//!
//! Two [`Services`] run in one test, on one [`ThrowawayPostgres`] database
//! and one Redis under a key prefix of their own. Each check first makes
//! instance B cache the credential or conversation, so B refuses only if
//! the invalidation reached it.

use std::time::{Duration, Instant};

use switchboard_app::Services;
use switchboard_core::Error;
use switchboard_core::cache::ENTRY_TTL;
use switchboard_core::identity::{NewApiKey, Principal, RequestContext, Role, UserPatch};

use crate::support::TestDb;

/// How long another instance may take: the cache's own bound, and room for
/// a loaded machine.
const BOUND: Duration = ENTRY_TTL.saturating_add(Duration::from_secs(2));

const PASSWORD: &str = "a long pass phrase 1";

/// Two instances on one PostgreSQL database, sharing Redis under their own
/// prefix.
struct TwoInstances {
    a: Services,
    b: Services,
    _db: TestDb,
}

impl TwoInstances {
    async fn start() -> Self {
        let mut db = TestDb::postgres().await;
        db.config.redis_url = Some(switchboard_core::config::Secret::new(
            std::env::var("SWITCHBOARD_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
        ));
        db.config.queue.prefix = format!("test-caches-{}", uuid::Uuid::now_v7());
        let a = Services::start(&db.config).await.expect("start instance A");
        let b = Services::start(&db.config).await.expect("start instance B");
        Self { a, b, _db: db }
    }

    /// A new account and the access token of a session of it, signed in on A.
    async fn signed_in(&self, email: &str) -> (Principal, String) {
        let identity = self.a.identity();
        identity
            .create_user(email, PASSWORD, Role::User)
            .await
            .expect("create the account");
        let tokens = identity
            .login(&RequestContext::default(), email, PASSWORD, "")
            .await
            .expect("sign in");
        let principal = identity
            .authenticate(&tokens.access_token)
            .await
            .unwrap()
            .expect("the fresh token is accepted");
        (principal, tokens.access_token)
    }
}

/// Whether `services` accepts `credential` now.
async fn accepts(services: &Services, credential: &str) -> bool {
    services
        .identity()
        .authenticate(credential)
        .await
        .expect("authenticate")
        .is_some()
}

/// Waits until `services` refuses `credential`; panics after [`BOUND`].
async fn refused_within_bound(services: &Services, credential: &str) {
    let start = Instant::now();
    while accepts(services, credential).await {
        assert!(
            start.elapsed() < BOUND,
            "instance B still accepts the credential {BOUND:?} after the change"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_instance_is_refused_on_both() {
    let both = TwoInstances::start().await;
    let (principal, token) = both.signed_in("logout@example.test").await;
    assert!(accepts(&both.b, &token).await, "B accepts (and caches) it");
    both.a
        .identity()
        .logout(&RequestContext::default(), Some(&principal), "")
        .await
        .expect("logout");
    assert!(!accepts(&both.a, &token).await, "A refuses at once");
    refused_within_bound(&both.b, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_account_is_refused_on_both() {
    let both = TwoInstances::start().await;
    let (principal, token) = both.signed_in("disabled@example.test").await;
    assert!(accepts(&both.b, &token).await);
    both.a
        .identity()
        .update_user(
            &RequestContext::default(),
            &Principal::with_role("an-admin", Role::Admin),
            &principal.user_id,
            UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .expect("disable the account");
    assert!(!accepts(&both.a, &token).await, "A refuses at once");
    refused_within_bound(&both.b, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_api_key_is_refused_on_both() {
    let both = TwoInstances::start().await;
    let (principal, _) = both.signed_in("key@example.test").await;
    let created = both
        .a
        .identity()
        .create_api_key(
            &RequestContext::default(),
            &principal,
            NewApiKey {
                name: "k".to_owned(),
                permissions: Vec::new(),
                expires_at: None,
            },
        )
        .await
        .expect("create a key");
    assert!(accepts(&both.a, &created.secret).await);
    assert!(accepts(&both.b, &created.secret).await);
    both.a
        .identity()
        .delete_api_key(&RequestContext::default(), &principal, &created.key.id)
        .await
        .expect("revoke the key");
    assert!(
        !accepts(&both.a, &created.secret).await,
        "A refuses at once"
    );
    refused_within_bound(&both.b, &created.secret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_conversation_is_not_found_on_both() {
    let both = TwoInstances::start().await;
    let owner = Principal::user("owner");
    let conversation = both
        .a
        .chat()
        .create_conversation(&owner, "cached")
        .await
        .unwrap();
    for instance in [&both.a, &both.b] {
        instance
            .chat()
            .get_conversation(&owner, &conversation.id)
            .await
            .expect("read (and cache) the conversation");
    }
    // Another user is refused from the cache exactly as by the database.
    let other = both
        .b
        .chat()
        .get_conversation(&Principal::user("someone-else"), &conversation.id)
        .await;
    assert!(matches!(other, Err(Error::NotFound { .. })), "{other:?}");
    both.a
        .chat()
        .delete_conversation(&owner, &conversation.id)
        .await
        .unwrap();
    let on_a = both
        .a
        .chat()
        .get_conversation(&owner, &conversation.id)
        .await;
    assert!(
        matches!(on_a, Err(Error::NotFound { .. })),
        "A at once: {on_a:?}"
    );
    let start = Instant::now();
    loop {
        match both
            .b
            .chat()
            .get_conversation(&owner, &conversation.id)
            .await
        {
            Err(Error::NotFound { .. }) => break,
            other => assert!(
                start.elapsed() < BOUND,
                "instance B still answers {other:?} {BOUND:?} after the delete"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_conversation_reads_renamed_at_once_on_the_same_instance() {
    let both = TwoInstances::start().await;
    let owner = Principal::user("owner");
    let chat = both.a.chat();
    let conversation = chat.create_conversation(&owner, "before").await.unwrap();
    chat.get_conversation(&owner, &conversation.id)
        .await
        .unwrap();
    chat.update_conversation(
        &owner,
        &conversation.id,
        switchboard_core::chat::ConversationPatch {
            title: Some("after".to_owned()),
        },
    )
    .await
    .unwrap();
    let read = chat
        .get_conversation(&owner, &conversation.id)
        .await
        .unwrap();
    assert_eq!(read.title, "after");
}
