//! Pure decisions of the RealtimeCluster reconciler: what in a spec it cannot act on,
//! whether a Deployment's rollout is complete, and the conditions that say so.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::crd::condition::*;
use crate::crd::{ComponentStatus, RealtimeCluster, condition};
use crate::render::Component;

/// Why the operator cannot act on the spec, as (reason, message); the schema cannot say
/// it on every server (Kubernetes before 1.25 ignores the CRD's CEL rules).
pub fn invalid(rc: &RealtimeCluster) -> Option<(&'static str, String)> {
    let auth = &rc.spec.auth;
    (auth.jwt_secret_ref.is_none() && auth.jwks_url.is_none()).then(|| {
        (
            REASON_INVALID_SPEC,
            "spec.auth verifies no token: set spec.auth.jwtSecretRef to the Secret key holding the HS256 secret that signs client tokens, or spec.auth.jwksUrl to the JWKS document of their RS256/ES256 keys".into(),
        )
    })
}

/// A component's replica counts and, while its rollout is not complete, what it waits
/// for. Complete (kstatus' rules for Deployments) means: the Deployment controller has
/// observed the current generation, and updated, available and ready replicas all equal
/// the desired count, with no old replica left.
pub fn rollout(desired: i32, deployment: Option<&Deployment>) -> (ComponentStatus, Option<String>) {
    let status = deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let component = ComponentStatus {
        replicas: desired,
        ready_replicas: ready,
        updated_replicas: updated,
        available_replicas: available,
        summary: format!("{ready}/{desired}"),
    };
    let Some(deployment) = deployment else {
        return (component, Some("not created yet".into()));
    };
    let generation = deployment.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0);
    let stuck = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let waiting = if observed < generation {
        Some(format!(
            "the rollout of generation {generation} is not observed yet"
        ))
    } else if updated < desired {
        Some(format!("{updated}/{desired} updated"))
    } else if total > updated {
        Some(format!("{} old replicas terminating", total - updated))
    } else if available < desired {
        Some(format!("{available}/{desired} available"))
    } else if ready < desired {
        Some(format!("{ready}/{desired} ready"))
    } else {
        None
    };
    let waiting = waiting.map(|w| {
        if stuck {
            format!("{w} (progress deadline exceeded)")
        } else {
            w
        }
    });
    (component, waiting)
}

/// Conditions for a spec the operator cannot act on now: `Stalled` with `reason`.
pub fn stalled(reason: &str, message: &str, generation: Option<i64>) -> Vec<Condition> {
    vec![
        condition(READY, false, reason, message, generation),
        condition(
            RECONCILING,
            false,
            reason,
            "waiting for the spec or the cluster to change",
            generation,
        ),
        condition(STALLED, true, reason, message, generation),
    ]
}

/// Where a cluster's data plane stands once its children are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Replica counts of every component, in [`Component::ALL`]'s order.
    pub components: Vec<(Component, ComponentStatus)>,
    pub conditions: Vec<Condition>,
}

/// The cluster's component statuses and conditions from its Deployments as they are now
/// (the RealtimeCluster's counterpart of `turn_pool::status::pool_conditions`).
/// `storage` names the topics and indexes that are not `Ready` yet.
pub fn cluster_conditions(
    rc: &RealtimeCluster,
    deployments: &[(Component, Option<Deployment>)],
    storage: &[String],
) -> Rollout {
    let rollouts: Vec<(Component, ComponentStatus, Option<String>)> = deployments
        .iter()
        .map(|(component, d)| {
            let (status, waiting) = rollout(component.replicas(rc), d.as_ref());
            (*component, status, waiting)
        })
        .collect();
    let storage = (!storage.is_empty()).then(|| storage.join(", "));
    let progress: Vec<(Component, &ComponentStatus, Option<&str>)> = rollouts
        .iter()
        .map(|(c, status, waiting)| (*c, status, waiting.as_deref()))
        .collect();
    let conditions = applied(&progress, storage.as_deref(), rc.metadata.generation);
    Rollout {
        components: rollouts
            .into_iter()
            .map(|(c, status, _)| (c, status))
            .collect(),
        conditions,
    }
}

/// Conditions once the children are applied: `Ready` when every topic and index is
/// `Ready` and every component's rollout is complete, else `Reconciling` with what each
/// waits for (`components`: replica counts and what the rollout waits for; `storage`: the
/// topics and indexes not ready yet).
pub fn applied(
    components: &[(Component, &ComponentStatus, Option<&str>)],
    storage: Option<&str>,
    generation: Option<i64>,
) -> Vec<Condition> {
    let progress = components
        .iter()
        .map(|(c, s, _)| format!("{} {}/{} ready", c.role(), s.ready_replicas, s.replicas))
        .collect::<Vec<_>>()
        .join(", ");
    let rolling: Vec<String> = components
        .iter()
        .filter_map(|(c, _, w)| w.map(|w| format!("{}: {w}", c.role())))
        .collect();
    let mut waiting = Vec::new();
    if let Some(storage) = storage {
        waiting.push(format!("topics and indexes to be Ready ({storage})"));
    }
    if !rolling.is_empty() {
        waiting.push(format!("the rollout ({})", rolling.join("; ")));
    }
    if waiting.is_empty() {
        vec![
            condition(READY, true, REASON_AVAILABLE, progress, generation),
            condition(
                RECONCILING,
                false,
                REASON_RECONCILED,
                "children match the spec; topics and indexes ready; every rollout is complete",
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
        let message = format!("waiting for {}; {progress}", waiting.join(" and "));
        vec![
            condition(
                READY,
                false,
                REASON_PROGRESSING,
                message.clone(),
                generation,
            ),
            condition(RECONCILING, true, REASON_PROGRESSING, message, generation),
            condition(
                STALLED,
                false,
                REASON_PROGRESSING,
                "all references resolved",
                generation,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "d", "generation": generation},
            "spec": {"selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_rollout_is_complete_only_by_kstatus_rules() {
        let done = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2});
        let (c, waiting) = rollout(2, Some(&deployment(2, done.clone())));
        assert_eq!(waiting, None);
        assert_eq!(
            (c.ready_replicas, c.updated_replicas, c.available_replicas),
            (2, 2, 2)
        );
        assert_eq!(c.summary, "2/2");

        // The controller has not seen the new spec yet: the old status says nothing.
        let (_, w) = rollout(2, Some(&deployment(3, done)));
        assert!(w.unwrap().contains("not observed"));
        // Old pods still serve (ready 2/2, but only 1 runs the new template).
        let mid = json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2});
        assert_eq!(
            rollout(2, Some(&deployment(3, mid))).1.as_deref(),
            Some("1/2 updated")
        );
        let old_left = json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 2, "readyReplicas": 3, "availableReplicas": 3});
        assert_eq!(
            rollout(2, Some(&deployment(3, old_left))).1.as_deref(),
            Some("1 old replicas terminating")
        );
        let unavailable = json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 1});
        assert_eq!(
            rollout(2, Some(&deployment(3, unavailable))).1.as_deref(),
            Some("1/2 available")
        );
        let stuck = json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]});
        assert!(
            rollout(2, Some(&deployment(3, stuck)))
                .1
                .unwrap()
                .contains("deadline")
        );
        assert_eq!(rollout(2, None).1.as_deref(), Some("not created yet"));
        // Zero desired replicas is complete with nothing running.
        let zero = json!({"observedGeneration": 1});
        assert_eq!(rollout(0, Some(&deployment(1, zero))).1, None);
    }

    /// Every component with `c`, and `waiting` for the one named.
    fn every<'a>(
        c: &'a ComponentStatus,
        waiting: Option<(Component, &'a str)>,
    ) -> Vec<(Component, &'a ComponentStatus, Option<&'a str>)> {
        Component::ALL
            .into_iter()
            .map(|component| {
                let w = waiting.filter(|(w, _)| *w == component).map(|(_, w)| w);
                (component, c, w)
            })
            .collect()
    }

    #[test]
    fn conditions_say_ready_only_when_every_rollout_is_complete() {
        let (c, _) = rollout(2, None);
        let ready = applied(&every(&c, None), None, Some(4));
        assert_eq!(
            (ready[0].type_.as_str(), ready[0].status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(
            ready[0].message,
            "gateway 0/2 ready, persister 0/2 ready, admin 0/2 ready"
        );
        assert_eq!(ready[1].status, "False");
        let rolling = applied(
            &every(&c, Some((Component::Gateway, "1/2 updated"))),
            None,
            Some(4),
        );
        assert_eq!(
            (rolling[0].status.as_str(), rolling[0].reason.as_str()),
            ("False", "Progressing")
        );
        assert!(rolling[0].message.contains("gateway: 1/2 updated"));
        assert_eq!(
            (rolling[1].type_.as_str(), rolling[1].status.as_str()),
            ("Reconciling", "True")
        );
        assert_eq!(rolling[2].status, "False");
        assert!(rolling.iter().all(|c| c.observed_generation == Some(4)));
        // The admin API's rollout holds Ready like the others'.
        let admin = applied(
            &every(&c, Some((Component::Admin, "not created yet"))),
            None,
            Some(4),
        );
        assert_eq!(admin[0].status, "False");
        assert!(
            admin[0]
                .message
                .contains("the rollout (admin: not created yet)"),
            "{}",
            admin[0].message
        );
        // Complete rollouts do not make it Ready while a topic or an index is not.
        let storage = applied(
            &every(&c, None),
            Some("KafkaTopic chat-messages: Unreachable"),
            Some(4),
        );
        assert_eq!(storage[0].status, "False");
        assert!(
            storage[0]
                .message
                .contains("topics and indexes to be Ready (KafkaTopic chat-messages: Unreachable)"),
            "{}",
            storage[0].message
        );
    }

    #[test]
    fn cluster_conditions_cover_every_component_from_its_spec() {
        let rc: RealtimeCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster", "metadata": {"name": "c", "generation": 2},
            "spec": {"image": "i", "kafka": {"bootstrapServers": "k"},
                "mongodb": {"uriSecretRef": {"name": "s", "key": "k"}},
                "redis": {"urlSecretRef": {"name": "s", "key": "k"}},
                "auth": {"jwksUrl": "https://id.example/jwks.json"},
                "admin": {"replicas": 2}}
        }))
        .unwrap();
        let done = |n: i64| {
            Some(deployment(
                1,
                json!({"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}),
            ))
        };
        let deployments = [
            (Component::Gateway, done(2)),
            (Component::Persister, done(1)),
            (Component::Admin, None),
        ];
        let r = cluster_conditions(&rc, &deployments, &[]);
        let summaries: Vec<(Component, &str)> = r
            .components
            .iter()
            .map(|(c, s)| (*c, s.summary.as_str()))
            .collect();
        assert_eq!(
            summaries,
            [
                (Component::Gateway, "2/2"),
                (Component::Persister, "1/1"),
                (Component::Admin, "0/2"),
            ]
        );
        assert_eq!(r.conditions[0].status, "False");
        assert!(
            r.conditions[0].message.contains("admin: not created yet")
                && r.conditions[0].message.ends_with("admin 0/2 ready"),
            "{}",
            r.conditions[0].message
        );
        assert!(
            r.conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
        let all_done = [
            (Component::Gateway, done(2)),
            (Component::Persister, done(1)),
            (Component::Admin, done(2)),
        ];
        let ready = cluster_conditions(&rc, &all_done, &[]);
        assert_eq!(ready.conditions[0].status, "True");
    }

    #[test]
    fn jwks_alone_is_enough_and_missing_auth_is_named() {
        let mut rc: RealtimeCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster", "metadata": {"name": "c"},
            "spec": {"image": "i", "kafka": {"bootstrapServers": "k"},
                "mongodb": {"uriSecretRef": {"name": "s", "key": "k"}},
                "redis": {"urlSecretRef": {"name": "s", "key": "k"}},
                "auth": {"jwksUrl": "https://id.example/jwks.json"}}
        }))
        .unwrap();
        assert_eq!(invalid(&rc), None);
        rc.spec.auth.jwks_url = None;
        let (reason, message) = invalid(&rc).unwrap();
        assert_eq!(reason, "InvalidSpec");
        assert!(
            message.contains("spec.auth.jwtSecretRef") && message.contains("spec.auth.jwksUrl"),
            "{message}"
        );
        rc.spec.auth.jwt_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "s".into(),
            key: "k".into(),
        });
        assert_eq!(invalid(&rc), None);
        rc.spec.auth.jwks_url = Some("https://id.example/jwks.json".into());
        assert_eq!(invalid(&rc), None, "both together");
        let c = stalled("InvalidSpec", "m", Some(1));
        assert_eq!(
            c.iter().map(|c| c.status.as_str()).collect::<Vec<_>>(),
            ["False", "False", "True"]
        );
    }
}
