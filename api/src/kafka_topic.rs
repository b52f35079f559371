//! KafkaTopic: a topic created and kept in shape through the Kafka Admin API.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DeletionPolicy, LocalRef};

/// A Kafka topic. Drift is repaired (configs reverted, partitions increased); a partition
/// decrease or a replication-factor change is refused with a condition, never applied.
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
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
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
    /// The RealtimeCluster whose Kafka hosts the topic.
    pub cluster_ref: LocalRef,
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
    /// Partitions the topic has in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
}
