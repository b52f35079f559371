//! KafkaTopic: a topic created and kept in shape through the Kafka Admin API.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DeletionPolicy, LocalRef};

/// A Kafka topic. Drift is repaired (configs reverted, partitions increased); a partition
/// decrease, a replication-factor change or a `topicName` change is refused with a
/// condition, never applied. The brokers are those of `clusterRef`, or `bootstrapServers`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "realtime.dev",
    version = "v1alpha1",
    kind = "KafkaTopic",
    namespaced,
    shortname = "kt",
    status = "KafkaTopicStatus",
    printcolumn = r#"{"name":"Topic","type":"string","jsonPath":".spec.topicName"}"#,
    printcolumn = r#"{"name":"Partitions","type":"integer","jsonPath":".spec.partitions"}"#,
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterRef.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("anyOf" = [{"required": ["clusterRef"]}, {"required": ["bootstrapServers"]}]))]
pub struct KafkaTopicSpec {
    /// Topic name in Kafka (may differ from the resource name).
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic_name: String,
    /// Number of partitions; can grow, never shrink.
    #[schemars(range(min = 1, max = 100000))]
    pub partitions: i32,
    /// Replication factor; fixed once the topic exists.
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i32,
    /// Topic configuration (e.g. `retention.ms`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// `Retain` (default) keeps the topic when the resource is deleted; `Delete` deletes it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// The RealtimeCluster whose Kafka hosts the topic (its `spec.kafka.bootstrapServers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<LocalRef>,
    /// Bootstrap servers (`host:port`, comma-separated) of a Kafka cluster that no
    /// RealtimeCluster names; used instead of `clusterRef`'s when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub bootstrap_servers: Option<String>,
}

/// Observed state of a KafkaTopic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTopicStatus {
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The topic's name in Kafka, once created or adopted (a later `spec.topicName`
    /// change is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    /// Partitions the topic has in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replication factor the topic has in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// The topic's effective configuration as the broker reports it (`DescribeConfigs`),
    /// with where each value comes from; sensitive values are left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, ConfigValue>,
}

/// One configuration value of a topic, as the broker reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigValue {
    /// The value (absent when unset or sensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Where the value comes from: `DynamicTopic` (set on the topic), `DynamicBroker`,
    /// `DynamicDefaultBroker`, `StaticBroker` (broker configuration), `Default`, `Unknown`.
    pub source: String,
}

/// The finalizer a KafkaTopic carries only while `deletionPolicy: Delete` (so a `Retain`
/// resource never waits in Terminating).
pub const KAFKA_TOPIC_FINALIZER: &str = "realtime.dev/delete-topic";
