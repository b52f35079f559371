//! The RealtimeCluster controller, running in-process against the local kube-apiserver
//! and controller-manager (`scripts/kube.sh`). No kubelet runs these pods (without a node,
//! or with `scripts/node.sh`'s node, which the test namespace's node selector keeps them
//! off), so the tests mark pods Ready as a kubelet would; the controller-manager's
//! ReplicaSet and Deployment controllers then report replicas and rollouts. Pods that
//! really run: `e2e/cluster/product.test.mjs`.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::cluster::{
    condition, finish_rollout, rollout_complete, unreference_turn_pool, wait_condition, wait_event,
};
use common::{Env, eventually, wait_both};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use realtime_operator::controller::realtime_cluster::KIND;
use realtime_operator::crd::{RealtimeCluster, TurnPool};
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
            "kafka": {"bootstrapServers": common::stack_kafka(), "topics": common::own_topics(name)},
            "mongodb": {"uriSecretRef": {"name": "realtime-mongodb", "key": "uri"}, "database": "realtime"},
            "redis": {"urlSecretRef": {"name": "realtime-redis", "key": "url"}},
            "auth": {"jwtSecretRef": {"name": "realtime-jwt", "key": "secret"}, "issuer": "https://id.example", "audience": "realtime"},
        }
    }))
    .unwrap()
}

/// The generation and the time of the operator's last change to a child: both stay as
/// they are when the operator's apply changes nothing.
fn operator_fields(d: &Deployment) -> (Option<i64>, Option<String>) {
    let applied = d
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|f| {
            f.manager.as_deref() == Some("realtime-operator")
                && f.operation.as_deref() == Some("Apply")
        })
        .and_then(|f| f.time.as_ref())
        .map(|t| t.0.to_string());
    (d.metadata.generation, applied)
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

#[tokio::test]
async fn cluster_children_status_rollout_and_garbage_collection() {
    let env = Env::start("rtc-lifecycle").await;
    // examples/realtime-cluster.yaml and the TurnPool it references exactly as a platform
    // team would apply them.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let path = examples.join("realtime-cluster.yaml");
    let text = [path.clone(), examples.join("turn-pool.yaml")]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let mut rc = None;
    for doc in serde_norway::Deserializer::from_str(&text) {
        let mut value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        // The data plane starts only once its topics and indexes exist: the operator (on
        // this host) makes them on the stack's broker and database, under topic names of
        // this run.
        if value["metadata"]["name"] == "realtime-mongodb" {
            value["stringData"]["uri"] = json!(common::stack_mongodb());
        }
        if value["kind"] == "RealtimeCluster" {
            value["spec"]["kafka"]["bootstrapServers"] = json!(common::stack_kafka());
            value["spec"]["kafka"]["topics"] = common::own_topics("chat");
        }
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
            Some("TurnPool") => {
                let pool: TurnPool = serde_json::from_value(value).unwrap();
                env.api::<TurnPool>()
                    .create(&PostParams::default(), &pool)
                    .await
                    .unwrap();
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
    for name in ["chat-gateway", "chat-persister", "chat-admin"] {
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
    assert_eq!(data["KAFKA_BROKERS"], rc.spec.kafka.bootstrap_servers);
    assert_eq!(data["MESSAGE_PERSISTENCE_BATCH_SIZE"], "100");
    // spec.kafka.replicationFactor (CRD default 1) reaches the data plane.
    assert_eq!(data["KAFKA_REPLICATION_FACTOR"], "1");
    assert!(
        !data.values().any(|v| v.contains("s3cret")),
        "no secret in the ConfigMap"
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
    // The Service and the PDB are applied after the Deployments.
    let service = eventually("the gateway Service", 30, || async {
        env.api::<Service>().get_opt("chat-gateway").await.unwrap()
    })
    .await;
    assert_eq!(service.owner_references()[0].uid, uid);
    let pdb_version = realtime_operator::run::pdb_api_version(&env.client).await;
    let (g, v) = pdb_version.split_once('/').unwrap();
    let pdbs: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(g, v, "PodDisruptionBudget")),
    );
    let pdb = eventually("the gateway PDB", 30, || async {
        pdbs.get_opt("chat-gateway").await.unwrap()
    })
    .await;
    assert_eq!(pdb.owner_references()[0].uid, uid);
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
    // The admin API: its own Deployment (ROLE=admin, the same configuration) behind a
    // ClusterIP Service on the pods' port.
    let admin = deployments.get("chat-admin").await.unwrap().spec.unwrap();
    let container = &admin.template.spec.as_ref().unwrap().containers[0];
    assert!(
        container
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "ROLE" && e.value.as_deref() == Some("admin"))
    );
    let admin_service = eventually("the admin Service", 30, || async {
        env.api::<Service>().get_opt("chat-admin").await.unwrap()
    })
    .await;
    assert_eq!(admin_service.owner_references()[0].uid, uid);
    let admin_service = admin_service.spec.unwrap();
    assert_eq!(admin_service.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(admin_service.selector, admin.selector.match_labels);
    assert_eq!(admin_service.ports.unwrap()[0].port, 3000);

    // No kubelet: nothing is ready, the cluster says it is still reconciling.
    let (reason, message) = wait_condition(&clusters, "chat", "Ready", "False").await;
    assert_eq!(reason, "Progressing");
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
    let endpoints = status.endpoints.unwrap();
    assert!(
        endpoints
            .websocket_url
            .ends_with(&format!("chat-gateway.{}.svc:80/chat", env.ns))
    );
    assert_eq!(
        endpoints.admin_url,
        Some(format!("http://chat-admin.{}.svc:3000/v1/admin", env.ns))
    );

    // Replicas become ready the way a kubelet-backed controller would report it.
    finish_rollout(&env, "chat", "gateway").await;
    finish_rollout(&env, "chat", "persister").await;
    // The admin API's rollout holds Ready like the others'.
    eventually("Ready waiting for the admin API alone", 30, || async {
        let (status, _, message) = condition(&clusters, "chat", "Ready").await?;
        (status == "False" && message.contains("the rollout (admin: ")).then_some(())
    })
    .await;
    finish_rollout(&env, "chat", "admin").await;
    wait_condition(&clusters, "chat", "Ready", "True").await;
    assert_eq!(
        condition(&clusters, "chat", "Reconciling").await.unwrap().0,
        "False"
    );
    let status = clusters.get("chat").await.unwrap().status.unwrap();
    assert_eq!(status.admin.unwrap().summary, "1/1");
    let gateway = status.gateway.unwrap();
    assert_eq!(
        (
            gateway.summary.as_str(),
            gateway.updated_replicas,
            gateway.available_replicas
        ),
        ("2/2", 2, 2)
    );

    // A reconcile that changes nothing writes nothing: once the operator has caught up
    // with the poke (a reconcile that started after it has finished, on the cluster's
    // latest version), that version is still the poke's (no status write) and no child's
    // operator-owned fields changed (the controller-manager may still touch their status).
    let status_before = clusters.get("chat").await.unwrap().status;
    let gateway_before = operator_fields(&deployments.get("chat-gateway").await.unwrap());
    let before = env.reconciles(KIND, "chat");
    let poked = clusters
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"test/poke": "1"}}})),
        )
        .await
        .unwrap();
    let latest = env.caught_up(KIND, "chat", before).await;
    let after = clusters.get("chat").await.unwrap();
    assert_eq!(after.status, status_before, "status unchanged");
    assert_eq!(latest, poked.resource_version().unwrap(), "nothing written");
    assert_eq!(
        operator_fields(&deployments.get("chat-gateway").await.unwrap()),
        gateway_before,
        "children unchanged"
    );

    // Editing the spec rolls the pods; the cluster is not Ready until the rollout is
    // complete by the Deployments' own status (old pods still serve the old config).
    let first = checksum(&deployments, "chat-gateway").await;
    let edited = clusters
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
    let (reason, message) = eventually("Ready=False for the new generation", 30, || async {
        let rc = clusters.get("chat").await.unwrap();
        let status = rc.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (status.observed_generation == edited.metadata.generation && ready.status == "False")
            .then(|| (ready.reason.clone(), ready.message.clone()))
    })
    .await;
    assert_eq!(reason, "Progressing");
    assert!(message.contains("waiting for the rollout"), "{message}");
    assert_eq!(
        condition(&clusters, "chat", "Reconciling").await.unwrap().0,
        "True"
    );
    assert!(
        !rollout_complete(&deployments.get("chat-gateway").await.unwrap()),
        "Ready=False while the Deployment still rolls"
    );
    finish_rollout(&env, "chat", "gateway").await;
    finish_rollout(&env, "chat", "persister").await;
    finish_rollout(&env, "chat", "admin").await;
    wait_condition(&clusters, "chat", "Ready", "True").await;
    assert!(rollout_complete(
        &deployments.get("chat-gateway").await.unwrap()
    ));
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
        // (The TurnPool's coturn Deployment is the pool's, not the cluster's.)
        let left = deployments
            .list(&kube::api::ListParams::default().labels("app.kubernetes.io/instance=chat"))
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
                .list(&kube::api::ListParams::default().labels("app.kubernetes.io/instance=chat"))
                .await
                .unwrap()
                .items
                .len();
        (left == 0).then_some(())
    })
    .await;
    env.stop().await;
}

#[tokio::test]
async fn missing_secret_stalls_with_a_clear_message_and_recovers() {
    let env = Env::start("rtc-stalled").await;
    env.secret("realtime-mongodb", "uri", &common::stack_mongodb())
        .await;
    env.secret("realtime-jwt", "secret", "s").await;
    let clusters = env.api::<RealtimeCluster>();
    clusters
        .create(&PostParams::default(), &example("chat"))
        .await
        .unwrap();
    let (reason, message) = wait_condition(&clusters, "chat", "Stalled", "True").await;
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
    wait_event(&env, "MissingReference", "Warning", "realtime-redis").await;

    // The Secret appears: the controller recovers without anyone touching the cluster
    // (the operator watches Secrets' metadata only, and reads the one it needs by name).
    env.secret("realtime-redis", "url", "redis://r").await;
    wait_condition(&clusters, "chat", "Stalled", "False").await;
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

#[tokio::test]
async fn removing_the_turn_pool_reference_deletes_the_readers_role_and_binding() {
    let env = Env::start("rtc-prune").await;
    for (name, key, value) in [
        ("realtime-mongodb", "uri", common::stack_mongodb().as_str()),
        ("realtime-redis", "url", "redis://r"),
        ("realtime-jwt", "secret", "s"),
    ] {
        env.secret(name, key, value).await;
    }
    let pool: TurnPool = serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "TurnPool", "metadata": {"name": "edge"},
        "spec": {"servers": [{"host": "127.0.0.1", "port": 9, "transports": ["udp"]}]}
    }))
    .unwrap();
    env.api::<TurnPool>()
        .create(&PostParams::default(), &pool)
        .await
        .unwrap();
    let mut rc = example("chat");
    rc.spec.turn_pool_ref = Some(realtime_operator::crd::LocalRef {
        name: "edge".into(),
    });
    let clusters = env.api::<RealtimeCluster>();
    clusters.create(&PostParams::default(), &rc).await.unwrap();
    let roles = env.api::<Role>();
    wait_both(&roles, &env.api::<RoleBinding>(), "chat-turn-reader").await;
    // An unrelated Role with the same labels but another owner is left alone.
    let bystander: Role = serde_json::from_value(json!({
        "metadata": {"name": "chat-bystander", "labels": {
            "app.kubernetes.io/instance": "chat",
            "app.kubernetes.io/managed-by": "realtime-operator"}},
        "rules": []
    }))
    .unwrap();
    roles
        .create(&PostParams::default(), &bystander)
        .await
        .unwrap();

    // The reference goes: the data plane loses its read access to the TURN Secret.
    unreference_turn_pool(&env.client, &env.ns, "chat").await;
    wait_event(&env, "Pruned", "Normal", "Role/chat-turn-reader").await;
    assert!(roles.get_opt("chat-bystander").await.unwrap().is_some());
    let config = env.api::<ConfigMap>().get("chat-config").await.unwrap();
    assert!(!config.data.unwrap().contains_key("TURN_POOL"));
    // The other children stay.
    assert!(
        env.api::<Deployment>()
            .get_opt("chat-gateway")
            .await
            .unwrap()
            .is_some()
    );
    env.stop().await;
}
