//! Wires the controllers to the API server; used by the binary and by the tests.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};

use crate::controller::{Context, realtime_cluster};
use crate::crd::{RealtimeCluster, TurnPool};
use crate::metrics::Metrics;

/// `policy/v1` when the server has it (1.21+), else `policy/v1beta1`.
pub async fn pdb_api_version(client: &Client) -> String {
    match client.list_api_group_resources("policy/v1").await {
        Ok(list)
            if list
                .resources
                .iter()
                .any(|r| r.kind == "PodDisruptionBudget") =>
        {
            "policy/v1".into()
        }
        _ => "policy/v1beta1".into(),
    }
}

/// Scope of the watches: one namespace, or all.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the RealtimeCluster controller until `shutdown` resolves.
pub async fn run_controllers(
    client: Client,
    namespace: Option<String>,
    metrics: Metrics,
    reporter: Reporter,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = namespace.as_deref();
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        metrics,
        pdb_api_version(&client).await,
    ));
    let clusters: Api<RealtimeCluster> = api(&client, ns);
    let controller = Controller::new(clusters, watcher::Config::default());
    let store = controller.store();
    let by_secret = store.clone();
    let by_pool = store;
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=realtime-operator");
    controller
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned)
        .watches(
            api::<Secret>(&client, ns),
            watcher::Config::default(),
            move |secret| {
                let (name, ns) = (secret.name_any(), secret.namespace());
                by_secret
                    .state()
                    .into_iter()
                    .filter(|rc| {
                        rc.namespace() == ns
                            && crate::render::secret_env(rc)
                                .iter()
                                .any(|(_, r)| r.name == name)
                    })
                    .map(|rc| ObjectRef::from_obj(&*rc))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            api::<TurnPool>(&client, ns),
            watcher::Config::default(),
            move |pool| {
                let (name, ns) = (pool.name_any(), pool.namespace());
                by_pool
                    .state()
                    .into_iter()
                    .filter(|rc| {
                        rc.namespace() == ns
                            && rc
                                .spec
                                .turn_pool_ref
                                .as_ref()
                                .is_some_and(|r| r.name == name)
                    })
                    .map(|rc| ObjectRef::from_obj(&*rc))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(
            realtime_cluster::reconcile,
            realtime_cluster::error_policy,
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}
