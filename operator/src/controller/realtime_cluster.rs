//! RealtimeCluster reconciler: dereference → validate → render → apply → status.
//!
//! Children are server-side applied with one field manager and owned by the cluster, so
//! deleting the cluster garbage-collects them. A checksum of the rendered configuration
//! and of the referenced Secrets' values sits in the pod templates: changing either rolls
//! the pods. Nothing secret is logged, put in status or in an Event.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Context, Error, MANAGER, apply, instrumented, object_key, publish, retry_later};
use crate::crd::condition::*;
use crate::crd::{
    ComponentStatus, Endpoints, RealtimeCluster, RealtimeClusterStatus, TurnPool, condition,
    merge_conditions,
};
use crate::render;

const KIND: &str = "RealtimeCluster";
/// Periodic re-check even when nothing changes (children's readiness comes by watch).
const RESYNC: Duration = Duration::from_secs(300);

/// What the references resolved to: the checksum input, or why they could not.
enum References {
    Resolved { checksum: String },
    Missing(String),
}

pub async fn reconcile(rc: Arc<RealtimeCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    instrumented(&ctx, KIND, &object_key(&*rc), reconcile_inner(&rc, &ctx)).await
}

pub fn error_policy(rc: Arc<RealtimeCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    retry_later(&ctx, KIND, &object_key(&*rc), error)
}

async fn reconcile_inner(rc: &RealtimeCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = rc
        .namespace()
        .ok_or_else(|| Error::Invalid("RealtimeCluster must be namespaced".into()))?;
    let generation = rc.metadata.generation;
    let current = rc.status.clone().unwrap_or_default();

    match resolve_references(rc, ctx, &ns).await? {
        References::Missing(message) => {
            let was_stalled = is_true(&current.conditions, STALLED);
            let conditions = vec![
                condition(
                    READY,
                    false,
                    REASON_MISSING_REFERENCE,
                    message.clone(),
                    generation,
                ),
                condition(
                    RECONCILING,
                    false,
                    REASON_MISSING_REFERENCE,
                    "waiting for the reference to appear",
                    generation,
                ),
                condition(
                    STALLED,
                    true,
                    REASON_MISSING_REFERENCE,
                    message.clone(),
                    generation,
                ),
            ];
            let status = RealtimeClusterStatus {
                conditions: merge_conditions(&current.conditions, conditions, now()),
                observed_generation: generation,
                ..current.clone()
            };
            patch_status(rc, ctx, &ns, &status, &current).await?;
            if !was_stalled {
                publish(
                    ctx,
                    rc,
                    EventType::Warning,
                    REASON_MISSING_REFERENCE,
                    "Reconcile",
                    message,
                )
                .await;
            }
            // The Secret and TurnPool watches bring us back as soon as the reference appears.
            Ok(Action::requeue(RESYNC))
        }
        References::Resolved { checksum } => {
            apply_children(rc, ctx, &ns, &checksum).await?;
            let (gateway, persister) = component_status(rc, ctx, &ns).await?;
            let ready = gateway.ready_replicas >= gateway.replicas
                && persister.ready_replicas >= persister.replicas;
            let progress = format!(
                "gateway {}/{} ready, persister {}/{} ready",
                gateway.ready_replicas,
                gateway.replicas,
                persister.ready_replicas,
                persister.replicas
            );
            let conditions = if ready {
                vec![
                    condition(READY, true, REASON_AVAILABLE, progress.clone(), generation),
                    condition(
                        RECONCILING,
                        false,
                        REASON_RECONCILED,
                        "children match the spec",
                        generation,
                    ),
                    condition(
                        STALLED,
                        false,
                        REASON_RECONCILED,
                        "all references resolved",
                        generation,
                    ),
                ]
            } else {
                vec![
                    condition(
                        READY,
                        false,
                        REASON_PROGRESSING,
                        format!("waiting for replicas: {progress}"),
                        generation,
                    ),
                    condition(
                        RECONCILING,
                        true,
                        REASON_PROGRESSING,
                        progress.clone(),
                        generation,
                    ),
                    condition(
                        STALLED,
                        false,
                        REASON_PROGRESSING,
                        "all references resolved",
                        generation,
                    ),
                ]
            };
            let (websocket_url, admin_url) = render::endpoints(rc);
            let status = RealtimeClusterStatus {
                conditions: merge_conditions(&current.conditions, conditions, now()),
                observed_generation: generation,
                endpoints: Some(Endpoints {
                    websocket_url,
                    admin_url,
                }),
                gateway: Some(gateway),
                persister: Some(persister),
                config_checksum: Some(checksum.clone()),
            };
            let recovered = is_true(&current.conditions, STALLED);
            let rolled = current
                .config_checksum
                .as_deref()
                .is_some_and(|old| old != checksum);
            patch_status(rc, ctx, &ns, &status, &current).await?;
            if recovered {
                publish(
                    ctx,
                    rc,
                    EventType::Normal,
                    "Recovered",
                    "Reconcile",
                    "references resolved; children applied".into(),
                )
                .await;
            }
            if rolled {
                publish(
                    ctx,
                    rc,
                    EventType::Normal,
                    "ConfigChanged",
                    "RollPods",
                    "configuration or a referenced Secret changed; rolling the pods".into(),
                )
                .await;
            }
            Ok(Action::requeue(RESYNC))
        }
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

/// Loads the referenced Secrets (every key must exist) and the TurnPool, and computes the
/// checksum of the configuration and the Secret values.
async fn resolve_references(
    rc: &RealtimeCluster,
    ctx: &Context,
    ns: &str,
) -> Result<References, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&render::config_data(rc))?);
    for (var, r) in render::secret_env(rc) {
        let Some(secret) = secrets.get_opt(&r.name).await? else {
            return Ok(References::Missing(format!(
                "Secret {}/{} (for {var}) does not exist; create it with key {:?}",
                ns, r.name, r.key
            )));
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|v| v.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .map(|v| v.clone().into_bytes())
            });
        let Some(value) = value else {
            return Ok(References::Missing(format!(
                "Secret {}/{} has no key {:?} (for {var}); add it",
                ns, r.name, r.key
            )));
        };
        hasher.update(var.as_bytes());
        hasher.update(&value);
    }
    if let Some(pool) = &rc.spec.turn_pool_ref {
        let pools: Api<TurnPool> = Api::namespaced(ctx.client.clone(), ns);
        if pools.get_opt(&pool.name).await?.is_none() {
            return Ok(References::Missing(format!(
                "TurnPool {ns}/{} (spec.turnPoolRef) does not exist; create it or remove the reference",
                pool.name
            )));
        }
    }
    let digest = hasher.finalize();
    Ok(References::Resolved {
        checksum: digest.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

async fn apply_children(
    rc: &RealtimeCluster,
    ctx: &Context,
    ns: &str,
    checksum: &str,
) -> Result<(), Error> {
    let client = &ctx.client;
    let name = rc.name_any();
    apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        &name,
        &render::service_account(rc),
    )
    .await?;
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        &render::config_name(&name),
        &render::config_map(rc),
    )
    .await?;
    if let Some((role, binding)) = render::turn_reader_role(rc) {
        let role_name = render::turn_reader_name(&name);
        apply(
            &Api::<Role>::namespaced(client.clone(), ns),
            &role_name,
            &role,
        )
        .await?;
        apply(
            &Api::<RoleBinding>::namespaced(client.clone(), ns),
            &role_name,
            &binding,
        )
        .await?;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    apply(
        &deployments,
        &render::gateway_name(&name),
        &render::deployment(rc, "gateway", checksum),
    )
    .await?;
    apply(
        &deployments,
        &render::persister_name(&name),
        &render::deployment(rc, "persister", checksum),
    )
    .await?;
    apply(
        &Api::<Service>::namespaced(client.clone(), ns),
        &render::gateway_name(&name),
        &render::gateway_service(rc),
    )
    .await?;
    let (group, version) = ctx
        .pdb_api_version
        .split_once('/')
        .unwrap_or(("policy", "v1"));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        group,
        version,
        "PodDisruptionBudget",
    ));
    let pdbs: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let pdb: DynamicObject = serde_json::from_value(render::gateway_pdb(rc, &ctx.pdb_api_version))?;
    apply(&pdbs, &render::gateway_name(&name), &pdb).await
}

async fn component_status(
    rc: &RealtimeCluster,
    ctx: &Context,
    ns: &str,
) -> Result<(ComponentStatus, ComponentStatus), Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let name = rc.name_any();
    let read = |desired: i32, d: Option<Deployment>| {
        let ready = d
            .and_then(|d| d.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        ComponentStatus {
            replicas: desired,
            ready_replicas: ready,
            summary: format!("{ready}/{desired}"),
        }
    };
    let gateway = read(
        rc.spec.gateway.replicas,
        deployments.get_opt(&render::gateway_name(&name)).await?,
    );
    let persister = read(
        rc.spec.persister.replicas,
        deployments.get_opt(&render::persister_name(&name)).await?,
    );
    Ok((gateway, persister))
}

/// Writes the status by server-side apply, and only when it differs: a reconcile that
/// changes nothing writes nothing.
async fn patch_status(
    rc: &RealtimeCluster,
    ctx: &Context,
    ns: &str,
    status: &RealtimeClusterStatus,
    current: &RealtimeClusterStatus,
) -> Result<(), Error> {
    if status == current {
        return Ok(());
    }
    let api: Api<RealtimeCluster> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({
        "apiVersion": RealtimeCluster::api_version(&()),
        "kind": KIND,
        "status": status,
    });
    api.patch_status(
        &rc.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
