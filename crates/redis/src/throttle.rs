//! [`RedisRateCounters`]: the login throttle's counters in Redis, shared by
//! every instance, so N instances behind a load balancer allow the sign-in
//! attempts one does. Each bucket is GCRA on one key, in a Lua script, the
//! algorithm governor runs in one process.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use switchboard_core::Result;
use switchboard_core::identity::SharedRateCounters;

use crate::redis_error;

/// GCRA on one key: KEYS[1] holds the theoretical arrival time (ms);
/// ARGV = now (ms), interval (ms), burst. Returns 0 when the attempt is
/// allowed (and counted), else the milliseconds to wait.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
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
",
    )
});

/// Rate counters in one Redis, under keys starting with a prefix.
#[derive(Clone)]
pub struct RedisRateCounters {
    redis: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisRateCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateCounters")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisRateCounters {
    /// Counts in the Redis at `url`, under keys `{prefix}:…`.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`](switchboard_core::Error::Unavailable) if
    /// Redis cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url).map_err(redis_error)?;
        let redis = ConnectionManager::new(client).await.map_err(redis_error)?;
        Ok(Self {
            redis,
            prefix: prefix.to_owned(),
        })
    }
}

#[async_trait::async_trait]
impl SharedRateCounters for RedisRateCounters {
    async fn attempt(&self, key: &str, burst: u32, refill: Duration) -> Result<Option<Duration>> {
        let interval = u64::try_from(refill.as_millis()).unwrap_or(u64::MAX);
        let now = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let mut redis = self.redis.clone();
        let wait_ms: u64 = GCRA
            .key(format!("{}:{key}", self.prefix))
            .arg(now)
            .arg(interval)
            .arg(burst)
            .invoke_async(&mut redis)
            .await
            .map_err(redis_error)?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }
}
