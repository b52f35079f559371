//! A RealtimeCluster owns its topics and indexes: the operator (in-process, against the
//! local kube-apiserver, the stack's broker and MongoDB-compatible server) makes them
//! KafkaTopic and MongoIndex children, the data plane's Deployments wait for them, the
//! cluster's `Ready` follows them, and deleting the cluster garbage-collects the resources
//! while the topics and indexes stay (`Retain`). What the broker and the database hold is
//! read with librdkafka's admin client and the MongoDB driver, not through the operator.
//! No kubelet runs these pods: the test marks them Ready as one would.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::cluster::{condition, finish_rollout, mark_pods_ready, wait_condition};
use common::{Env, eventually, minimal_cluster, stack_kafka, stack_mongodb};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use realtime_operator::crd::{KafkaTopic, MongoIndex, RealtimeCluster};
use serde_json::json;

const TOPICS: [&str; 4] = [
    "own-messages",
    "own-persistence-events",
    "own-recording-events",
    "own-dead-letters",
];

/// Partitions of each topic in the broker's metadata (absent topics left out).
async fn partitions(topics: Vec<String>) -> Vec<(String, usize)> {
    tokio::task::spawn_blocking(move || {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", stack_kafka())
            .create()
            .unwrap();
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap();
        topics
            .into_iter()
            .filter_map(|name| {
                let t = metadata.topics().iter().find(|t| t.name() == name)?;
                Some((name, t.partitions().len()))
            })
            .collect()
    })
    .await
    .unwrap()
}

/// `collection.index` of every index of the database.
async fn index_names(db: &mongodb::Database) -> Vec<String> {
    let mut names = Vec::new();
    for collection in db.list_collection_names().await.unwrap() {
        let cursor = db
            .collection::<mongodb::bson::Document>(&collection)
            .list_index_names()
            .await
            .unwrap();
        names.extend(cursor.into_iter().map(|i| format!("{collection}.{i}")));
    }
    names.sort();
    names
}

#[tokio::test]
async fn a_cluster_owns_its_topics_and_indexes_and_is_ready_only_with_them() {
    let env = Env::start("rtc-storage").await;
    env.minimal_cluster_secret().await;
    let database = format!(
        "own_{}",
        env.ns
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
    );
    let mut rc = minimal_cluster("own");
    rc.spec.mongodb.database = database.clone();
    let clusters = env.api::<RealtimeCluster>();
    let rc = clusters.create(&PostParams::default(), &rc).await.unwrap();
    let uid = rc.uid().unwrap();

    // The children, owned and labelled as the cluster's.
    let selector = ListParams::default().labels("app.kubernetes.io/instance=own");
    let topics = eventually("four KafkaTopics", 30, || async {
        let items = env.api::<KafkaTopic>().list(&selector).await.unwrap().items;
        (items.len() == 4).then_some(items)
    })
    .await;
    let mut names: Vec<String> = topics.iter().map(ResourceExt::name_any).collect();
    names.sort_unstable();
    let mut expected = TOPICS.map(str::to_owned).to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    for t in &topics {
        assert_eq!(t.owner_references()[0].uid, uid);
        assert_eq!(t.spec.partitions, rc.spec.kafka.partitions);
        assert_eq!(t.spec.cluster_ref.as_ref().unwrap().name, "own");
    }
    let indexes = eventually("eight MongoIndexes", 30, || async {
        let items = env.api::<MongoIndex>().list(&selector).await.unwrap().items;
        (items.len() == 8).then_some(items)
    })
    .await;
    assert!(indexes.iter().all(|i| i.owner_references()[0].uid == uid));

    // The data plane is told not to make them, and starts once they are Ready.
    let config = env.api::<ConfigMap>().get("own-config").await.unwrap();
    let data = config.data.unwrap();
    assert_eq!(data["KAFKA_CREATE_TOPICS"], "false");
    assert_eq!(data["MONGODB_CREATE_INDEXES"], "false");
    eventually("the gateway Deployment", 60, || async {
        env.api::<Deployment>()
            .get_opt("own-gateway")
            .await
            .unwrap()
    })
    .await;
    for t in env.api::<KafkaTopic>().list(&selector).await.unwrap().items {
        let ready = t
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(
            ready,
            "the Deployments came after every topic was Ready: {t:?}"
        );
    }

    // The broker and the database hold them (read directly).
    let topic_names: Vec<String> = topics.iter().map(|t| t.spec.topic_name.clone()).collect();
    let found = partitions(topic_names.clone()).await;
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found.iter().all(|(_, p)| *p == 3), "{found:?}");
    let db = mongodb::Client::with_uri_str(stack_mongodb())
        .await
        .unwrap()
        .database(&database);
    let on_server = index_names(&db).await;
    for wanted in [
        "messages.message_id_1",
        "messages.tenant_id_1_conversation_id_1_seq_-1",
        "conversations.tenant_id_1_participants.user_id_1",
        "call_recordings.recording_id_1",
    ] {
        assert!(
            on_server.contains(&wanted.to_owned()),
            "{wanted} in {on_server:?}"
        );
    }

    finish_rollout(&env, "own", "gateway").await;
    finish_rollout(&env, "own", "persister").await;
    finish_rollout(&env, "own", "admin").await;
    wait_condition(&clusters, "own", "Ready", "True").await;

    // A change the topics refuse (fewer partitions): the cluster is not Ready and says
    // which topics hold it; the running data plane is left alone.
    clusters
        .patch(
            "own",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"kafka": {"partitions": 2}}})),
        )
        .await
        .unwrap();
    eventually("Ready=False naming the refusing topics", 30, || async {
        let (status, reason, message) = condition(&clusters, "own", "Ready").await?;
        (status == "False"
            && reason == "Progressing"
            && message.contains("KafkaTopic own-messages: PartitionDecrease"))
        .then_some(())
    })
    .await;
    assert!(
        env.api::<Deployment>()
            .get_opt("own-gateway")
            .await
            .unwrap()
            .is_some()
    );
    clusters
        .patch(
            "own",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"kafka": {"partitions": 3}}})),
        )
        .await
        .unwrap();
    // (Both edits changed the data plane's configuration: its pods roll.)
    eventually(
        "Ready again once the topics are and the pods rolled",
        60,
        || async {
            for component in ["gateway", "persister", "admin"] {
                mark_pods_ready(&env, "own", component).await;
            }
            let (status, _, _) = condition(&clusters, "own", "Ready").await?;
            (status == "True").then_some(())
        },
    )
    .await;

    // Deleting the cluster collects the resources; the topics and indexes stay.
    clusters
        .delete("own", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("the KafkaTopics and MongoIndexes collected", 60, || async {
        let left = env
            .api::<KafkaTopic>()
            .list(&selector)
            .await
            .unwrap()
            .items
            .len()
            + env
                .api::<MongoIndex>()
                .list(&selector)
                .await
                .unwrap()
                .items
                .len();
        (left == 0).then_some(())
    })
    .await;
    assert_eq!(partitions(topic_names).await.len(), 4, "topics retained");
    assert_eq!(index_names(&db).await, on_server, "indexes retained");
    let _ = db.drop().await;
    env.stop().await;
}
