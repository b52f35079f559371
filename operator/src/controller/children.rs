//! The children one reconcile wants, and the deletion of owned children it no longer
//! wants — the pattern of stackable's `ClusterResources`.
//!
//! Every child carries the labels of [`crate::crd::labels`] and a controller owner
//! reference. A reconcile applies each child through [`Children::apply`], which records
//! it; afterwards [`Children::prune`] lists the children of one kind by label, keeps those
//! owned by this owner (a TurnPool and a RealtimeCluster of the same name share the
//! instance label, so the owner UID decides) and deletes the ones not recorded, and
//! [`announce_pruned`] names what went in one Event. Only kinds whose presence depends on
//! the spec are pruned (each reconciler names them); the chart grants `list` and `delete`
//! on exactly those.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::runtime::events::EventType;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, Error, apply, publish};

/// The children a reconcile of one owner applied.
#[derive(Debug, Clone)]
pub struct Children {
    owner_uid: String,
    selector: String,
    wanted: BTreeSet<(String, String)>,
}

impl Children {
    /// Children of `owner`, whose `app.kubernetes.io/instance` label is its name.
    pub fn of<K: Resource>(owner: &K) -> Result<Self, Error> {
        let owner_uid = owner
            .meta()
            .uid
            .clone()
            .ok_or_else(|| Error::Invalid("the owner has no uid yet".into()))?;
        Ok(Self {
            owner_uid,
            selector: format!(
                "app.kubernetes.io/instance={},app.kubernetes.io/managed-by=realtime-operator",
                owner.meta().name.as_deref().unwrap_or_default()
            ),
            wanted: BTreeSet::new(),
        })
    }

    /// Records that this reconcile wants the `C` named `name`.
    fn want<C: Resource<DynamicType = ()>>(&mut self, name: &str) {
        self.wanted
            .insert((C::kind(&()).into_owned(), name.to_owned()));
    }

    /// Server-side applies `obj` as the `C` named `name` and records that this reconcile
    /// wants it, so that no applied child is ever pruned. Returns the live object.
    pub async fn apply<C>(&mut self, api: &Api<C>, name: &str, obj: &C) -> Result<C, Error>
    where
        C: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    {
        self.want::<C>(name);
        apply(api, name, obj).await
    }

    /// Whether this reconcile wants the `C` named `name`.
    pub fn wants<C: Resource<DynamicType = ()>>(&self, name: &str) -> bool {
        self.wanted
            .contains(&(C::kind(&()).into_owned(), name.to_owned()))
    }

    /// Deletes every `C` in `api` that this owner controls and this reconcile did not
    /// want; returns the names deleted.
    pub async fn prune<C>(&self, api: &Api<C>) -> Result<Vec<String>, Error>
    where
        C: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let listed = api
            .list(&ListParams::default().labels(&self.selector))
            .await
            .map_err(Error::listing(api, &self.selector))?;
        let metas: Vec<&ObjectMeta> = listed.items.iter().map(|o| o.meta()).collect();
        let doomed = unwanted(&metas, &self.owner_uid, |name| self.wants::<C>(name));
        let mut deleted = Vec::with_capacity(doomed.len());
        for (name, uid) in doomed {
            let params = DeleteParams {
                // Never delete a namesake created since the list.
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match api.delete(&name, &params).await {
                Ok(_) => deleted.push(name),
                // Gone already, or replaced by a namesake: not ours to delete.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(source) => {
                    return Err(Error::Delete {
                        what: super::path_of(api, &name),
                        source,
                    });
                }
            }
        }
        Ok(deleted)
    }
}

/// Of `listed`, the (name, uid) of those controlled by `owner_uid` that are not wanted.
pub fn unwanted(
    listed: &[&ObjectMeta],
    owner_uid: &str,
    wanted: impl Fn(&str) -> bool,
) -> Vec<(String, String)> {
    listed
        .iter()
        .filter(|m| {
            m.owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == owner_uid && o.controller == Some(true))
        })
        .filter(|m| m.deletion_timestamp.is_none())
        .filter_map(|m| Some((m.name.clone()?, m.uid.clone()?)))
        .filter(|(name, _)| !wanted(name))
        .collect()
}

/// `Kind/name` list for Events and logs.
pub fn describe<C: Resource<DynamicType = ()>>(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{}/{n}", C::kind(&())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Publishes one `Pruned` Event on `owner` naming every child deleted (`deleted` holds a
/// [`describe`] per kind pruned); none when nothing was.
pub async fn announce_pruned<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    deleted: impl IntoIterator<Item = String>,
) {
    let gone = deleted
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect::<Vec<_>>();
    if !gone.is_empty() {
        publish(
            ctx,
            owner,
            EventType::Normal,
            "Pruned",
            "Prune",
            format!("deleted {} (no longer in the spec)", gone.join(", ")),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::Role;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    fn meta(name: &str, owner: Option<(&str, bool)>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            owner_references: owner.map(|(uid, controller)| {
                vec![OwnerReference {
                    uid: uid.into(),
                    controller: Some(controller),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_unwanted_children_of_this_owner_are_pruned() {
        let wanted = meta("chat-gateway", Some(("me", true)));
        let orphan = meta("chat-turn-reader", Some(("me", true)));
        let namesake = meta("chat-other", Some(("someone-else", true)));
        let unowned = meta("chat-manual", None);
        let not_controller = meta("chat-shared", Some(("me", false)));
        let mut leaving = meta("chat-leaving", Some(("me", true)));
        leaving.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let listed = [
            &wanted,
            &orphan,
            &namesake,
            &unowned,
            &not_controller,
            &leaving,
        ];
        let doomed = unwanted(&listed, "me", |n| n == "chat-gateway");
        assert_eq!(
            doomed,
            [(
                "chat-turn-reader".to_owned(),
                "uid-chat-turn-reader".to_owned()
            )]
        );
    }

    #[test]
    fn wanted_children_are_recorded_per_kind() {
        let mut owner = Role::default();
        owner.metadata.name = Some("chat".into());
        owner.metadata.uid = Some("u".into());
        let mut children = Children::of(&owner).unwrap();
        children.want::<Role>("chat-turn-reader");
        assert!(children.wants::<Role>("chat-turn-reader"));
        assert!(!children.wants::<k8s_openapi::api::rbac::v1::RoleBinding>("chat-turn-reader"));
        assert!(
            children
                .selector
                .contains("app.kubernetes.io/instance=chat")
        );
        assert_eq!(
            describe::<Role>(&["a".into(), "b".into()]),
            "Role/a, Role/b"
        );
        owner.metadata.uid = None;
        assert!(Children::of(&owner).is_err(), "no uid, no owner");
    }
}
