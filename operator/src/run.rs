//! Wires the controllers to the API server; used by the binary and by the tests.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};

use crate::controller::{Context, realtime_cluster, turn_pool};
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

/// The clusters in `object`'s namespace for which `refers(cluster, object name)` holds.
fn referencing<K: kube::Resource>(
    store: &Store<RealtimeCluster>,
    object: &K,
    refers: impl Fn(&RealtimeCluster, &str) -> bool,
) -> Vec<ObjectRef<RealtimeCluster>> {
    let (name, ns) = (object.name_any(), object.namespace());
    store
        .state()
        .into_iter()
        .filter(|rc| rc.namespace() == ns && refers(rc, &name))
        .map(|rc| ObjectRef::from_obj(&*rc))
        .collect()
}

/// Runs the RealtimeCluster and TurnPool controllers until `shutdown` resolves.
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
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let pools = Controller::new(api::<TurnPool>(&client, ns), watcher::Config::default())
        .owns(api::<Secret>(&client, ns), owned.clone())
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(turn_pool::reconcile, turn_pool::error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let clusters = controller
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned)
        .watches(
            api::<Secret>(&client, ns),
            watcher::Config::default(),
            move |secret| {
                referencing(&by_secret, &secret, |rc, name| {
                    crate::render::secret_env(rc)
                        .iter()
                        .any(|(_, r)| r.name == name)
                })
            },
        )
        .watches(
            api::<TurnPool>(&client, ns),
            watcher::Config::default(),
            move |pool| {
                referencing(&by_pool, &pool, |rc, name| {
                    rc.spec
                        .turn_pool_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name)
                })
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
        });
    futures::join!(clusters, pools);
}

/// Leader election on a `coordination.k8s.io/v1` Lease.
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica (the pod name).
    pub identity: String,
    /// Seconds a lease stays valid without renewal; a follower takes over after it.
    pub duration_seconds: u64,
}

/// Why [`run_leader`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaderExit {
    /// Shutdown was requested.
    Shutdown,
    /// The lease was lost: stop writing now, let the process restart and campaign again.
    LostLease,
}

/// Waits for the Lease, runs the controllers while it is held, and stops them the moment
/// it is lost, so two replicas never both reconcile.
pub async fn run_leader(
    client: Client,
    namespace: Option<String>,
    metrics: Metrics,
    reporter: Reporter,
    lease: LeaseConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<LeaderExit, kube_lease_manager::LeaseManagerError> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace((lease.duration_seconds / 3).max(1))
        .build()
        .await?;
    let (mut leader, task) = manager.watch().await;
    let mut shutdown = Box::pin(shutdown);
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            () = &mut shutdown => {
                drop(leader);
                let _ = task.await;
                return Ok(LeaderExit::Shutdown);
            }
            changed = leader.changed() => if changed.is_err() {
                return Ok(LeaderExit::LostLease);
            },
        }
    }
    tracing::info!(identity = %lease.identity, lease = %lease.name, "acquired the lease; reconciling");
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<LeaderExit>();
    let mut watch = leader.clone();
    let stop = async move {
        let why = tokio::select! {
            () = &mut shutdown => LeaderExit::Shutdown,
            () = async {
                while watch.changed().await.is_ok() {
                    if !*watch.borrow_and_update() {
                        return;
                    }
                }
            } => LeaderExit::LostLease,
        };
        let _ = lost_tx.send(why);
    };
    run_controllers(client, namespace, metrics, reporter, stop).await;
    let why = lost_rx.await.unwrap_or(LeaderExit::Shutdown);
    // Closing the channel makes the manager release the lease for a fast hand-over.
    drop(leader);
    match task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                tracing::warn!(error = %e, "releasing the lease failed; it expires by itself");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "lease manager ended with an error"),
        Err(e) => tracing::warn!(error = %e, "lease manager task failed"),
    }
    Ok(why)
}
