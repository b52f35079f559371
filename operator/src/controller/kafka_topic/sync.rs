//! Brings one topic in line with its spec through a [`TopicAdmin`]: create it when
//! missing (or adopt it when it exists), refuse what Kafka cannot do (fewer partitions,
//! another replication factor) before changing anything, add partitions, set configs back
//! to the spec, and read back what the broker then reports. What changed and what stands
//! in the way come back as values; the reconciler turns them into conditions and Events.

use std::collections::BTreeMap;

use super::admin::{AdminError, ConfigOp, Layout, TopicAdmin};
use crate::crd::{ConfigValue, KafkaTopicSpec};

/// The topic as the broker reports it after the sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub layout: Layout,
    pub config: BTreeMap<String, ConfigValue>,
}

/// Something the sync changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created,
    /// The topic existed already and is now managed.
    Adopted,
    PartitionsIncreased {
        from: i32,
        to: i32,
    },
    /// Configs set to the spec's values (`Set`) or back to the default (`Delete`).
    Configs(Vec<ConfigOp>),
}

/// What keeps the topic from matching the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The spec asks for fewer partitions than the topic has.
    PartitionDecrease {
        has: i32,
        wants: i32,
    },
    ReplicationFactorChange {
        has: i32,
        wants: i32,
    },
    /// A call the change needs failed.
    Admin {
        doing: &'static str,
        error: AdminError,
    },
}

/// The outcome of one sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// `None` when the topic could not be read (or does not exist).
    pub observed: Option<Observed>,
    pub changes: Vec<Change>,
    pub problem: Option<Problem>,
}

/// The configuration changes that bring `effective` to `wanted`: every key of the spec
/// whose value differs, and every key set on the topic (source `DynamicTopic`) that the
/// spec does not name, back to its default.
pub fn config_ops(
    wanted: &BTreeMap<String, String>,
    effective: &BTreeMap<String, ConfigValue>,
) -> Vec<ConfigOp> {
    let mut ops: Vec<ConfigOp> = wanted
        .iter()
        .filter(|(k, v)| effective.get(*k).and_then(|c| c.value.as_ref()) != Some(*v))
        .map(|(k, v)| ConfigOp::Set(k.clone(), v.clone()))
        .collect();
    ops.extend(
        effective
            .iter()
            .filter(|(k, c)| c.source == "DynamicTopic" && !wanted.contains_key(*k))
            .map(|(k, _)| ConfigOp::Delete(k.clone())),
    );
    ops
}

/// One sync of `spec`'s topic.
pub async fn sync(admin: &impl TopicAdmin, spec: &KafkaTopicSpec) -> Synced {
    let topic = spec.topic_name.as_str();
    let wanted = Layout {
        partitions: spec.partitions,
        replication_factor: spec.replication_factor,
    };
    let mut synced = Synced {
        observed: None,
        changes: Vec::new(),
        problem: None,
    };
    let fail = |mut synced: Synced, doing, error| {
        synced.problem = Some(Problem::Admin { doing, error });
        synced
    };
    let existing = match admin.describe(topic).await {
        Ok(e) => e,
        Err(error) => return fail(synced, "reading the topic's metadata", error),
    };
    let layout = match existing {
        None => {
            if let Err(error) = admin.create(topic, wanted, &spec.config).await {
                return fail(synced, "creating the topic", error);
            }
            synced.changes.push(Change::Created);
            wanted
        }
        Some(has) => {
            synced.changes.push(Change::Adopted);
            has
        }
    };
    let refusal = if layout.replication_factor != wanted.replication_factor {
        Some(Problem::ReplicationFactorChange {
            has: layout.replication_factor,
            wants: wanted.replication_factor,
        })
    } else if layout.partitions > wanted.partitions {
        Some(Problem::PartitionDecrease {
            has: layout.partitions,
            wants: wanted.partitions,
        })
    } else {
        None
    };
    if refusal.is_none() && layout.partitions < wanted.partitions {
        match admin.create_partitions(topic, wanted.partitions).await {
            Ok(()) => synced.changes.push(Change::PartitionsIncreased {
                from: layout.partitions,
                to: wanted.partitions,
            }),
            Err(error) => synced = fail(synced, "adding partitions", error),
        }
    }
    let mut read = None;
    if refusal.is_none() && synced.problem.is_none() {
        match admin.configs(topic).await {
            Ok(effective) => {
                let ops = config_ops(&spec.config, &effective);
                if ops.is_empty() {
                    read = Some(effective);
                } else {
                    match admin.alter_configs(topic, &ops).await {
                        Ok(()) => synced.changes.push(Change::Configs(ops)),
                        Err(error) => synced = fail(synced, "changing the topic's configs", error),
                    }
                }
            }
            Err(error) => synced = fail(synced, "reading the topic's configs", error),
        }
    }
    if refusal.is_some() {
        synced.problem = refusal;
    }
    // What the broker reports now: what was just read when nothing changed (every resync
    // of a topic in line), else read again.
    let unchanged = synced.changes.iter().all(|c| *c == Change::Adopted);
    match read {
        Some(config) if unchanged => synced.observed = Some(Observed { layout, config }),
        _ => {
            if let (Ok(Some(layout)), Ok(config)) =
                (admin.describe(topic).await, admin.configs(topic).await)
            {
                synced.observed = Some(Observed { layout, config });
            }
        }
    }
    synced
}

#[cfg(test)]
mod tests {
    //! The decisions of [`sync`] against a scripted broker that records every call — the
    //! paths the local broker cannot take (it has no CreatePartitions, its configs have no
    //! sources) are proven here.
    use super::*;
    use crate::crd::{DeletionPolicy, LocalRef};
    use std::sync::Mutex;

    const API_CREATE_PARTITIONS: &str = super::super::admin::CREATE_PARTITIONS;

    /// Topic name → layout and configs.
    type Topics = BTreeMap<String, (Layout, BTreeMap<String, ConfigValue>)>;

    #[derive(Default)]
    struct Broker {
        topics: Mutex<Topics>,
        calls: Mutex<Vec<String>>,
        /// The APIs the broker does not have.
        missing: Vec<&'static str>,
        unreachable: bool,
    }

    impl Broker {
        fn with(topic: &str, partitions: i32, rf: i32, config: &[(&str, &str, &str)]) -> Broker {
            let b = Broker::default();
            b.topics.lock().unwrap().insert(
                topic.into(),
                (
                    Layout {
                        partitions,
                        replication_factor: rf,
                    },
                    config
                        .iter()
                        .map(|(k, v, s)| {
                            (
                                (*k).to_owned(),
                                ConfigValue {
                                    value: Some((*v).to_owned()),
                                    source: (*s).to_owned(),
                                },
                            )
                        })
                        .collect(),
                ),
            );
            b
        }
        fn call(&self, api: &'static str, what: String) -> Result<(), AdminError> {
            self.calls.lock().unwrap().push(what);
            if self.unreachable {
                return Err(AdminError::Unreachable {
                    api,
                    message: "connection refused".into(),
                });
            }
            if self.missing.contains(&api) {
                return Err(AdminError::NotSupported { api });
            }
            Ok(())
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn changes(&self) -> Vec<String> {
            self.calls()
                .into_iter()
                .filter(|c| !c.starts_with("describe") && !c.starts_with("configs"))
                .collect()
        }
    }

    impl TopicAdmin for Broker {
        async fn describe(&self, topic: &str) -> Result<Option<Layout>, AdminError> {
            self.call("Metadata", format!("describe {topic}"))?;
            Ok(self.topics.lock().unwrap().get(topic).map(|t| t.0))
        }
        async fn configs(&self, topic: &str) -> Result<BTreeMap<String, ConfigValue>, AdminError> {
            self.call("DescribeConfigs", format!("configs {topic}"))?;
            Ok(self
                .topics
                .lock()
                .unwrap()
                .get(topic)
                .map(|t| t.1.clone())
                .unwrap_or_default())
        }
        async fn create(
            &self,
            topic: &str,
            layout: Layout,
            config: &BTreeMap<String, String>,
        ) -> Result<(), AdminError> {
            self.call(
                "CreateTopics",
                format!("create {topic} {layout:?} {config:?}"),
            )?;
            let config = config
                .iter()
                .map(|(k, v)| {
                    let value = ConfigValue {
                        value: Some(v.clone()),
                        source: "DynamicTopic".into(),
                    };
                    (k.clone(), value)
                })
                .collect();
            self.topics
                .lock()
                .unwrap()
                .insert(topic.into(), (layout, config));
            Ok(())
        }
        async fn create_partitions(&self, topic: &str, total: i32) -> Result<(), AdminError> {
            self.call(
                API_CREATE_PARTITIONS,
                format!("create_partitions {topic} {total}"),
            )?;
            if let Some(t) = self.topics.lock().unwrap().get_mut(topic) {
                t.0.partitions = total;
            }
            Ok(())
        }
        async fn alter_configs(&self, topic: &str, ops: &[ConfigOp]) -> Result<(), AdminError> {
            self.call("IncrementalAlterConfigs", format!("alter {topic} {ops:?}"))?;
            if let Some(t) = self.topics.lock().unwrap().get_mut(topic) {
                for op in ops {
                    match op {
                        ConfigOp::Set(k, v) => {
                            let value = ConfigValue {
                                value: Some(v.clone()),
                                source: "DynamicTopic".into(),
                            };
                            t.1.insert(k.clone(), value);
                        }
                        ConfigOp::Delete(k) => {
                            t.1.remove(k);
                        }
                    }
                }
            }
            Ok(())
        }
        async fn delete(&self, topic: &str) -> Result<(), AdminError> {
            self.call("DeleteTopics", format!("delete {topic}"))?;
            self.topics.lock().unwrap().remove(topic);
            Ok(())
        }
    }

    fn spec(partitions: i32, rf: i32, config: &[(&str, &str)]) -> KafkaTopicSpec {
        KafkaTopicSpec {
            topic_name: "t".into(),
            partitions,
            replication_factor: rf,
            config: config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            deletion_policy: DeletionPolicy::Retain,
            cluster_ref: Some(LocalRef { name: "rc".into() }),
            bootstrap_servers: None,
        }
    }

    #[tokio::test]
    async fn a_missing_topic_is_created_with_its_configs_and_read_back() {
        let broker = Broker::default();
        let synced = sync(&broker, &spec(3, 1, &[("retention.ms", "1000")])).await;
        assert_eq!(synced.problem, None);
        assert_eq!(synced.changes, vec![Change::Created]);
        assert_eq!(
            broker.changes(),
            vec![
                r#"create t Layout { partitions: 3, replication_factor: 1 } {"retention.ms": "1000"}"#
            ]
        );
        let observed = synced.observed.unwrap();
        assert_eq!(observed.layout.partitions, 3);
        assert_eq!(
            observed.config["retention.ms"].value.as_deref(),
            Some("1000")
        );
    }

    #[tokio::test]
    async fn drifted_configs_are_set_back_and_strays_reset_to_default() {
        let broker = Broker::with(
            "t",
            3,
            1,
            &[
                ("retention.ms", "5", "DynamicTopic"),
                ("cleanup.policy", "compact", "DynamicTopic"),
                ("segment.bytes", "1024", "StaticBroker"),
            ],
        );
        let synced = sync(&broker, &spec(3, 1, &[("retention.ms", "1000")])).await;
        assert_eq!(synced.problem, None);
        let ops = vec![
            ConfigOp::Set("retention.ms".into(), "1000".into()),
            ConfigOp::Delete("cleanup.policy".into()),
        ];
        assert_eq!(
            synced.changes,
            vec![Change::Adopted, Change::Configs(ops.clone())]
        );
        assert_eq!(broker.changes(), vec![format!("alter t {ops:?}")]);
        // A broker setting is not the topic's to reset.
        let config = synced.observed.unwrap().config;
        assert_eq!(config["segment.bytes"].source, "StaticBroker");
        assert!(!config.contains_key("cleanup.policy"));
    }

    #[tokio::test]
    async fn a_topic_in_line_is_only_read() {
        let broker = Broker::with("t", 3, 1, &[("retention.ms", "1000", "DynamicTopic")]);
        let synced = sync(&broker, &spec(3, 1, &[("retention.ms", "1000")])).await;
        assert_eq!(
            (synced.problem, synced.changes),
            (None, vec![Change::Adopted])
        );
        // One read of each: what was read is what the status reports.
        assert_eq!(broker.calls(), vec!["describe t", "configs t"]);
        let observed = synced.observed.unwrap();
        assert_eq!(observed.layout.partitions, 3);
        assert_eq!(
            observed.config["retention.ms"].value.as_deref(),
            Some("1000")
        );
    }

    #[tokio::test]
    async fn more_partitions_are_added() {
        let broker = Broker::with("t", 3, 1, &[]);
        let synced = sync(&broker, &spec(6, 1, &[])).await;
        assert_eq!(synced.problem, None);
        assert_eq!(
            synced.changes,
            vec![
                Change::Adopted,
                Change::PartitionsIncreased { from: 3, to: 6 }
            ]
        );
        assert_eq!(synced.observed.unwrap().layout.partitions, 6);
    }

    #[tokio::test]
    async fn a_broker_without_create_partitions_is_named_and_nothing_else_changes() {
        let broker = Broker {
            missing: vec![API_CREATE_PARTITIONS],
            ..Broker::with("t", 3, 1, &[("retention.ms", "5", "DynamicTopic")])
        };
        let synced = sync(&broker, &spec(6, 1, &[("retention.ms", "1000")])).await;
        assert_eq!(
            synced.problem,
            Some(Problem::Admin {
                doing: "adding partitions",
                error: AdminError::NotSupported {
                    api: API_CREATE_PARTITIONS
                }
            })
        );
        assert_eq!(broker.changes(), vec!["create_partitions t 6"]);
        assert_eq!(synced.observed.unwrap().layout.partitions, 3);
    }

    #[tokio::test]
    async fn a_partition_decrease_is_refused_before_any_change() {
        let broker = Broker::with("t", 6, 1, &[("retention.ms", "5", "DynamicTopic")]);
        let synced = sync(&broker, &spec(3, 1, &[("retention.ms", "1000")])).await;
        assert_eq!(
            synced.problem,
            Some(Problem::PartitionDecrease { has: 6, wants: 3 })
        );
        assert!(broker.changes().is_empty(), "{:?}", broker.calls());
        assert_eq!(synced.observed.unwrap().layout.partitions, 6);
    }

    #[tokio::test]
    async fn a_replication_factor_change_is_refused_before_any_change() {
        let broker = Broker::with("t", 3, 1, &[]);
        let synced = sync(&broker, &spec(6, 3, &[("retention.ms", "1000")])).await;
        assert_eq!(
            synced.problem,
            Some(Problem::ReplicationFactorChange { has: 1, wants: 3 })
        );
        assert!(broker.changes().is_empty(), "{:?}", broker.calls());
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_reported_with_what_was_being_done() {
        let broker = Broker {
            unreachable: true,
            ..Broker::default()
        };
        let synced = sync(&broker, &spec(3, 1, &[])).await;
        assert!(matches!(
            synced.problem,
            Some(Problem::Admin {
                doing: "reading the topic's metadata",
                error: AdminError::Unreachable { .. }
            })
        ));
        assert_eq!(synced.observed, None);
        assert!(synced.changes.is_empty());
    }
}
