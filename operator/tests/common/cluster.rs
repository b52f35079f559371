//! RealtimeCluster helpers: conditions, Events, edits the operator must follow, and the
//! kubelet's part of a rollout (no kubelet runs here, so tests mark pods Ready as one
//! would; the ReplicaSet and Deployment controllers of the controller-manager do the rest).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Client, ResourceExt};
use realtime_operator::crd::RealtimeCluster;
use serde_json::json;

use super::{Env, eventually, wait_both_gone};

/// (status, reason, message) of a condition of the cluster.
pub async fn condition(
    api: &Api<RealtimeCluster>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let rc = api.get(name).await.ok()?;
    let c = rc
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

/// Waits for the condition `type_` of `name` to have `status`; returns (reason, message).
pub async fn wait_condition(
    api: &Api<RealtimeCluster>,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String) {
    eventually(&format!("{name}: {type_}={status}"), 30, || async {
        condition(api, name, type_)
            .await
            .filter(|c| c.0 == status)
            .map(|c| (c.1, c.2))
    })
    .await
}

/// The namespace's `events.k8s.io/v1` Events with this reason and type whose note
/// contains `text`, once there is one.
pub async fn wait_event(env: &Env, reason: &str, type_: &str, text: &str) -> String {
    let events: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("events.k8s.io", "v1", "Event")),
    );
    eventually(
        &format!("a {type_} Event {reason} about {text:?}"),
        30,
        || async {
            events
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find_map(|e| {
                    let note = e.data["note"].as_str().unwrap_or("").to_owned();
                    (e.data["reason"] == reason && e.data["type"] == type_ && note.contains(text))
                        .then_some(note)
                })
        },
    )
    .await
}

/// Removes `spec.turnPoolRef` from cluster `name` in `ns` and waits until the operator has
/// deleted its data plane's TURN reader Role and RoleBinding.
pub async fn unreference_turn_pool(client: &Client, ns: &str, name: &str) {
    Api::<RealtimeCluster>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"turnPoolRef": null}})),
        )
        .await
        .unwrap();
    wait_both_gone(
        &Api::<Role>::namespaced(client.clone(), ns),
        &Api::<RoleBinding>::namespaced(client.clone(), ns),
        &format!("{name}-turn-reader"),
    )
    .await;
}

/// Sets `key` of Secret `s` (the one [`super::minimal_cluster`] reads) to `value` and
/// waits until the `status.configChecksum` of cluster `name` moves: the operator followed
/// the edit.
pub async fn checksum_follows_secret(
    clusters: &Api<RealtimeCluster>,
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
    value: &str,
) {
    let checksum = || async { clusters.get(name).await.unwrap().status?.config_checksum };
    let before = eventually(&format!("{name}'s checksum"), 60, checksum).await;
    secrets
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {key: value}})),
        )
        .await
        .unwrap();
    eventually("the checksum to follow the Secret", 60, || async {
        checksum().await.filter(|now| *now != before).map(|_| ())
    })
    .await;
}

/// Marks every pod of a component that is not Ready yet Ready, as a kubelet would.
/// Returns how many pods of the component exist.
pub async fn mark_pods_ready(env: &Env, instance: &str, component: &str) -> usize {
    let pods = env.api::<Pod>();
    let selector =
        format!("app.kubernetes.io/instance={instance},app.kubernetes.io/component={component}");
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    for pod in &list.items {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}
        ]}});
        // The pod may be gone already (a scale-down); that is fine.
        let _ = pods
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await;
    }
    list.items.len()
}

/// Whether the Deployment's rollout is complete by its own status.
pub fn rollout_complete(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let s = d.status.clone().unwrap_or_default();
    s.observed_generation >= d.metadata.generation
        && s.updated_replicas.unwrap_or(0) == want
        && s.ready_replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
}

/// Plays the kubelet until the Deployment `<instance>-<component>` has rolled out
/// completely: every new pod is marked Ready as it appears.
pub async fn finish_rollout(env: &Env, instance: &str, component: &str) {
    let deployments = env.api::<Deployment>();
    let name = format!("{instance}-{component}");
    eventually(&format!("the rollout of {name} to finish"), 60, || async {
        mark_pods_ready(env, instance, component).await;
        deployments
            .get(&name)
            .await
            .ok()
            .filter(rollout_complete)
            .map(|_| ())
    })
    .await;
}

/// Waits for condition `type_` of the `K` named `name` to have `status` and `reason`;
/// returns the resource as it was then.
pub async fn wait_reason<K: Kind>(
    env: &Env,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> K {
    let what = format!("{} {name}: {type_}={status}/{reason}", K::kind(&()));
    eventually(&what, 30, || async {
        let obj: K = env.api::<K>().get(name).await.unwrap();
        let value = serde_json::to_value(&obj).unwrap();
        let found = value["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == type_ && c["status"] == status && c["reason"] == reason);
        found.then_some(obj)
    })
    .await
}

/// The message of condition `type_` of `obj` (empty when it has none).
pub fn message_of<K: serde::Serialize>(obj: &K, type_: &str) -> String {
    let value = serde_json::to_value(obj).unwrap();
    value["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Sets (or, with `null`, removes) one annotation of the `K` named `name`.
pub async fn annotate<K: Kind>(env: &Env, name: &str, key: &str, value: serde_json::Value) {
    env.api::<K>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .unwrap();
}

/// Deletes the `K` named `name` and waits until it is gone.
pub async fn delete_and_wait<K: Kind>(env: &Env, name: &str) {
    env.api::<K>()
        .delete(name, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    eventually(
        &format!("{} {name} to be gone", K::kind(&())),
        30,
        || async {
            env.api::<K>()
                .get_opt(name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// A namespaced custom resource kind the helpers handle alike.
pub trait Kind:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
{
}

impl<K> Kind for K where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
{
}

/// Server-side applies the `K` named `name` with `spec`, as a platform team's manifest
/// would be (field manager `test`).
pub async fn apply_spec<K: Kind>(env: &Env, name: &str, spec: serde_json::Value) {
    let body = json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": K::kind(&()),
        "metadata": {"name": name}, "spec": spec,
    });
    env.api::<K>()
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}
