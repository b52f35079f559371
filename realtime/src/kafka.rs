//! Kafka clients: the idempotent producer, consumer groups and topic creation.
//!
//! Settings that matter for correctness are fixed here (idempotence, `acks=all`, manual
//! commits); the ones that trade latency for load come from configuration.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, Message};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// A client configuration for the brokers, with librdkafka's debug contexts if asked for.
fn client(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    if !cfg.debug.is_empty() {
        c.set("debug", &cfg.debug);
    }
    c
}

pub fn producer(cfg: &KafkaConfig) -> Result<FutureProducer> {
    Ok(client(cfg)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        // Nagle's algorithm with delayed ACKs adds ~40 ms to every small produce.
        .set("socket.nagle.disable", "true")
        .set("max.in.flight.requests.per.connection", "1")
        .set("message.timeout.ms", cfg.message_timeout_ms.to_string())
        .create()?)
}

/// Whether each consumer group of this process has taken it in (given it an assignment,
/// possibly of no partition) since its consumer started: `/readyz` waits for all of them,
/// so a new pod only counts as ready once its group has re-formed around it, and a
/// rolling update stops an old member only then. (A later rebalance does not make a
/// member unready: every member is mid-rebalance at the same moment.)
#[derive(Clone, Default)]
pub struct Membership(Arc<Mutex<Vec<GroupFlag>>>);

/// A consumer group and whether it has taken this process in.
type GroupFlag = (String, Arc<AtomicBool>);

impl Membership {
    /// The flag of `group`, registered (not joined) on first use.
    pub fn flag(&self, group: &str) -> Arc<AtomicBool> {
        let mut groups = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, f)) = groups.iter().find(|(g, _)| g == group) {
            return f.clone();
        }
        let f = Arc::new(AtomicBool::new(false));
        groups.push((group.to_owned(), f.clone()));
        f
    }

    /// Every registered group and whether it has taken this process in.
    pub fn snapshot(&self) -> Vec<(String, bool)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(g, f)| (g.clone(), f.load(Ordering::Acquire)))
            .collect()
    }
}

/// Knows whether the consumer's group is between a revocation and the next assignment
/// (a rebalance in progress), for [`leave_when_settled`], and tells [`Membership`] when
/// the group first took the consumer in.
pub struct GroupContext {
    assigned: AtomicBool,
    joined: Arc<AtomicBool>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_)) {
            self.assigned.store(false, Ordering::Release);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_)) {
            self.assigned.store(true, Ordering::Release);
            self.joined.store(true, Ordering::Release);
        }
    }
}

/// A member of a consumer group.
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// A consumer in `group` that starts from the earliest uncommitted record. With
/// `auto_commit`, offsets stored by the caller are committed in the background;
/// without it the caller commits explicitly.
pub fn consumer(
    cfg: &KafkaConfig,
    group: &str,
    auto_commit: bool,
    membership: &Membership,
) -> Result<GroupConsumer> {
    let joined = membership.flag(group);
    joined.store(false, Ordering::Release);
    Ok(client(cfg)
        .set("group.id", group)
        .set("enable.auto.commit", auto_commit.to_string())
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            HEARTBEAT
                .as_millis()
                .min(u128::from(cfg.session_timeout_ms / 3))
                .to_string(),
        )
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .set("enable.partition.eof", "false")
        .set("socket.nagle.disable", "true")
        .create_with_context(GroupContext {
            assigned: AtomicBool::new(false),
            joined,
        })?)
}

/// Heartbeats of group members: a member learns of a rebalance at its next heartbeat.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Before a member leaves its group (the consumer is dropped), lets a rebalance in
/// progress finish, for at most `within`: the member keeps polling until it has held an
/// assignment for one and a half heartbeats (a rebalance started by a member that just
/// joined is only learnt at the next heartbeat). Leaving mid-rebalance costs every broker
/// a second rebalance, and wedges the group for good on some Kafka-compatible brokers
/// (tansu 0.6 keeps a leader that left while the group was forming, so the others never
/// get an assignment). Records received meanwhile are dropped without storing their
/// offsets: the group delivers them again to their next owner.
pub async fn leave_when_settled(consumer: &GroupConsumer, within: Duration) {
    let started = tokio::time::Instant::now();
    let deadline = started + within;
    let mut settled_since = None;
    let mut rebalanced = false;
    loop {
        let now = tokio::time::Instant::now();
        if consumer.context().assigned.load(Ordering::Acquire) {
            let since = *settled_since.get_or_insert(now);
            if now.duration_since(since) >= HEARTBEAT * 3 / 2 {
                if rebalanced {
                    tracing::info!(
                        waited_ms = now.duration_since(started).as_millis(),
                        "left the consumer group after its rebalance finished"
                    );
                }
                return;
            }
        } else {
            settled_since = None;
            rebalanced = true;
        }
        if now >= deadline {
            tracing::warn!(
                "left the consumer group while it was still rebalancing ({} ms)",
                within.as_millis()
            );
            return;
        }
        // Polling serves the heartbeats' outcomes and the rebalance callbacks.
        let _ = tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await;
    }
}

/// Header naming the installation that produced a record (`KAFKA_GROUP_PREFIX`).
pub const INSTALLATION_HEADER: &str = "realtime-installation";

/// The idempotent producer of a process, which heals itself: an idempotent producer
/// whose producer id the broker no longer accepts (fenced, unknown, out of sequence — after
/// a delivery timed out in flight, a broker restart, or a fatal error) can never produce
/// again, so it is replaced by a new one and the record is sent once more. A new producer
/// id loses librdkafka's deduplication of retries in flight, which costs nothing here:
/// every record carries its message id and storage is keyed by it.
pub struct Producer {
    cfg: KafkaConfig,
    installation: String,
    current: std::sync::RwLock<FutureProducer>,
    rebuilds: std::sync::atomic::AtomicU64,
}

/// Errors after which the producer id is useless.
fn needs_new_producer(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::Fatal
        )
    )
}

impl Producer {
    pub fn new(cfg: &KafkaConfig, installation: &str) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            installation: installation.to_owned(),
            current: std::sync::RwLock::new(producer(cfg)?),
            rebuilds: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn get(&self) -> FutureProducer {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many times the producer was replaced.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replaces `broken` unless another caller replaced it already.
    fn rebuild(&self, broken: &FutureProducer) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !std::ptr::eq(current.client().native_ptr(), broken.client().native_ptr()) {
            return;
        }
        match producer(&self.cfg) {
            Ok(fresh) => {
                *current = fresh;
                self.rebuilds
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    "the broker no longer accepts the producer's id; replaced the producer"
                );
            }
            Err(e) => tracing::error!(error = %e, "replacing a broken producer failed"),
        }
    }

    /// Produces one record, tagged with this installation (and `extra` headers), and
    /// waits for the broker's acknowledgement. An error does not say the record was not
    /// written: a delivery that timed out in flight may still have reached the broker.
    pub async fn send_with(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: &[u8],
        extra: &[(&str, &str)],
    ) -> Result<()> {
        let mut last = None;
        for _ in 0..2 {
            let producer = self.get();
            let mut headers = OwnedHeaders::new().insert(Header {
                key: INSTALLATION_HEADER,
                value: Some(self.installation.as_str()),
            });
            for (k, v) in extra {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(*v),
                });
            }
            let mut record = FutureRecord::to(topic).payload(payload).headers(headers);
            if let Some(key) = key {
                record = record.key(key);
            }
            match producer.send(record, Duration::from_secs(0)).await {
                Ok(_) => return Ok(()),
                Err((e, _))
                    if needs_new_producer(&e) || producer.client().fatal_error().is_some() =>
                {
                    self.rebuild(&producer);
                    last = Some(e);
                }
                Err((e, _)) => return Err(Error::Kafka(e)),
            }
        }
        Err(Error::Kafka(last.unwrap_or(KafkaError::Canceled)))
    }

    pub async fn send(&self, topic: &str, key: &str, payload: &[u8]) -> Result<()> {
        self.send_with(topic, Some(key), payload, &[]).await
    }

    /// The current producer's fatal error, if any (it is replaced at the next send).
    pub fn fatal_error(&self) -> Option<String> {
        fatal_error(&self.get())
    }

    /// True when the broker answers a metadata request within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        reachable(&self.get(), timeout).await
    }

    /// Waits up to `timeout` for records in flight (blocking: call off the runtime).
    pub fn flush(&self, timeout: Duration) -> bool {
        self.get().flush(timeout).is_ok()
    }
}

/// True when `msg` was produced by another installation (records without the header
/// come from versions before it and are taken as ours).
pub fn foreign(msg: &impl Message, installation: &str) -> bool {
    msg.headers()
        .and_then(|h| h.iter().find(|h| h.key == INSTALLATION_HEADER))
        .and_then(|h| h.value)
        .is_some_and(|v| v != installation.as_bytes())
}

/// The producer's fatal error, if it has one: an idempotent producer that hit one can
/// never produce again.
pub fn fatal_error(producer: &FutureProducer) -> Option<String> {
    producer
        .client()
        .fatal_error()
        .map(|(code, reason)| format!("{code}: {reason}"))
}

/// Creates the topics when missing; an existing topic is left as it is.
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(cfg).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                cfg.topic_partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(topic) => tracing::info!(%topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::TopicCreation {
                    topic,
                    code: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

async fn reachable(producer: &FutureProducer, timeout: Duration) -> bool {
    let client = producer.clone();
    tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, timeout).is_ok())
        .await
        .unwrap_or(false)
}
