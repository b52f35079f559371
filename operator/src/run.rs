//! Wires the controllers to the API server; used by the binary and by the tests.
//!
//! Watches: the RealtimeClusters and TurnPools in scope; the children the operator owns
//! (selected by its `managed-by` label); the other RealtimeClusters (a change of one can
//! start or stop another that shares its Kafka topics); and Secrets. Secrets are watched
//! for their metadata only (`PartialObjectMeta`: the API server sends no data): a change of a referenced Secret (or of a TurnPool's own
//! Secret, selected by label) triggers a reconcile, which then reads the one Secret it
//! needs by name. The operator never caches a Secret's data.

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};

use crate::controller::realtime_cluster::conflict;
use crate::controller::{Context, kafka_topic, mongo_index, realtime_cluster, turn_pool};

use crate::crd::{KafkaTopic, MongoIndex, RealtimeCluster, TurnPool};
pub use crate::leader::{LeaderExit, LeaseConfig, run_leader};
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

/// Whether the cache has been filled (or its writer is gone).
fn filled<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store.wait_until_ready().now_or_never().is_some()
}

/// Label of every child the operator makes.
const MANAGED: &str = "app.kubernetes.io/managed-by=realtime-operator";

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

/// Drains a controller's stream: a failed reconcile is already logged and backed off by
/// its error policy; here it is only traced.
async fn log_outcome<T, E: std::fmt::Display>(res: Result<T, E>) {
    if let Err(e) = res {
        tracing::debug!(error = %e, "controller event");
    }
}

/// The resources in `store` of `rc`'s namespace whose cluster (by `cluster_of`) is `rc`:
/// a MongoIndex or KafkaTopic applied before its RealtimeCluster (`kubectl apply -f
/// examples/` goes in file order) is reconciled again when the cluster appears or changes.
fn of_cluster<K>(
    store: &Store<K>,
    rc: &RealtimeCluster,
    cluster_of: impl Fn(&K) -> Option<&str>,
) -> Vec<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (name, namespace) = (rc.name_any(), rc.namespace());
    store
        .state()
        .into_iter()
        .filter(|o| o.namespace() == namespace && cluster_of(o) == Some(name.as_str()))
        .map(|o| ObjectRef::from_obj(&*o))
        .collect()
}

/// Runs the RealtimeCluster, TurnPool, MongoIndex and KafkaTopic controllers until
/// `shutdown` resolves.
pub async fn run_controllers(
    client: Client,
    namespace: Option<String>,
    metrics: Metrics,
    reporter: Reporter,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = namespace.as_deref();
    let recorder = Recorder::new(client.clone(), reporter);
    let clusters: Api<RealtimeCluster> = api(&client, ns);
    let controller = Controller::new(clusters, watcher::Config::default());
    let store = controller.store();
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        metrics,
        pdb_api_version(&client).await,
        store.clone(),
    ));
    let (by_secret, by_pool, by_cluster) = (store.clone(), store.clone(), store.clone());
    let owned = watcher::Config::default().labels(MANAGED);
    let pool_secrets = watcher::Config::default().labels(&format!(
        "{MANAGED},app.kubernetes.io/component=turn-secret"
    ));
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let pools = Controller::new(api::<TurnPool>(&client, ns), watcher::Config::default());
    let pool_store = pools.store();
    let pools = pools
        .owns(api::<PartialObjectMeta<Secret>>(&client, ns), pool_secrets)
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            turn_pool::reconcile,
            turn_pool::error_policy,
            Arc::new(turn_pool::PoolContext::new(ctx.clone())),
        )
        .for_each(log_outcome);
    let indexes = Controller::new(api::<MongoIndex>(&client, ns), watcher::Config::default());
    let index_store = indexes.store();
    let by_index = index_store.clone();
    let indexes = indexes
        .watches(
            api::<RealtimeCluster>(&client, ns),
            watcher::Config::default(),
            move |rc| of_cluster(&by_index, &rc, |mi| Some(mi.spec.cluster_ref.name.as_str())),
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(
            mongo_index::reconcile,
            mongo_index::error_policy,
            Arc::new(mongo_index::IndexContext::new(ctx.clone())),
        )
        .for_each(log_outcome);
    let topics = Controller::new(api::<KafkaTopic>(&client, ns), watcher::Config::default());
    let topic_store = topics.store();
    let (by_topic, by_topic_cluster) = (topic_store.clone(), topic_store.clone());
    let topics = topics
        // A KafkaTopic that gave way to an older one of the same topic takes over when
        // that one goes or changes.
        .watches(
            api::<KafkaTopic>(&client, ns),
            watcher::Config::default(),
            move |kt| kafka_topic::same_topic(&kt, &by_topic.state()),
        )
        .watches(
            api::<RealtimeCluster>(&client, ns),
            watcher::Config::default(),
            move |rc| {
                of_cluster(&by_topic_cluster, &rc, |kt| {
                    kt.spec.cluster_ref.as_ref().map(|r| r.name.as_str())
                })
            },
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(
            kafka_topic::reconcile,
            kafka_topic::error_policy,
            Arc::new(kafka_topic::TopicContext::new(
                ctx.clone(),
                topic_store.clone(),
            )),
        )
        .for_each(log_outcome);
    let clusters = controller
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<KafkaTopic>(&client, ns), owned.clone())
        .owns(api::<MongoIndex>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned)
        .watches(
            api::<PartialObjectMeta<Secret>>(&client, ns),
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
        .watches(
            api::<RealtimeCluster>(&client, ns),
            watcher::Config::default(),
            move |changed| conflict::affected(&changed, &by_cluster.state()),
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(
            realtime_cluster::reconcile,
            realtime_cluster::error_policy,
            ctx,
        )
        .for_each(log_outcome);
    // kube-runtime holds a controller's runner until its cache is filled, also through a
    // graceful shutdown; with the watches stopped it would wait forever. Before the caches
    // are filled nothing is being reconciled, so a shutdown then stops at once.
    let before_ready = async move {
        shutdown.await;
        if filled(&store) && filled(&pool_store) && filled(&index_store) && filled(&topic_store) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = futures::future::join4(clusters, pools, indexes, topics) => {}
        () = before_ready => tracing::debug!("stopped before the caches were filled"),
    }
}
