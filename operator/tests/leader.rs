//! Two operator instances against the local kube-apiserver: only the Lease holder
//! reconciles; when it stops, the other takes over.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{client, eventually, minimal_cluster, test_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use realtime_operator::crd::RealtimeCluster;
use realtime_operator::metrics::{KindLabel, Metrics};
use realtime_operator::run::{LeaderExit, LeaseConfig, run_leader};
use serde_json::json;

fn reconciliations(m: &Metrics) -> u64 {
    m.reconciliations
        .get_or_create(&KindLabel {
            kind: "RealtimeCluster",
        })
        .get()
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_follower_takes_over() {
    let client = client().await;
    let ns = test_namespace(&client, "leader").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "stringData": {"mongo": "m", "redis": "r", "jwt": "j"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let start = |identity: &str, metrics: Metrics| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let lease = LeaseConfig {
            namespace: ns.clone(),
            name: "realtime-operator".into(),
            identity: identity.into(),
            duration_seconds: 4,
        };
        let reporter = Reporter {
            controller: "realtime-operator-test".into(),
            instance: Some(identity.into()),
        };
        let task = tokio::spawn(run_leader(
            client.clone(),
            Some(ns.clone()),
            metrics,
            reporter,
            lease,
            async move {
                let _ = stopped.await;
            },
        ));
        (stop, task)
    };
    let (ma, mb) = (Metrics::default(), Metrics::default());
    let (stop_a, task_a) = start("replica-a", ma.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stop_b, task_b) = start("replica-b", mb.clone());

    let clusters: Api<RealtimeCluster> = Api::namespaced(client.clone(), &ns);
    clusters
        .create(&PostParams::default(), &minimal_cluster("one"))
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually("cluster one reconciled", 30, || async {
        deployments.get_opt("one-gateway").await.unwrap()
    })
    .await;
    // Pokes make both instances' watches fire; only the holder may act on them.
    for i in 0..3 {
        clusters
            .patch(
                "one",
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {"poke": i.to_string()}}})),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (a, b) = (reconciliations(&ma), reconciliations(&mb));
    assert!(
        a > 0 && b == 0,
        "only replica-a holds the lease: a={a} b={b}"
    );

    // The holder stops; the follower acquires the lease and reconciles.
    stop_a.send(()).unwrap();
    assert_eq!(task_a.await.unwrap().unwrap(), LeaderExit::Shutdown);
    clusters
        .create(&PostParams::default(), &minimal_cluster("two"))
        .await
        .unwrap();
    eventually("replica-b reconciles after the hand-over", 30, || async {
        deployments.get_opt("two-gateway").await.unwrap()
    })
    .await;
    assert!(reconciliations(&mb) > 0);

    stop_b.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task_b).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
