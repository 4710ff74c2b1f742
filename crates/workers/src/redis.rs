//! A job transport on a Redis Stream read through a consumer group.
//!
//! `send` appends the job id to the stream `{prefix}:jobs`, or, for a later
//! time, adds it to the sorted set `{prefix}:jobs:delayed` scored by its due
//! time in ms. Every worker reads the stream through the consumer group
//! `workers` under a consumer name of its own (host-pid-random); Redis keeps
//! each entry it hands out in the group's pending list until the worker
//! acknowledges it (XACK + XDEL). An entry left pending longer than the
//! lease without renewal (`keep_alive` resets its idle time) belongs to a
//! worker that died or hung, and the next worker to look claims it with
//! XAUTOCLAIM and runs it again. Due delayed ids are moved into the stream
//! by whichever worker looks first, in a Lua script, so that no id is moved
//! twice.
//!
//! Those chores run inside [`JobTransport::receive`], between blocking
//! reads: a process that never receives (an API server that only sends)
//! costs Redis nothing. The blocking reads (XREADGROUP … BLOCK) have a
//! connection of their own, because a blocked command holds its connection
//! until it returns and must not stall the sends, acks and renewals.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{FromRedisValue, RedisResult, Script};

use switchboard_core::jobs::{Delivery, JobTransport, Receipt};
use switchboard_core::{Error, Result};
use switchboard_redis::redis_error;

use crate::reconnect::keep_receiving;

/// The consumer group every worker reads through.
const GROUP: &str = "workers";

/// How many due delayed ids one script run moves at most, so that a large
/// backlog never blocks Redis for long.
const PROMOTE_BATCH: usize = 100;

/// How often consumers of dead processes are removed from the group.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// How long a consumer holding nothing must have been idle to be removed.
const SWEEP_IDLE: Duration = Duration::from_secs(60 * 60);

/// Moves up to ARGV[2] ids due at ARGV[1] (ms) from the sorted set KEYS[1]
/// to the stream KEYS[2]; returns how many it moved.
static PROMOTE_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
        for _, job_id in ipairs(due) do
            redis.call('XADD', KEYS[2], '*', 'job_id', job_id)
        end
        if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
        return #due
        ",
    )
});

/// Resets the idle time of entry ARGV[2] of stream KEYS[1], group ARGV[3],
/// if consumer ARGV[1] still holds it; returns 1 if it did, 0 if the entry
/// was acknowledged or taken over by another consumer.
static RENEW_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if #redis.call('XPENDING', KEYS[1], ARGV[3], ARGV[2], ARGV[2], 1, ARGV[1]) == 0 then
            return 0
        end
        redis.call('XCLAIM', KEYS[1], ARGV[3], ARGV[1], 0, ARGV[2], 'JUSTID')
        return 1
        ",
    )
});

/// Deletes the consumers of stream KEYS[1], group ARGV[1], that hold no
/// entry and have been idle longer than ARGV[2] ms (consumers of processes
/// that have gone); returns how many it deleted. A consumer holding entries
/// is never deleted: that would drop its entries from the pending list, and
/// nobody would ever claim them.
static FORGET_IDLE_CONSUMERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local removed = 0
        for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
            local info = {}
            for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
            if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) then
                redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
                removed = removed + 1
            end
        end
        return removed
        ",
    )
});

/// Settings of a [`RedisTransport`].
#[derive(Debug, Clone)]
pub struct RedisTransportConfig {
    /// Where Redis is: `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key, so that deployments (or tests) can share a Redis.
    pub prefix: String,
    /// How long a delivered job may go without an ack or a `keep_alive`
    /// before another worker takes it over.
    pub lease: Duration,
    /// How long one blocking read waits for a new job; also how late, at
    /// most, a due delayed job is moved to the stream while workers wait.
    pub poll_interval: Duration,
}

impl Default for RedisTransportConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "switchboard".to_owned(),
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Carries job ids through a Redis Stream; see the module documentation.
pub struct RedisTransport {
    shared: Arc<Shared>,
    /// The connection of blocking reads, one at a time.
    reader: tokio::sync::Mutex<ConnectionManager>,
    poll_interval: Duration,
    chores: Mutex<Chores>,
}

/// What the transport and its receipts share.
struct Shared {
    /// The connection of every non-blocking command.
    commands: ConnectionManager,
    /// `{prefix}:jobs`.
    stream: String,
    /// `{prefix}:jobs:delayed`.
    delayed: String,
    /// This transport's name in the consumer group.
    consumer: String,
    lease: Duration,
}

/// When the periodic chores of [`RedisTransport::receive`] are next due.
struct Chores {
    promote_at: Instant,
    claim_at: Instant,
    /// Where the last XAUTOCLAIM scan of the pending list stopped.
    claim_cursor: String,
    sweep_at: Instant,
}

/// A delivered stream entry: acknowledging deletes it.
struct RedisReceipt {
    shared: Arc<Shared>,
    entry_id: String,
}

impl RedisTransport {
    /// Connects to Redis and creates the stream and its consumer group if
    /// they do not exist yet.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if Redis cannot be reached,
    /// [`Error::Internal`] if the URL is malformed.
    pub async fn connect(config: RedisTransportConfig) -> Result<Self> {
        let client = redis::Client::open(config.url.as_str()).map_err(redis_error)?;
        let commands = ConnectionManager::new(client.clone())
            .await
            .map_err(redis_error)?;
        // The default response timeout (0.5 s) is shorter than a blocking read.
        let reader_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.poll_interval + Duration::from_secs(5)));
        let reader = ConnectionManager::new_with_config(client, reader_config)
            .await
            .map_err(redis_error)?;
        let shared = Shared {
            commands,
            stream: format!("{}:jobs", config.prefix),
            delayed: format!("{}:jobs:delayed", config.prefix),
            consumer: consumer_name(),
            lease: config.lease,
        };
        shared.create_group().await?;
        let now = Instant::now();
        Ok(Self {
            shared: Arc::new(shared),
            reader: tokio::sync::Mutex::new(reader),
            poll_interval: config.poll_interval,
            chores: Mutex::new(Chores {
                promote_at: now,
                claim_at: now,
                claim_cursor: "0-0".to_owned(),
                sweep_at: now + SWEEP_INTERVAL,
            }),
        })
    }

    /// This transport's consumer name in the group (host-pid-random), for logs.
    pub fn consumer_name(&self) -> &str {
        &self.shared.consumer
    }

    /// Runs the due chores, then waits for new entries, up to `max` of them
    /// in one read; none if there was none within the poll interval.
    async fn next_entries(&self, max: usize) -> RedisResult<Vec<StreamId>> {
        if self.chore_due(|chores| &mut chores.promote_at, self.poll_interval) {
            self.promote_due().await?;
        }
        if self.chore_due(|chores| &mut chores.sweep_at, SWEEP_INTERVAL) {
            self.forget_idle_consumers().await?;
        }
        if self.chore_due(|chores| &mut chores.claim_at, self.shared.lease / 2)
            && let Some(entry) = self.claim_expired().await?
        {
            return Ok(vec![entry]);
        }
        self.read_new(max).await
    }

    /// Whether the chore whose next time `slot` picks is due; if so, sets
    /// its next time `every` from now, so that concurrent receivers do not
    /// all run it.
    fn chore_due(&self, slot: impl FnOnce(&mut Chores) -> &mut Instant, every: Duration) -> bool {
        let mut chores = self.lock_chores();
        let at = slot(&mut chores);
        let now = Instant::now();
        if now < *at {
            return false;
        }
        *at = now + every;
        true
    }

    /// Moves every due delayed id to the stream.
    async fn promote_due(&self) -> RedisResult<()> {
        let mut conn = self.shared.commands.clone();
        loop {
            let moved: usize = PROMOTE_DUE
                .key(&self.shared.delayed)
                .key(&self.shared.stream)
                .arg(Utc::now().timestamp_millis())
                .arg(PROMOTE_BATCH)
                .invoke_async(&mut conn)
                .await?;
            if moved < PROMOTE_BATCH {
                return Ok(());
            }
        }
    }

    /// Claims one entry whose lease has expired, continuing the scan of the
    /// pending list where the last call stopped.
    async fn claim_expired(&self) -> RedisResult<Option<StreamId>> {
        let mut conn = self.shared.commands.clone();
        let lease_ms = u64::try_from(self.shared.lease.as_millis()).unwrap_or(u64::MAX);
        let mut cursor = self.lock_chores().claim_cursor.clone();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.shared.stream)
                .arg(GROUP)
                .arg(&self.shared.consumer)
                .arg(lease_ms)
                .arg(&cursor)
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            cursor = reply.next_stream_id;
            let claimed = reply.claimed.into_iter().next();
            if claimed.is_some() || cursor == "0-0" {
                let mut chores = self.lock_chores();
                chores.claim_cursor = cursor;
                if let Some(entry) = &claimed {
                    // There may be more: look again on the next call.
                    chores.claim_at = Instant::now();
                    tracing::warn!(
                        entry = %entry.id,
                        job_id = entry.get::<String>("job_id").unwrap_or_default(),
                        consumer = %self.shared.consumer,
                        "took over a job whose lease expired"
                    );
                }
                return Ok(claimed);
            }
        }
    }

    /// Waits up to the poll interval for entries no consumer has seen, and
    /// takes up to `max` of them (XREADGROUP … COUNT `max`).
    async fn read_new(&self, max: usize) -> RedisResult<Vec<StreamId>> {
        let mut reader = self.reader.lock().await;
        let block_ms = u64::try_from(self.poll_interval.as_millis()).unwrap_or(u64::MAX);
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.shared.consumer)
            .arg("COUNT")
            .arg(max.max(1))
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.shared.stream)
            .arg(">")
            .query_async(&mut *reader)
            .await?;
        Ok(reply
            .and_then(|reply| reply.keys.into_iter().next())
            .map(|key| key.ids)
            .unwrap_or_default())
    }

    /// Removes consumers of processes that have gone from the group.
    async fn forget_idle_consumers(&self) -> RedisResult<()> {
        let mut conn = self.shared.commands.clone();
        let removed: usize = FORGET_IDLE_CONSUMERS
            .key(&self.shared.stream)
            .arg(GROUP)
            .arg(u64::try_from(SWEEP_IDLE.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut conn)
            .await?;
        if removed > 0 {
            tracing::info!(removed, "removed idle consumers from the job group");
        }
        Ok(())
    }

    fn lock_chores(&self) -> std::sync::MutexGuard<'_, Chores> {
        self.chores.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The delivery of `entry`, or `None` (after dropping it) if the entry
    /// carries no job id and could never be run.
    async fn delivery(&self, entry: StreamId) -> Result<Option<Delivery>> {
        let receipt = Box::new(RedisReceipt {
            shared: Arc::clone(&self.shared),
            entry_id: entry.id.clone(),
        });
        match entry.get::<String>("job_id") {
            Some(job_id) => Ok(Some(Delivery { job_id, receipt })),
            None => {
                tracing::error!(entry = %entry.id, "dropping a job entry without a job_id field");
                receipt.ack().await?;
                Ok(None)
            }
        }
    }
}

impl Shared {
    /// Runs `command` on the command connection, and once more if the
    /// connection had dropped: the manager reconnects in between, so a
    /// Redis restart or network blip costs no caller an error. Every
    /// command here may run twice (a repeated XADD delivers a job twice,
    /// which at-least-once allows).
    async fn retrying<T: FromRedisValue + Send>(&self, request: &impl Request) -> RedisResult<T> {
        let mut conn = self.commands.clone();
        match request.send(&mut conn).await {
            Err(err) if err.is_connection_dropped() || err.is_io_error() => {
                request.send(&mut conn).await
            }
            done => done,
        }
    }

    /// Creates the stream and the group, reading from the stream's start
    /// (ids sent before the first worker connected are not skipped).
    async fn create_group(&self) -> Result<()> {
        let mut conn = self.commands.clone();
        let created: RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other.map_err(redis_error)?),
        }
    }
}

#[async_trait]
impl JobTransport for RedisTransport {
    async fn send(&self, job_id: &str, not_before: Option<DateTime<Utc>>) -> Result<()> {
        let shared = &self.shared;
        match not_before {
            Some(due) if due > Utc::now() => {
                // A second delayed send of the same id moves it, not copies it.
                let add = redis::cmd("ZADD")
                    .arg(&shared.delayed)
                    .arg(due.timestamp_millis())
                    .arg(job_id)
                    .clone();
                let _added: usize = shared.retrying(&add).await.map_err(redis_error)?;
            }
            _ => {
                let add = redis::cmd("XADD")
                    .arg(&shared.stream)
                    .arg("*")
                    .arg("job_id")
                    .arg(job_id)
                    .clone();
                let _entry_id: String = shared.retrying(&add).await.map_err(redis_error)?;
            }
        }
        Ok(())
    }

    /// Cancel-safe in the at-least-once sense: if the future is dropped
    /// after Redis handed an entry to this consumer, the entry stays pending
    /// and is claimed again (by any worker) once its lease expires.
    async fn receive(&self) -> Result<Delivery> {
        let mut one = self.receive_many(1).await?;
        Ok(one.swap_remove(0))
    }

    /// All XADDs in one pipeline: one round trip for every id.
    async fn send_many(&self, job_ids: &[String]) -> Result<()> {
        let shared = &self.shared;
        let mut adds = redis::pipe();
        for job_id in job_ids {
            adds.cmd("XADD")
                .arg(&shared.stream)
                .arg("*")
                .arg("job_id")
                .arg(job_id)
                .ignore();
        }
        let () = shared.retrying(&adds).await.map_err(redis_error)?;
        Ok(())
    }

    /// Cancel-safe as [`receive`](JobTransport::receive) is.
    async fn receive_many(&self, max: usize) -> Result<Vec<Delivery>> {
        keep_receiving("redis", || async {
            let entries = match self.next_entries(max).await {
                Err(err) if err.code() == Some("NOGROUP") => {
                    // Redis lost the stream (a restart without persistence).
                    tracing::warn!(stream = %self.shared.stream, "job group missing; creating it again");
                    self.shared.create_group().await.map(|()| Vec::new())
                }
                other => other.map_err(redis_error),
            }?;
            let mut deliveries = Vec::with_capacity(entries.len());
            for entry in entries {
                if let Some(delivery) = self.delivery(entry).await? {
                    deliveries.push(delivery);
                }
            }
            Ok((!deliveries.is_empty()).then_some(deliveries))
        })
        .await
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[async_trait]
impl Receipt for RedisReceipt {
    async fn ack(&self) -> Result<()> {
        let shared = &self.shared;
        let ack = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&shared.stream)
            .arg(GROUP)
            .arg(&self.entry_id)
            .ignore()
            .cmd("XDEL")
            .arg(&shared.stream)
            .arg(&self.entry_id)
            .ignore()
            .clone();
        let () = shared.retrying(&ack).await.map_err(redis_error)?;
        Ok(())
    }

    /// # Errors
    ///
    /// [`Error::FailedPrecondition`] if the lease had already expired and
    /// another worker took the job over (or it was acknowledged): this
    /// worker should stop working on it.
    async fn keep_alive(&self) -> Result<()> {
        let shared = &self.shared;
        let mut renew = RENEW_LEASE.prepare_invoke();
        renew
            .key(&shared.stream)
            .arg(&shared.consumer)
            .arg(&self.entry_id)
            .arg(GROUP);
        let renewed: bool = shared.retrying(&renew).await.map_err(redis_error)?;
        if renewed {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(format!(
                "job entry {} is no longer held by this worker: its lease expired",
                self.entry_id
            )))
        }
    }
}

/// A Redis request that can be sent again as it is.
trait Request: Sync {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send;
}

impl Request for redis::Cmd {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Request for redis::Pipeline {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Request for redis::ScriptInvocation<'_> {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.invoke_async(conn)
    }
}

/// A consumer name unique to this process and transport: host-pid-random.
fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::AsyncCommands;

    #[tokio::test]
    async fn consumers_holding_nothing_are_forgotten() {
        let config = RedisTransportConfig {
            prefix: format!("test-sweep-{:08x}", rand::random::<u32>()),
            ..RedisTransportConfig::default()
        };
        let connect = || async {
            RedisTransport::connect(config.clone())
                .await
                .expect("Redis must run on 127.0.0.1:6379 for these tests")
        };
        let (busy, done) = (connect().await, connect().await);
        busy.send("job-1", None).await.unwrap();
        let held = busy.receive().await.unwrap();
        done.send("job-2", None).await.unwrap();
        done.receive().await.unwrap().receipt.ack().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;

        let mut conn = busy.shared.commands.clone();
        let removed: usize = FORGET_IDLE_CONSUMERS
            .key(&busy.shared.stream)
            .arg(GROUP)
            .arg(5)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        // The consumer holding job-1 stays, however idle; the other goes.
        assert_eq!(removed, 1);
        held.receipt.ack().await.unwrap();
        let () = conn.del(&busy.shared.stream).await.unwrap();
    }
}
