//! [`LoginThrottle`]: how often anyone may try to sign in, per account and
//! per client address, so passwords and second-factor codes cannot be
//! guessed at speed. Every attempt counts, whether the account exists or
//! not and whether it succeeds or not, so the throttle itself reveals
//! nothing about accounts.
//!
//! The counters live in this process (governor's GCRA, keyed). Behind a load
//! balancer each instance counts on its own, so the effective limit is the
//! per-instance limit times the number of instances.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::{Error, Result};

/// Keys kept before stale ones are dropped.
const RETAIN_ABOVE: usize = 10_000;

/// Sign-in attempt limits per account and per client address.
#[derive(Debug)]
pub struct LoginThrottle {
    per_account: DefaultKeyedRateLimiter<String>,
    per_address: DefaultKeyedRateLimiter<String>,
}

/// A burst of `burst` attempts, then one more every `every`.
fn quota(burst: u32, every: Duration) -> Quota {
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(every.max(Duration::from_millis(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl LoginThrottle {
    /// `account_burst` attempts per account and `address_burst` per client
    /// address, each refilled by one every `refill`.
    pub fn new(account_burst: u32, address_burst: u32, refill: Duration) -> Self {
        Self {
            per_account: RateLimiter::keyed(quota(account_burst, refill)),
            per_address: RateLimiter::keyed(quota(address_burst, refill)),
        }
    }

    /// Counts one attempt for `account` from `address`. Callers prefix the
    /// account key with what it is (`email:`, `user:`, `register:`, …), so
    /// one kind of key can never spend another's bucket.
    ///
    /// # Errors
    ///
    /// [`Error::ResourceExhausted`] with the seconds to wait when either
    /// limit is spent.
    pub fn attempt(&self, account: &str, address: &str) -> Result<()> {
        let clock = DefaultClock::default();
        // The address first: a flood from one address then spends only its
        // own bucket, not the buckets of the accounts it names.
        for (limiter, key) in [(&self.per_address, address), (&self.per_account, account)] {
            if limiter.len() > RETAIN_ABOVE {
                limiter.retain_recent();
            }
            if let Err(not_until) = limiter.check_key(&key.to_owned()) {
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

    #[test]
    fn an_account_is_throttled_after_its_burst_from_any_address() {
        let throttle = LoginThrottle::new(3, 100, Duration::from_secs(60));
        for n in 0..3 {
            throttle
                .attempt("a@example.com", &format!("10.0.0.{n}"))
                .unwrap();
        }
        let err = throttle.attempt("a@example.com", "10.0.0.9").unwrap_err();
        assert!(
            matches!(err, Error::ResourceExhausted { retry_after_secs } if (1..=60).contains(&retry_after_secs))
        );
        // Another account is not affected.
        throttle.attempt("b@example.com", "10.0.0.9").unwrap();
    }

    #[test]
    fn an_address_is_throttled_across_accounts() {
        let throttle = LoginThrottle::new(100, 2, Duration::from_secs(60));
        throttle.attempt("a@example.com", "10.0.0.1").unwrap();
        throttle.attempt("b@example.com", "10.0.0.1").unwrap();
        assert!(throttle.attempt("c@example.com", "10.0.0.1").is_err());
        throttle.attempt("c@example.com", "10.0.0.2").unwrap();
    }
}
