//! Types shared by several kinds: references, deletion policy and status conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A key of a Secret in the resource's own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to another resource in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced resource.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What happens to the external object (topic, index) when the resource is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the external object (default): deleting the resource only stops managing it.
    #[default]
    Retain,
    /// Delete the external object with the resource.
    Delete,
}

/// Condition types and reasons, in one place so that tools can rely on them.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
    pub const DEGRADED: &str = "Degraded";

    pub const REASON_AVAILABLE: &str = "Available";
    pub const REASON_PROGRESSING: &str = "Progressing";
    pub const REASON_MISSING_REFERENCE: &str = "MissingReference";
    pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
    pub const REASON_RECONCILED: &str = "Reconciled";
    /// Another RealtimeCluster, older, uses the same topics on the same broker.
    pub const REASON_TOPIC_CONFLICT: &str = "TopicConflict";

    /// TurnPool: no managed coturn pod has an address yet.
    pub const REASON_NO_SERVERS: &str = "NoServers";
    /// TurnPool: none of its servers is healthy.
    pub const REASON_NO_HEALTHY_SERVERS: &str = "NoHealthyServers";
    /// TurnPool: fewer healthy servers than `minHealthyServers`.
    pub const REASON_NOT_ENOUGH_HEALTHY_SERVERS: &str = "NotEnoughHealthyServers";
    /// TurnPool: every server is healthy (`Degraded=False`).
    pub const REASON_ALL_HEALTHY: &str = "AllHealthy";
    /// TurnPool: some servers are unhealthy (`Degraded=True`).
    pub const REASON_SERVERS_UNHEALTHY: &str = "ServersUnhealthy";

    /// KafkaTopic/MongoIndex: the `realtime.dev/paused` annotation stops reconciling.
    pub const REASON_PAUSED: &str = "Paused";
    /// MongoIndex: an index of the same name (or the same keys) with other options exists;
    /// it is left alone unless `replaceConflicting` is set.
    pub const REASON_CONFLICT: &str = "Conflict";
    /// KafkaTopic/MongoIndex: the cluster's broker or database did not answer.
    pub const REASON_UNREACHABLE: &str = "Unreachable";
    /// KafkaTopic/MongoIndex: the broker or database answered, and refused the change.
    pub const REASON_REFUSED: &str = "Refused";
    /// KafkaTopic/MongoIndex: the external object matches the spec.
    pub const REASON_IN_SYNC: &str = "InSync";
    /// KafkaTopic/MongoIndex: the resource is being deleted and the external object with it.
    pub const REASON_DELETING: &str = "Deleting";
    /// The index is being built (`createIndexes` runs in the background).
    pub const REASON_BUILDING: &str = "Building";
    /// Another resource manages the same object (the same topic on the same brokers);
    /// the older one wins.
    pub const REASON_RESOURCE_CONFLICT: &str = "ResourceConflict";
    /// The server lacks an API the change needs (the message names it).
    pub const REASON_NOT_SUPPORTED: &str = "NotSupported";
    /// The spec asks for fewer partitions than the topic has: Kafka cannot do that.
    pub const REASON_PARTITION_DECREASE: &str = "PartitionDecrease";
    /// The spec asks for another replication factor than the topic has: refused.
    pub const REASON_REPLICATION_FACTOR_CHANGE: &str = "ReplicationFactorChange";
    /// `spec.topicName` changed after the topic was created: refused.
    pub const REASON_TOPIC_NAME_CHANGE: &str = "TopicNameChange";
}

/// On a KafkaTopic or MongoIndex: `"true"` stops reconciling it (a condition says so).
pub const PAUSE_ANNOTATION: &str = "realtime.dev/paused";

/// Event reasons, in one place as the condition reasons are.
pub mod event {
    /// A RealtimeCluster is no longer stalled.
    pub const RECOVERED: &str = "Recovered";
    /// A RealtimeCluster's configuration or a referenced Secret changed: its pods roll.
    pub const CONFIG_CHANGED: &str = "ConfigChanged";
    /// A TurnPool's shared secret was created or rotated.
    pub const SECRET_ROTATED: &str = "SecretRotated";
    /// A TurnPool server became healthy.
    pub const SERVER_HEALTHY: &str = "ServerHealthy";
    /// A TurnPool server became unhealthy.
    pub const SERVER_UNHEALTHY: &str = "ServerUnhealthy";
    /// A MongoIndex's index was created (also: re-created after it was dropped).
    pub const INDEX_CREATED: &str = "IndexCreated";
    /// A MongoIndex's TTL was changed in place (`collMod`).
    pub const INDEX_TTL_CHANGED: &str = "IndexTTLChanged";
    /// A conflicting index was dropped and created as the spec says (`replaceConflicting`).
    pub const INDEX_REPLACED: &str = "IndexReplaced";
    /// A MongoIndex's index was dropped with the resource (`deletionPolicy: Delete`).
    pub const INDEX_DROPPED: &str = "IndexDropped";
    /// Dropping an index failed; the finalizer stays until it succeeds.
    pub const INDEX_DROP_FAILED: &str = "IndexDropFailed";
    /// A MongoIndex's build started (`IndexCreated` follows when it is done).
    pub const INDEX_BUILD_STARTED: &str = "IndexBuildStarted";
    /// A MongoIndex's build was refused by the server.
    pub const INDEX_BUILD_FAILED: &str = "IndexBuildFailed";
    /// A KafkaTopic's topic was created.
    pub const TOPIC_CREATED: &str = "TopicCreated";
    /// An existing topic was taken under management.
    pub const TOPIC_ADOPTED: &str = "TopicAdopted";
    /// Topic configs were set back to the spec (drift) or changed as the spec says.
    pub const TOPIC_CONFIG_CHANGED: &str = "TopicConfigChanged";
    /// Partitions were added as the spec says.
    pub const PARTITIONS_INCREASED: &str = "PartitionsIncreased";
    /// A KafkaTopic's topic was deleted with the resource (`deletionPolicy: Delete`).
    pub const TOPIC_DELETED: &str = "TopicDeleted";
    /// Deleting a topic failed; the finalizer stays until it succeeds.
    pub const TOPIC_DELETE_FAILED: &str = "TopicDeleteFailed";
}

/// A condition with `lastTransitionTime` left for [`merge_conditions`] to decide.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// Builds the new condition list: a condition whose status did not change keeps its
/// `lastTransitionTime` (so a reconcile that changes nothing writes nothing new); a
/// changed or new one gets `now`. Conditions not in `desired` are dropped.
pub fn merge_conditions(
    current: &[Condition],
    desired: Vec<Condition>,
    now: Time,
) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|mut c| {
            c.last_transition_time = match current.iter().find(|old| old.type_ == c.type_) {
                Some(old) if old.status == c.status => old.last_transition_time.clone(),
                _ => now.clone(),
            };
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = merge_conditions(
            &[],
            vec![condition("Ready", false, "Progressing", "waiting", Some(1))],
            at(10),
        );
        assert_eq!(first[0].last_transition_time, at(10));
        let same = merge_conditions(
            &first,
            vec![condition(
                "Ready",
                false,
                "Progressing",
                "still waiting",
                Some(2),
            )],
            at(20),
        );
        assert_eq!(same[0].last_transition_time, at(10), "status unchanged");
        assert_eq!(same[0].message, "still waiting");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge_conditions(
            &same,
            vec![condition("Ready", true, "Available", "ok", Some(2))],
            at(30),
        );
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert_eq!(flipped[0].status, "True");
    }
}
