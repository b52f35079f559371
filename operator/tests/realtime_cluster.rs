//! The RealtimeCluster controller, running in-process against the local kube-apiserver
//! and controller-manager (`scripts/kube.sh`). There is no kubelet, so readiness is
//! simulated by patching the Deployments' status as a kubelet-backed controller would.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Env, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use realtime_operator::crd::RealtimeCluster;
use realtime_operator::render::CHECKSUM_ANNOTATION;
use serde_json::json;

fn example(name: &str) -> RealtimeCluster {
    serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "metadata": {"name": name},
        "spec": {
            "image": "ghcr.io/example/realtime:0.1.0",
            "gateway": {"replicas": 2},
            "persister": {"replicas": 1, "batchSize": 100},
            "kafka": {"bootstrapServers": "kafka.kafka.svc:9092"},
            "mongodb": {"uriSecretRef": {"name": "realtime-mongodb", "key": "uri"}, "database": "realtime"},
            "redis": {"urlSecretRef": {"name": "realtime-redis", "key": "url"}},
            "auth": {"jwtSecretRef": {"name": "realtime-jwt", "key": "secret"}, "issuer": "https://id.example", "audience": "realtime"},
        }
    }))
    .unwrap()
}

async fn condition(
    api: &Api<RealtimeCluster>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let rc = api.get(name).await.ok()?;
    let c = rc
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

async fn checksum(api: &Api<Deployment>, name: &str) -> String {
    api.get(name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()[CHECKSUM_ANNOTATION]
        .clone()
}

/// Marks the pods of a component Ready, as a kubelet would; the ReplicaSet and
/// Deployment controllers of the controller-manager then report ready replicas.
async fn set_ready(env: &Env, component: &str, expected: usize) {
    let pods = env.api::<Pod>();
    let selector = format!("app.kubernetes.io/component={component}");
    let list = eventually(&format!("{expected} {component} pods"), 30, || async {
        let l = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        (l.items.len() >= expected).then_some(l)
    })
    .await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    for pod in list.items {
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}
        ]}});
        pods.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn cluster_children_status_rollout_and_garbage_collection() {
    let env = Env::start("rtc-lifecycle").await;
    // examples/realtime-cluster.yaml exactly as a platform team would apply it.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/realtime-cluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut rc = None;
    for doc in serde_norway::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        match value["kind"].as_str() {
            Some("Secret") => {
                let secret: Secret = serde_json::from_value(value).unwrap();
                env.api::<Secret>()
                    .create(&PostParams::default(), &secret)
                    .await
                    .unwrap();
            }
            Some("RealtimeCluster") => {
                rc = Some(serde_json::from_value::<RealtimeCluster>(value).unwrap())
            }
            other => panic!("unexpected kind {other:?} in {}", path.display()),
        }
    }
    let clusters = env.api::<RealtimeCluster>();
    let rc = clusters
        .create(&PostParams::default(), &rc.unwrap())
        .await
        .unwrap();
    let uid = rc.uid().unwrap();

    // Every child exists and is owned by the cluster.
    let deployments = env.api::<Deployment>();
    for name in ["chat-gateway", "chat-persister"] {
        let d = eventually(&format!("Deployment {name}"), 30, || async {
            deployments.get_opt(name).await.unwrap()
        })
        .await;
        assert_eq!(
            d.owner_references()[0].uid,
            uid,
            "{name} owned by the cluster"
        );
    }
    let cm = env.api::<ConfigMap>().get("chat-config").await.unwrap();
    assert_eq!(cm.owner_references()[0].uid, uid);
    let data = cm.data.unwrap();
    assert_eq!(data["KAFKA_BROKERS"], "kafka.kafka.svc:9092");
    assert_eq!(data["MESSAGE_PERSISTENCE_BATCH_SIZE"], "100");
    assert!(
        !data.values().any(|v| v.contains("s3cret")),
        "no secret in the ConfigMap"
    );
    assert_eq!(
        env.api::<Service>()
            .get("chat-gateway")
            .await
            .unwrap()
            .owner_references()[0]
            .uid,
        uid
    );
    assert_eq!(
        env.api::<ServiceAccount>()
            .get("chat")
            .await
            .unwrap()
            .owner_references()[0]
            .uid,
        uid
    );
    let pdb_version = realtime_operator::run::pdb_api_version(&env.client).await;
    let (g, v) = pdb_version.split_once('/').unwrap();
    let pdbs: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(g, v, "PodDisruptionBudget")),
    );
    assert_eq!(
        pdbs.get("chat-gateway").await.unwrap().owner_references()[0].uid,
        uid
    );
    let gateway = deployments.get("chat-gateway").await.unwrap();
    let env_names: Vec<String> = gateway.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    for var in ["ROLE", "MONGODB_URI", "REDIS_URL", "JWT_SECRET"] {
        assert!(
            env_names.contains(&var.to_owned()),
            "{var} in {env_names:?}"
        );
    }

    // No kubelet: nothing is ready, the cluster says it is still reconciling.
    let (ready, reason, message) = eventually("Ready=False", 30, || async {
        condition(&clusters, "chat", "Ready")
            .await
            .filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "Progressing"));
    assert!(message.contains("gateway 0/2"), "{message}");
    assert_eq!(
        condition(&clusters, "chat", "Reconciling").await.unwrap().0,
        "True"
    );
    assert_eq!(
        condition(&clusters, "chat", "Stalled").await.unwrap().0,
        "False"
    );
    let status = clusters.get("chat").await.unwrap().status.unwrap();
    assert_eq!(status.observed_generation, rc.metadata.generation);
    assert!(
        status
            .endpoints
            .unwrap()
            .websocket_url
            .ends_with(&format!("chat-gateway.{}.svc:80/chat", env.ns))
    );

    // Replicas become ready the way a kubelet-backed controller would report it.
    set_ready(&env, "gateway", 2).await;
    set_ready(&env, "persister", 1).await;
    eventually("Ready=True", 60, || async {
        condition(&clusters, "chat", "Ready")
            .await
            .filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(
        condition(&clusters, "chat", "Reconciling").await.unwrap().0,
        "False"
    );
    assert_eq!(
        clusters
            .get("chat")
            .await
            .unwrap()
            .status
            .unwrap()
            .gateway
            .unwrap()
            .summary,
        "2/2"
    );

    // A reconcile that changes nothing writes nothing.
    let before = (
        clusters.get("chat").await.unwrap(),
        deployments
            .get("chat-gateway")
            .await
            .unwrap()
            .resource_version(),
    );
    clusters
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"test/poke": "1"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = clusters.get("chat").await.unwrap();
    assert_eq!(after.status, before.0.status, "status unchanged");
    assert_eq!(
        deployments
            .get("chat-gateway")
            .await
            .unwrap()
            .resource_version(),
        before.1,
        "children unchanged"
    );

    // Editing the spec rolls the pods; so does editing a referenced Secret.
    let first = checksum(&deployments, "chat-gateway").await;
    clusters
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"limits": {"burst": 50}}})),
        )
        .await
        .unwrap();
    let second = eventually("checksum after spec edit", 30, || async {
        let c = checksum(&deployments, "chat-gateway").await;
        (c != first).then_some(c)
    })
    .await;
    assert_eq!(
        env.api::<ConfigMap>()
            .get("chat-config")
            .await
            .unwrap()
            .data
            .unwrap()["RATE_LIMIT_BURST"],
        "50"
    );
    env.secret("realtime-jwt", "secret", "rotated").await;
    eventually("checksum after Secret edit", 30, || async {
        let c = checksum(&deployments, "chat-gateway").await;
        (c != second && c != first).then_some(c)
    })
    .await;

    // Deleting the cluster garbage-collects every child.
    clusters
        .delete("chat", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("children garbage-collected", 60, || async {
        let left = deployments
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len()
            + env
                .api::<ConfigMap>()
                .get_opt("chat-config")
                .await
                .unwrap()
                .map_or(0, |_| 1)
            + env
                .api::<Service>()
                .get_opt("chat-gateway")
                .await
                .unwrap()
                .map_or(0, |_| 1);
        (left == 0).then_some(())
    })
    .await;
    env.stop().await;
}

#[tokio::test]
async fn missing_secret_stalls_with_a_clear_message_and_recovers() {
    let env = Env::start("rtc-stalled").await;
    env.secret("realtime-mongodb", "uri", "mongodb://m").await;
    env.secret("realtime-jwt", "secret", "s").await;
    let clusters = env.api::<RealtimeCluster>();
    clusters
        .create(&PostParams::default(), &example("chat"))
        .await
        .unwrap();
    let (_, reason, message) = eventually("Stalled=True", 30, || async {
        condition(&clusters, "chat", "Stalled")
            .await
            .filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(reason, "MissingReference");
    assert!(
        message.contains(&format!("Secret {}/realtime-redis", env.ns))
            && message.contains("\"url\""),
        "{message}"
    );
    assert_eq!(
        condition(&clusters, "chat", "Ready").await.unwrap().0,
        "False"
    );
    assert!(
        env.api::<Deployment>()
            .get_opt("chat-gateway")
            .await
            .unwrap()
            .is_none(),
        "nothing deployed half-configured"
    );
    let events: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("events.k8s.io", "v1", "Event")),
    );
    eventually("a Warning Event", 30, || async {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.data["reason"] == "MissingReference"
                    && e.data["type"] == "Warning"
                    && e.data["note"]
                        .as_str()
                        .unwrap_or("")
                        .contains("realtime-redis")
            })
    })
    .await;

    // The Secret appears: the controller recovers without anyone touching the cluster.
    env.secret("realtime-redis", "url", "redis://r").await;
    eventually("Stalled=False", 30, || async {
        condition(&clusters, "chat", "Stalled")
            .await
            .filter(|c| c.0 == "False")
    })
    .await;
    eventually("Deployments created", 30, || async {
        env.api::<Deployment>()
            .get_opt("chat-gateway")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        condition(&clusters, "chat", "Reconciling").await.unwrap().0,
        "True"
    );
    env.stop().await;
}
