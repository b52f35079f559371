//! Writing a RealtimeCluster's children: server-side apply of everything the spec asks
//! for, deletion of what it no longer asks for, and stopping the data plane of a cluster
//! that may not run.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use serde_json::json;

use super::Error;
use crate::controller::children::{Children, announce_pruned, describe};
use crate::controller::{Context, MANAGER, apply, path_of};
use crate::crd::{KafkaTopic, MongoIndex, RealtimeCluster};
use crate::render;

/// What one apply did: the children applied, and the topics and indexes not `Ready` yet
/// (`KafkaTopic <name>: <reason>`).
pub struct Applied {
    pub children: Children,
    pub storage_waits: Vec<String>,
}

/// Applies every child the spec asks for. The data plane's Deployments are first created
/// only once its topics and indexes are `Ready`: a producer would otherwise let the
/// broker create a missing topic with its own defaults, and the persister checks for the
/// unique `message_id` index when it starts. Once they exist they are kept up to date
/// whatever the topics and indexes do (a paused KafkaTopic never stops a running data plane).
pub async fn children(
    rc: &RealtimeCluster,
    ctx: &Context,
    ns: &str,
    checksum: &str,
) -> Result<Applied, Error> {
    let client = &ctx.client;
    let name = rc.name_any();
    let mut wanted = Children::of(rc)?;
    wanted
        .apply(
            &Api::<ServiceAccount>::namespaced(client.clone(), ns),
            &name,
            &render::service_account(rc),
        )
        .await?;
    wanted
        .apply(
            &Api::<ConfigMap>::namespaced(client.clone(), ns),
            &render::config_name(&name),
            &render::config_map(rc),
        )
        .await?;
    if let Some((role, binding)) = render::turn_reader_role(rc) {
        let role_name = render::turn_reader_name(&name);
        wanted
            .apply(
                &Api::<Role>::namespaced(client.clone(), ns),
                &role_name,
                &role,
            )
            .await?;
        wanted
            .apply(
                &Api::<RoleBinding>::namespaced(client.clone(), ns),
                &role_name,
                &binding,
            )
            .await?;
    }
    let storage_waits = storage(rc, ctx, ns, &mut wanted).await?;
    let running = deployments(rc, ctx, ns)
        .await?
        .iter()
        .any(|(_, d)| d.is_some());
    if storage_waits.is_empty() || running {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        for component in render::Component::ALL {
            wanted
                .apply(
                    &deployments,
                    &component.deployment_name(&name),
                    &render::deployment(rc, component, checksum),
                )
                .await?;
        }
    }
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let gateway = render::gateway_name(&name);
    wanted
        .apply(&services, &gateway, &render::gateway_service(rc))
        .await?;
    wanted
        .apply(
            &services,
            &render::admin_name(&name),
            &render::admin_service(rc),
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
    apply(&pdbs, &gateway, &pdb).await?;
    Ok(Applied {
        children: wanted,
        storage_waits,
    })
}

/// Applies the cluster's KafkaTopic and MongoIndex children and returns those not `Ready`.
/// A topic renamed in the spec is a new KafkaTopic: the resource that still names the old
/// topic in its status (it refuses the rename) is deleted (its policy is `Retain`, so the
/// old topic stays) and the next reconcile, which its deletion brings, creates the new one.
async fn storage(
    rc: &RealtimeCluster,
    ctx: &Context,
    ns: &str,
    wanted: &mut Children,
) -> Result<Vec<String>, Error> {
    let topics: Api<KafkaTopic> = Api::namespaced(ctx.client.clone(), ns);
    let mut waits = Vec::new();
    for topic in render::topics(rc) {
        let name = topic.name_any();
        let live = wanted.apply(&topics, &name, &topic).await?;
        let was = live.status.as_ref().and_then(|s| s.topic_name.clone());
        if let Some(was) = was.filter(|was| *was != topic.spec.topic_name) {
            topics
                .delete(&name, &DeleteParams::default())
                .await
                .map_err(|source| Error::Delete {
                    what: path_of(&topics, &name),
                    source,
                })?;
            tracing::info!(
                kafka_topic = %name,
                from = %was,
                to = %topic.spec.topic_name,
                "topic renamed in the spec: KafkaTopic replaced (the old topic is retained)"
            );
            waits.push(format!("KafkaTopic {name}: being replaced"));
            continue;
        }
        waits.extend(not_ready(&live));
    }
    let indexes: Api<MongoIndex> = Api::namespaced(ctx.client.clone(), ns);
    for index in render::indexes(rc) {
        let name = index.name_any();
        let live = wanted.apply(&indexes, &name, &index).await?;
        waits.extend(not_ready(&live));
    }
    Ok(waits)
}

/// `<Kind> <name>: <reason>` unless the resource's `Ready` condition is `True` for its
/// current generation.
fn not_ready<K: kube::Resource<DynamicType = ()> + serde::Serialize>(obj: &K) -> Option<String> {
    let generation = obj.meta().generation;
    let value = serde_json::to_value(obj).unwrap_or_default();
    let ready = value["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned();
    let reason = match ready {
        None => "not reconciled yet".to_owned(),
        Some(c) if c["status"] == "True" && c["observedGeneration"].as_i64() == generation => {
            return None;
        }
        Some(c) => c["reason"].as_str().unwrap_or("not ready").to_owned(),
    };
    Some(format!(
        "{} {}: {reason}",
        K::kind(&()),
        obj.meta().name.as_deref().unwrap_or_default()
    ))
}

/// Deletes the owned children the spec no longer asks for. Only the data plane's TURN
/// reader Role and RoleBinding depend on the spec (`spec.turnPoolRef`); every other
/// child always exists while the cluster does.
pub async fn prune(
    rc: &RealtimeCluster,
    ctx: &Context,
    ns: &str,
    wanted: &Children,
) -> Result<(), Error> {
    let roles = wanted
        .prune(&Api::<Role>::namespaced(ctx.client.clone(), ns))
        .await?;
    let bindings = wanted
        .prune(&Api::<RoleBinding>::namespaced(ctx.client.clone(), ns))
        .await?;
    announce_pruned(
        ctx,
        rc,
        [describe::<Role>(&roles), describe::<RoleBinding>(&bindings)],
    )
    .await;
    Ok(())
}

/// Scales the cluster's existing data-plane Deployments to 0 (nothing else is applied
/// while it may not run). A merge patch, not an apply: an apply with only `replicas`
/// would drop every other field the operator manages. The next apply takes `replicas`
/// back.
pub async fn stop_data_plane(rc: &RealtimeCluster, ctx: &Context, ns: &str) -> Result<(), Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let name = rc.name_any();
    for dep_name in render::Component::ALL.map(|c| c.deployment_name(&name)) {
        let Some(d) = deployments
            .get_opt(&dep_name)
            .await
            .map_err(Error::reading(&deployments, &dep_name))?
        else {
            continue;
        };
        let owned = d
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == rc.metadata.uid.as_ref());
        if !owned || d.spec.as_ref().and_then(|s| s.replicas) == Some(0) {
            continue;
        }
        deployments
            .patch(
                &dep_name,
                &PatchParams {
                    field_manager: Some(MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await
            .map_err(Error::patching(&deployments, &dep_name))?;
    }
    Ok(())
}

/// The Deployment of every data-plane component, as they are now.
pub async fn deployments(
    rc: &RealtimeCluster,
    ctx: &Context,
    ns: &str,
) -> Result<Vec<(render::Component, Option<Deployment>)>, Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let name = rc.name_any();
    let mut found = Vec::new();
    for component in render::Component::ALL {
        let dep = component.deployment_name(&name);
        let live = api
            .get_opt(&dep)
            .await
            .map_err(Error::reading(&api, &dep))?;
        found.push((component, live));
    }
    Ok(found)
}
