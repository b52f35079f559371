//! A RealtimeCluster's topics and indexes as KafkaTopic and MongoIndex children, named
//! `<cluster>-<id>` so `kubectl get kt,mi` shows whose they are. They keep the topic or
//! index when the cluster goes (`deletionPolicy: Retain`): messages outlive an install.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::meta;
use crate::crd::{
    DEFAULT_INDEXES, DeletionPolicy, IndexKey, KafkaTopic, KafkaTopicSpec, LocalRef, MongoIndex,
    MongoIndexSpec, RealtimeCluster, default_topics,
};

/// `app.kubernetes.io/component` of the KafkaTopic children.
pub const TOPIC_COMPONENT: &str = "topic";
/// `app.kubernetes.io/component` of the MongoIndex children.
pub const INDEX_COMPONENT: &str = "index";

fn cluster_ref(rc: &RealtimeCluster) -> LocalRef {
    LocalRef {
        name: rc.name_any(),
    }
}

/// The default topics, with the spec's partitions and replication factor.
pub fn topics(rc: &RealtimeCluster) -> Vec<KafkaTopic> {
    let kafka = &rc.spec.kafka;
    default_topics(&kafka.topics)
        .into_iter()
        .map(|(id, topic_name)| {
            let name = format!("{}-{id}", rc.name_any());
            KafkaTopic {
                metadata: meta(rc, name, TOPIC_COMPONENT),
                spec: KafkaTopicSpec {
                    topic_name,
                    partitions: kafka.partitions,
                    replication_factor: kafka.replication_factor,
                    config: BTreeMap::new(),
                    deletion_policy: DeletionPolicy::Retain,
                    cluster_ref: Some(cluster_ref(rc)),
                    bootstrap_servers: None,
                },
                status: None,
            }
        })
        .collect()
}

/// The default indexes, in the cluster's database.
pub fn indexes(rc: &RealtimeCluster) -> Vec<MongoIndex> {
    DEFAULT_INDEXES
        .iter()
        .map(|index| {
            let name = format!("{}-{}", rc.name_any(), index.id);
            MongoIndex {
                metadata: meta(rc, name, INDEX_COMPONENT),
                spec: MongoIndexSpec {
                    database: None,
                    collection: index.collection.to_owned(),
                    keys: index
                        .keys
                        .iter()
                        .map(|(field, order)| IndexKey {
                            field: (*field).to_owned(),
                            order: *order,
                        })
                        .collect(),
                    name: None,
                    unique: index.unique,
                    sparse: index.sparse,
                    expire_after_seconds: None,
                    partial_filter_expression: None,
                    replace_conflicting: false,
                    deletion_policy: DeletionPolicy::Retain,
                    cluster_ref: cluster_ref(rc),
                },
                status: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> RealtimeCluster {
        let mut rc: RealtimeCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster",
            "metadata": {"name": "chat", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "image": "i",
                "kafka": {"bootstrapServers": "kafka:9092", "partitions": 6, "replicationFactor": 3},
                "mongodb": {"uriSecretRef": {"name": "s", "key": "k"}},
                "redis": {"urlSecretRef": {"name": "s", "key": "k"}},
                "auth": {"jwtSecretRef": {"name": "s", "key": "k"}},
            }
        }))
        .unwrap();
        rc.metadata.namespace = Some("ns".into());
        rc
    }

    #[test]
    fn the_default_topics_are_owned_named_by_cluster_and_retained() {
        let rc = cluster();
        let topics = topics(&rc);
        let names: Vec<_> = topics
            .iter()
            .map(|t| (t.name_any(), t.spec.topic_name.clone()))
            .collect();
        assert_eq!(
            names,
            [
                ("chat-messages", "chat.messages"),
                ("chat-persistence-events", "chat.persistence.events"),
                ("chat-recording-events", "webrtc.recording.events"),
                ("chat-dead-letters", "chat.messages.dlq"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        for t in &topics {
            assert_eq!((t.spec.partitions, t.spec.replication_factor), (6, 3));
            assert_eq!(t.spec.deletion_policy, DeletionPolicy::Retain);
            assert_eq!(t.spec.cluster_ref.as_ref().unwrap().name, "chat");
            let owner = &t.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
            assert_eq!(t.labels()["app.kubernetes.io/component"], TOPIC_COMPONENT);
        }
    }

    #[test]
    fn the_default_indexes_keep_mongodbs_names_and_options() {
        let indexes = indexes(&cluster());
        let names: Vec<_> = indexes
            .iter()
            .map(|i| {
                format!(
                    "{} {}.{}",
                    i.name_any(),
                    i.spec.collection,
                    i.spec.index_name()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "chat-messages-id messages.message_id_1",
                "chat-messages-history messages.tenant_id_1_conversation_id_1_seq_-1",
                "chat-conversations-members conversations.tenant_id_1_participants.user_id_1",
                "chat-conversations-id conversations.tenant_id_1_conversation_id_1",
                "chat-moderation-log moderation_log.tenant_id_1_conversation_id_1_created_at_-1",
                "chat-recordings-call call_recordings.call_id_1_tenant_id_1",
                "chat-recordings-conversation call_recordings.conversation_id_1_tenant_id_1",
                "chat-recordings-id call_recordings.recording_id_1",
            ]
        );
        assert!(indexes[0].spec.unique && indexes[0].spec.sparse);
        assert!(indexes[7].spec.unique && !indexes[7].spec.sparse);
        assert!(
            indexes
                .iter()
                .all(|i| i.spec.deletion_policy == DeletionPolicy::Retain)
        );
    }
}
