//! RealtimeCluster reconciler: validate → topic conflicts → dereference → apply → prune
//! → status.
//!
//! Children are server-side applied with one field manager and owned by the cluster, so
//! deleting the cluster garbage-collects them; children the spec no longer asks for are
//! deleted at once ([`apply::prune`]). A checksum of the rendered configuration and of the
//! referenced Secrets' values sits in the pod templates: changing either rolls the pods.
//! `Ready` waits for every rollout to complete ([`decide::rollout`]). A cluster that
//! shares Kafka topics with an older one on the same broker does not run
//! ([`conflict`]). Nothing secret is logged, put in status or in an Event.

mod apply;
pub mod conflict;
pub mod decide;
mod references;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::{Context, Error, instrumented, object_key, publish, retry_later, update_status};
use crate::crd::condition::*;
use crate::crd::{
    ComponentStatus, Endpoints, RealtimeCluster, RealtimeClusterStatus, merge_conditions,
};
use crate::render::{self, Component};
use references::References;

pub const KIND: &str = "RealtimeCluster";
/// Periodic re-check even when nothing changes (children's readiness comes by watch).
const RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile(rc: Arc<RealtimeCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    instrumented(&ctx, KIND, &*rc, reconcile_inner(&rc, &ctx)).await
}

pub fn error_policy(rc: Arc<RealtimeCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    retry_later(&ctx, KIND, &object_key(&*rc), error)
}

async fn reconcile_inner(rc: &RealtimeCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = rc
        .namespace()
        .ok_or_else(|| Error::Invalid("RealtimeCluster must be namespaced".into()))?;
    if let Some((reason, message)) = decide::invalid(rc) {
        // Only a spec change helps; the cluster's own watch brings that.
        stall(rc, ctx, reason, message, None).await?;
        return Ok(Action::await_change());
    }
    // Every cluster the operator sees, for the topic-conflict check. The cache fills
    // before the first reconcile; it is only gone when the controller stops.
    if ctx.clusters.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    if let Some(lost) = conflict::find(rc, &ctx.clusters.state()) {
        stop_for_conflict(rc, ctx, &ns, &lost).await?;
        // Changes of other clusters bring this one back (see `run`).
        return Ok(Action::requeue(RESYNC));
    }
    let checksum = match references::resolve(rc, ctx, &ns).await? {
        References::Missing(message) => {
            stall(rc, ctx, REASON_MISSING_REFERENCE, message, None).await?;
            // The Secret and TurnPool watches bring us back as soon as it appears.
            return Ok(Action::requeue(RESYNC));
        }
        References::Resolved { checksum } => checksum,
    };
    let applied = apply::children(rc, ctx, &ns, &checksum).await?;
    apply::prune(rc, ctx, &ns, &applied.children).await?;
    report_rollout(rc, ctx, &ns, &checksum, &applied.storage_waits).await?;
    Ok(Action::requeue(RESYNC))
}

/// A cluster that lost a topic conflict: its data plane scaled to 0, `Stalled` saying
/// which cluster and topic it conflicts with.
async fn stop_for_conflict(
    rc: &RealtimeCluster,
    ctx: &Context,
    ns: &str,
    lost: &conflict::Conflict,
) -> Result<(), Error> {
    apply::stop_data_plane(rc, ctx, ns).await?;
    let components = apply::deployments(rc, ctx, ns)
        .await?
        .into_iter()
        .map(|(c, d)| (c, decide::rollout(0, d.as_ref()).0))
        .collect();
    stall(
        rc,
        ctx,
        REASON_TOPIC_CONFLICT,
        lost.message(),
        Some(components),
    )
    .await
}

/// The rollout of every Deployment in status (replicas, `Ready`/`Reconciling`, the
/// endpoints, the configuration checksum), with an Event when the cluster recovers from a
/// stall and when a configuration change rolls the pods.
async fn report_rollout(
    rc: &RealtimeCluster,
    ctx: &Context,
    ns: &str,
    checksum: &str,
    storage_waits: &[String],
) -> Result<(), Error> {
    let generation = rc.metadata.generation;
    let deployments = apply::deployments(rc, ctx, ns).await?;
    let decide::Rollout {
        components,
        conditions,
    } = decide::cluster_conditions(rc, &deployments, storage_waits);
    let replaced = update_status(rc, ctx, |current| {
        let mut status = RealtimeClusterStatus {
            conditions: merge_conditions(&current.conditions, conditions.clone(), now()),
            observed_generation: generation,
            endpoints: Some(Endpoints {
                websocket_url: render::websocket_url(rc),
                admin_url: Some(render::admin_url(rc)),
            }),
            config_checksum: Some(checksum.to_owned()),
            ..RealtimeClusterStatus::default()
        };
        report_components(&mut status, &components);
        status
    })
    .await?;
    let Some(previous) = replaced else {
        return Ok(());
    };
    if is_true(&previous.conditions, STALLED) {
        publish(
            ctx,
            rc,
            EventType::Normal,
            crate::crd::event::RECOVERED,
            "Reconcile",
            "nothing blocks the cluster any more; children applied".into(),
        )
        .await;
    }
    if previous
        .config_checksum
        .as_deref()
        .is_some_and(|old| old != checksum)
    {
        publish(
            ctx,
            rc,
            EventType::Normal,
            crate::crd::event::CONFIG_CHANGED,
            "RollPods",
            "configuration or a referenced Secret changed; rolling the pods".into(),
        )
        .await;
    }
    Ok(())
}

/// Reports that the cluster cannot go on: `Stalled` with `reason`, not `Ready`, and one
/// Warning Event each time the reason or message changes. `components` replaces the
/// replica counts in status when the data plane was changed (stopped).
async fn stall(
    rc: &RealtimeCluster,
    ctx: &Context,
    reason: &str,
    message: String,
    components: Option<Vec<(Component, ComponentStatus)>>,
) -> Result<(), Error> {
    let generation = rc.metadata.generation;
    let conditions = decide::stalled(reason, &message, generation);
    let replaced = update_status(rc, ctx, |current| {
        let mut status = RealtimeClusterStatus {
            conditions: merge_conditions(&current.conditions, conditions.clone(), now()),
            observed_generation: generation,
            ..current.clone()
        };
        report_components(&mut status, components.iter().flatten());
        status
    })
    .await?;
    let announced = |status: &RealtimeClusterStatus| {
        status.conditions.iter().any(|c| {
            c.type_ == STALLED && c.status == "True" && c.reason == reason && c.message == message
        })
    };
    if replaced.is_some_and(|previous| !announced(&previous)) {
        publish(ctx, rc, EventType::Warning, reason, "Reconcile", message).await;
    }
    Ok(())
}

/// Puts each component's replica counts in its field of `status`.
fn report_components<'a>(
    status: &mut RealtimeClusterStatus,
    components: impl IntoIterator<Item = &'a (Component, ComponentStatus)>,
) {
    for (component, replicas) in components {
        let field = match component {
            Component::Gateway => &mut status.gateway,
            Component::Persister => &mut status.persister,
            Component::Admin => &mut status.admin,
        };
        *field = Some(replicas.clone());
    }
}

fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
