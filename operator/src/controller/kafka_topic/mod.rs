//! KafkaTopic reconciler, in steps: deleting? (delete the topic with `deletionPolicy:
//! Delete`, then release the finalizer) → paused? → keep the finalizer in line with the
//! policy → resolve the brokers (`bootstrapServers`, else the RealtimeCluster's) → refuse
//! a `topicName` change → give way to an older KafkaTopic of the same topic on the same
//! brokers (`ResourceConflict`) → [`sync::sync`] through the Admin API → conditions,
//! status (partitions, replication factor, every config with its source) and Events.
//!
//! The topics are read again every [`RESYNC`]: configs changed behind the operator's back
//! are set back, partitions added; a partition decrease or a replication-factor change is
//! refused before anything changes. What the broker lacks (the local one has no
//! CreatePartitions) is a `Stalled`/`NotSupported` condition naming the API.

pub mod admin;
mod incremental;
pub mod sync;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};

use super::external::{self, External};
use super::realtime_cluster::conflict::{age_key, normalize_broker};
use super::{Context, Error, instrumented, object_key, publish, retry_later};
use crate::crd::condition::*;
use crate::crd::event;
use crate::crd::{
    DeletionPolicy, KAFKA_TOPIC_FINALIZER, KafkaTopic, KafkaTopicStatus, RealtimeCluster, condition,
};
use admin::{AdminError, ConfigOp, RdAdmin, TopicAdmin};
use sync::{Change, Problem, Synced};

pub const KIND: &str = "KafkaTopic";
/// How often the topics are read again (drift repair).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a KafkaTopic whose cluster is missing looks again.
const MISSING_RETRY: Duration = Duration::from_secs(15);

impl External for KafkaTopic {
    const FINALIZER: &'static str = KAFKA_TOPIC_FINALIZER;
    const OBJECT: &'static str = "topic";
    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy
    }
    fn conditions(status: &KafkaTopicStatus) -> &[Condition] {
        &status.conditions
    }
    fn set_conditions(
        status: &mut KafkaTopicStatus,
        conditions: Vec<Condition>,
        generation: Option<i64>,
    ) {
        status.conditions = conditions;
        status.observed_generation = generation;
    }
}

/// The KafkaTopic controller's context: the shared one, an admin client per set of
/// brokers, and the cache of every KafkaTopic (to find two that manage one topic).
pub struct TopicContext {
    shared: Arc<Context>,
    admins: Mutex<HashMap<String, RdAdmin>>,
    topics: Store<KafkaTopic>,
}

impl TopicContext {
    pub fn new(shared: Arc<Context>, topics: Store<KafkaTopic>) -> Self {
        Self {
            shared,
            admins: Mutex::default(),
            topics,
        }
    }

    fn admin(&self, brokers: &str) -> Result<RdAdmin, AdminError> {
        let mut admins = self
            .admins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(a) = admins.get(brokers) {
            return Ok(a.clone());
        }
        let admin = RdAdmin::new(brokers)?;
        admins.insert(brokers.to_owned(), admin.clone());
        Ok(admin)
    }
}

impl std::ops::Deref for TopicContext {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.shared
    }
}

pub async fn reconcile(kt: Arc<KafkaTopic>, ctx: Arc<TopicContext>) -> Result<Action, Error> {
    instrumented(&ctx, KIND, &*kt, reconcile_inner(&kt, &ctx)).await
}

pub fn error_policy(kt: Arc<KafkaTopic>, error: &Error, ctx: Arc<TopicContext>) -> Action {
    retry_later(&ctx, KIND, &object_key(&*kt), error)
}

/// The normalized brokers of `bootstrap` (comma-separated), as dialled from the operator.
fn broker_set(bootstrap: &str, ns: &str) -> BTreeSet<String> {
    bootstrap
        .split(',')
        .filter_map(|a| normalize_broker(a, ns))
        .collect()
}

/// The brokers of a KafkaTopic: its own `bootstrapServers`, else those of its cluster in
/// `clusters` (`None` when that cluster is missing).
fn brokers_of(
    kt: &KafkaTopic,
    cluster: impl Fn(&str, &str) -> Option<Arc<RealtimeCluster>>,
) -> Option<BTreeSet<String>> {
    let ns = kt.namespace().unwrap_or_default();
    if let Some(b) = &kt.spec.bootstrap_servers {
        return Some(broker_set(b, &ns));
    }
    let rc = cluster(&ns, &kt.spec.cluster_ref.as_ref()?.name)?;
    Some(broker_set(&rc.spec.kafka.bootstrap_servers, &ns))
}

/// The older KafkaTopic (`namespace/name`) that manages the same topic on a broker
/// `brokers` shares, if any: it wins, `kt` gives way.
pub fn older_owner(
    kt: &KafkaTopic,
    brokers: &BTreeSet<String>,
    all: &[Arc<KafkaTopic>],
    cluster: impl Fn(&str, &str) -> Option<Arc<RealtimeCluster>>,
) -> Option<(String, String)> {
    let mine = age_key(kt);
    all.iter()
        .filter(|o| o.spec.topic_name == kt.spec.topic_name && age_key(&***o) < mine)
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .filter_map(|o| {
            let shared = brokers_of(o, &cluster)?
                .intersection(brokers)
                .next()?
                .clone();
            Some((age_key(&**o), o, shared))
        })
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, o, broker)| {
            let owner = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
            (owner, broker)
        })
}

/// The other KafkaTopics to look at again when `changed` changed or went away: those of
/// the same topic name (one of them may have been giving way to it).
pub fn same_topic(changed: &KafkaTopic, all: &[Arc<KafkaTopic>]) -> Vec<ObjectRef<KafkaTopic>> {
    all.iter()
        .filter(|o| o.spec.topic_name == changed.spec.topic_name)
        .filter(|o| o.namespace() != changed.namespace() || o.name_any() != changed.name_any())
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

/// Where the topic lives, or what is missing.
async fn resolve(
    kt: &KafkaTopic,
    ctx: &Context,
    ns: &str,
) -> Result<Result<String, String>, Error> {
    if let Some(b) = &kt.spec.bootstrap_servers {
        return Ok(Ok(joined(&broker_set(b, ns))));
    }
    let Some(r) = &kt.spec.cluster_ref else {
        return Ok(Err(
            "the spec names neither clusterRef nor bootstrapServers".into(),
        ));
    };
    let clusters: Api<RealtimeCluster> = Api::namespaced(ctx.client.clone(), ns);
    Ok(
        match clusters
            .get_opt(&r.name)
            .await
            .map_err(Error::reading(&clusters, &r.name))?
        {
            Some(rc) => Ok(joined(&broker_set(&rc.spec.kafka.bootstrap_servers, ns))),
            None => Err(format!(
                "RealtimeCluster {ns}/{} (spec.clusterRef) does not exist",
                r.name
            )),
        },
    )
}

fn joined(brokers: &BTreeSet<String>) -> String {
    brokers.iter().cloned().collect::<Vec<_>>().join(",")
}

fn cluster_in(ctx: &Context) -> impl Fn(&str, &str) -> Option<Arc<RealtimeCluster>> + '_ {
    |ns, name| ctx.clusters.get(&ObjectRef::new(name).within(ns))
}

async fn reconcile_inner(kt: &KafkaTopic, ctx: &TopicContext) -> Result<Action, Error> {
    let ns = kt
        .namespace()
        .ok_or_else(|| Error::Invalid("KafkaTopic must be namespaced".into()))?;
    let api: Api<KafkaTopic> = Api::namespaced(ctx.client.clone(), &ns);
    if kt.metadata.deletion_timestamp.is_some() {
        return finish_deletion(kt, ctx, &api, &ns).await;
    }
    if let Some(message) = external::paused(kt) {
        external::pause(kt, ctx, &message).await?;
        return Ok(Action::await_change());
    }
    external::keep_finalizer_in_line(kt, &api).await?;
    let topic = &kt.spec.topic_name;
    if let Some(was) = kt.status.as_ref().and_then(|s| s.topic_name.as_ref())
        && was != topic
    {
        let problem = format!(
            "spec.topicName changed from {was:?} to {topic:?}: Kafka cannot rename a topic, and nothing was changed. Set it back to {was:?}, or create another KafkaTopic for {topic:?}"
        );
        external::stall(kt, ctx, REASON_TOPIC_NAME_CHANGE, problem, |_| {}).await?;
        return Ok(Action::await_change());
    }
    let brokers = match resolve(kt, ctx, &ns).await? {
        Ok(b) => b,
        Err(problem) => {
            external::stall(kt, ctx, REASON_MISSING_REFERENCE, problem, |_| {}).await?;
            return Ok(Action::requeue(MISSING_RETRY));
        }
    };
    let mine = broker_set(&brokers, &ns);
    if let Some((owner, broker)) = older_owner(kt, &mine, &ctx.topics.state(), cluster_in(ctx)) {
        let problem = format!(
            "topic {topic:?} on broker {broker} is managed by KafkaTopic {owner}, which is older; this resource changes nothing (and deletes nothing) while that one exists"
        );
        external::stall(kt, ctx, REASON_RESOURCE_CONFLICT, problem, |_| {}).await?;
        return Ok(Action::requeue(RESYNC));
    }
    let admin = match ctx.admin(&brokers) {
        Ok(a) => a,
        Err(e) => {
            let problem = format!("the brokers {brokers:?} are not usable: {e}");
            external::stall(kt, ctx, REASON_INVALID_SPEC, problem, |_| {}).await?;
            return Ok(Action::await_change());
        }
    };
    let synced = sync::sync(&admin, &kt.spec).await;
    report(kt, ctx, &brokers, synced).await
}

/// Conditions, status and Events of one sync.
async fn report(
    kt: &KafkaTopic,
    ctx: &TopicContext,
    brokers: &str,
    synced: Synced,
) -> Result<Action, Error> {
    let topic = &kt.spec.topic_name;
    let first = kt.status.as_ref().is_none_or(|s| s.topic_name.is_none());
    for change in &synced.changes {
        let (reason, action, note) = match change {
            Change::Created => (
                event::TOPIC_CREATED,
                "Create",
                format!(
                    "created topic {topic} ({} partitions, replication factor {}) on {brokers}",
                    kt.spec.partitions, kt.spec.replication_factor
                ),
            ),
            Change::Adopted if first => (
                event::TOPIC_ADOPTED,
                "Adopt",
                format!("topic {topic} existed on {brokers}; it is managed by this resource now"),
            ),
            Change::Adopted => continue,
            Change::PartitionsIncreased { from, to } => (
                event::PARTITIONS_INCREASED,
                "CreatePartitions",
                format!("topic {topic}: partitions increased from {from} to {to}"),
            ),
            Change::Configs(ops) => (
                event::TOPIC_CONFIG_CHANGED,
                "AlterConfigs",
                format!("topic {topic}: {}", describe_ops(ops)),
            ),
        };
        publish(ctx, kt, EventType::Normal, reason, action, note).await;
    }
    let observed = synced.observed.clone();
    let exists = observed.is_some();
    let fill = |status: &mut KafkaTopicStatus| {
        if let Some(o) = &observed {
            status.topic_name = Some(kt.spec.topic_name.clone());
            status.partitions = Some(o.layout.partitions);
            status.replication_factor = Some(o.layout.replication_factor);
            status.config.clone_from(&o.config);
        }
    };
    let generation = kt.metadata.generation;
    match synced.problem {
        None => {
            let message = format!(
                "topic {topic} has {} partitions, replication factor {} and the spec's configs",
                kt.spec.partitions, kt.spec.replication_factor
            );
            let mut conditions = external::reconciling(false, REASON_IN_SYNC, &message, kt);
            conditions.push(condition(
                READY,
                exists,
                REASON_IN_SYNC,
                message,
                generation,
            ));
            external::write(kt, ctx, conditions, fill).await?;
            Ok(Action::requeue(RESYNC))
        }
        Some(Problem::PartitionDecrease { has, wants }) => {
            let problem = format!(
                "spec.partitions is {wants} but topic {topic} has {has}: Kafka cannot remove partitions, and nothing was changed. Set spec.partitions to {has} or more, or delete the topic and create it again"
            );
            external::stall(kt, ctx, REASON_PARTITION_DECREASE, problem, fill).await?;
            Ok(Action::requeue(RESYNC))
        }
        Some(Problem::ReplicationFactorChange { has, wants }) => {
            let problem = format!(
                "spec.replicationFactor is {wants} but topic {topic} has {has}: changing it takes a partition reassignment, which the operator does not do, and nothing was changed. Set it back to {has}, or reassign the partitions with Kafka's tools and then change the spec"
            );
            external::stall(kt, ctx, REASON_REPLICATION_FACTOR_CHANGE, problem, fill).await?;
            Ok(Action::requeue(RESYNC))
        }
        Some(Problem::Admin { doing, error }) => {
            let problem = format!("{doing}: {error}");
            match error {
                AdminError::NotSupported { .. } => {
                    let problem = format!(
                        "{problem}; the spec cannot be applied on these brokers: change the spec back, or apply the change with the broker's own tools"
                    );
                    external::stall(kt, ctx, REASON_NOT_SUPPORTED, problem, fill).await?;
                    Ok(Action::requeue(RESYNC))
                }
                AdminError::Refused { .. } => {
                    external::failing(kt, ctx, REASON_REFUSED, &problem).await;
                    Err(Error::Kafka(problem))
                }
                AdminError::Unreachable { .. } => {
                    external::failing(kt, ctx, REASON_UNREACHABLE, &problem).await;
                    Err(Error::Kafka(problem))
                }
            }
        }
    }
}

/// `set retention.ms=1000; reset cleanup.policy to the broker's default`.
fn describe_ops(ops: &[ConfigOp]) -> String {
    ops.iter()
        .map(|op| match op {
            ConfigOp::Set(k, v) => format!("set {k}={v}"),
            ConfigOp::Delete(k) => format!("reset {k} to the broker's default"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The resource is being deleted: with `Delete`, delete the topic (gone already counts)
/// unless another, older KafkaTopic manages it; then release the finalizer.
async fn finish_deletion(
    kt: &KafkaTopic,
    ctx: &TopicContext,
    api: &Api<KafkaTopic>,
    ns: &str,
) -> Result<Action, Error> {
    if !external::holds_finalizer(kt) {
        return Ok(Action::await_change());
    }
    let topic = &kt.spec.topic_name;
    if kt.spec.deletion_policy == DeletionPolicy::Delete {
        let deleted = match resolve(kt, ctx, ns).await? {
            Ok(brokers) => {
                let mine = broker_set(&brokers, ns);
                if let Some((owner, _)) =
                    older_owner(kt, &mine, &ctx.topics.state(), cluster_in(ctx))
                {
                    let note = format!(
                        "topic {topic} is left alone: KafkaTopic {owner}, which is older, manages it"
                    );
                    publish(
                        ctx,
                        kt,
                        EventType::Normal,
                        REASON_RESOURCE_CONFLICT,
                        "Delete",
                        note,
                    )
                    .await;
                    Ok(false)
                } else {
                    match ctx.admin(&brokers) {
                        Ok(admin) => admin
                            .delete(topic)
                            .await
                            .map(|()| true)
                            .map_err(|e| format!("deleting topic {topic}: {e}")),
                        Err(e) => Err(format!("the brokers are not usable: {e}")),
                    }
                }
            }
            Err(problem) => Err(problem),
        };
        match deleted {
            Ok(true) => {
                let note =
                    format!("topic {topic} deleted with the resource (deletionPolicy: Delete)");
                publish(
                    ctx,
                    kt,
                    EventType::Normal,
                    event::TOPIC_DELETED,
                    "Delete",
                    note,
                )
                .await;
            }
            Ok(false) => {}
            Err(problem) => {
                external::deletion_blocked(kt, ctx, event::TOPIC_DELETE_FAILED, &problem).await?;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
        }
    }
    external::set_finalizer(kt, api, false).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn topic(ns: &str, name: &str, created: i64, topic: &str, brokers: &str) -> Arc<KafkaTopic> {
        let mut kt: KafkaTopic = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "KafkaTopic",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"topicName": topic, "partitions": 1, "replicationFactor": 1,
                     "bootstrapServers": brokers},
        }))
        .unwrap();
        kt.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        Arc::new(kt)
    }

    fn owner_of(kt: &KafkaTopic, all: &[Arc<KafkaTopic>]) -> Option<String> {
        let ns = kt.namespace().unwrap();
        let mine = broker_set(kt.spec.bootstrap_servers.as_deref().unwrap(), &ns);
        older_owner(kt, &mine, all, |_, _| None).map(|(o, _)| o)
    }

    #[test]
    fn the_older_resource_of_a_topic_on_shared_brokers_wins() {
        let old = topic("a", "x", 100, "t", "kafka.k.svc:9092");
        let young = topic("b", "y", 200, "t", "kafka.k:9092,other:9092");
        let elsewhere = topic("c", "z", 50, "t", "kafka.elsewhere:9092");
        let other_topic = topic("d", "w", 10, "u", "kafka.k:9092");
        let all = vec![old.clone(), young.clone(), elsewhere, other_topic];
        assert_eq!(owner_of(&young, &all).as_deref(), Some("a/x"));
        assert_eq!(owner_of(&old, &all), None);
        // Same age: namespace, then name decides, never both.
        let twin = topic("a", "w", 100, "t", "kafka.k.svc:9092");
        let all = vec![old.clone(), twin.clone()];
        assert_eq!(owner_of(&old, &all).as_deref(), Some("a/w"));
        assert_eq!(owner_of(&twin, &all), None);
    }

    #[test]
    fn short_broker_names_are_services_of_the_resources_namespace() {
        let a = topic("a", "x", 100, "t", "kafka:9092");
        let b = topic("b", "y", 200, "t", "kafka:9092");
        assert_eq!(owner_of(&b, &[a.clone(), b.clone()]), None);
        let c = topic("a", "z", 200, "t", "kafka.a.svc.cluster.local:9092");
        assert_eq!(owner_of(&c, &[a, c.clone()]).as_deref(), Some("a/x"));
    }

    #[test]
    fn config_changes_are_described_for_people() {
        let ops = [
            ConfigOp::Set("retention.ms".into(), "1000".into()),
            ConfigOp::Delete("cleanup.policy".into()),
        ];
        assert_eq!(
            describe_ops(&ops),
            "set retention.ms=1000; reset cleanup.policy to the broker's default"
        );
    }
}
