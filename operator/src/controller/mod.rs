//! Reconcilers and what they share: the context, errors and per-object back-off, and
//! the pruning of children no longer wanted ([`children`]).

pub mod children;
pub mod external;
pub mod kafka_topic;
pub mod mongo_index;
pub mod realtime_cluster;
pub mod turn_pool;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use serde::Serialize;

use crate::crd::RealtimeCluster;
use crate::metrics::Metrics;

/// The single field manager of every server-side apply the operator makes.
pub const MANAGER: &str = "realtime-operator";

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// `policy/v1` or, on servers before 1.21, `policy/v1beta1`.
    pub pdb_api_version: String,
    /// Every RealtimeCluster the operator watches (the controller's cache), to find
    /// installations that would share Kafka topics.
    pub clusters: Store<RealtimeCluster>,
    backoff: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Metrics,
        pdb_api_version: String,
        clusters: Store<RealtimeCluster>,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            pdb_api_version,
            clusters,
            backoff: Mutex::default(),
        }
    }

    /// Next retry delay of an object after a failure: 1 s doubling to 5 min, with jitter.
    pub fn failed(&self, key: &str) -> Duration {
        let attempt = {
            let mut map = self
                .backoff
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = map.entry(key.to_owned()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        backoff_delay(attempt, jitter_fraction(key, attempt))
    }

    /// Forgets an object's failures after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

/// Delay for the `attempt`-th consecutive failure: base 1 s × 2^(attempt-1), capped at
/// 300 s, then scaled into [50 %, 100 %] by `jitter` ∈ [0, 1).
pub fn backoff_delay(attempt: u32, jitter: f64) -> Duration {
    let base = 2f64
        .powi(i32::try_from(attempt.saturating_sub(1).min(16)).unwrap_or(16))
        .min(300.0);
    Duration::from_secs_f64(base * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
}

fn jitter_fraction(key: &str, attempt: u32) -> f64 {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one((key, attempt));
    (h % 1000) as f64 / 1000.0
}

/// `namespace/name`, the key of per-object state (back-off, probe times) and of log lines.
pub fn object_key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// Runs one reconcile of `obj` with its metrics, records it as finished (with the
/// `resourceVersion` it worked on), and forgets the object's failures when it works.
pub async fn instrumented<K: Resource>(
    ctx: &Context,
    kind: &'static str,
    obj: &K,
    run: impl Future<Output = Result<kube::runtime::controller::Action, Error>>,
) -> Result<kube::runtime::controller::Action, Error> {
    let key = object_key(obj);
    let started = std::time::Instant::now();
    let label = crate::metrics::KindLabel { kind };
    ctx.metrics.reconciliations.get_or_create(&label).inc();
    let result = run.await;
    ctx.metrics
        .duration
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    ctx.metrics
        .finished(kind, &key, obj.meta().resource_version.clone());
    result
}

/// The error policy of every controller: count, log, and retry after the object's
/// back-off.
pub fn retry_later(
    ctx: &Context,
    kind: &'static str,
    key: &str,
    error: &Error,
) -> kube::runtime::controller::Action {
    ctx.metrics
        .errors
        .get_or_create(&crate::metrics::ErrorLabel {
            kind,
            category: error.category(),
        })
        .inc();
    let delay = ctx.failed(key);
    tracing::warn!(kind, object = %key, category = error.category(), ?delay, "reconcile failed: {error}");
    kube::runtime::controller::Action::requeue(delay)
}

/// Server-side applies `obj` with the operator's field manager; returns the object as
/// the server now has it (status included).
pub async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Apply {
        what: path_of(api, name),
        source,
    })
}

/// Server-side applies `status` as the status of the `K` named `name`, with the
/// operator's field manager.
pub async fn apply_status<K>(api: &Api<K>, name: &str, status: &impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::WriteStatus {
        what: path_of(api, name),
        source,
    })?;
    Ok(())
}

/// A custom resource whose status the operator writes.
pub trait WithStatus:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    type Status: Clone + PartialEq + Default + Serialize;
    fn status_of(&self) -> Option<&Self::Status>;
}

impl WithStatus for RealtimeCluster {
    type Status = crate::crd::RealtimeClusterStatus;
    fn status_of(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl WithStatus for crate::crd::MongoIndex {
    type Status = crate::crd::MongoIndexStatus;
    fn status_of(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl WithStatus for crate::crd::KafkaTopic {
    type Status = crate::crd::KafkaTopicStatus;
    fn status_of(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl WithStatus for crate::crd::TurnPool {
    type Status = crate::crd::TurnPoolStatus;
    fn status_of(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

/// Writes the status that `build` makes of the current one, by server-side apply, and
/// only when it differs: a reconcile that changes nothing writes nothing. The cached
/// object can lag behind the operator's own last write (its watch event not in yet), so
/// a difference is confirmed against the live object before writing — else a stale
/// cache would rewrite a condition's `lastTransitionTime`. Returns the status replaced,
/// or `None` when nothing was written.
pub async fn update_status<K: WithStatus>(
    obj: &K,
    ctx: &Context,
    build: impl Fn(&K::Status) -> K::Status,
) -> Result<Option<K::Status>, Error> {
    let cached = obj.status_of().cloned().unwrap_or_default();
    if build(&cached) == cached {
        return Ok(None);
    }
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(
        ctx.client.clone(),
        obj.meta().namespace.as_deref().unwrap_or_default(),
    );
    let live = api
        .get(&name)
        .await
        .map_err(Error::reading(&api, &name))?
        .status_of()
        .cloned()
        .unwrap_or_default();
    let status = build(&live);
    if status == live {
        return Ok(None);
    }
    apply_status(&api, &name, &status).await?;
    Ok(Some(live))
}

/// Publishes a Kubernetes Event about `obj`; a failure is logged, never fatal. The note
/// must never hold secret material.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an Event failed");
    }
}

/// Reconcile failures: which call failed, on what (the object's API path), and why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {what}: {source}")]
    Read { what: String, source: kube::Error },
    #[error("listing {what}: {source}")]
    List { what: String, source: kube::Error },
    #[error("applying {what}: {source}")]
    Apply { what: String, source: kube::Error },
    #[error("changing {what}: {source}")]
    Patch { what: String, source: kube::Error },
    #[error("writing the status of {what}: {source}")]
    WriteStatus { what: String, source: kube::Error },
    #[error("deleting {what}: {source}")]
    Delete { what: String, source: kube::Error },
    /// A database (MongoDB) call failed; the message says which and why.
    #[error("database: {0}")]
    Database(String),
    /// A Kafka Admin API call failed; the message says which and why.
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The API path of the `K` named `name` in `api`, for error messages.
pub fn path_of<K: Resource>(api: &Api<K>, name: &str) -> String {
    format!("{}/{name}", api.resource_url())
}

impl Error {
    pub fn category(&self) -> &'static str {
        match self {
            Error::Read { .. }
            | Error::List { .. }
            | Error::Apply { .. }
            | Error::Patch { .. }
            | Error::WriteStatus { .. }
            | Error::Delete { .. } => "kube_api",
            Error::Database(_) => "database",
            Error::Kafka(_) => "kafka",
            Error::Serialization(_) => "serialization",
            Error::Invalid(_) => "invalid",
        }
    }

    /// The API server's refusal, when that is what failed.
    pub fn api_status(&self) -> Option<&kube::core::Status> {
        match self {
            Error::Read { source, .. }
            | Error::List { source, .. }
            | Error::Apply { source, .. }
            | Error::Patch { source, .. }
            | Error::WriteStatus { source, .. }
            | Error::Delete { source, .. } => match source {
                kube::Error::Api(e) => Some(e),
                _ => None,
            },
            _ => None,
        }
    }

    /// `map_err` for a failed get of the `K` named `name`.
    pub fn reading<K: Resource>(api: &Api<K>, name: &str) -> impl FnOnce(kube::Error) -> Error {
        let what = path_of(api, name);
        move |source| Error::Read { what, source }
    }

    /// `map_err` for a failed list of `api` (with `selector`).
    pub fn listing<K: Resource>(api: &Api<K>, selector: &str) -> impl FnOnce(kube::Error) -> Error {
        let what = format!("{} ({selector})", api.resource_url());
        move |source| Error::List { what, source }
    }

    /// `map_err` for a failed merge patch of the `K` named `name`.
    pub fn patching<K: Resource>(api: &Api<K>, name: &str) -> impl FnOnce(kube::Error) -> Error {
        let what = path_of(api, name);
        move |source| Error::Patch { what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        assert_eq!(backoff_delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(4, 1.0), Duration::from_secs(8));
        assert_eq!(backoff_delay(30, 1.0), Duration::from_secs(300));
        assert_eq!(backoff_delay(30, 0.0), Duration::from_secs(150));
        assert_eq!(backoff_delay(3, 0.5), Duration::from_secs(3));
    }
}
