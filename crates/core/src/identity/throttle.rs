//! [`LoginThrottle`]: how often anyone may try to sign in, so passwords and
//! second-factor codes cannot be guessed at speed, without letting whoever
//! guesses lock the owner out. Three buckets count each attempt:
//!
//! * per account *and* client address — strict (5 a minute by default):
//!   one address guessing at one account is slowed to a crawl, and the
//!   account's owner, coming from another address, is not affected;
//! * per account, from any address — a softer ceiling (50 by default), so
//!   guesses spread over many addresses are still slow;
//! * per client address, whatever the account — so one address cannot
//!   spray guesses over many accounts.
//!
//! Every attempt counts, whether the account exists or not and whether it
//! succeeds or not, so the throttle itself reveals nothing about accounts.
//! An attempt refused by one bucket is not counted by the ones after it
//! (address, then account and address, then account): a flood held back
//! at its address never reaches the account's ceiling.
//!
//! The counters live in this process (governor's GCRA, keyed) unless a
//! Redis is configured ([`LoginThrottle::share_through`]): then every
//! instance counts in the same Redis keys with the same algorithm (GCRA in
//! a Lua script), so N instances behind a load balancer allow what one
//! does. If Redis does not answer, the instance falls back to its own
//! counters: sign-ins stay limited, per instance, rather than failing.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use redis::Script;
use redis::aio::ConnectionManager;

use crate::error::{Error, Result};

/// Keys kept before stale ones are dropped.
const RETAIN_ABOVE: usize = 10_000;

/// Sign-in attempt limits per account and address, per account and per
/// client address.
#[derive(Debug)]
pub struct LoginThrottle {
    per_address: DefaultKeyedRateLimiter<String>,
    per_account_and_address: DefaultKeyedRateLimiter<String>,
    per_account: DefaultKeyedRateLimiter<String>,
    limits: Limits,
    shared: Option<Shared>,
}

/// The bursts and the refill, for the shared counters.
#[derive(Debug, Clone, Copy)]
struct Limits {
    account_and_address_burst: u32,
    account_burst: u32,
    address_burst: u32,
    refill: Duration,
}

/// How many attempts each bucket of a [`LoginThrottle`] allows in a burst;
/// each is refilled by one attempt every `refill`.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Attempts on one account from one client address.
    pub per_account_and_address: u32,
    /// Attempts on one account from any address: the ceiling.
    pub per_account: u32,
    /// Attempts from one client address on any account.
    pub per_address: u32,
    /// One more attempt in each bucket every this long.
    pub refill: Duration,
}

/// Counters in Redis, shared by every instance.
struct Shared {
    redis: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// GCRA on one key: KEYS[1] holds the theoretical arrival time (ms);
/// ARGV = now (ms), interval (ms), burst. Returns 0 when the attempt is
/// allowed (and counted), else the milliseconds to wait.
const GCRA: &str = r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allow_at = next_tat - interval * burst
if allow_at > now then return allow_at - now end
redis.call('SET', KEYS[1], next_tat, 'PX', next_tat - now)
return 0
";

/// A burst of `burst` attempts, then one more every `every`.
fn quota(burst: u32, every: Duration) -> Quota {
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(every.max(Duration::from_millis(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl LoginThrottle {
    /// A throttle with the bursts of `limits`, counting in this process.
    pub fn new(limits: LoginLimits) -> Self {
        let refill = limits.refill;
        Self {
            per_address: RateLimiter::keyed(quota(limits.per_address, refill)),
            per_account_and_address: RateLimiter::keyed(quota(
                limits.per_account_and_address,
                refill,
            )),
            per_account: RateLimiter::keyed(quota(limits.per_account, refill)),
            limits: Limits {
                account_and_address_burst: limits.per_account_and_address.max(1),
                account_burst: limits.per_account.max(1),
                address_burst: limits.per_address.max(1),
                refill: refill.max(Duration::from_millis(1)),
            },
            shared: None,
        }
    }

    /// The three keys of one attempt, in the order they are counted, each
    /// with its bucket's name in the shared counters.
    fn keys(account: &str, address: &str) -> [(&'static str, String); 3] {
        [
            ("address", address.to_owned()),
            // A space cannot be in a normalised email, a user id or an
            // address, so the pair cannot be confused with another.
            ("account-address", format!("{account} {address}")),
            ("account", account.to_owned()),
        ]
    }

    /// Counts in Redis at `url`, under keys starting with `prefix`, shared
    /// with every instance that does the same.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if Redis cannot be reached.
    pub async fn share_through(&mut self, url: &str, prefix: &str) -> Result<()> {
        let client = redis::Client::open(url)?;
        let redis = ConnectionManager::new(client).await?;
        self.shared = Some(Shared {
            redis,
            prefix: format!("{prefix}:login-throttle"),
        });
        Ok(())
    }

    /// Counts one attempt for `account` from `address`. Callers prefix the
    /// account key with what it is (`email:`, `user:`, `register:`, …), so
    /// one kind of key can never spend another's bucket.
    ///
    /// # Errors
    ///
    /// [`Error::ResourceExhausted`] with the seconds to wait when any of
    /// the three limits is spent.
    pub async fn attempt(&self, account: &str, address: &str) -> Result<()> {
        if let Some(shared) = &self.shared {
            match self.attempt_shared(shared, account, address).await {
                Err(Error::Unavailable(reason)) => {
                    tracing::warn!(%reason, "the shared login throttle is unreachable; counting in this process");
                }
                decided => return decided,
            }
        }
        self.attempt_here(account, address)
    }

    async fn attempt_shared(&self, shared: &Shared, account: &str, address: &str) -> Result<()> {
        let interval = u64::try_from(self.limits.refill.as_millis()).unwrap_or(u64::MAX);
        let now = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let script = Script::new(GCRA);
        let bursts = [
            self.limits.address_burst,
            self.limits.account_and_address_burst,
            self.limits.account_burst,
        ];
        for ((kind, key), burst) in Self::keys(account, address).into_iter().zip(bursts) {
            let mut redis = shared.redis.clone();
            let wait_ms: u64 = script
                .key(format!("{}:{kind}:{key}", shared.prefix))
                .arg(now)
                .arg(interval)
                .arg(burst)
                .invoke_async(&mut redis)
                .await?;
            if wait_ms > 0 {
                return Err(Error::ResourceExhausted {
                    retry_after_secs: wait_ms.div_ceil(1000).max(1),
                });
            }
        }
        Ok(())
    }

    fn attempt_here(&self, account: &str, address: &str) -> Result<()> {
        let clock = DefaultClock::default();
        // The address first: a flood from one address then spends only its
        // own bucket, not the buckets of the accounts it names.
        let limiters = [
            &self.per_address,
            &self.per_account_and_address,
            &self.per_account,
        ];
        for (limiter, (_, key)) in limiters.into_iter().zip(Self::keys(account, address)) {
            if limiter.len() > RETAIN_ABOVE {
                limiter.retain_recent();
            }
            if let Err(not_until) = limiter.check_key(&key) {
                let wait = not_until.wait_time_from(clock.now());
                let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(Error::ResourceExhausted {
                    retry_after_secs: retry_after_secs.max(1),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            throttle
                .share_through("redis://127.0.0.1:6379", prefix)
                .await
                .expect("Redis must run on 127.0.0.1:6379 for these tests");
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
        let mut throttle = LoginThrottle::new(LoginLimits {
            per_account_and_address: 1,
            per_account: 1,
            per_address: 100,
            refill: Duration::from_secs(60),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let refused = throttle
            .share_through(&format!("redis://127.0.0.1:{port}"), "x")
            .await;
        assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
        throttle.attempt("a@example.com", "10.0.0.1").await.unwrap();
        assert!(throttle.attempt("a@example.com", "10.0.0.1").await.is_err());
    }
}
