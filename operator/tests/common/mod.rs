//! Helpers shared by the tests that need the local kube-apiserver.
#![allow(dead_code)]

use std::time::Duration;

use std::collections::BTreeMap;

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

/// Installs the CRDs and creates a namespace of its own for one test.
pub async fn test_namespace(client: &Client, prefix: &str) -> String {
    install_crds(client).await;
    let ns = format!("{prefix}-{}", std::process::id());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let body = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    namespaces
        .create(&PostParams::default(), &body)
        .await
        .unwrap();
    ns
}

/// The smallest valid RealtimeCluster, reading Secret `s` (keys mongo, redis, jwt).
pub fn minimal_cluster(name: &str) -> realtime_operator::crd::RealtimeCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster", "metadata": {"name": name},
        "spec": {
            "image": "realtime:test",
            "kafka": {"bootstrapServers": "k:9092"},
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
        let task = tokio::spawn(realtime_operator::run::run_controllers(
            client.clone(),
            Some(ns.clone()),
            Metrics::default(),
            reporter,
            async move {
                let _ = stopped.await;
            },
        ));
        Env {
            client,
            ns,
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
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                key.to_owned(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        self.api::<Secret>()
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap();
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(&self.ns, &DeleteParams::default()).await;
    }
}
