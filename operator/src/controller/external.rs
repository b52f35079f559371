//! What the reconcilers of resources that stand for an object outside Kubernetes (a
//! MongoIndex's index, a KafkaTopic's topic) share: the pause annotation, a finalizer kept
//! only while `deletionPolicy: Delete` (so a `Retain` resource never waits in Terminating),
//! conditions written with the observed generation, a stall with one Warning Event per
//! change, a deletion that cannot finish reported with its way out, and how a short
//! Service name in a connection string is dialled from the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;

use super::{Context, Error, WithStatus, publish, update_status};
use crate::crd::condition::*;
use crate::crd::{DeletionPolicy, PAUSE_ANNOTATION, condition, merge_conditions};

/// A resource that stands for an external object.
pub trait External: WithStatus + ResourceExt {
    /// Held while `deletionPolicy: Delete`, until the object is gone.
    const FINALIZER: &'static str;
    /// What the object is called in messages ("index", "topic").
    const OBJECT: &'static str;
    fn deletion_policy(&self) -> DeletionPolicy;
    fn conditions(status: &Self::Status) -> &[Condition];
    /// Sets the conditions and the generation they speak of.
    fn set_conditions(
        status: &mut Self::Status,
        conditions: Vec<Condition>,
        generation: Option<i64>,
    );
}

/// The condition message when the pause annotation is set, else `None`.
pub fn paused<K: ResourceExt>(obj: &K) -> Option<String> {
    (obj.annotations().get(PAUSE_ANNOTATION).map(String::as_str) == Some("true"))
        .then(|| format!("{PAUSE_ANNOTATION} is \"true\": not reconciled until it is removed"))
}

/// `Reconciling` (as `on` says) and `Stalled` false, with `reason` and `message`.
pub fn reconciling<K: ResourceExt>(
    on: bool,
    reason: &str,
    message: &str,
    obj: &K,
) -> Vec<Condition> {
    let generation = obj.meta().generation;
    vec![
        condition(RECONCILING, on, reason, message.to_owned(), generation),
        condition(STALLED, false, reason, message.to_owned(), generation),
    ]
}

/// Writes `conditions` (merged: an unchanged condition keeps its transition time; types
/// not given are dropped) and whatever `fill` adds. Returns the status replaced, or `None`
/// when nothing changed.
pub async fn write<K: External>(
    obj: &K,
    ctx: &Context,
    conditions: Vec<Condition>,
    fill: impl Fn(&mut K::Status),
) -> Result<Option<K::Status>, Error> {
    let generation = obj.meta().generation;
    update_status(obj, ctx, |current| {
        let mut status = current.clone();
        let merged = merge_conditions(K::conditions(current), conditions.clone(), now());
        K::set_conditions(&mut status, merged, generation);
        fill(&mut status);
        status
    })
    .await
}

/// Writes the paused conditions; `Ready` keeps what it said (a pause changes nothing
/// outside, so whoever waits on the resource is not disturbed).
pub async fn pause<K: External>(obj: &K, ctx: &Context, message: &str) -> Result<(), Error> {
    let mut conditions = reconciling(false, REASON_PAUSED, message, obj);
    let ready = obj
        .status_of()
        .and_then(|s| K::conditions(s).iter().find(|c| c.type_ == READY).cloned());
    conditions.extend(ready);
    write(obj, ctx, conditions, |_| {}).await?;
    Ok(())
}

/// `Stalled` with `reason`, not `Ready`, and one Warning Event per change.
pub async fn stall<K: External>(
    obj: &K,
    ctx: &Context,
    reason: &str,
    problem: String,
    fill: impl Fn(&mut K::Status),
) -> Result<(), Error> {
    let generation = obj.meta().generation;
    let conditions = vec![
        condition(READY, false, reason, problem.clone(), generation),
        condition(STALLED, true, reason, problem.clone(), generation),
        condition(RECONCILING, false, reason, problem.clone(), generation),
    ];
    if write(obj, ctx, conditions, fill).await?.is_some() {
        publish(ctx, obj, EventType::Warning, reason, "Reconcile", problem).await;
    }
    Ok(())
}

/// Reports a failure that a retry may cure (server unreachable, a refused call): not
/// `Ready`, still `Reconciling`. A failure to write it is logged, not returned: the
/// caller returns its own error.
pub async fn failing<K: External>(obj: &K, ctx: &Context, reason: &str, problem: &str) {
    let generation = obj.meta().generation;
    let conditions = vec![
        condition(READY, false, reason, problem.to_owned(), generation),
        condition(RECONCILING, true, reason, problem.to_owned(), generation),
    ];
    if let Err(e) = write(obj, ctx, conditions, |_| {}).await {
        tracing::warn!(error = %e, "reporting a failure in the status failed");
    }
}

/// Adds the finalizer while the policy is `Delete`, removes it when it is `Retain`.
pub async fn keep_finalizer_in_line<K: External>(obj: &K, api: &Api<K>) -> Result<(), Error> {
    let has = obj.finalizers().iter().any(|f| f == K::FINALIZER);
    let wants = obj.deletion_policy() == DeletionPolicy::Delete;
    if has == wants {
        return Ok(());
    }
    set_finalizer(obj, api, wants).await
}

/// Whether the resource holds its finalizer (only then is there work on deletion).
pub fn holds_finalizer<K: External>(obj: &K) -> bool {
    obj.finalizers().iter().any(|f| f == K::FINALIZER)
}

/// Adds or removes the finalizer, as a compare-and-swap of the whole list.
pub async fn set_finalizer<K: External>(obj: &K, api: &Api<K>, present: bool) -> Result<(), Error> {
    let mut finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != K::FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(K::FINALIZER.to_owned());
    }
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": obj.resource_version(),
    }});
    let name = obj.name_any();
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::patching(api, &name))?;
    Ok(())
}

/// A deletion that could not remove the external object: a Warning Event and a
/// condition that say why and how to let the resource go without it.
pub async fn deletion_blocked<K: External>(
    obj: &K,
    ctx: &Context,
    event_reason: &str,
    problem: &str,
) -> Result<(), Error> {
    let note = format!(
        "{problem}; the resource stays until the {object} can be deleted. To keep the {object} and let the resource go, set spec.deletionPolicy: Retain (or remove the finalizer {finalizer})",
        object = K::OBJECT,
        finalizer = K::FINALIZER,
    );
    publish(
        ctx,
        obj,
        EventType::Warning,
        event_reason,
        "Delete",
        note.clone(),
    )
    .await;
    let generation = obj.meta().generation;
    write(
        obj,
        ctx,
        vec![condition(READY, false, REASON_DELETING, note, generation)],
        |_| {},
    )
    .await?;
    Ok(())
}

/// `host` as the operator must dial it: a name without a dot (a Service of the
/// resource's namespace, e.g. `mongo`) becomes `mongo.<ns>.svc`; anything else is kept.
/// The data plane's pods, in that namespace, resolve the short name themselves.
pub fn in_namespace(host: &str, ns: &str) -> String {
    if host.contains('.') || host.contains(':') || host == "localhost" {
        host.to_owned()
    } else {
        format!("{host}.{ns}.svc")
    }
}

pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_service_names_are_taken_in_the_resources_namespace() {
        assert_eq!(in_namespace("mongo", "chat"), "mongo.chat.svc");
        assert_eq!(
            in_namespace("mongo.db.svc.cluster.local", "chat"),
            "mongo.db.svc.cluster.local"
        );
        assert_eq!(in_namespace("127.0.0.1", "chat"), "127.0.0.1");
        assert_eq!(in_namespace("localhost", "chat"), "localhost");
        assert_eq!(in_namespace("::1", "chat"), "::1");
    }
}
