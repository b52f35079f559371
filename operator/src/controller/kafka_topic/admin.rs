//! The Kafka Admin API the KafkaTopic reconciler needs, as a trait ([`TopicAdmin`]) so its
//! decisions can be proven against a scripted broker, and its implementation on
//! librdkafka ([`RdAdmin`]). Every failure says which Admin API call failed and whether the
//! broker lacks the API ([`AdminError::NotSupported`]), refused the call, or could not be
//! reached.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::crd::ConfigValue;

/// How long one Admin API call may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Partitions and replication factor of an existing topic (from the cluster metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub partitions: i32,
    pub replication_factor: i32,
}

/// One change of `IncrementalAlterConfigs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    Set(String, String),
    /// Back to the broker's default.
    Delete(String),
}

impl ConfigOp {
    pub fn key(&self) -> &str {
        match self {
            ConfigOp::Set(k, _) | ConfigOp::Delete(k) => k,
        }
    }
}

/// Why an Admin API call failed. `api` is the Kafka protocol API (`CreatePartitions`, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("the broker does not support the {api} API")]
    NotSupported { api: &'static str },
    #[error("{api} refused by the broker: {message}")]
    Refused { api: &'static str, message: String },
    #[error("{api} failed, the brokers did not answer: {message}")]
    Unreachable { api: &'static str, message: String },
}

pub const METADATA: &str = "Metadata";
pub const CREATE_TOPICS: &str = "CreateTopics";
pub const DELETE_TOPICS: &str = "DeleteTopics";
pub const CREATE_PARTITIONS: &str = "CreatePartitions";
pub const DESCRIBE_CONFIGS: &str = "DescribeConfigs";
pub const INCREMENTAL_ALTER_CONFIGS: &str = "IncrementalAlterConfigs";

/// The Admin API calls the reconciler makes.
pub trait TopicAdmin: Send + Sync {
    /// The topic's layout, or `None` when it does not exist. Never creates it.
    fn describe(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<Option<Layout>, AdminError>> + Send;
    /// The topic's effective configuration.
    fn configs(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, ConfigValue>, AdminError>> + Send;
    /// Creates the topic; one that exists already counts as created.
    fn create(
        &self,
        topic: &str,
        layout: Layout,
        config: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    /// Grows the topic to `total` partitions.
    fn create_partitions(
        &self,
        topic: &str,
        total: i32,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn alter_configs(
        &self,
        topic: &str,
        ops: &[ConfigOp],
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    /// Deletes the topic; one that is gone already counts as deleted.
    fn delete(&self, topic: &str) -> impl Future<Output = Result<(), AdminError>> + Send;
}

/// Sorts an error code of librdkafka or the broker.
pub fn classify(api: &'static str, code: RDKafkaErrorCode, detail: Option<&str>) -> AdminError {
    use RDKafkaErrorCode::*;
    let message = match detail {
        Some(d) if !d.is_empty() => format!("{code} ({d})"),
        _ => code.to_string(),
    };
    match code {
        UnsupportedFeature | UnsupportedVersion => AdminError::NotSupported { api },
        BrokerTransportFailure
        | AllBrokersDown
        | Resolve
        | OperationTimedOut
        | RequestTimedOut
        | NetworkException
        | BrokerNotAvailable
        | LeaderNotAvailable
        | NotController
        | TimedOutQueue
        | MessageTimedOut => AdminError::Unreachable { api, message },
        _ => AdminError::Refused { api, message },
    }
}

fn from_kafka(api: &'static str, e: &KafkaError) -> AdminError {
    let code = match e {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    match code {
        Some(code) => classify(api, code, None),
        None => AdminError::Refused {
            api,
            message: e.to_string(),
        },
    }
}

/// The names Kafka gives configuration sources.
pub fn source_name(source: &ConfigSource) -> &'static str {
    match source {
        ConfigSource::Unknown => "Unknown",
        ConfigSource::DynamicTopic => "DynamicTopic",
        ConfigSource::DynamicBroker => "DynamicBroker",
        ConfigSource::DynamicDefaultBroker => "DynamicDefaultBroker",
        ConfigSource::StaticBroker => "StaticBroker",
        ConfigSource::Default => "Default",
    }
}

/// [`TopicAdmin`] on librdkafka's admin client.
#[derive(Clone)]
pub struct RdAdmin {
    client: Arc<AdminClient<DefaultClientContext>>,
}

impl RdAdmin {
    /// An admin client of `bootstrap` (`host:port,…`). Connects lazily.
    pub fn new(bootstrap: &str) -> Result<Self, AdminError> {
        let client = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("client.id", "realtime-operator")
            .set("socket.timeout.ms", "10000")
            .set("log_level", "3")
            .create()
            .map_err(|e| from_kafka(METADATA, &e))?;
        Ok(Self {
            client: Arc::new(client),
        })
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(TIMEOUT))
            .operation_timeout(Some(TIMEOUT))
    }

    /// One result per topic: the first failure.
    fn first_failure(
        api: &'static str,
        results: Vec<Result<String, (String, RDKafkaErrorCode)>>,
        ok: &[RDKafkaErrorCode],
    ) -> Result<(), AdminError> {
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, code)) if ok.contains(&code) => {}
                Err((_, code)) => return Err(classify(api, code, None)),
            }
        }
        Ok(())
    }
}

impl TopicAdmin for RdAdmin {
    async fn describe(&self, topic: &str) -> Result<Option<Layout>, AdminError> {
        // All topics: a request naming a missing topic makes some brokers create it.
        let client = self.client.clone();
        let metadata =
            tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, TIMEOUT))
                .await
                .map_err(|e| AdminError::Unreachable {
                    api: METADATA,
                    message: e.to_string(),
                })?
                .map_err(|e| from_kafka(METADATA, &e))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| Layout {
                partitions: i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
                replication_factor: t
                    .partitions()
                    .first()
                    .map_or(0, |p| i32::try_from(p.replicas().len()).unwrap_or(i32::MAX)),
            }))
    }

    async fn configs(&self, topic: &str) -> Result<BTreeMap<String, ConfigValue>, AdminError> {
        let results = self
            .client
            .describe_configs([&ResourceSpecifier::Topic(topic)], &Self::options())
            .await
            .map_err(|e| from_kafka(DESCRIBE_CONFIGS, &e))?;
        let mut configs = BTreeMap::new();
        for result in results {
            let resource = result.map_err(|code| classify(DESCRIBE_CONFIGS, code, None))?;
            for entry in resource.entries {
                let value = (!entry.is_sensitive).then_some(entry.value).flatten();
                configs.insert(
                    entry.name,
                    ConfigValue {
                        value,
                        source: source_name(&entry.source).to_owned(),
                    },
                );
            }
        }
        Ok(configs)
    }

    async fn create(
        &self,
        topic: &str,
        layout: Layout,
        config: &BTreeMap<String, String>,
    ) -> Result<(), AdminError> {
        let mut new = NewTopic::new(
            topic,
            layout.partitions,
            TopicReplication::Fixed(layout.replication_factor),
        );
        for (k, v) in config {
            new = new.set(k, v);
        }
        let results = self
            .client
            .create_topics([&new], &Self::options())
            .await
            .map_err(|e| from_kafka(CREATE_TOPICS, &e))?;
        Self::first_failure(
            CREATE_TOPICS,
            results,
            &[RDKafkaErrorCode::TopicAlreadyExists],
        )
    }

    async fn create_partitions(&self, topic: &str, total: i32) -> Result<(), AdminError> {
        let total = usize::try_from(total).unwrap_or(0);
        let results = self
            .client
            .create_partitions([&NewPartitions::new(topic, total)], &Self::options())
            .await
            .map_err(|e| from_kafka(CREATE_PARTITIONS, &e))?;
        Self::first_failure(CREATE_PARTITIONS, results, &[])
    }

    async fn alter_configs(&self, topic: &str, ops: &[ConfigOp]) -> Result<(), AdminError> {
        let (client, topic, ops) = (self.client.clone(), topic.to_owned(), ops.to_vec());
        tokio::task::spawn_blocking(move || {
            super::incremental::alter(client.inner(), &topic, &ops, TIMEOUT)
        })
        .await
        .map_err(|e| AdminError::Unreachable {
            api: INCREMENTAL_ALTER_CONFIGS,
            message: e.to_string(),
        })?
    }

    async fn delete(&self, topic: &str) -> Result<(), AdminError> {
        let results = self
            .client
            .delete_topics(&[topic], &Self::options())
            .await
            .map_err(|e| from_kafka(DELETE_TOPICS, &e))?;
        Self::first_failure(
            DELETE_TOPICS,
            results,
            &[
                RDKafkaErrorCode::UnknownTopicOrPartition,
                RDKafkaErrorCode::UnknownTopic,
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whether_the_api_is_missing_refused_or_the_brokers_silent() {
        let missing = KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature);
        assert_eq!(
            from_kafka(CREATE_PARTITIONS, &missing),
            AdminError::NotSupported {
                api: CREATE_PARTITIONS
            }
        );
        assert!(matches!(
            from_kafka(
                CREATE_TOPICS,
                &KafkaError::AdminOp(RDKafkaErrorCode::AllBrokersDown)
            ),
            AdminError::Unreachable { .. }
        ));
        let refused = classify(
            DELETE_TOPICS,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            Some("not allowed"),
        );
        assert!(
            matches!(&refused, AdminError::Refused { message, .. } if message.contains("not allowed")),
            "{refused:?}"
        );
    }
}
