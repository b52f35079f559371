//! The operator reads Secrets only as it must: every list and watch of Secrets asks the
//! API server for metadata only (no Secret data reaches the operator unless it names the
//! Secret), the TurnPool's own Secrets are selected by label, and Secret data is read by
//! name. Every request of an in-process operator is recorded through a layer on its
//! client, on the local kube-apiserver.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};

use common::cluster::checksum_follows_secret;
use common::{
    client, delete_namespace, eventually, minimal_cluster, minimal_cluster_secret, test_namespace,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::client::ClientBuilder;
use kube::runtime::events::Reporter;
use realtime_operator::crd::{RealtimeCluster, TurnPool};
use realtime_operator::metrics::Metrics;
use serde_json::json;

/// One request: method, path with query, Accept header.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    accept: String,
}

#[tokio::test]
async fn secrets_are_watched_as_metadata_and_read_by_name() {
    let admin = client().await;
    let ns = test_namespace(&admin, "secret-access").await;
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    let config = kube::Config::infer().await.unwrap();
    let recording = ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&tower::util::MapRequestLayer::new(
            move |req: http::Request<kube::client::Body>| {
                record.lock().unwrap().push(Seen {
                    method: req.method().to_string(),
                    uri: req.uri().to_string(),
                    accept: req
                        .headers()
                        .get(http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned(),
                });
                req
            },
        ))
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(realtime_operator::run::run_controllers(
        recording,
        Some(ns.clone()),
        Metrics::default(),
        Reporter {
            controller: "realtime-operator-test".into(),
            instance: None,
        },
        async move {
            let _ = stopped.await;
        },
    ));

    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    minimal_cluster_secret(&admin, &ns).await;
    // A Secret nothing refers to.
    let unrelated: Secret = serde_json::from_value(
        json!({"metadata": {"name": "unrelated"}, "stringData": {"password": "hunter2"}}),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &unrelated)
        .await
        .unwrap();
    let pool: TurnPool = serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "TurnPool", "metadata": {"name": "edge"},
        "spec": {"servers": [{"host": "127.0.0.1", "port": 9, "transports": ["udp"]}],
                 "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1}}
    }))
    .unwrap();
    Api::<TurnPool>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &pool)
        .await
        .unwrap();
    let clusters: Api<RealtimeCluster> = Api::namespaced(admin.clone(), &ns);
    clusters
        .create(&PostParams::default(), &minimal_cluster("chat"))
        .await
        .unwrap();
    // An edit of a referenced Secret still rolls the pods: the metadata watch sees it.
    checksum_follows_secret(&clusters, &secrets, "chat", "jwt", "rotated").await;
    eventually("the pool's Secret", 30, || async {
        secrets.get_opt("edge-turn-secret").await.unwrap()
    })
    .await;

    let seen = seen.lock().unwrap().clone();
    let collection = format!("/api/v1/namespaces/{ns}/secrets?");
    let lists: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.uri.starts_with(&collection))
        .collect();
    assert!(!lists.is_empty(), "the operator watches Secrets");
    for s in &lists {
        assert!(
            s.accept.contains("as=PartialObjectMetadata"),
            "a list or watch of Secrets asked for more than metadata: {s:?}"
        );
    }
    assert!(
        lists
            .iter()
            .any(|s| s.uri.contains("labelSelector=") && s.uri.contains("turn-secret")),
        "the TurnPool's Secrets are selected by label: {lists:?}"
    );
    let named = format!("/api/v1/namespaces/{ns}/secrets/");
    let reads: Vec<&Seen> = seen.iter().filter(|s| s.uri.starts_with(&named)).collect();
    assert!(
        reads.iter().all(|s| {
            let name = s.uri[named.len()..].split('?').next().unwrap();
            ["s", "edge-turn-secret"].contains(&name)
        }),
        "only referenced or owned Secrets are read or written by name: {reads:?}"
    );
    assert!(
        reads
            .iter()
            .any(|s| s.method == "GET" && s.uri.starts_with(&format!("{named}s"))),
        "the referenced Secret is read by name"
    );

    stop.send(()).unwrap();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
    delete_namespace(&admin, &ns).await;
}
