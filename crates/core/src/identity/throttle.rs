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
//! The counters live in this process (governor's GCRA, keyed) unless
//! counters shared by every instance are configured
//! ([`LoginThrottle::share_through`], a [`SharedRateCounters`]: Redis, in
//! `switchboard-redis`, running the same algorithm), so N instances behind
//! a load balancer allow what one does. If the shared counters do not
//! answer, the instance falls back to its own: sign-ins stay limited, per
//! instance, rather than failing.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

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
    shared: Option<Arc<dyn SharedRateCounters>>,
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

/// Rate counters that every instance shares: one GCRA bucket per key, as
/// governor counts in one process.
#[async_trait::async_trait]
pub trait SharedRateCounters: Send + Sync + std::fmt::Debug {
    /// Counts one attempt in the bucket `key`, which allows `burst`
    /// attempts at once and one more every `refill`. `None` if the attempt
    /// is allowed (and counted), else how long until it would be (and
    /// nothing is counted).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if the counters cannot be reached.
    async fn attempt(&self, key: &str, burst: u32, refill: Duration) -> Result<Option<Duration>>;
}

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

    /// Counts in `counters`, shared with every instance that does the
    /// same, from now on.
    pub fn share_through(&mut self, counters: Arc<dyn SharedRateCounters>) {
        self.shared = Some(counters);
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
            match self.attempt_shared(shared.as_ref(), account, address).await {
                Err(Error::Unavailable(reason)) => {
                    tracing::warn!(%reason, "the shared login throttle is unreachable; counting in this process");
                }
                decided => return decided,
            }
        }
        self.attempt_here(account, address)
    }

    async fn attempt_shared(
        &self,
        shared: &dyn SharedRateCounters,
        account: &str,
        address: &str,
    ) -> Result<()> {
        let bursts = [
            self.limits.address_burst,
            self.limits.account_and_address_burst,
            self.limits.account_burst,
        ];
        for ((kind, key), burst) in Self::keys(account, address).into_iter().zip(bursts) {
            let key = format!("login-throttle:{kind}:{key}");
            if let Some(wait) = shared.attempt(&key, burst, self.limits.refill).await? {
                let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
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
