//! The committed `crds/*.yaml` are exactly what the Rust types generate, and the schema
//! carries the contract of SPEC.md §2 (field names, short names, validation).
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use realtime_operator::crd;
use serde_json::Value;

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_match_the_types() {
    for (dir, c) in ["crds", "helm/realtime-operator/crds"]
        .into_iter()
        .flat_map(|d| crd::all().into_iter().map(move |c| (d, c)))
    {
        let path = repo_root().join(dir).join(crd::file_name(&c));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p realtime-operator --bin crdgen -- crds helm/realtime-operator/crds`",
                path.display()
            )
        });
        assert_eq!(
            committed,
            crd::to_yaml(&c).unwrap(),
            "{} drifted from the Rust types; run `cargo run -p realtime-operator --bin crdgen -- crds helm/realtime-operator/crds`",
            path.display()
        );
    }
}

fn schema(kind: &str) -> Value {
    let c = crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    serde_json::to_value(
        &c.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap()
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, p| &v["properties"][*p])
}

#[test]
fn short_names_and_status_subresource() {
    let names: Vec<(String, Vec<String>)> = crd::all()
        .into_iter()
        .map(|c| {
            (
                c.spec.names.kind.clone(),
                c.spec.names.short_names.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("RealtimeCluster".into(), vec!["rtc".into()]),
            ("TurnPool".into(), vec!["turn".into()]),
            ("KafkaTopic".into(), vec!["kt".into()]),
            ("MongoIndex".into(), vec!["mi".into()]),
        ]
    );
    for c in crd::all() {
        assert_eq!(c.spec.group, "realtime.dev");
        let v = &c.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{}",
            c.spec.names.kind
        );
        let columns = v.additional_printer_columns.as_ref().unwrap();
        assert!(
            columns.iter().any(|col| col.name == "Ready"),
            "{}",
            c.spec.names.kind
        );
    }
}

#[test]
fn contract_field_names_exist() {
    let turn = schema("TurnPool");
    for f in [
        "servers",
        "managed",
        "credentialTTLSeconds",
        "rotation",
        "healthCheck",
    ] {
        assert!(!at(&turn, &["spec", f]).is_null(), "TurnPool spec.{f}");
    }
    for f in ["host", "port", "transports"] {
        assert!(
            !at(&turn, &["spec", "servers"])["items"]["properties"][f].is_null(),
            "servers[].{f}"
        );
    }
    assert_eq!(
        at(&turn, &["spec", "servers"])["items"]["properties"]["transports"]["items"]["enum"],
        serde_json::json!(["udp", "tcp", "tls"])
    );
    for f in [
        "host",
        "port",
        "healthy",
        "lastProbeTime",
        "rttMillis",
        "consecutiveFailures",
        "message",
    ] {
        assert!(
            !at(&turn, &["status", "servers"])["items"]["properties"][f].is_null(),
            "status.servers[].{f}"
        );
    }
    for f in [
        "intervalSeconds",
        "timeoutSeconds",
        "failureThreshold",
        "successThreshold",
    ] {
        assert!(
            !at(&turn, &["spec", "healthCheck", f]).is_null(),
            "healthCheck.{f}"
        );
    }
    let topic = schema("KafkaTopic");
    for f in [
        "topicName",
        "partitions",
        "replicationFactor",
        "config",
        "deletionPolicy",
        "clusterRef",
    ] {
        assert!(!at(&topic, &["spec", f]).is_null(), "KafkaTopic spec.{f}");
    }
    assert_eq!(
        at(&topic, &["spec", "deletionPolicy"])["enum"],
        serde_json::json!(["Retain", "Delete"])
    );
    let index = schema("MongoIndex");
    for f in [
        "database",
        "collection",
        "keys",
        "name",
        "unique",
        "sparse",
        "expireAfterSeconds",
        "partialFilterExpression",
        "deletionPolicy",
        "clusterRef",
    ] {
        assert!(!at(&index, &["spec", f]).is_null(), "MongoIndex spec.{f}");
    }
    let rtc = schema("RealtimeCluster");
    for f in [
        "image",
        "gateway",
        "persister",
        "admin",
        "kafka",
        "mongodb",
        "redis",
        "auth",
        "turnPoolRef",
        "limits",
    ] {
        assert!(
            !at(&rtc, &["spec", f]).is_null(),
            "RealtimeCluster spec.{f}"
        );
    }
    assert_eq!(at(&rtc, &["spec", "gateway", "replicas"])["minimum"], 0.0);
    assert_eq!(
        at(&rtc, &["spec", "persister", "batchSize"])["maximum"],
        10000.0
    );
}

#[test]
fn every_spec_field_is_documented() {
    fn walk(kind: &str, path: &str, v: &Value, missing: &mut Vec<String>) {
        if let Some(props) = v["properties"].as_object() {
            for (name, p) in props {
                let here = format!("{path}.{name}");
                if p["description"].as_str().unwrap_or("").is_empty()
                    && !here.contains(".status.")
                    && !here.contains("resources")
                {
                    missing.push(format!("{kind} {here}"));
                }
                walk(kind, &here, p, missing);
                walk(kind, &here, &p["items"], missing);
            }
        }
    }
    let mut missing = vec![];
    for kind in ["RealtimeCluster", "TurnPool", "KafkaTopic", "MongoIndex"] {
        walk(
            kind,
            "",
            &at(&schema(kind), &["spec"]).clone(),
            &mut missing,
        );
    }
    assert!(
        missing.is_empty(),
        "fields without docs (kubectl explain shows nothing): {missing:#?}"
    );
}
