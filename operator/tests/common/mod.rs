//! Helpers shared by the tests that need the local kube-apiserver.
#![allow(dead_code)]

pub mod cluster;
pub mod operator;
pub mod proxy;
pub mod token;
pub mod turn;

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use kube::{Client, ResourceExt};
use realtime_operator::crd;
use realtime_operator::metrics::Metrics;

pub async fn client() -> Client {
    if std::env::var_os("KUBECONFIG").is_none() {
        panic!(
            "KUBECONFIG is not set: run `scripts/kube.sh up` and `eval \"$(scripts/kube.sh env)\"` (scripts/test.sh does both)"
        );
    }
    Client::try_default()
        .await
        .expect("a kube client from KUBECONFIG")
}

/// Installs (or replaces) the CRDs with plain create/replace: on 1.20 a server-side apply
/// of a CRD carrying `x-kubernetes-validations` (unknown there) is refused.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for c in crd::all() {
        let name = c.name_any();
        // Tests run concurrently: retry on a conflicting write by another test.
        for attempt in 0.. {
            let result = match api.get_opt(&name).await.unwrap() {
                Some(existing) => {
                    let mut c = c.clone();
                    c.metadata.resource_version = existing.resource_version();
                    api.replace(&name, &PostParams::default(), &c)
                        .await
                        .map(|_| ())
                }
                None => api.create(&PostParams::default(), &c).await.map(|_| ()),
            };
            match result {
                Ok(()) => break,
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < 20 => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("installing {name}: {e}"),
            }
        }
    }
    // Wait until every CRD is Established.
    for c in crd::all() {
        let name = c.name_any();
        let mut established = false;
        for _ in 0..100 {
            let got = api.get(&name).await.unwrap();
            established = got
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(established, "{name} not established");
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `secs` seconds.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The namespace annotation (PodNodeSelector admission, enabled by scripts/kube.sh) that
/// keeps a test's pods off any node: these tests play the kubelet's part themselves
/// (patching pod and Deployment status), so a real kubelet must not run their pods when
/// scripts/node.sh has added a node.
pub fn no_node() -> serde_json::Value {
    serde_json::json!({"scheduler.alpha.kubernetes.io/node-selector": "realtime.dev/test-pods=never"})
}

/// Installs the CRDs and creates a namespace of its own for one test.
pub async fn test_namespace(client: &Client, prefix: &str) -> String {
    install_crds(client).await;
    let ns = format!("{prefix}-{}", std::process::id());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let body = serde_json::from_value(
        serde_json::json!({"metadata": {"name": ns, "annotations": no_node()}}),
    )
    .unwrap();
    namespaces
        .create(&PostParams::default(), &body)
        .await
        .unwrap();
    ns
}

/// Deletes a test's namespace (and so everything in it); a failure is no test's concern.
pub async fn delete_namespace(client: &Client, ns: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

/// Creates or replaces Secret `name` in `ns` with exactly these keys.
pub async fn secret_keys(client: &Client, ns: &str, name: &str, pairs: &[(&str, &str)]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

/// Creates or replaces Secret `s` in `ns` with every key [`minimal_cluster`] reads.
pub async fn minimal_cluster_secret(client: &Client, ns: &str) {
    secret_keys(
        client,
        ns,
        "s",
        &[
            ("mongo", &stack_mongodb()),
            ("redis", "redis://r"),
            ("jwt", "j"),
        ],
    )
    .await;
}

/// Waits until the `A` and the `B` named `name` both exist; returns them.
pub async fn wait_both<A, B>(a: &Api<A>, b: &Api<B>, name: &str) -> (A, B)
where
    A: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    B: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let what = format!("{} and {} {name}", A::kind(&()), B::kind(&()));
    eventually(&what, 30, || async {
        Some((
            a.get_opt(name).await.unwrap()?,
            b.get_opt(name).await.unwrap()?,
        ))
    })
    .await
}

/// Waits until neither the `A` nor the `B` named `name` exists.
pub async fn wait_both_gone<A, B>(a: &Api<A>, b: &Api<B>, name: &str)
where
    A: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    B: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let what = format!("{} and {} {name} deleted", A::kind(&()), B::kind(&()));
    eventually(&what, 60, || async {
        let gone_a = a.get_opt(name).await.unwrap().is_none();
        let gone_b = b.get_opt(name).await.unwrap().is_none();
        (gone_a && gone_b).then_some(())
    })
    .await;
}

/// The stack's Kafka-protocol broker (`scripts/stack.sh`). A RealtimeCluster's data plane
/// only starts once the operator has made its topics and indexes, so the clusters of the
/// tests name the real broker and database.
pub fn stack_kafka() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("KAFKA_BROKERS is not set: run `scripts/stack.sh up` and `eval \"$(scripts/stack.sh env)\"` (scripts/test.sh does both)")
    })
}

/// The stack's MongoDB-compatible server (see [`stack_kafka`]).
pub fn stack_mongodb() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| {
        panic!("MONGODB_URI is not set: run `scripts/stack.sh up` and `eval \"$(scripts/stack.sh env)\"` (scripts/test.sh does both)")
    })
}

/// Topic names no other test run shares (the broker outlives the tests' namespaces).
pub fn own_topics(name: &str) -> serde_json::Value {
    let run = std::process::id();
    serde_json::json!({
        "messages": format!("t{run}.{name}.messages"),
        "persistenceEvents": format!("t{run}.{name}.events"),
        "recordingEvents": format!("t{run}.{name}.recordings"),
    })
}

/// The smallest valid RealtimeCluster on the stack's broker and database, reading Secret
/// `s` (keys mongo, redis, jwt: see [`minimal_cluster_secret`]), with Kafka topics of its
/// own (clusters sharing topics on one broker do not both run).
pub fn minimal_cluster(name: &str) -> realtime_operator::crd::RealtimeCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster", "metadata": {"name": name},
        "spec": {
            "image": "realtime:test",
            "kafka": {"bootstrapServers": stack_kafka(), "topics": own_topics(name)},
            "mongodb": {"uriSecretRef": {"name": "s", "key": "mongo"}},
            "redis": {"urlSecretRef": {"name": "s", "key": "redis"}},
            "auth": {"jwtSecretRef": {"name": "s", "key": "jwt"}},
        }
    }))
    .unwrap()
}

/// The operator's controllers running in-process, scoped to a fresh namespace.
pub struct Env {
    pub client: Client,
    pub ns: String,
    /// The in-process operator's metrics, with its per-object reconcile counts.
    pub metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Env {
    pub async fn start(prefix: &str) -> Env {
        let client = client().await;
        let ns = test_namespace(&client, prefix).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let reporter = Reporter {
            controller: "realtime-operator-test".into(),
            instance: None,
        };
        let metrics = Metrics::default();
        let task = tokio::spawn(realtime_operator::run::run_controllers(
            client.clone(),
            Some(ns.clone()),
            metrics.clone(),
            reporter,
            async move {
                let _ = stopped.await;
            },
        ));
        Env {
            client,
            ns,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn secret(&self, name: &str, key: &str, value: &str) {
        self.secret_keys(name, &[(key, value)]).await;
    }

    /// Creates or replaces Secret `name` with exactly these keys.
    pub async fn secret_keys(&self, name: &str, pairs: &[(&str, &str)]) {
        secret_keys(&self.client, &self.ns, name, pairs).await;
    }

    /// Creates or replaces Secret `s` with every key [`minimal_cluster`] reads.
    pub async fn minimal_cluster_secret(&self) {
        minimal_cluster_secret(&self.client, &self.ns).await;
    }

    /// Waits until the operator has caught up with the `kind` named `name`: a reconcile
    /// counted after `before` has finished and worked on the object's latest version.
    /// Returns that `resourceVersion`.
    pub async fn caught_up(&self, kind: &'static str, name: &str, before: u64) -> String {
        let key = format!("{}/{name}", self.ns);
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                crd::GROUP,
                "v1alpha1",
                kind,
            )),
        );
        eventually(
            &format!("the operator to catch up with {kind} {key}"),
            30,
            || async {
                let latest = api.get(name).await.unwrap().resource_version()?;
                let seen = self.metrics.reconciled(kind, &key);
                (seen.count > before && seen.resource_version.as_deref() == Some(&latest))
                    .then_some(latest)
            },
        )
        .await
    }

    /// Reconciles of the `kind` named `name` finished so far.
    pub fn reconciles(&self, kind: &'static str, name: &str) -> u64 {
        self.metrics
            .reconciled(kind, &format!("{}/{name}", self.ns))
            .count
    }

    /// Waits until `more` reconciles of the `kind` named `name` have finished after `from`.
    pub async fn reconciles_after(&self, kind: &'static str, name: &str, from: u64, more: u64) {
        eventually(
            &format!("{more} more finished reconciles of {kind} {name}"),
            30,
            || async { (self.reconciles(kind, name) >= from + more).then_some(()) },
        )
        .await;
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        delete_namespace(&self.client, &self.ns).await;
    }
}
