//! Kafka clients: the idempotent producer, consumer groups and topic creation.
//!
//! Settings that matter for correctness are fixed here (idempotence, `acks=all`, manual
//! commits); the ones that trade latency for load come from configuration.

use std::time::Duration;

use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::{ClientConfig, Message};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

pub fn producer(cfg: &KafkaConfig) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        // Nagle's algorithm with delayed ACKs adds ~40 ms to every small produce.
        .set("socket.nagle.disable", "true")
        .set("max.in.flight.requests.per.connection", "1")
        .set("message.timeout.ms", cfg.message_timeout_ms.to_string())
        .create()?)
}

/// A consumer in `group` that starts from the earliest uncommitted record. With
/// `auto_commit`, offsets stored by the caller are committed in the background;
/// without it the caller commits explicitly.
pub fn consumer(cfg: &KafkaConfig, group: &str, auto_commit: bool) -> Result<StreamConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", auto_commit.to_string())
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .set("enable.partition.eof", "false")
        .set("socket.nagle.disable", "true")
        .create()?)
}

/// Header naming the installation that produced a record (`KAFKA_GROUP_PREFIX`).
pub const INSTALLATION_HEADER: &str = "realtime-installation";

/// Produces one record, tagged with `installation`, and waits for the broker's
/// acknowledgement. An error does not say the record was not written: a delivery that
/// timed out in flight may still have reached the broker.
pub async fn send(
    producer: &FutureProducer,
    installation: &str,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<()> {
    let headers = OwnedHeaders::new().insert(Header {
        key: INSTALLATION_HEADER,
        value: Some(installation),
    });
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(0),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| Error::Kafka(e))
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
/// never produce again (the process must restart).
pub fn fatal_error(producer: &FutureProducer) -> Option<String> {
    producer
        .client()
        .fatal_error()
        .map(|(code, reason)| format!("{code}: {reason}"))
}

/// Creates the topics when missing; an existing topic is left as it is.
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, cfg.topic_partitions, TopicReplication::Fixed(cfg.replication_factor)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(topic) => tracing::info!(%topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Other(format!(
                    "creating topic {topic} failed: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// True when the broker answers a metadata request within `timeout`.
pub async fn reachable(producer: &FutureProducer, timeout: Duration) -> bool {
    let client = producer.clone();
    tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, timeout).is_ok())
        .await
        .unwrap_or(false)
}
