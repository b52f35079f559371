//! Reconcile decisions in milliseconds, against a scripted API server: kube's
//! `tower_test` mock service answers every request the reconciler makes (the pattern of
//! kube-rs's controller-rs `ApiServerVerifier`), records it, and the test asserts on the
//! requests — which writes, which Events, nothing more. These stand in for the API server
//! on purpose (they pin the exact calls); the same behaviour is tested against a real
//! kube-apiserver in `realtime_cluster.rs` and `turn_pool.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use http::{Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher;
use realtime_operator::controller::turn_pool::PoolContext;
use realtime_operator::controller::{Context, realtime_cluster, turn_pool};
use realtime_operator::crd::condition::{REASON_MISSING_REFERENCE, STALLED};
use realtime_operator::crd::event::SECRET_ROTATED;
use realtime_operator::crd::{
    ROTATE_ANNOTATION, ROTATED_AT_ANNOTATION, ROTATION_REQUEST_ANNOTATION, RealtimeCluster,
    TurnPool,
};
use realtime_operator::metrics::Metrics;
use serde_json::{Value, json};

/// One request the reconciler made.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    body: Value,
}

impl Call {
    fn is(&self, method: &str, path_part: &str) -> bool {
        self.method == method && self.path.contains(path_part)
    }
}

/// What the scripted API server answers: `Some((status, body))` to override the default
/// (404 for a get, an empty list, the request body echoed for a write).
type Script = Box<dyn Fn(&Call) -> Option<(u16, Value)> + Send>;

/// Answers a read of the custom resource at `path` with `live`, and a write of its
/// status with `live` carrying that status.
fn resource(call: &Call, path: &str, live: &Value) -> Option<(u16, Value)> {
    if call.is("GET", path) {
        return Some((200, live.clone()));
    }
    if call.is("PATCH", &format!("{path}/status")) {
        let mut updated = live.clone();
        updated["status"] = call.body["status"].clone();
        return Some((200, updated));
    }
    None
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn default_answer(call: &Call) -> (u16, Value) {
    let path = call.path.split('?').next().unwrap_or_default();
    match call.method.as_str() {
        "GET" if call.path.contains("labelSelector=") => (
            200,
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}),
        ),
        "GET" => (404, not_found()),
        "DELETE" => (
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        _ => {
            let mut echoed = call.body.clone();
            if echoed["metadata"]["name"].is_null() {
                echoed["metadata"]["name"] = json!(path.rsplit('/').next().unwrap_or("x"));
            }
            (if call.method == "POST" { 201 } else { 200 }, echoed)
        }
    }
}

/// A client whose every request is answered by `script` and recorded; the calls are
/// returned once every clone of the client is dropped.
fn scripted(script: Script) -> (Client, tokio::task::JoinHandle<Vec<Call>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut calls = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = http_body_util::BodyExt::collect(body)
                .await
                .unwrap()
                .to_bytes();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (status, answer) = script(&call).unwrap_or_else(|| default_answer(&call));
            calls.push(call);
            respond.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
        calls
    });
    (Client::new(service, "ns"), server)
}

fn context(client: Client) -> Arc<Context> {
    let reporter = Reporter {
        controller: "realtime-operator".into(),
        instance: None,
    };
    let (reader, mut writer) = reflector::store::<RealtimeCluster>();
    writer.apply_watcher_event(&watcher::Event::InitDone);
    Arc::new(Context::new(
        client.clone(),
        Recorder::new(client, reporter),
        Metrics::default(),
        "policy/v1".into(),
        reader,
    ))
}

fn cluster(status: Option<Value>) -> RealtimeCluster {
    serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "metadata": {"name": "rc", "namespace": "ns", "uid": "rc-uid", "generation": 1},
        "spec": {
            "image": "realtime:test",
            "kafka": {"bootstrapServers": "kafka:9092"},
            "mongodb": {"uriSecretRef": {"name": "mongo", "key": "uri"}},
            "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
            "auth": {"jwtSecretRef": {"name": "jwt", "key": "secret"}},
        },
        "status": status,
    }))
    .unwrap()
}

fn secret(name: &str, key: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "ns"}, "data": {key: "dmFsdWU="}})
}

/// Reconciles `rc` against a scripted API server that serves `rc` itself (reads and
/// status writes) and answers the rest by `script`, then the default; returns the calls.
async fn reconcile_cluster(
    rc: RealtimeCluster,
    script: impl Fn(&Call) -> Option<(u16, Value)> + Send + 'static,
) -> Vec<Call> {
    let live = serde_json::to_value(&rc).unwrap();
    let (client, server) = scripted(Box::new(move |call| {
        resource(call, "/realtimeclusters/rc", &live)
            .or_else(|| script(call))
            .or_else(|| storage_ready(call))
    }));
    let ctx = context(client);
    realtime_cluster::reconcile(Arc::new(rc), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    server.await.unwrap()
}

/// The cluster's topics and indexes are `Ready`: an apply of one answers with the object
/// and a `Ready` condition (so the reconcile goes on to the data plane's Deployments).
fn storage_ready(call: &Call) -> Option<(u16, Value)> {
    if call.method == "PATCH"
        && (call.path.contains("/kafkatopics/") || call.path.contains("/mongoindexes/"))
    {
        let mut live = call.body.clone();
        live["status"] = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "InSync",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        return Some((200, live));
    }
    None
}

fn writes(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| c.method != "GET").collect()
}

#[tokio::test]
async fn a_missing_secret_gives_one_status_write_and_one_warning_event() {
    let calls = reconcile_cluster(cluster(None), |_| None).await;
    let writes = writes(&calls);
    assert_eq!(writes.len(), 2, "{writes:#?}");
    let status = writes[0];
    assert!(
        status.is("PATCH", "/realtimeclusters/rc/status"),
        "{status:?}"
    );
    let stalled = status.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == STALLED)
        .unwrap();
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], REASON_MISSING_REFERENCE);
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("Secret ns/mongo")
    );
    let event = writes[1];
    assert!(event.is("POST", "/events"), "{event:?}");
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], REASON_MISSING_REFERENCE);
}

#[tokio::test]
async fn a_reconcile_that_changes_nothing_writes_nothing() {
    // First reconcile: the status a missing Secret leads to…
    let calls = reconcile_cluster(cluster(None), |_| None).await;
    let written = calls
        .iter()
        .find(|c| c.is("PATCH", "/status"))
        .unwrap()
        .body["status"]
        .clone();
    // …is what the cluster carries now: reconciling again reads, and writes nothing.
    let calls = reconcile_cluster(cluster(Some(written)), |_| None).await;
    assert!(writes(&calls).is_empty(), "{calls:#?}");
    assert_eq!(calls.len(), 1, "one read of the missing Secret: {calls:#?}");
}

#[tokio::test]
async fn a_child_no_longer_wanted_is_deleted_and_announced() {
    // A TURN reader Role left from when the cluster had a turnPoolRef.
    let stale_role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "rc-turn-reader", "namespace": "ns", "uid": "role-uid",
            "ownerReferences": [{"apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster",
                "name": "rc", "uid": "rc-uid", "controller": true}]},
        "rules": [],
    });
    let calls = reconcile_cluster(cluster(None), move |call| {
        for (name, key) in [("mongo", "uri"), ("redis", "url"), ("jwt", "secret")] {
            if call.is("GET", &format!("/secrets/{name}")) {
                return Some((200, secret(name, key)));
            }
        }
        if call.is("GET", "/roles?") {
            return Some((
                200,
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleList",
                    "metadata": {"resourceVersion": "1"}, "items": [stale_role.clone()]}),
            ));
        }
        None
    })
    .await;
    let deletes: Vec<_> = calls.iter().filter(|c| c.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert!(
        deletes[0].path.contains("/roles/rc-turn-reader"),
        "{deletes:?}"
    );
    // Only if it is still the object listed (a namesake created since is kept).
    assert_eq!(deletes[0].body["preconditions"]["uid"], "role-uid");
    assert!(
        calls.iter().any(|c| c.is("POST", "/events")
            && c.body["note"]
                .as_str()
                .unwrap_or_default()
                .contains("rc-turn-reader")),
        "the deletion is announced: {calls:#?}"
    );
    // Every wanted child was applied, none deleted.
    for child in [
        "/serviceaccounts/rc",
        "/configmaps/rc-config",
        "/deployments/rc-gateway",
        "/deployments/rc-persister",
        "/deployments/rc-admin",
        "/services/rc-gateway",
        "/services/rc-admin",
    ] {
        assert!(
            calls.iter().any(|c| c.is("PATCH", child)),
            "{child} applied: {calls:#?}"
        );
    }
    // The admin API: its role, its Service selecting its pods, its URL and replicas in
    // status, and the cluster's Ready waiting for it too.
    let applied = |path: &str| {
        calls
            .iter()
            .find(|c| c.is("PATCH", path))
            .unwrap()
            .body
            .clone()
    };
    let admin = applied("/deployments/rc-admin");
    let env = &admin["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "ROLE" && e["value"] == "admin"),
        "{env}"
    );
    let service = applied("/services/rc-admin");
    assert_eq!(
        service["spec"]["selector"],
        admin["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(service["spec"]["ports"][0]["port"], 3000);
    let status = &applied("/realtimeclusters/rc/status")["status"];
    assert_eq!(
        status["endpoints"]["adminUrl"],
        "http://rc-admin.ns.svc:3000/v1/admin"
    );
    assert_eq!(status["admin"]["summary"], "0/1");
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("admin: not created yet"),
        "{ready}"
    );
}

#[tokio::test]
async fn a_requested_rotation_applies_a_new_secret_and_announces_it() {
    // Nothing listens on this port: the probe is refused at once.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let pool: TurnPool = serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "TurnPool",
        "metadata": {"name": "pool", "namespace": "ns", "uid": "pool-uid", "generation": 1,
            "annotations": {ROTATE_ANNOTATION: "2"}},
        "spec": {"servers": [{"host": "127.0.0.1", "port": port, "transports": ["udp"]}],
            "healthCheck": {"timeoutSeconds": 1}},
    }))
    .unwrap();
    let live = serde_json::to_value(&pool).unwrap();
    let rotated_at = Timestamp::now().to_string();
    let stored = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pool-turn-secret", "namespace": "ns",
            "annotations": {ROTATED_AT_ANNOTATION: rotated_at, ROTATION_REQUEST_ANNOTATION: "1"}},
        "data": {"current": "b2xkLXNlY3JldA=="},
    });
    let (client, server) = scripted(Box::new(move |call| {
        if call.is("GET", "/secrets/pool-turn-secret") {
            return Some((200, stored.clone()));
        }
        resource(call, "/turnpools/pool", &live)
    }));
    let ctx = Arc::new(PoolContext::new(context(client)));
    turn_pool::reconcile(Arc::new(pool), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    let calls = server.await.unwrap();
    let applied: Vec<_> = calls
        .iter()
        .filter(|c| c.is("PATCH", "/secrets/pool-turn-secret"))
        .collect();
    assert_eq!(applied.len(), 1, "{calls:#?}");
    let data = &applied[0].body["data"];
    // The old secret stays accepted as `previous`; a new one signs from now on.
    assert_eq!(data["previous"], "b2xkLXNlY3JldA==");
    assert!(data["current"].is_string() && data["current"] != data["previous"]);
    assert_eq!(
        applied[0].body["metadata"]["annotations"][ROTATION_REQUEST_ANNOTATION], "2",
        "the request is recorded as handled"
    );
    let events: Vec<_> = calls
        .iter()
        .filter(|c| c.is("POST", "/events") && c.body["reason"] == SECRET_ROTATED)
        .collect();
    assert_eq!(events.len(), 1, "{calls:#?}");
    assert!(
        !events[0].body.to_string().contains("b2xkLXNlY3JldA"),
        "no secret in Events"
    );
}
