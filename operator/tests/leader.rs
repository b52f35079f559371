//! Leader election against the local kube-apiserver: only the Lease holder reconciles; a
//! follower takes over when the holder stops, and when it dies without releasing (SIGKILL:
//! the Lease has to expire first); a holder whose Lease is taken stops reconciling.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::operator::{LEASE, OperatorProcess, lease_holder, wait_holder};
use common::{
    client, delete_namespace, eventually, minimal_cluster, minimal_cluster_secret, test_namespace,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use kube::{Client, ResourceExt};
use realtime_operator::crd::RealtimeCluster;
use realtime_operator::leader::{LeaderExit, LeaseConfig, run_leader};
use realtime_operator::metrics::Metrics;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Leader = (
    oneshot::Sender<()>,
    JoinHandle<Result<LeaderExit, kube_lease_manager::LeaseManagerError>>,
);

/// An in-process operator campaigning for the test Lease in `ns`.
fn start(client: &Client, ns: &str, identity: &str, seconds: u64, metrics: Metrics) -> Leader {
    let (stop, stopped) = oneshot::channel::<()>();
    let lease = LeaseConfig {
        namespace: ns.into(),
        name: LEASE.into(),
        identity: identity.into(),
        duration_seconds: seconds,
    };
    let reporter = Reporter {
        controller: "realtime-operator-test".into(),
        instance: Some(identity.into()),
    };
    let task = tokio::spawn(run_leader(
        client.clone(),
        Some(ns.into()),
        metrics,
        reporter,
        lease,
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, task)
}

/// A namespace with the Secret `minimal_cluster` reads.
async fn namespace(client: &Client, prefix: &str) -> String {
    let ns = test_namespace(client, prefix).await;
    minimal_cluster_secret(client, &ns).await;
    ns
}

async fn reconciled(client: &Client, ns: &str, cluster: &str) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually(&format!("cluster {cluster} reconciled"), 60, || async {
        deployments
            .get_opt(&format!("{cluster}-gateway"))
            .await
            .unwrap()
    })
    .await;
}

/// Waits until the operator with `metrics` has finished a reconcile of `cluster`.
async fn reconciled_by(metrics: &Metrics, ns: &str, cluster: &str) {
    let key = format!("{ns}/{cluster}");
    eventually(&format!("a reconcile of {key}"), 60, || async {
        (metrics.reconciled("RealtimeCluster", &key).count > 0).then_some(())
    })
    .await;
}

async fn create(client: &Client, ns: &str, cluster: &str) {
    Api::<RealtimeCluster>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &minimal_cluster(cluster))
        .await
        .unwrap();
}

/// The replica leading now reconciles a cluster created after the takeover; then it stops
/// and the namespace goes.
async fn new_leader_reconciles(client: &Client, ns: &str, (stop, task): Leader, metrics: &Metrics) {
    create(client, ns, "two").await;
    reconciled_by(metrics, ns, "two").await;
    stop.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    delete_namespace(client, ns).await;
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_follower_takes_over() {
    let client = client().await;
    let ns = namespace(&client, "leader").await;
    let (ma, mb) = (Metrics::default(), Metrics::default());
    let (stop_a, task_a) = start(&client, &ns, "replica-a", 4, ma.clone());
    wait_holder(&client, &ns, "replica-a").await;
    let b = start(&client, &ns, "replica-b", 4, mb.clone());

    create(&client, &ns, "one").await;
    reconciled(&client, &ns, "one").await;
    // Pokes make both instances' watches fire; only the holder may act on them. Once the
    // holder has caught up with the cluster's latest version, the follower has still
    // done nothing.
    let clusters: Api<RealtimeCluster> = Api::namespaced(client.clone(), &ns);
    let key = format!("{ns}/one");
    let before = ma.reconciled("RealtimeCluster", &key).count;
    for i in 0..3 {
        clusters
            .patch(
                "one",
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {"poke": i.to_string()}}})),
            )
            .await
            .unwrap();
    }
    eventually("replica-a to catch up with the pokes", 30, || async {
        let latest = clusters.get("one").await.unwrap().resource_version();
        let seen = ma.reconciled("RealtimeCluster", &key);
        (seen.count > before && seen.resource_version == latest).then_some(())
    })
    .await;
    assert_eq!(
        mb.reconciled("RealtimeCluster", &key).count,
        0,
        "only replica-a holds the lease"
    );

    // The holder stops (and releases): the follower acquires the lease and reconciles.
    stop_a.send(()).unwrap();
    assert_eq!(task_a.await.unwrap().unwrap(), LeaderExit::Shutdown);
    new_leader_reconciles(&client, &ns, b, &mb).await;
}

#[tokio::test]
async fn a_follower_takes_over_when_the_leader_dies_without_releasing() {
    let client = client().await;
    let ns = namespace(&client, "leader-killed").await;
    let seconds = 4;
    let kubeconfig = std::env::var("KUBECONFIG").unwrap();
    let mut a = OperatorProcess::spawn(kubeconfig.as_ref(), &ns, "process-a", seconds);
    wait_holder(&client, &ns, "process-a").await;
    create(&client, &ns, "one").await;
    reconciled(&client, &ns, "one").await;
    let mb = Metrics::default();
    let b = start(&client, &ns, "replica-b", seconds, mb.clone());

    // SIGKILL: no release. The Lease still names the dead holder until it expires.
    a.sigkill();
    let killed = Instant::now();
    assert_eq!(
        lease_holder(&client, &ns).await.as_deref(),
        Some("process-a"),
        "nothing released the lease"
    );
    wait_holder(&client, &ns, "replica-b").await;
    let took = killed.elapsed();
    eprintln!("replica-b took over {took:?} after the leader was killed");
    assert!(
        took <= Duration::from_secs(seconds + 6),
        "took over after {took:?}"
    );
    new_leader_reconciles(&client, &ns, b, &mb).await;
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_reconciling() {
    let client = client().await;
    let ns = namespace(&client, "leader-lost").await;
    let metrics = Metrics::default();
    let (_stop, task) = start(&client, &ns, "replica-a", 4, metrics.clone());
    wait_holder(&client, &ns, "replica-a").await;
    create(&client, &ns, "one").await;
    reconciled_by(&metrics, &ns, "one").await;

    // Another identity takes the Lease (as a replica that saw it expire would).
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    Api::<Lease>::namespaced(client.clone(), &ns)
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {
                "holderIdentity": "thief", "acquireTime": now, "renewTime": now,
                "leaseDurationSeconds": 60}})),
        )
        .await
        .unwrap();
    let taken = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the leader noticed within 10 s")
        .unwrap()
        .unwrap();
    eprintln!(
        "the leader stopped {:?} after its lease was taken",
        taken.elapsed()
    );
    assert_eq!(exit, LeaderExit::LostLease);
    // Its controllers have ended with it (the task is done); it did not clear the new
    // holder's lease on the way out.
    assert_eq!(lease_holder(&client, &ns).await.as_deref(), Some("thief"));
    delete_namespace(&client, &ns).await;
}
