//! Kafka behaviour that matters for correctness: topics get the configured replication
//! factor (against the real broker of `scripts/stack.sh`), and a producer that hit a
//! fatal error is reported (librdkafka's in-process mock cluster stands in for a broker
//! that refuses the idempotent producer, which the local broker cannot be made to do).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use realtime::config::Config;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("KAFKA_BROKERS is not set: run `scripts/stack.sh up` and `eval \"$(scripts/stack.sh env)\"` (scripts/test.sh does both)")
    })
}

fn config(args: &[&str]) -> Config {
    let mut full = vec!["realtime", "--jwt-secret", "s"];
    full.extend_from_slice(args);
    Config::try_parse_from(full).unwrap()
}

#[tokio::test]
async fn topics_are_created_with_the_configured_replication_factor() {
    let topic = format!("it.rf.{}", uuid::Uuid::new_v4().simple());
    let cfg = config(&[
        "--kafka-brokers",
        &brokers(),
        "--kafka-replication-factor",
        "2",
    ]);
    realtime::kafka::ensure_topics(&cfg.kafka, &[&topic])
        .await
        .unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let topic_for_lookup = topic.clone();
    let replicas = tokio::task::spawn_blocking(move || {
        let md = consumer
            .fetch_metadata(Some(&topic_for_lookup), Duration::from_secs(5))
            .unwrap();
        md.topics()[0]
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(
        replicas,
        vec![2; 3],
        "{topic}: every partition has 2 replicas"
    );
}

#[tokio::test]
async fn a_producer_whose_id_the_broker_refuses_is_replaced_and_the_record_sent() {
    let cluster = MockCluster::new(1).unwrap();
    // The first idempotent producer cannot get a producer id: librdkafka gives up on it
    // for good (a fatal error). Only the next request fails, so a new producer works.
    cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED],
    );
    let cfg = config(&["--kafka-brokers", &cluster.bootstrap_servers()]);
    let raw = realtime::kafka::producer(&cfg.kafka).unwrap();
    // The raw producer shows what /healthz reports while a producer is in that state.
    let first = raw
        .send(
            rdkafka::producer::FutureRecord::to("t")
                .key("k")
                .payload("v"),
            Duration::from_secs(0),
        )
        .await;
    assert!(first.is_err());
    assert!(
        realtime::kafka::fatal_error(&raw).is_some(),
        "the fatal error is visible"
    );
    cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED],
    );
    let healing = realtime::kafka::Producer::new(&cfg.kafka, "install").unwrap();
    healing.send("t", "k", b"v").await.unwrap();
    assert_eq!(
        healing.rebuilds(),
        1,
        "replaced once, then the record went through"
    );
    assert!(healing.fatal_error().is_none());
}
