//! The CRDs on a real kube-apiserver (`scripts/kube.sh`): they install, the API server
//! refuses nonsense at apply time with messages naming the field, and the short names
//! are served. Needs KUBECONFIG; without it the tests fail with instructions.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use common::{client, install_crds};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use realtime_operator::crd::{RealtimeCluster, TurnPool};
use serde_json::json;

fn cluster(name: &str, spec: serde_json::Value) -> RealtimeCluster {
    serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn valid_spec() -> serde_json::Value {
    json!({
        "image": "realtime:test",
        "kafka": {"bootstrapServers": "kafka:9092"},
        "mongodb": {"uriSecretRef": {"name": "mongo", "key": "uri"}},
        "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
        "auth": {"jwtSecretRef": {"name": "jwt", "key": "secret"}, "issuer": "iss", "audience": "aud"},
    })
}

async fn create_raw(client: &Client, plural: &str, body: serde_json::Value) -> Result<(), String> {
    let req = http::Request::post(format!(
        "/apis/realtime.dev/v1alpha1/namespaces/default/{plural}"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&body).unwrap())
    .unwrap();
    client
        .request_text(req)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn crds_install_and_refuse_nonsense_at_apply_time() {
    let client = client().await;
    install_crds(&client).await;
    let api: Api<RealtimeCluster> = Api::namespaced(client.clone(), "default");
    let name = format!("valid-{}", std::process::id());
    let created = api
        .create(&PostParams::default(), &cluster(&name, valid_spec()))
        .await
        .unwrap();
    // Defaults from the schema are applied by the server.
    assert_eq!(created.spec.gateway.replicas, 2);
    assert_eq!(created.spec.persister.batch_size, 100);
    assert_eq!(created.spec.admin.replicas, 1);
    assert_eq!(created.spec.kafka.topics.messages, "chat.messages");
    api.delete(&name, &DeleteParams::default()).await.unwrap();

    let mut negative = valid_spec();
    negative["gateway"] = json!({"replicas": -1});
    let err = create_raw(&client, "realtimeclusters", json!({"apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster", "metadata": {"name": "negative"}, "spec": negative})).await.unwrap_err();
    assert!(err.contains("spec.gateway.replicas"), "{err}");

    let mut too_big = valid_spec();
    too_big["persister"] = json!({"batchSize": 1_000_000});
    let err = create_raw(&client, "realtimeclusters", json!({"apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster", "metadata": {"name": "too-big"}, "spec": too_big})).await.unwrap_err();
    assert!(err.contains("spec.persister.batchSize"), "{err}");

    let mut missing = valid_spec();
    missing.as_object_mut().unwrap().remove("image");
    let err = create_raw(&client, "realtimeclusters", json!({"apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster", "metadata": {"name": "missing"}, "spec": missing})).await.unwrap_err();
    assert!(err.contains("spec.image"), "{err}");

    let err = create_raw(&client, "turnpools", json!({"apiVersion": "realtime.dev/v1alpha1", "kind": "TurnPool", "metadata": {"name": "sctp"},
        "spec": {"servers": [{"host": "turn.example", "port": 3478, "transports": ["sctp"]}]}})).await.unwrap_err();
    assert!(err.contains("transports") && err.contains("sctp"), "{err}");

    let err = create_raw(&client, "turnpools", json!({"apiVersion": "realtime.dev/v1alpha1", "kind": "TurnPool", "metadata": {"name": "port"},
        "spec": {"servers": [{"host": "turn.example", "port": 70000, "transports": ["udp"]}]}})).await.unwrap_err();
    assert!(err.contains("port"), "{err}");

    let err = create_raw(&client, "kafkatopics", json!({"apiVersion": "realtime.dev/v1alpha1", "kind": "KafkaTopic", "metadata": {"name": "policy"},
        "spec": {"topicName": "t", "partitions": 3, "replicationFactor": 1, "deletionPolicy": "Shred", "clusterRef": {"name": "c"}}})).await.unwrap_err();
    assert!(err.contains("deletionPolicy"), "{err}");

    let err = create_raw(&client, "mongoindexes", json!({"apiVersion": "realtime.dev/v1alpha1", "kind": "MongoIndex", "metadata": {"name": "order"},
        "spec": {"collection": "messages", "keys": [{"field": "seq", "order": 2}], "clusterRef": {"name": "c"}}})).await.unwrap_err();
    assert!(err.contains("order"), "{err}");

    let turn: Api<TurnPool> = Api::namespaced(client.clone(), "default");
    assert!(
        turn.get_opt("sctp").await.unwrap().is_none(),
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn short_names_are_served() {
    let client = client().await;
    install_crds(&client).await;
    let req = http::Request::get("/apis/realtime.dev/v1alpha1")
        .body(Vec::new())
        .unwrap();
    let mut found = Vec::new();
    for _ in 0..50 {
        let list: serde_json::Value = client.request(req.clone()).await.unwrap();
        found = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| {
                Some((
                    r["kind"].as_str()?.to_owned(),
                    r["shortNames"]
                        .as_array()?
                        .iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect::<Vec<_>>(),
                ))
            })
            .collect();
        if found.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    found.sort();
    assert_eq!(
        found,
        vec![
            ("KafkaTopic".into(), vec!["kt".into()]),
            ("MongoIndex".into(), vec!["mi".into()]),
            ("RealtimeCluster".into(), vec!["rtc".into()]),
            ("TurnPool".into(), vec!["turn".into()]),
        ]
    );
}

fn kubectl(args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl not runnable ({e}): eval \"$(scripts/kube.sh env)\" puts it on PATH")
        });
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl args…` once it succeeds: each CRD's schema reaches discovery and OpenAPI
/// on its own, some time after it is Established, so every lookup waits for itself.
fn kubectl_eventually(args: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new("kubectl")
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "kubectl not runnable ({e}): eval \"$(scripts/kube.sh env)\" puts it on PATH"
                )
            });
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl {args:?} kept failing for 30 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn kubectl_explain_and_get_are_useful() {
    let client = client().await;
    install_crds(&client).await;
    for (field, doc) in [
        ("rtc.spec.gateway.replicas", "Number of gateway pods"),
        ("turn.spec.healthCheck", "Health checks of every server"),
        ("kt.spec.partitions", "can grow, never shrink"),
        ("mi.spec.keys", "Index keys"),
        ("rtc.spec.auth.jwksUrl", "JWT_JWKS_URL"),
        ("rtc.spec.admin.replicas", "Number of admin API pods"),
        (
            "rtc.spec.recordingConsentTimeoutSeconds",
            "RECORDING_CONSENT_TIMEOUT_SECONDS",
        ),
        (
            "rtc.spec.kafka.topics.recordingEvents",
            "KAFKA_RECORDING_TOPIC",
        ),
        (
            "rtc.spec.kafka.replicationFactor",
            "KAFKA_REPLICATION_FACTOR",
        ),
    ] {
        let explained = kubectl_eventually(&["explain", field]);
        assert!(
            explained
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(doc),
            "{field}: {explained}"
        );
    }

    let api: Api<RealtimeCluster> = Api::namespaced(client.clone(), "default");
    let name = format!("columns-{}", std::process::id());
    api.create(&PostParams::default(), &cluster(&name, valid_spec()))
        .await
        .unwrap();
    let table = kubectl(&["get", "rtc", &name, "-n", "default"]);
    let header = table.lines().next().unwrap();
    for column in ["NAME", "READY", "GATEWAYS", "PERSISTERS", "ENDPOINT", "AGE"] {
        assert!(header.contains(column), "{header}");
    }
    for kind in ["turn", "kt", "mi"] {
        kubectl_eventually(&["get", kind, "-n", "default"]);
    }
    api.delete(&name, &DeleteParams::default()).await.unwrap();
}
