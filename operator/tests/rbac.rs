//! The chart's RBAC is enough, and only what is needed: the operator runs with the
//! ServiceAccount token (TokenRequest API) the chart's Role binds (namespace-scoped
//! variant), holds its Lease, reconciles a RealtimeCluster and TurnPools to completion,
//! deletes what they no longer want, and follows a Secret through its metadata-only watch
//! on the local kube-apiserver.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::cluster::{checksum_follows_secret, unreference_turn_pool};
use common::token::{client_with_token, service_account_token};
use common::{
    client, delete_namespace, eventually, minimal_cluster, minimal_cluster_secret, test_namespace,
    wait_both_gone,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use realtime_operator::crd::{RealtimeCluster, TurnPool};
use realtime_operator::metrics::Metrics;
use realtime_operator::run::{LeaseConfig, run_leader};
use serde_json::json;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `helm template` of the chart, applied with kubectl (both from `scripts/kube.sh env`).
fn install_chart_rbac(ns: &str) {
    let rendered = Command::new("helm")
        .args([
            "template",
            "rt",
            "helm/realtime-operator",
            "--namespace",
            ns,
            "--set",
            &format!("watchNamespace={ns}"),
        ])
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!("helm not runnable ({e}): eval \"$(scripts/kube.sh env)\" puts it on PATH")
        });
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let mut apply = Command::new("kubectl")
        .args(["apply", "-n", ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(&rendered.stdout)
        .unwrap();
    let out = apply.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_operator_works_with_exactly_the_charts_rbac() {
    let admin = client().await;
    let ns = test_namespace(&admin, "rbac").await;
    install_chart_rbac(&ns);

    // The operator's ServiceAccount token from the TokenRequest API (no token Secret is
    // created for ServiceAccounts since Kubernetes 1.24).
    let token = service_account_token(&admin, &ns, "rt").await;
    let operator = client_with_token(&token).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    // The operator's identity may not read outside its namespace, nor delete a Secret.
    assert!(
        Api::<Secret>::namespaced(operator.clone(), "default")
            .list(&Default::default())
            .await
            .is_err()
    );

    minimal_cluster_secret(&admin, &ns).await;
    assert!(
        Api::<Secret>::namespaced(operator.clone(), &ns)
            .delete("s", &DeleteParams::default())
            .await
            .is_err(),
        "the operator never deletes a Secret"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let lease = LeaseConfig {
        namespace: ns.clone(),
        name: "realtime-operator".into(),
        identity: "rbac-test".into(),
        duration_seconds: 10,
    };
    let reporter = Reporter {
        controller: "realtime-operator".into(),
        instance: Some("rbac-test".into()),
    };
    let task = tokio::spawn(run_leader(
        operator,
        Some(ns.clone()),
        Metrics::default(),
        reporter,
        lease,
        async move {
            let _ = stopped.await;
        },
    ));

    // A TurnPool (its Secret, probes and status) and a cluster following it (a Role for
    // its data plane) exercise every permission the operator uses.
    let pools: Api<TurnPool> = Api::namespaced(admin.clone(), &ns);
    let pool: TurnPool = serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "TurnPool", "metadata": {"name": "edge"},
        "spec": {"servers": [{"host": "127.0.0.1", "port": 9, "transports": ["udp"]}],
                 "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1}}
    }))
    .unwrap();
    pools.create(&PostParams::default(), &pool).await.unwrap();
    let clusters: Api<RealtimeCluster> = Api::namespaced(admin.clone(), &ns);
    let mut rc = minimal_cluster("chat");
    rc.spec.turn_pool_ref = Some(realtime_operator::crd::LocalRef {
        name: "edge".into(),
    });
    clusters.create(&PostParams::default(), &rc).await.unwrap();
    eventually(
        "the pool's status written by the operator's identity",
        60,
        || async {
            pools
                .get("edge")
                .await
                .unwrap()
                .status
                .filter(|s| s.total_servers == 1)
        },
    )
    .await;
    assert!(secrets.get_opt("edge-turn-secret").await.unwrap().is_some());
    // Status written means every child was applied with the chart's permissions.
    eventually("status written by the operator's identity", 60, || async {
        clusters
            .get("chat")
            .await
            .unwrap()
            .status
            .filter(|s| s.gateway.is_some())
    })
    .await;
    // Its topics and indexes are made and reported under the chart's permissions (the
    // data plane's Deployments wait for them).
    for kind in ["KafkaTopic chat-messages", "MongoIndex chat-messages-id"] {
        let (kind, name) = kind.split_once(' ').unwrap();
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            admin.clone(),
            &ns,
            &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                "realtime.dev",
                "v1alpha1",
                kind,
            )),
        );
        eventually(&format!("{kind} {name} Ready"), 60, || async {
            let obj = api.get_opt(name).await.unwrap()?;
            let ready = obj.data["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready.then_some(())
        })
        .await;
    }
    for name in ["chat-persister", "chat-admin"] {
        eventually(&format!("the Deployment {name}"), 60, || async {
            Api::<Deployment>::namespaced(admin.clone(), &ns)
                .get_opt(name)
                .await
                .unwrap()
        })
        .await;
    }
    eventually("the admin API's Service", 60, || async {
        Api::<Service>::namespaced(admin.clone(), &ns)
            .get_opt("chat-admin")
            .await
            .unwrap()
    })
    .await;
    let role = Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), &ns)
        .get("chat-turn-reader")
        .await
        .unwrap();
    let names: Vec<String> = role
        .rules
        .unwrap()
        .into_iter()
        .flat_map(|r| r.resource_names.unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["edge", "edge-turn-secret"],
        "exactly the pool and its Secret"
    );

    // A managed pool (coturn Deployment and Service), then switched to external servers:
    // the operator deletes what it no longer wants.
    let managed: TurnPool = serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "TurnPool", "metadata": {"name": "managed"},
        "spec": {"managed": {"replicas": 1, "realm": "r.example", "serviceType": "NodePort"},
                 "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1}}
    }))
    .unwrap();
    pools
        .create(&PostParams::default(), &managed)
        .await
        .unwrap();
    let (deployments, services) = (
        Api::<Deployment>::namespaced(admin.clone(), &ns),
        Api::<Service>::namespaced(admin.clone(), &ns),
    );
    eventually("coturn applied by the operator's identity", 60, || async {
        services.get_opt("managed-coturn").await.unwrap()
    })
    .await;
    pools
        .patch(
            "managed",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"managed": null,
                "servers": [{"host": "127.0.0.1", "port": 9, "transports": ["udp"]}]}})),
        )
        .await
        .unwrap();
    wait_both_gone(&deployments, &services, "managed-coturn").await;
    // The cluster stops following the pool: its data plane's Role goes.
    unreference_turn_pool(&admin, &ns, "chat").await;
    // A Secret edit reaches the operator through its metadata-only watch.
    checksum_follows_secret(&clusters, &secrets, "chat", "mongo", "m2").await;

    stop.send(()).unwrap();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
    delete_namespace(&admin, &ns).await;
}
