//! The chart's RBAC is enough, and only what is needed: the operator runs with the
//! ServiceAccount token the chart's Role binds (namespace-scoped variant), holds its Lease
//! and reconciles a RealtimeCluster to completion on the local kube-apiserver.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{client, eventually, minimal_cluster, test_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
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

    // The token controller fills a token Secret for the chart's ServiceAccount.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let token = eventually("the ServiceAccount token", 30, || async {
        secrets
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find_map(|s| {
                let annotations = s.metadata.annotations.unwrap_or_default();
                (s.type_.as_deref() == Some("kubernetes.io/service-account-token")
                    && annotations
                        .get("kubernetes.io/service-account.name")
                        .map(String::as_str)
                        == Some("rt"))
                .then(|| String::from_utf8(s.data.unwrap()["token"].0.clone()).unwrap())
            })
    })
    .await;
    let mut kubeconfig = Kubeconfig::read_from(std::env::var("KUBECONFIG").unwrap()).unwrap();
    for user in &mut kubeconfig.auth_infos {
        if let Some(auth) = user.auth_info.as_mut() {
            auth.token = Some(token.clone().into());
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let operator = kube::Client::try_from(config).unwrap();
    // The operator's identity may not read outside its namespace.
    assert!(
        Api::<Secret>::namespaced(operator.clone(), "default")
            .list(&Default::default())
            .await
            .is_err()
    );

    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "stringData": {"mongo": "m", "redis": "r", "jwt": "j"}}),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
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
    assert!(
        Api::<Deployment>::namespaced(admin.clone(), &ns)
            .get_opt("chat-persister")
            .await
            .unwrap()
            .is_some()
    );
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

    stop.send(()).unwrap();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
    let _ = Api::<Namespace>::all(admin)
        .delete(&ns, &DeleteParams::default())
        .await;
}
