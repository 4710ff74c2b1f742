//! The login throttle (`switchboard_core::identity::LoginThrottle`)
//! counting in this process and in the real Redis on 127.0.0.1:6379
//! ([`RedisRateCounters`]): the same scenarios hold either way, instances
//! sharing a Redis share one budget, and an unreachable Redis is refused at
//! start while counting goes on in the process. These tests never skip.

use std::sync::Arc;
use std::time::Duration;

use switchboard_core::Error;
use switchboard_core::identity::{LoginLimits, LoginThrottle};
use switchboard_redis::RedisRateCounters;

/// A throttle counting here, or in the Redis on 127.0.0.1 under a
/// fresh prefix (which must be reachable: these tests never skip).
async fn throttle(
    shared: Option<&str>,
    account_and_address: u32,
    account: u32,
    address: u32,
) -> LoginThrottle {
    let mut throttle = LoginThrottle::new(LoginLimits {
        per_account_and_address: account_and_address,
        per_account: account,
        per_address: address,
        refill: Duration::from_secs(60),
    });
    if let Some(prefix) = shared {
        let counters = RedisRateCounters::connect("redis://127.0.0.1:6379", prefix)
            .await
            .expect("Redis must run on 127.0.0.1:6379 for these tests");
        throttle.share_through(Arc::new(counters));
    }
    throttle
}

fn fresh_prefix() -> String {
    format!("test-throttle-{}", uuid::Uuid::now_v7().simple())
}

async fn an_account_is_throttled_after_its_ceiling_from_any_address(shared: Option<&str>) {
    let throttle = throttle(shared, 3, 3, 100).await;
    for n in 0..3 {
        throttle
            .attempt("a@example.com", &format!("10.0.0.{n}"))
            .await
            .unwrap();
    }
    let err = throttle
        .attempt("a@example.com", "10.0.0.9")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ResourceExhausted { retry_after_secs } if (1..=60).contains(&retry_after_secs)),
        "{err:?}"
    );
    // Another account is not affected.
    throttle.attempt("b@example.com", "10.0.0.9").await.unwrap();
}

async fn an_address_is_throttled_across_accounts(shared: Option<&str>) {
    let throttle = throttle(shared, 100, 100, 2).await;
    throttle.attempt("a@example.com", "10.0.0.1").await.unwrap();
    throttle.attempt("b@example.com", "10.0.0.1").await.unwrap();
    assert!(throttle.attempt("c@example.com", "10.0.0.1").await.is_err());
    throttle.attempt("c@example.com", "10.0.0.2").await.unwrap();
}

async fn one_address_guessing_does_not_lock_the_owner_out(shared: Option<&str>) {
    let throttle = throttle(shared, 3, 10, 100).await;
    for _ in 0..3 {
        throttle.attempt("a@example.com", "10.0.0.1").await.unwrap();
    }
    for _ in 0..20 {
        assert!(
            throttle.attempt("a@example.com", "10.0.0.1").await.is_err(),
            "guessing from one address stays slow"
        );
    }
    throttle
        .attempt("a@example.com", "10.0.0.2")
        .await
        .expect("the owner's address has its own budget");
}

async fn refused_attempts_do_not_spend_the_accounts_ceiling(shared: Option<&str>) {
    let throttle = throttle(shared, 2, 3, 100).await;
    for _ in 0..2 {
        throttle.attempt("a@example.com", "10.0.0.1").await.unwrap();
    }
    for _ in 0..10 {
        assert!(throttle.attempt("a@example.com", "10.0.0.1").await.is_err());
    }
    throttle.attempt("a@example.com", "10.0.0.2").await.unwrap();
    assert!(
        throttle.attempt("a@example.com", "10.0.0.3").await.is_err(),
        "the fourth attempt that got through its address meets the ceiling"
    );
}

#[tokio::test]
async fn counted_here() {
    an_account_is_throttled_after_its_ceiling_from_any_address(None).await;
    an_address_is_throttled_across_accounts(None).await;
    one_address_guessing_does_not_lock_the_owner_out(None).await;
    refused_attempts_do_not_spend_the_accounts_ceiling(None).await;
}

#[tokio::test]
async fn counted_in_redis() {
    an_account_is_throttled_after_its_ceiling_from_any_address(Some(&fresh_prefix())).await;
    an_address_is_throttled_across_accounts(Some(&fresh_prefix())).await;
    one_address_guessing_does_not_lock_the_owner_out(Some(&fresh_prefix())).await;
    refused_attempts_do_not_spend_the_accounts_ceiling(Some(&fresh_prefix())).await;
}

#[tokio::test]
async fn instances_sharing_redis_share_one_budget() {
    let prefix = fresh_prefix();
    let (a, b) = (
        throttle(Some(&prefix), 3, 3, 100).await,
        throttle(Some(&prefix), 3, 3, 100).await,
    );
    a.attempt("a@example.com", "10.0.0.1").await.unwrap();
    b.attempt("a@example.com", "10.0.0.2").await.unwrap();
    a.attempt("a@example.com", "10.0.0.3").await.unwrap();
    assert!(
        b.attempt("a@example.com", "10.0.0.4").await.is_err(),
        "the fourth attempt is refused whichever instance gets it"
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_refused_at_start_and_counting_stays_local() {
    let throttle = LoginThrottle::new(LoginLimits {
        per_account_and_address: 1,
        per_account: 1,
        per_address: 100,
        refill: Duration::from_secs(60),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let refused = RedisRateCounters::connect(&format!("redis://127.0.0.1:{port}"), "x").await;
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    throttle.attempt("a@example.com", "10.0.0.1").await.unwrap();
    assert!(throttle.attempt("a@example.com", "10.0.0.1").await.is_err());
}
