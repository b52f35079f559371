//! The KafkaTopic controller against the local kube-apiserver and the local Kafka-protocol
//! broker (`scripts/stack.sh`): creation with configs, status as the broker reports it,
//! configs changed behind the operator's back set back, refusals (partition decrease,
//! replication-factor change, topicName change) that change nothing, a broker without
//! CreatePartitions named in a condition, two resources of one topic (the older wins), pause,
//! both deletion policies and a deletion the broker cannot carry out. What the broker holds
//! is read with librdkafka's own admin client (metadata, DescribeConfigs), not through the
//! operator; the drift is made with the operator's IncrementalAlterConfigs call, since
//! librdkafka's safe API only has the AlterConfigs the local broker lacks. The paths the
//! local broker cannot take (adding partitions) are proven against a scripted broker in
//! `controller::kafka_topic::sync`. Needs KUBECONFIG and KAFKA_BROKERS.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{annotate, apply_spec, delete_and_wait, message_of, wait_event, wait_reason};
use common::{Env, eventually, minimal_cluster};
use kube::ResourceExt;
use kube::api::PostParams;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use realtime_operator::controller::kafka_topic::admin::{ConfigOp, RdAdmin, TopicAdmin};
use realtime_operator::crd::{KAFKA_TOPIC_FINALIZER, KafkaTopic, RealtimeCluster};
use serde_json::{Value, json};

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("KAFKA_BROKERS is not set: run `scripts/stack.sh up` and `eval \"$(scripts/stack.sh env)\"` (scripts/test.sh does both)")
    })
}

/// The operator, and a RealtimeCluster `rc` on the stack's broker.
async fn setup(prefix: &str) -> Env {
    let env = Env::start(prefix).await;
    env.minimal_cluster_secret().await;
    let mut rc = minimal_cluster("rc");
    rc.spec.kafka.bootstrap_servers = brokers();
    env.api::<RealtimeCluster>()
        .create(&PostParams::default(), &rc)
        .await
        .unwrap();
    env
}

/// A topic name of this test's own.
fn topic(env: &Env, name: &str) -> String {
    format!("{}.{name}", env.ns)
}

async fn apply(env: &Env, name: &str, spec: Value) {
    apply_spec::<KafkaTopic>(env, name, spec).await;
}

/// Sets `retention.ms` of `topic` to 1000 behind the operator's back; returns the admin
/// client that did it.
async fn drift_retention(topic: &str) -> RdAdmin {
    let admin = RdAdmin::new(&brokers()).unwrap();
    admin
        .alter_configs(
            topic,
            &[ConfigOp::Set("retention.ms".into(), "1000".into())],
        )
        .await
        .unwrap();
    admin
}

/// librdkafka's admin client: the independent reader of what the broker holds.
fn reader() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap()
}

/// (partitions, replication factor) of `topic` in the broker's metadata.
async fn layout(topic: &str) -> Option<(usize, usize)> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = reader()
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap();
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| (t.partitions().len(), t.partitions()[0].replicas().len()))
    })
    .await
    .unwrap()
}

/// The topic's configs as DescribeConfigs reports them.
async fn configs(topic: &str) -> BTreeMap<String, Option<String>> {
    let results = reader()
        .describe_configs(
            [&ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    results
        .into_iter()
        .flat_map(|r| r.unwrap().entries)
        .map(|e| (e.name, e.value))
        .collect()
}

#[tokio::test]
async fn a_topic_is_created_reported_kept_in_line_and_impossible_changes_are_refused() {
    let env = setup("kt-create").await;
    let name = topic(&env, "messages");
    let spec = json!({
        "topicName": name, "partitions": 3, "replicationFactor": 1,
        "config": {"retention.ms": "3600000"}, "clusterRef": {"name": "rc"},
    });
    apply(&env, "messages", spec.clone()).await;
    let kt: KafkaTopic = wait_reason(&env, "messages", "Ready", "True", "InSync").await;
    let status = kt.status.clone().unwrap();
    assert_eq!(status.topic_name.as_deref(), Some(name.as_str()));
    assert_eq!(
        (status.partitions, status.replication_factor),
        (Some(3), Some(1))
    );
    assert_eq!(
        status.config["retention.ms"].value.as_deref(),
        Some("3600000")
    );
    assert!(!status.config["retention.ms"].source.is_empty());
    // The broker agrees, read with another client.
    assert_eq!(layout(&name).await, Some((3, 1)));
    let read = configs(&name).await;
    for (key, value) in &status.config {
        assert_eq!(read.get(key), Some(&value.value), "{key}");
    }
    wait_event(&env, "TopicCreated", "Normal", &name).await;
    // Retain (default): no finalizer.
    assert!(!kt.finalizers().iter().any(|f| f == KAFKA_TOPIC_FINALIZER));

    // A config changed behind the operator's back is set back on the next resync (a
    // metadata change makes that one come at once).
    let admin = drift_retention(&name).await;
    assert_eq!(
        configs(&name).await.get("retention.ms"),
        Some(&Some("1000".to_owned()))
    );
    annotate::<KafkaTopic>(&env, "messages", "test/poke", json!("1")).await;
    eventually("retention.ms set back to the spec's", 30, || async {
        (configs(&name).await.get("retention.ms") == Some(&Some("3600000".to_owned())))
            .then_some(())
    })
    .await;
    wait_event(
        &env,
        "TopicConfigChanged",
        "Normal",
        "set retention.ms=3600000",
    )
    .await;

    // More partitions: this broker has no CreatePartitions, and the condition says so.
    let mut more = spec.clone();
    more["partitions"] = json!(6);
    apply(&env, "messages", more).await;
    let kt: KafkaTopic = wait_reason(&env, "messages", "Stalled", "True", "NotSupported").await;
    let message = message_of(&kt, "Stalled");
    assert!(message.contains("CreatePartitions"), "{message}");
    assert_eq!(layout(&name).await, Some((3, 1)));

    // Fewer partitions, another replication factor: refused, nothing changed.
    let mut fewer = spec.clone();
    fewer["partitions"] = json!(2);
    fewer["config"]["retention.ms"] = json!("7200000");
    apply(&env, "messages", fewer).await;
    let kt: KafkaTopic =
        wait_reason(&env, "messages", "Stalled", "True", "PartitionDecrease").await;
    assert!(message_of(&kt, "Stalled").contains("has 3"));
    wait_event(&env, "PartitionDecrease", "Warning", &name).await;
    let mut replicated = spec.clone();
    replicated["replicationFactor"] = json!(3);
    apply(&env, "messages", replicated).await;
    wait_reason::<KafkaTopic>(
        &env,
        "messages",
        "Stalled",
        "True",
        "ReplicationFactorChange",
    )
    .await;
    assert_eq!(layout(&name).await, Some((3, 1)));
    assert_eq!(
        configs(&name).await.get("retention.ms"),
        Some(&Some("3600000".to_owned())),
        "a refused spec changes nothing, not even what it could"
    );

    // Another topicName: refused (Kafka cannot rename), no new topic.
    let mut renamed = spec.clone();
    renamed["topicName"] = json!(format!("{name}.renamed"));
    apply(&env, "messages", renamed).await;
    let kt: KafkaTopic = wait_reason(&env, "messages", "Stalled", "True", "TopicNameChange").await;
    assert!(message_of(&kt, "Stalled").contains("cannot rename"));
    assert_eq!(layout(&format!("{name}.renamed")).await, None);

    // Back to the spec: Ready again.
    apply(&env, "messages", spec).await;
    wait_reason::<KafkaTopic>(&env, "messages", "Ready", "True", "InSync").await;

    // Retain: the resource goes at once, the topic stays.
    delete_and_wait::<KafkaTopic>(&env, "messages").await;
    assert_eq!(layout(&name).await, Some((3, 1)));
    let _ = admin.delete(&name).await;
    env.stop().await;
}

#[tokio::test]
async fn the_older_resource_wins_pause_stops_and_delete_policy_deletes_the_topic() {
    let env = setup("kt-delete").await;
    let name = topic(&env, "events");
    let spec = json!({
        "topicName": name, "partitions": 1, "replicationFactor": 1,
        "deletionPolicy": "Delete", "clusterRef": {"name": "rc"},
    });
    apply(&env, "first", spec.clone()).await;
    let kt: KafkaTopic = wait_reason(&env, "first", "Ready", "True", "InSync").await;
    assert!(kt.finalizers().iter().any(|f| f == KAFKA_TOPIC_FINALIZER));

    // A second resource of the same topic on the same broker (here named by address, not
    // by cluster): it gives way to the older one, and says to which.
    let mut second = spec.clone();
    second.as_object_mut().unwrap().remove("clusterRef");
    second["bootstrapServers"] = json!(brokers());
    second["partitions"] = json!(2);
    apply(&env, "second", second).await;
    let kt: KafkaTopic = wait_reason(&env, "second", "Stalled", "True", "ResourceConflict").await;
    assert!(message_of(&kt, "Stalled").contains("first"));
    // Its deletion (with Delete) leaves the older one's topic alone.
    delete_and_wait::<KafkaTopic>(&env, "second").await;
    assert_eq!(layout(&name).await, Some((1, 1)));

    // Paused: nothing is repaired, and a condition says why.
    annotate::<KafkaTopic>(&env, "first", "realtime.dev/paused", json!("true")).await;
    wait_reason::<KafkaTopic>(&env, "first", "Reconciling", "False", "Paused").await;
    drift_retention(&name).await;
    let mut changed = spec.clone();
    changed["config"] = json!({"retention.ms": "60000"});
    apply(&env, "first", changed).await;
    eventually("the pause to be reported for generation 2", 30, || async {
        let kt = env.api::<KafkaTopic>().get("first").await.unwrap();
        (kt.status?.observed_generation == Some(2)).then_some(())
    })
    .await;
    assert_eq!(
        configs(&name).await.get("retention.ms"),
        Some(&Some("1000".to_owned())),
        "not changed while paused"
    );
    annotate::<KafkaTopic>(&env, "first", "realtime.dev/paused", json!(null)).await;
    eventually("the spec applied after the pause", 30, || async {
        (configs(&name).await.get("retention.ms") == Some(&Some("60000".to_owned()))).then_some(())
    })
    .await;

    // Delete: the topic goes with the resource.
    delete_and_wait::<KafkaTopic>(&env, "first").await;
    eventually("the topic to be deleted", 30, || async {
        layout(&name).await.is_none().then_some(())
    })
    .await;
    wait_event(&env, "TopicDeleted", "Normal", &name).await;

    // Brokers that cannot be reached: the resource stays in Terminating with a condition
    // and an Event that say how to let it go, and goes once the policy is Retain.
    let unreachable = json!({
        "topicName": topic(&env, "nowhere"), "partitions": 1, "replicationFactor": 1,
        "deletionPolicy": "Delete", "bootstrapServers": "127.0.0.1:9",
    });
    apply(&env, "nowhere", unreachable.clone()).await;
    wait_reason::<KafkaTopic>(&env, "nowhere", "Reconciling", "True", "Unreachable").await;
    eventually("the finalizer", 30, || async {
        let kt = env.api::<KafkaTopic>().get("nowhere").await.unwrap();
        kt.finalizers()
            .iter()
            .any(|f| f == KAFKA_TOPIC_FINALIZER)
            .then_some(())
    })
    .await;
    env.api::<KafkaTopic>()
        .delete("nowhere", &Default::default())
        .await
        .unwrap();
    let note = wait_event(
        &env,
        "TopicDeleteFailed",
        "Warning",
        "deletionPolicy: Retain",
    )
    .await;
    assert!(note.contains(KAFKA_TOPIC_FINALIZER), "{note}");
    wait_reason::<KafkaTopic>(&env, "nowhere", "Ready", "False", "Deleting").await;
    let mut retain = unreachable;
    retain["deletionPolicy"] = json!("Retain");
    apply(&env, "nowhere", retain).await;
    eventually(
        "the resource to go once it retains the topic",
        30,
        || async {
            let gone = env.api::<KafkaTopic>().get_opt("nowhere").await.unwrap();
            gone.is_none().then_some(())
        },
    )
    .await;
    env.stop().await;
}
