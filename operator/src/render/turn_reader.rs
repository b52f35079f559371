//! The data plane's read access to its TurnPool: a Role limited to the referenced pool
//! and its shared-secret Secret, bound to the cluster's ServiceAccount. Pure.

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::ResourceExt;

use super::{meta, turn_pool};
use crate::crd::RealtimeCluster;

pub fn turn_reader_name(cluster: &str) -> String {
    format!("{cluster}-turn-reader")
}

/// Read access to exactly the referenced TurnPool and its shared-secret Secret, for the
/// data plane's ServiceAccount; `None` without `spec.turnPoolRef`.
pub fn turn_reader_role(rc: &RealtimeCluster) -> Option<(Role, RoleBinding)> {
    let pool = rc.spec.turn_pool_ref.as_ref()?;
    let name = turn_reader_name(&rc.name_any());
    let verbs = || vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()];
    let role = Role {
        metadata: meta(rc, name.clone(), "data-plane"),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["realtime.dev".into()]),
                resources: Some(vec!["turnpools".into()]),
                resource_names: Some(vec![pool.name.clone()]),
                verbs: verbs(),
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["secrets".into()]),
                resource_names: Some(vec![turn_pool::secret_name(&pool.name)]),
                verbs: verbs(),
                ..PolicyRule::default()
            },
        ]),
    };
    let binding = RoleBinding {
        metadata: meta(rc, name.clone(), "data-plane"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: rc.name_any(),
            namespace: rc.namespace(),
            ..Subject::default()
        }]),
    };
    Some((role, binding))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::cluster;
    use crate::render::{Component, config_data, deployment};

    #[test]
    fn a_turn_pool_reference_gives_the_gateway_read_access_to_exactly_that_pool() {
        let plain = cluster();
        assert!(turn_reader_role(&plain).is_none());
        assert!(!config_data(&plain).contains_key("TURN_POOL"));
        let pod = |rc: &RealtimeCluster, role| {
            deployment(rc, role, "c")
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .automount_service_account_token
        };
        assert_eq!(pod(&plain, Component::Gateway), Some(false));

        let mut rc = cluster();
        rc.spec.turn_pool_ref = Some(crate::crd::LocalRef {
            name: "edge".into(),
        });
        let env = config_data(&rc);
        assert_eq!(env["TURN_POOL"], "edge");
        assert_eq!(env["TURN_POOL_NAMESPACE"], "ns");
        assert_eq!(pod(&rc, Component::Gateway), Some(true));
        assert_eq!(pod(&rc, Component::Persister), Some(false));
        let (role, binding) = turn_reader_role(&rc).unwrap();
        let rules = role.rules.unwrap();
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["edge".to_owned()][..])
        );
        assert_eq!(
            rules[1].resource_names.as_deref(),
            Some(&["edge-turn-secret".to_owned()][..])
        );
        assert!(rules.iter().all(|r| r.verbs == ["get", "list", "watch"]));
        assert_eq!(binding.subjects.unwrap()[0].name, "chat");
        assert_eq!(binding.role_ref.name, "chat-turn-reader");
    }
}
