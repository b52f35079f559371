//! SIGTERM ends the real `realtime-operator` binary within seconds in every state: before
//! it reaches the API server at all, while it campaigns for the Lease, while it leads, and
//! while the API server has gone away (connections refused, or a black hole that accepts
//! and never answers — here a proxy in front of the local kube-apiserver).
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::operator::{LEASE, OperatorProcess, lease_holder, wait_holder};
use common::proxy::{Proxy, apiserver_addr, kubeconfig_via};
use common::token::write_kubeconfig;
use common::{client, delete_namespace, test_namespace};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use serde_json::json;

/// Every exit must come within this bound (the operator allows 3 s to drain reconciles
/// and 2 s to release the lease; the rest is slack for a loaded machine).
const PROMPT: Duration = Duration::from_secs(8);

async fn terminated(mut operator: OperatorProcess, what: &str) -> std::process::ExitStatus {
    operator.sigterm();
    let (status, took) = operator.exit_within(PROMPT).await;
    eprintln!("{what}: exited with {status} {took:?} after SIGTERM");
    status
}

#[tokio::test]
async fn sigterm_before_the_api_server_ever_answers() {
    let admin = client().await;
    let ns = test_namespace(&admin, "term-never").await;
    // A black hole from the start: building the lease manager waits on the API server.
    let proxy = Proxy::start(apiserver_addr()).await;
    proxy.blackhole();
    let kubeconfig = write_kubeconfig(&kubeconfig_via(proxy.addr), "never");
    let operator = OperatorProcess::spawn(&kubeconfig, &ns, "never", 15);
    // Up, signal handlers installed; it waits for the Lease read to answer.
    operator.wait_log("realtime-operator starting").await;
    let status = terminated(operator, "never reached the API server").await;
    assert!(status.success(), "{status}");
    delete_namespace(&admin, &ns).await;
}

#[tokio::test]
async fn sigterm_while_campaigning() {
    let admin = client().await;
    let ns = test_namespace(&admin, "term-campaign").await;
    // Someone else holds the Lease for an hour: the operator campaigns.
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": LEASE},
        "spec": {"holderIdentity": "someone-else", "acquireTime": now, "renewTime": now,
                 "leaseDurationSeconds": 3600}
    }))
    .unwrap();
    Api::<Lease>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
    let proxy = Proxy::start(apiserver_addr()).await;
    let kubeconfig = write_kubeconfig(&kubeconfig_via(proxy.addr), "campaign");
    let operator = OperatorProcess::spawn(&kubeconfig, &ns, "campaigner", 15);
    operator.wait_log("campaigning for the lease").await;
    let status = terminated(operator, "campaigning").await;
    assert!(status.success(), "{status}");
    assert_eq!(
        lease_holder(&admin, &ns).await.as_deref(),
        Some("someone-else"),
        "a follower leaves the holder's lease alone"
    );

    // The same while the API server does not answer.
    let operator = OperatorProcess::spawn(&kubeconfig, &ns, "campaigner", 15);
    operator.wait_log("campaigning for the lease").await;
    proxy.blackhole();
    let status = terminated(operator, "campaigning, API server gone").await;
    assert!(status.success(), "{status}");
    delete_namespace(&admin, &ns).await;
}

#[tokio::test]
async fn sigterm_while_leading_releases_the_lease() {
    let admin = client().await;
    let ns = test_namespace(&admin, "term-lead").await;
    let kubeconfig = std::env::var("KUBECONFIG").unwrap();
    let operator = OperatorProcess::spawn(kubeconfig.as_ref(), &ns, "leader", 15);
    wait_holder(&admin, &ns, "leader").await;
    operator.wait_log("acquired the lease").await;
    let status = terminated(operator, "leading").await;
    assert!(status.success(), "{status}");
    assert_eq!(
        lease_holder(&admin, &ns).await,
        None,
        "released for a fast hand-over"
    );
    delete_namespace(&admin, &ns).await;
}

#[tokio::test]
async fn sigterm_while_leading_and_the_api_server_is_gone() {
    let admin = client().await;
    let ns = test_namespace(&admin, "term-gone").await;
    // Refused: the proxy stops (nothing listens on its port any more).
    let proxy = Proxy::start(apiserver_addr()).await;
    let kubeconfig = write_kubeconfig(&kubeconfig_via(proxy.addr), "refused");
    // A short lease, so that the lease manager's renewals (every 2 s) fail and log.
    let operator = OperatorProcess::spawn(&kubeconfig, &ns, "refused", 3);
    wait_holder(&admin, &ns, "refused").await;
    drop(proxy);
    operator.wait_log("LeaseManager watcher error").await;
    // Exits (0 on the signal, or 1 if it noticed the lease lapse first) within the bound.
    terminated(operator, "leading, API server refusing").await;

    // A black hole: requests hang instead of failing.
    let proxy = Proxy::start(apiserver_addr()).await;
    let kubeconfig = write_kubeconfig(&kubeconfig_via(proxy.addr), "blackhole");
    let operator = OperatorProcess::spawn(&kubeconfig, &ns, "blackholed", 15);
    wait_holder(&admin, &ns, "blackholed").await;
    operator.wait_log("acquired the lease").await;
    proxy.blackhole();
    let status = terminated(operator, "leading, API server a black hole").await;
    assert!(status.success(), "{status}");
    delete_namespace(&admin, &ns).await;
}
