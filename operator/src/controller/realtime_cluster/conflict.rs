//! Kafka topic conflicts between installations. Pure: clusters in, decisions out.
//!
//! Two RealtimeClusters whose brokers overlap (any common `host:port` after
//! normalization) and that name any same topic (messages, persistence events or recording
//! events, in any combination) would consume each other's records. They must not both
//! run: the older one (by `creationTimestamp`, then namespace and name) wins; the other
//! loses to it even when the older one is itself stalled for another reason, so that
//! fixing the older one never flips a running installation off.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::crd::RealtimeCluster;
use crate::crd::condition::{REASON_TOPIC_CONFLICT, STALLED};

/// Port of a broker address written without one.
const DEFAULT_KAFKA_PORT: u16 = 9092;

/// Why a cluster may not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// `namespace/name` of the older cluster that wins.
    pub winner: String,
    /// A topic both name.
    pub topic: String,
    /// A broker both use.
    pub broker: String,
}

impl Conflict {
    pub fn message(&self) -> String {
        format!(
            "shares Kafka topic {:?} on broker {} with RealtimeCluster {}, which is older and keeps running; this cluster's data plane is scaled to 0 until it gets its own topics (spec.kafka.topics) or broker",
            self.topic, self.broker, self.winner
        )
    }
}

/// One broker address in a comparable form: lower case, default port, and in-cluster
/// Service names completed to `<service>.<namespace>.svc` (a short name resolves in the
/// pod's own namespace, so `kafka:9092` in two namespaces is two brokers).
pub fn normalize_broker(address: &str, namespace: &str) -> Option<String> {
    let address = address.trim().to_ascii_lowercase();
    if address.is_empty() {
        return None;
    }
    let (host, port) = match address.rsplit_once(':') {
        // `[::1]:9092` or `host:9092`; a bare IPv6 address has more than one colon.
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
            (h.to_owned(), p.parse::<u16>().ok()?)
        }
        _ => (address.clone(), DEFAULT_KAFKA_PORT),
    };
    let host = host.trim_end_matches('.');
    let host = host.strip_suffix(".cluster.local").unwrap_or(host);
    let is_ip = host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[');
    let host = match host.matches('.').count() {
        _ if is_ip => host.to_owned(),
        0 => format!("{host}.{namespace}.svc"),
        1 => format!("{host}.svc"),
        _ => host.to_owned(),
    };
    Some(format!("{host}:{port}"))
}

/// The normalized brokers of a cluster.
pub fn brokers(rc: &RealtimeCluster) -> BTreeSet<String> {
    let ns = rc.namespace().unwrap_or_default();
    rc.spec
        .kafka
        .bootstrap_servers
        .split(',')
        .filter_map(|a| normalize_broker(a, &ns))
        .collect()
}

/// Every topic a cluster names.
pub fn topics(rc: &RealtimeCluster) -> BTreeSet<&str> {
    let t = &rc.spec.kafka.topics;
    [
        t.messages.as_str(),
        t.persistence_events.as_str(),
        t.recording_events.as_str(),
    ]
    .into_iter()
    .collect()
}

/// A broker and a topic that `a` and `b` share, if any.
pub fn shared(a: &RealtimeCluster, b: &RealtimeCluster) -> Option<(String, String)> {
    let broker = brokers(a).intersection(&brokers(b)).next()?.clone();
    let topic = topics(a).intersection(&topics(b)).next()?.to_string();
    Some((broker, topic))
}

/// Creation order: older first; same second, by namespace and name. (Also how two
/// KafkaTopics of one topic are ordered.)
pub fn age_key<K: ResourceExt>(obj: &K) -> (Option<i64>, String, String) {
    (
        obj.meta()
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
    )
}

fn same(a: &RealtimeCluster, b: &RealtimeCluster) -> bool {
    a.namespace() == b.namespace() && a.name_any() == b.name_any()
}

/// The conflict that keeps `rc` from running: the oldest older cluster it shares a
/// topic with on a common broker.
pub fn find(rc: &RealtimeCluster, all: &[Arc<RealtimeCluster>]) -> Option<Conflict> {
    let mine = age_key(rc);
    all.iter()
        .filter(|other| !same(rc, other) && age_key(&***other) < mine)
        .filter_map(|other| shared(rc, other).map(|s| (other, s)))
        .min_by_key(|(other, _)| age_key(&***other))
        .map(|(other, (broker, topic))| Conflict {
            winner: format!(
                "{}/{}",
                other.namespace().unwrap_or_default(),
                other.name_any()
            ),
            topic,
            broker,
        })
}

/// Whether the cluster's status says it lost a topic conflict.
pub fn is_conflicted(rc: &RealtimeCluster) -> bool {
    rc.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == STALLED && c.status == "True" && c.reason == REASON_TOPIC_CONFLICT)
    })
}

/// The other clusters to look at again after `changed` changed or went away: those it
/// now shares topics with, and those that lost a conflict (perhaps to it, before).
pub fn affected(
    changed: &RealtimeCluster,
    all: &[Arc<RealtimeCluster>],
) -> Vec<ObjectRef<RealtimeCluster>> {
    all.iter()
        .filter(|other| !same(changed, other))
        .filter(|other| is_conflicted(other) || shared(changed, other).is_some())
        .map(|other| ObjectRef::from_obj(&**other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn cluster(ns: &str, name: &str, created: i64, brokers: &str, topic: &str) -> RealtimeCluster {
        let mut rc: RealtimeCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "image": "i", "kafka": {"bootstrapServers": brokers, "topics": {
                    "messages": topic,
                    "persistenceEvents": format!("{topic}.events"),
                    "recordingEvents": format!("{topic}.recordings"),
                }},
                "mongodb": {"uriSecretRef": {"name": "s", "key": "k"}},
                "redis": {"urlSecretRef": {"name": "s", "key": "k"}},
                "auth": {"jwtSecretRef": {"name": "s", "key": "k"}},
            }
        }))
        .unwrap();
        rc.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        rc
    }

    #[test]
    fn broker_addresses_are_compared_normalized() {
        let n = |a| normalize_broker(a, "chat");
        assert_eq!(n(" Kafka:9092 ").as_deref(), Some("kafka.chat.svc:9092"));
        assert_eq!(n("kafka").as_deref(), Some("kafka.chat.svc:9092"));
        assert_eq!(n("kafka.kafka").as_deref(), Some("kafka.kafka.svc:9092"));
        assert_eq!(
            n("kafka.kafka.svc.cluster.local.:9093").as_deref(),
            Some("kafka.kafka.svc:9093")
        );
        assert_eq!(n("10.0.0.1:9092").as_deref(), Some("10.0.0.1:9092"));
        assert_eq!(n("[::1]:9092").as_deref(), Some("[::1]:9092"));
        assert_eq!(
            n("broker.example.com:9092").as_deref(),
            Some("broker.example.com:9092")
        );
        assert_eq!(n(""), None);
        assert_eq!(n("kafka:port"), None);
        let a = cluster("a", "x", 0, "b2:9092, b1:9092", "t");
        assert_eq!(
            brokers(&a).into_iter().collect::<Vec<_>>(),
            ["b1.a.svc:9092", "b2.a.svc:9092"]
        );
    }

    #[test]
    fn a_shared_topic_on_a_shared_broker_conflicts() {
        let a = cluster("ns", "a", 10, "k.kafka.svc:9092", "chat.messages");
        let b = cluster(
            "ns",
            "b",
            20,
            "k.kafka.svc:9092,other:9092",
            "chat.messages",
        );
        assert_eq!(
            shared(&a, &b),
            Some(("k.kafka.svc:9092".into(), "chat.messages".into()))
        );
        // Another broker: no conflict.
        let c = cluster("ns", "c", 30, "elsewhere:9092", "chat.messages");
        assert_eq!(shared(&a, &c), None);
        // Own topics (the defaults of the other two topics differ too): no conflict.
        let mut d = cluster("ns", "d", 40, "k.kafka.svc:9092", "d.messages");
        d.spec.kafka.topics.persistence_events = "d.events".into();
        d.spec.kafka.topics.recording_events = "d.recordings".into();
        assert_eq!(shared(&a, &d), None);
        // One cluster's message topic is the other's persistence topic: a conflict.
        d.spec.kafka.topics.persistence_events = "chat.messages".into();
        assert_eq!(shared(&a, &d).unwrap().1, "chat.messages");
        // Short names in two namespaces are two brokers.
        let e = cluster("x", "e", 1, "kafka:9092", "t");
        let f = cluster("y", "f", 2, "kafka:9092", "t");
        assert_eq!(shared(&e, &f), None);
    }

    #[test]
    fn the_older_cluster_wins_then_namespace_and_name() {
        let a = Arc::new(cluster("ns", "zeta", 10, "k:9092", "t"));
        let b = Arc::new(cluster("ns", "alpha", 20, "k:9092", "t"));
        let c = Arc::new(cluster("ns", "beta", 20, "k:9092", "t"));
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(find(&a, &all), None, "the oldest runs");
        let lost = find(&b, &all).unwrap();
        assert_eq!(
            lost.winner, "ns/zeta",
            "the oldest of the older ones is named"
        );
        assert_eq!(lost.topic, "t");
        assert!(lost.message().contains("ns/zeta") && lost.message().contains("\"t\""));
        // Same second: by name.
        assert_eq!(
            find(&c, &[b.clone(), c.clone()]).unwrap().winner,
            "ns/alpha"
        );
        assert_eq!(find(&b, &[b.clone(), c.clone()]), None);
    }

    #[test]
    fn a_change_requeues_the_clusters_it_touches_and_those_that_lost() {
        let a = cluster("ns", "a", 10, "k:9092", "t");
        let b = Arc::new(cluster("ns", "b", 20, "k:9092", "t"));
        let mut lost = cluster("ns", "lost", 30, "k:9092", "u");
        lost.status = Some(crate::crd::RealtimeClusterStatus {
            conditions: vec![crate::crd::condition(
                STALLED,
                true,
                REASON_TOPIC_CONFLICT,
                "m",
                None,
            )],
            ..Default::default()
        });
        let lost = Arc::new(lost);
        let apart = Arc::new(cluster("ns", "apart", 5, "elsewhere:9092", "t"));
        let names: Vec<String> = affected(&a, &[b, lost, apart, Arc::new(a.clone())])
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["b", "lost"]);
    }
}
