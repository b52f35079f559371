//! The Argo CD health checks of `argocd/` (one Lua script, linked from each kind's
//! directory in Argo CD's `resource_customizations/<group>/<kind>/` layout), run by the
//! real Lua 5.1 interpreter (Debian's `lua5.1`; Argo CD's gopher-lua is 5.1 too):
//! - every case of each kind's `health_test.yaml` against its `testdata/` (objects the
//!   operator wrote, captured by this test with `REALTIME_CAPTURE_ARGOCD=1`);
//! - the resources the in-process operator writes right now against the local
//!   kube-apiserver, broker and MongoDB-compatible server: Healthy, Progressing,
//!   Suspended (paused) and Degraded (stalled, unhealthy servers), for all four kinds.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::{Kind, annotate, apply_spec, finish_rollout, wait_reason};
use common::{Env, eventually, minimal_cluster, stack_kafka};
use kube::api::PostParams;
use realtime_operator::crd::{KafkaTopic, MongoIndex, RealtimeCluster, TurnPool};
use serde_json::{Value, json};

const KINDS: [&str; 4] = ["RealtimeCluster", "TurnPool", "KafkaTopic", "MongoIndex"];

fn kind_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../argocd/resource_customizations/realtime.dev")
        .join(kind)
}

/// `value` as a Lua table constructor.
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let escaped: String = s
                .chars()
                .map(|c| match c {
                    '\\' => "\\\\".to_owned(),
                    '"' => "\\\"".to_owned(),
                    '\n' => "\\n".to_owned(),
                    c if (c as u32) < 0x20 => format!("\\{}", c as u32),
                    c => c.to_string(),
                })
                .collect();
            format!("\"{escaped}\"")
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}] = {}", lua(&Value::String(k.clone())), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// (status, message) of `obj` by the kind's `health.lua`, run by `lua5.1`.
fn health(kind: &str, obj: &Value) -> (String, String) {
    let script = kind_dir(kind).join("health.lua");
    assert!(script.exists(), "{} missing", script.display());
    let output = Command::new("lua5.1")
        .arg("-e")
        .arg(format!("obj = {}", lua(obj)))
        .arg("-e")
        .arg(format!(
            "local hs = dofile({}) io.write(hs.status, \"\\n\", hs.message or \"\")",
            lua(&Value::String(script.display().to_string()))
        ))
        .output()
        .unwrap_or_else(|e| {
            panic!("lua5.1 did not run ({e}): `apt-get install lua5.1` (scripts/test.sh does)")
        });
    assert!(
        output.status.success(),
        "health.lua failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = String::from_utf8(output.stdout).unwrap();
    let (status, message) = out.split_once('\n').unwrap_or((&out, ""));
    (status.to_owned(), message.to_owned())
}

#[test]
fn every_kind_passes_its_health_test_yaml() {
    for kind in KINDS {
        let dir = kind_dir(kind);
        let tests: Value =
            serde_norway::from_str(&std::fs::read_to_string(dir.join("health_test.yaml")).unwrap())
                .unwrap();
        let cases = tests["tests"].as_array().unwrap();
        assert!(!cases.is_empty(), "{kind} has test cases");
        for case in cases {
            let input = case["inputPath"].as_str().unwrap();
            let obj: Value =
                serde_norway::from_str(&std::fs::read_to_string(dir.join(input)).unwrap()).unwrap();
            let (status, message) = health(kind, &obj);
            assert_eq!(status, case["healthStatus"]["status"], "{kind} {input}");
            assert_eq!(message, case["healthStatus"]["message"], "{kind} {input}");
        }
    }
}

#[test]
fn an_object_without_status_is_progressing() {
    let obj = json!({"metadata": {"name": "x", "generation": 1}, "spec": {}});
    for kind in KINDS {
        assert_eq!(health(kind, &obj).0, "Progressing");
    }
}

/// The live object, for the script and (with `REALTIME_CAPTURE_ARGOCD=1`) as testdata:
/// what identifies one run (uids, versions, times of the API server) is left out.
async fn live<K: Kind>(env: &Env, name: &str) -> Value {
    let mut value = serde_json::to_value(env.api::<K>().get(name).await.unwrap()).unwrap();
    let meta = value["metadata"].as_object_mut().unwrap();
    for key in [
        "managedFields",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "ownerReferences",
        "annotations",
    ] {
        meta.remove(key);
    }
    meta.insert("namespace".into(), json!("chat"));
    value
}

/// Checks the health of the live `K` named `name`, and captures it as testdata `file`
/// when asked to.
async fn check<K: Kind>(env: &Env, name: &str, file: &str, status: &str, text: &str) {
    let kind = K::kind(&()).into_owned();
    let obj = live::<K>(env, name).await;
    let (got, message) = health(&kind, &obj);
    assert_eq!(got, status, "{kind} {name}: {message}\n{obj:#}");
    assert!(message.contains(text), "{kind} {name}: {message}");
    if std::env::var("REALTIME_CAPTURE_ARGOCD").is_ok() {
        let dir = kind_dir(&kind);
        std::fs::write(
            dir.join("testdata").join(format!("{file}.yaml")),
            serde_norway::to_string(&obj).unwrap(),
        )
        .unwrap();
        let tests_path = dir.join("health_test.yaml");
        let mut tests: Value = std::fs::read_to_string(&tests_path)
            .ok()
            .and_then(|t| serde_norway::from_str(&t).ok())
            .unwrap_or_else(|| json!({"tests": []}));
        let cases = tests["tests"].as_array_mut().unwrap();
        let input = format!("testdata/{file}.yaml");
        cases.retain(|c| c["inputPath"] != input.as_str());
        cases
            .push(json!({"healthStatus": {"status": got, "message": message}, "inputPath": input}));
        cases.sort_by_key(|c| c["inputPath"].as_str().unwrap_or_default().to_owned());
        std::fs::write(&tests_path, serde_norway::to_string(&tests).unwrap()).unwrap();
    }
}

#[tokio::test]
async fn the_statuses_the_operator_writes_have_the_health_they_should() {
    let env = Env::start("argocd").await;
    env.minimal_cluster_secret().await;
    let clusters = env.api::<RealtimeCluster>();
    clusters
        .create(&PostParams::default(), &minimal_cluster("chat"))
        .await
        .unwrap();

    // RealtimeCluster: rolling out (no kubelet yet) → Progressing; rolled out → Healthy.
    eventually("the cluster waiting for its rollout", 60, || async {
        let rc = clusters.get("chat").await.unwrap();
        let message = &rc
            .status?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")?
            .message
            .clone();
        message.starts_with("waiting for the rollout").then_some(())
    })
    .await;
    check::<RealtimeCluster>(
        &env,
        "chat",
        "progressing",
        "Progressing",
        "waiting for the rollout",
    )
    .await;
    finish_rollout(&env, "chat", "gateway").await;
    finish_rollout(&env, "chat", "persister").await;
    finish_rollout(&env, "chat", "admin").await;
    wait_reason::<RealtimeCluster>(&env, "chat", "Ready", "True", "Available").await;
    check::<RealtimeCluster>(&env, "chat", "healthy", "Healthy", "ready").await;

    // KafkaTopic: in sync → Healthy; paused → Suspended; fewer partitions → Degraded.
    let topic = format!("{}.argocd", env.ns);
    let spec = json!({"topicName": topic, "partitions": 2, "replicationFactor": 1,
        "bootstrapServers": stack_kafka()});
    apply_spec::<KafkaTopic>(&env, "events", spec.clone()).await;
    wait_reason::<KafkaTopic>(&env, "events", "Ready", "True", "InSync").await;
    check::<KafkaTopic>(&env, "events", "healthy", "Healthy", "InSync").await;
    annotate::<KafkaTopic>(&env, "events", "realtime.dev/paused", json!("true")).await;
    wait_reason::<KafkaTopic>(&env, "events", "Reconciling", "False", "Paused").await;
    check::<KafkaTopic>(&env, "events", "paused", "Suspended", "Paused").await;
    // A pause leaves Ready as it was (whoever waits on the resource is not disturbed).
    let paused = env.api::<KafkaTopic>().get("events").await.unwrap();
    let conditions = paused.status.unwrap().conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{conditions:?}"
    );
    annotate::<KafkaTopic>(&env, "events", "realtime.dev/paused", json!(null)).await;
    let mut fewer = spec;
    fewer["partitions"] = json!(1);
    apply_spec::<KafkaTopic>(&env, "events", fewer).await;
    wait_reason::<KafkaTopic>(&env, "events", "Stalled", "True", "PartitionDecrease").await;
    check::<KafkaTopic>(
        &env,
        "events",
        "partition-decrease",
        "Degraded",
        "PartitionDecrease",
    )
    .await;

    // MongoIndex: created → Healthy; its spec changed while the index's options conflict
    // → Degraded.
    let index = json!({"collection": "argocd", "keys": [{"field": "a", "order": 1}],
        "database": format!("argocd_{}", env.ns.replace('-', "_")), "clusterRef": {"name": "chat"}});
    apply_spec::<MongoIndex>(&env, "by-a", index.clone()).await;
    wait_reason::<MongoIndex>(&env, "by-a", "Ready", "True", "InSync").await;
    check::<MongoIndex>(&env, "by-a", "healthy", "Healthy", "InSync").await;
    let mut unique = index;
    unique["unique"] = json!(true);
    apply_spec::<MongoIndex>(&env, "by-a", unique).await;
    wait_reason::<MongoIndex>(&env, "by-a", "Stalled", "True", "Conflict").await;
    check::<MongoIndex>(&env, "by-a", "conflict", "Degraded", "replaceConflicting").await;

    // TurnPool: its only server does not answer → Degraded.
    let pool = json!({"servers": [{"host": "127.0.0.1", "port": 9, "transports": ["udp"]}]});
    apply_spec::<TurnPool>(&env, "edge", pool).await;
    wait_reason::<TurnPool>(&env, "edge", "Ready", "False", "NoHealthyServers").await;
    check::<TurnPool>(&env, "edge", "no-healthy-servers", "Degraded", "none of 1").await;
    env.stop().await;
}
