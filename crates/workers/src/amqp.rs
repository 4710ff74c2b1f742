//! A job transport on RabbitMQ (AMQP 0-9-1, through lapin).
//!
//! Job ids are persistent messages on the durable queue `{prefix}.jobs`,
//! published with publisher confirms (`send` returns once the broker has
//! taken responsibility for the message; `send_many` publishes a batch and
//! then awaits its confirms together) and consumed with manual acks, at
//! most twice `concurrency` unacknowledged per transport (the prefetch). A worker
//! that dies without acknowledging loses its connection, and the broker puts
//! its unacknowledged messages back on the queue for the other workers.
//!
//! **Delays.** RabbitMQ expires a message only when it reaches the head of
//! its queue, so a single delay queue with per-message TTLs would hold a 1 s
//! retry behind a 10 min one. Delayed ids therefore go to one queue per
//! power-of-two bucket: `{prefix}.jobs.delayed.{2^k}ms` holds the delays in
//! [2^k, 2^(k+1)) ms, each message with its exact delay as its expiration,
//! and dead-letters expired messages to `{prefix}.jobs`. Everything ahead of
//! a message in its bucket was sent earlier with a delay under twice its
//! own, so a delayed job is never late by more than its own delay, and in
//! practice hardly at all (retries with the same backoff share a bucket and
//! expire in send order). At most 32 such queues exist per prefix.
//!
//! **Leases.** [`Receipt::keep_alive`] does nothing: a delivery stays with
//! its consumer for as long as the connection lives. RabbitMQ's
//! `consumer_timeout` (30 min by default) is the only limit: a delivery left
//! unacknowledged longer makes the broker close the channel and deliver the
//! job again, so jobs must finish within it (raise it in rabbitmq.conf for
//! longer ones).
//!
//! **Connection loss.** lapin's automatic recovery is left off: after any
//! failure the session (connection and channels) is thrown away and the next
//! call opens a new one. `send` fails fast with [`Error::Unavailable`];
//! `receive` retries with backoff and logs each failure. Deliveries of a
//! lost session can no longer be acknowledged; the broker has requeued them.
//!
//! **Runtime.** lapin 4 runs on the caller's tokio runtime through async-rs
//! (feature `tokio`; default features off, so no TLS: `amqps://` needs the
//! `rustls` feature).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    PublisherConfirm,
};
use tokio::sync::OnceCell;

use switchboard_core::jobs::{Delivery, JobTransport, Receipt};
use switchboard_core::{Error, Result};

use crate::reconnect::keep_receiving;

/// AMQP delivery mode of messages written to disk.
const PERSISTENT: u8 = 2;

/// How long opening a connection may take before the broker counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a publish may wait for its confirm: a broker under a resource
/// alarm blocks publishers instead of refusing them.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of an [`AmqpTransport`].
#[derive(Debug, Clone)]
pub struct AmqpTransportConfig {
    /// Where RabbitMQ is: `amqp://user:password@host:port/vhost` (the
    /// default vhost `/` is written `%2f`).
    pub url: String,
    /// Prefix of every queue name, so that deployments (or tests) can share
    /// a broker.
    pub prefix: String,
    /// The number of jobs the worker holds at once
    /// (`WorkerConfig::most_taken`: running and prefetched); the transport
    /// holds twice as many deliveries unacknowledged at most (the prefetch:
    /// those jobs, and as many finished ones whose outcome is being
    /// recorded).
    pub concurrency: u16,
}

impl Default for AmqpTransportConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            prefix: "switchboard".to_owned(),
            concurrency: 4,
        }
    }
}

/// Carries job ids through RabbitMQ queues; see the module documentation.
pub struct AmqpTransport {
    config: AmqpTransportConfig,
    /// The open session, if any; replaced after a failure.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

/// One connection to the broker and its channels.
struct Session {
    connection: Connection,
    /// Declares queues and publishes, in confirm mode.
    publisher: Channel,
    /// `{prefix}.jobs`.
    jobs_queue: String,
    prefix: String,
    /// The delay buckets (their k) declared on this connection.
    declared_buckets: Mutex<HashSet<u32>>,
    /// The consuming channel and its consumer, opened by the first receive.
    consumer: OnceCell<(Channel, tokio::sync::Mutex<Consumer>)>,
}

/// A delivered message: acknowledging removes it from the queue.
struct AmqpReceipt {
    acker: Acker,
}

impl AmqpTransport {
    /// Connects to RabbitMQ and declares the job queue.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if the broker cannot be reached,
    /// [`Error::Internal`] if it refuses the credentials or the queue.
    pub async fn connect(config: AmqpTransportConfig) -> Result<Self> {
        let session = Session::open(&config).await?;
        Ok(Self {
            config,
            session: tokio::sync::Mutex::new(Some(Arc::new(session))),
        })
    }

    /// Closes the connection: the broker requeues every delivery not yet
    /// acknowledged at once. For a graceful shutdown; dropping the transport
    /// has the same effect, later.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if the connection was already lost.
    pub async fn close(&self) -> Result<()> {
        let Some(session) = self.session.lock().await.take() else {
            return Ok(());
        };
        session
            .connection
            .close(200, "shutting down".into())
            .await
            .map_err(amqp_error)?;
        Ok(())
    }

    /// The open session, or a new one if there is none or it was lost.
    async fn session(&self) -> Result<Arc<Session>> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref().filter(|session| session.is_open()) {
            return Ok(Arc::clone(session));
        }
        let session = Arc::new(Session::open(&self.config).await?);
        *current = Some(Arc::clone(&session));
        tracing::info!(prefix = %self.config.prefix, "connected to rabbitmq");
        Ok(session)
    }

    /// The consumer's prefetch: twice the concurrency, so that while the
    /// worker records the outcomes of finished jobs (their deliveries are
    /// acknowledged only once the outcome is committed) as many new ones are
    /// already at hand.
    fn prefetch(&self) -> u16 {
        self.config.concurrency.saturating_mul(2)
    }

    /// Throws `failed` away, so that the next call opens a new session.
    async fn forget(&self, failed: &Arc<Session>) {
        let mut current = self.session.lock().await;
        if current
            .as_ref()
            .is_some_and(|session| Arc::ptr_eq(session, failed))
        {
            *current = None;
        }
    }
}

impl Session {
    async fn open(config: &AmqpTransportConfig) -> Result<Self> {
        let properties = ConnectionProperties::default().with_connection_name(
            format!(
                "switchboard jobs {} (pid {})",
                config.prefix,
                std::process::id()
            )
            .into(),
        );
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(&config.url, properties),
        )
        .await
        .map_err(|_| Error::Unavailable("rabbitmq did not answer within 10 s".to_owned()))?
        .map_err(amqp_error)?;
        let publisher = connection.create_channel().await.map_err(amqp_error)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp_error)?;
        let jobs_queue = format!("{}.jobs", config.prefix);
        publisher
            .queue_declare(jobs_queue.as_str().into(), durable(), FieldTable::default())
            .await
            .map_err(amqp_error)?;
        Ok(Self {
            connection,
            publisher,
            jobs_queue,
            prefix: config.prefix.clone(),
            declared_buckets: Mutex::new(HashSet::new()),
            consumer: OnceCell::new(),
        })
    }

    fn is_open(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    /// Publishes `job_id` to the job queue, or to its delay bucket, and
    /// waits for the broker's confirm.
    async fn publish(&self, job_id: &str, delay_ms: Option<u32>) -> Result<()> {
        let (queue, confirm) = self.start_publish(job_id, delay_ms).await?;
        confirmed(&queue, confirm.await.map_err(amqp_error)?)
    }

    /// Publishes every one of `job_ids` to the job queue, then waits for
    /// all their confirms: the publishes are pipelined, not one round trip
    /// each.
    async fn publish_many(&self, job_ids: &[String]) -> Result<()> {
        let mut confirms = Vec::with_capacity(job_ids.len());
        for job_id in job_ids {
            confirms.push(self.start_publish(job_id, None).await?);
        }
        for (queue, confirm) in confirms {
            confirmed(&queue, confirm.await.map_err(amqp_error)?)?;
        }
        Ok(())
    }

    /// Publishes `job_id` (persistent, mandatory) to the job queue or its
    /// delay bucket; returns the queue and the confirm still to come.
    async fn start_publish(
        &self,
        job_id: &str,
        delay_ms: Option<u32>,
    ) -> Result<(String, PublisherConfirm)> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(job_id.into());
        let queue = match delay_ms {
            Some(delay_ms) => {
                properties = properties.with_expiration(delay_ms.to_string().into());
                self.delay_queue(delay_ms).await?
            }
            None => self.jobs_queue.clone(),
        };
        let confirm = self
            .publisher
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                // Returned, not silently dropped, if the queue is missing.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                job_id.as_bytes(),
                properties,
            )
            .await
            .map_err(amqp_error)?;
        Ok((queue, confirm))
    }

    /// The delay bucket queue of `delay_ms`, declared on first use.
    async fn delay_queue(&self, delay_ms: u32) -> Result<String> {
        let bucket = delay_ms.max(1).ilog2();
        let name = format!("{}.jobs.delayed.{}ms", self.prefix, 1u64 << bucket);
        let declared = self
            .declared_buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&bucket);
        if !declared {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(self.jobs_queue.as_str().into()),
            );
            self.publisher
                .queue_declare(name.as_str().into(), durable(), arguments)
                .await
                .map_err(amqp_error)?;
            self.declared_buckets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(bucket);
        }
        Ok(name)
    }

    /// Waits for the next message of the job queue, starting the consumer
    /// on the first call, then takes up to `max` in all of those the
    /// consumer already holds (prefetched), without waiting for more.
    async fn next_deliveries(&self, prefetch: u16, max: usize) -> Result<Vec<Delivery>> {
        let (_channel, consumer) = self
            .consumer
            .get_or_try_init(|| self.start_consuming(prefetch))
            .await?;
        let mut consumer = consumer.lock().await;
        // Cancel-safe: a message the stream has not yielded stays in it.
        let mut deliveries = vec![job_delivery(consumer.next().await)?];
        while deliveries.len() < max {
            match consumer.next().now_or_never() {
                Some(next) => deliveries.push(job_delivery(next)?),
                None => break,
            }
        }
        Ok(deliveries)
    }

    async fn start_consuming(
        &self,
        prefetch: u16,
    ) -> Result<(Channel, tokio::sync::Mutex<Consumer>)> {
        let channel = self.connection.create_channel().await.map_err(amqp_error)?;
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(amqp_error)?;
        let consumer = channel
            .basic_consume(
                self.jobs_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_error)?;
        Ok((channel, tokio::sync::Mutex::new(consumer)))
    }
}

#[async_trait]
impl JobTransport for AmqpTransport {
    async fn send(&self, job_id: &str, not_before: Option<DateTime<Utc>>) -> Result<()> {
        let delay_ms = not_before
            .map(|due| (due - Utc::now()).num_milliseconds())
            .filter(|&ms| ms > 0)
            // RabbitMQ's largest TTL: about 49 days.
            .map(|ms| u32::try_from(ms).unwrap_or(u32::MAX));
        let session = self.session().await?;
        let published = tokio::time::timeout(CONFIRM_TIMEOUT, session.publish(job_id, delay_ms))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(
                    "rabbitmq did not confirm the job id within 10 s".to_owned(),
                ))
            });
        if published.is_err() {
            self.forget(&session).await;
        }
        published
    }

    async fn receive(&self) -> Result<Delivery> {
        let mut one = self.receive_many(1).await?;
        Ok(one.swap_remove(0))
    }

    /// Publishes every id, then awaits all the confirms together.
    async fn send_many(&self, job_ids: &[String]) -> Result<()> {
        let session = self.session().await?;
        let published = tokio::time::timeout(CONFIRM_TIMEOUT, session.publish_many(job_ids))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(
                    "rabbitmq did not confirm the job ids within 10 s".to_owned(),
                ))
            });
        if published.is_err() {
            self.forget(&session).await;
        }
        published
    }

    async fn receive_many(&self, max: usize) -> Result<Vec<Delivery>> {
        keep_receiving("rabbitmq", || async {
            let session = self.session().await?;
            let received = session.next_deliveries(self.prefetch(), max).await;
            if received.is_err() {
                self.forget(&session).await;
            }
            received.map(Some)
        })
        .await
    }

    fn name(&self) -> &'static str {
        "amqp"
    }
}

/// The job delivery of what the consumer yielded.
fn job_delivery(next: Option<lapin::Result<lapin::message::Delivery>>) -> Result<Delivery> {
    match next {
        Some(Ok(delivery)) => Ok(Delivery {
            job_id: String::from_utf8_lossy(&delivery.data).into_owned(),
            receipt: Box::new(AmqpReceipt {
                acker: delivery.acker,
            }),
        }),
        Some(Err(err)) => Err(amqp_error(err)),
        None => Err(Error::Unavailable(
            "rabbitmq cancelled the job consumer".to_owned(),
        )),
    }
}

#[async_trait]
impl Receipt for AmqpReceipt {
    /// # Errors
    ///
    /// [`Error::FailedPrecondition`] if the connection the job came on is
    /// gone: the broker has requeued it and will deliver it again.
    async fn ack(&self) -> Result<()> {
        if self
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(amqp_error)?
        {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(
                "the connection this job came on is gone; it will be delivered again".to_owned(),
            ))
        }
    }

    /// Nothing to do: see the module documentation on `consumer_timeout`.
    async fn keep_alive(&self) -> Result<()> {
        Ok(())
    }
}

/// What the broker's `confirmation` of a publish to `queue` means.
fn confirmed(queue: &str, confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(Error::Unavailable(format!(
            "rabbitmq has no queue {queue}; it is declared again on the next attempt"
        ))),
        Confirmation::Nack(_) => Err(Error::Unavailable(
            "rabbitmq refused to store the job id; try again".to_owned(),
        )),
        Confirmation::NotRequested => Err(Error::internal("publisher confirms are off")),
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// RabbitMQ failures: a lost connection or channel (including the broker
/// closing it with CONNECTION_FORCED on shutdown) is [`Error::Unavailable`];
/// a refused login, a queue declared with other arguments or a parse error
/// is a configuration problem or a bug and [`Error::Internal`].
fn amqp_error(err: lapin::Error) -> Error {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError};
    let permanent = match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => !matches!(
            amqp.kind(),
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED)
        ),
        lapin::ErrorKind::ParsingError(_)
        | lapin::ErrorKind::SerialisationError(_)
        | lapin::ErrorKind::InvalidProtocolVersion(_)
        | lapin::ErrorKind::AuthProviderError(_)
        | lapin::ErrorKind::NoDefaultRuntime => true,
        _ => false,
    };
    if permanent {
        return Error::Internal(Box::new(err));
    }
    tracing::warn!(error = %err, "rabbitmq unavailable");
    Error::Unavailable("rabbitmq is unavailable; try again".to_owned())
}
