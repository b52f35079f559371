//! Pure decisions of the RealtimeCluster reconciler: what in a spec it cannot act on,
//! whether a Deployment's rollout is complete, and the conditions that say so.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::crd::condition::*;
use crate::crd::{ComponentStatus, RealtimeCluster, condition};

/// Why the operator cannot act on the spec, as (reason, message); the schema cannot say
/// it on every server (Kubernetes before 1.25 ignores the CRD's CEL rules).
pub fn unsupported(rc: &RealtimeCluster) -> Option<(&'static str, String)> {
    let auth = &rc.spec.auth;
    match (&auth.jwt_secret_ref, &auth.jwks_url) {
        (Some(_), _) => None,
        (None, Some(_)) => Some((
            REASON_UNSUPPORTED,
            "spec.auth.jwksUrl is not supported yet (the data plane verifies HS256 tokens only); set spec.auth.jwtSecretRef to the Secret key holding the HS256 secret".into(),
        )),
        (None, None) => Some((
            REASON_INVALID_SPEC,
            "spec.auth.jwtSecretRef is missing: set it to the Secret key holding the HS256 secret that signs client tokens".into(),
        )),
    }
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
    pub gateway: ComponentStatus,
    pub persister: ComponentStatus,
    pub conditions: Vec<Condition>,
}

/// The cluster's component statuses and conditions from its Deployments as they are now
/// (the RealtimeCluster's counterpart of `turn_pool::status::pool_conditions`).
/// `storage` names the topics and indexes that are not `Ready` yet.
pub fn cluster_conditions(
    rc: &RealtimeCluster,
    gateway: Option<&Deployment>,
    persister: Option<&Deployment>,
    storage: &[String],
) -> Rollout {
    let (gateway, gateway_waits) = rollout(rc.spec.gateway.replicas, gateway);
    let (persister, persister_waits) = rollout(rc.spec.persister.replicas, persister);
    let storage = (!storage.is_empty()).then(|| storage.join(", "));
    let conditions = applied(
        (&gateway, gateway_waits.as_deref()),
        (&persister, persister_waits.as_deref()),
        storage.as_deref(),
        rc.metadata.generation,
    );
    Rollout {
        gateway,
        persister,
        conditions,
    }
}

/// Conditions once the children are applied: `Ready` when every topic and index is
/// `Ready` and every rollout is complete, else `Reconciling` with what each waits for
/// (`storage`: the topics and indexes not ready yet).
pub fn applied(
    gateway: (&ComponentStatus, Option<&str>),
    persister: (&ComponentStatus, Option<&str>),
    storage: Option<&str>,
    generation: Option<i64>,
) -> Vec<Condition> {
    let progress = format!(
        "gateway {}/{} ready, persister {}/{} ready",
        gateway.0.ready_replicas,
        gateway.0.replicas,
        persister.0.ready_replicas,
        persister.0.replicas
    );
    let rolling: Vec<String> = [("gateway", gateway.1), ("persister", persister.1)]
        .into_iter()
        .filter_map(|(name, w)| w.map(|w| format!("{name}: {w}")))
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

    #[test]
    fn conditions_say_ready_only_when_both_rollouts_are_complete() {
        let (c, _) = rollout(2, None);
        let ready = applied((&c, None), (&c, None), None, Some(4));
        assert_eq!(
            (ready[0].type_.as_str(), ready[0].status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(ready[1].status, "False");
        let rolling = applied((&c, Some("1/2 updated")), (&c, None), None, Some(4));
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
        // Complete rollouts do not make it Ready while a topic or an index is not.
        let storage = applied(
            (&c, None),
            (&c, None),
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
    fn jwks_only_and_missing_auth_are_named() {
        let mut rc: RealtimeCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster", "metadata": {"name": "c"},
            "spec": {"image": "i", "kafka": {"bootstrapServers": "k"},
                "mongodb": {"uriSecretRef": {"name": "s", "key": "k"}},
                "redis": {"urlSecretRef": {"name": "s", "key": "k"}},
                "auth": {"jwksUrl": "https://id.example/jwks.json"}}
        }))
        .unwrap();
        let (reason, message) = unsupported(&rc).unwrap();
        assert_eq!(reason, "Unsupported");
        assert!(
            message.contains("jwksUrl is not supported yet") && message.contains("jwtSecretRef")
        );
        rc.spec.auth.jwks_url = None;
        assert_eq!(unsupported(&rc).unwrap().0, "InvalidSpec");
        rc.spec.auth.jwt_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "s".into(),
            key: "k".into(),
        });
        assert_eq!(unsupported(&rc), None);
        let c = stalled("Unsupported", "m", Some(1));
        assert_eq!(
            c.iter().map(|c| c.status.as_str()).collect::<Vec<_>>(),
            ["False", "False", "True"]
        );
    }
}
