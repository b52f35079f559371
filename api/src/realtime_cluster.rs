//! RealtimeCluster: one data-plane installation (gateway, persister, admin API, their
//! config).
//!
//! Longer than most files on purpose: the doc comments of the fields are the CRD's
//! documentation (`kubectl explain`), and the CEL rules sit with the fields they check.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{LocalRef, SecretKeyRef};

/// A data-plane installation: Socket.IO gateways, persistence workers, the admin REST API,
/// their rendered configuration, Services and a PodDisruptionBudget, plus the default Kafka
/// topics and MongoDB indexes.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "realtime.dev",
    version = "v1alpha1",
    kind = "RealtimeCluster",
    namespaced,
    shortname = "rtc",
    status = "RealtimeClusterStatus",
    validation = Rule::new("has(self.spec.auth.jwtSecretRef) || has(self.spec.auth.jwksUrl)").message("spec.auth needs jwtSecretRef (HS256 secret) or jwksUrl (RS256/ES256 keys), or both"),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Gateways","type":"string","jsonPath":".status.gateway.summary"}"#,
    printcolumn = r#"{"name":"Persisters","type":"string","jsonPath":".status.persister.summary"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoints.websocketUrl"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeClusterSpec {
    /// Container image of the `realtime` data plane, e.g. `ghcr.io/acme/realtime:1.2.3`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// The Socket.IO gateways.
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// The persistence workers (Kafka → MongoDB).
    #[serde(default)]
    pub persister: PersisterSpec,
    /// The admin REST API (`/v1/admin`: recordings, GDPR export and erasure).
    #[serde(default)]
    pub admin: AdminSpec,
    /// The Kafka cluster and topic names.
    pub kafka: KafkaSpec,
    /// The MongoDB deployment.
    pub mongodb: MongoSpec,
    /// The Redis deployment (room state, rate limits, the Socket.IO adapter).
    pub redis: RedisSpec,
    /// How client tokens are verified.
    pub auth: AuthSpec,
    /// TurnPool whose healthy servers are handed to clients for calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_pool_ref: Option<LocalRef>,
    /// Per-user and per-message limits.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Hours a conversation's state lives in Redis without activity.
    #[serde(default = "default_room_state_ttl_hours")]
    #[schemars(range(min = 1, max = 8760))]
    pub room_state_ttl_hours: u32,
    /// Seconds a membership check is cached.
    #[serde(default = "default_authz_cache_ttl_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub authz_cache_ttl_seconds: u32,
    /// Delivery confirmation timing.
    #[serde(default)]
    pub delivery: DeliverySpec,
    /// Seconds every call member has to consent before a recording request is cancelled
    /// (and a member who joins a running recording, before it stops). The data plane's
    /// `RECORDING_CONSENT_TIMEOUT_SECONDS`.
    #[serde(default = "default_recording_consent_timeout_seconds")]
    #[schemars(range(min = 1, max = 600))]
    pub recording_consent_timeout_seconds: u32,
}

fn default_room_state_ttl_hours() -> u32 {
    24
}
fn default_authz_cache_ttl_seconds() -> u32 {
    300
}
fn default_recording_consent_timeout_seconds() -> u32 {
    30
}

/// The Socket.IO gateways.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Number of gateway pods.
    #[serde(default = "default_gateway_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// CPU and memory of each gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The Service in front of the gateways.
    #[serde(default)]
    pub service: ServiceSpec,
}

fn default_gateway_replicas() -> i32 {
    2
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            replicas: default_gateway_replicas(),
            resources: None,
            service: ServiceSpec::default(),
        }
    }
}

/// The Service in front of the gateways.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port the Service exposes (the pods listen on 3000).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_service_port() -> i32 {
    80
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
        }
    }
}

/// Kubernetes Service type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// The persistence workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersisterSpec {
    /// Number of persister pods (at most the partitions of the message topic do work).
    #[serde(default = "default_persister_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Messages written to MongoDB in one bulk write.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: i32,
    /// CPU and memory of each persister container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_persister_replicas() -> i32 {
    1
}
fn default_batch_size() -> i32 {
    100
}

impl Default for PersisterSpec {
    fn default() -> Self {
        Self {
            replicas: default_persister_replicas(),
            batch_size: default_batch_size(),
            resources: None,
        }
    }
}

/// The admin REST API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSpec {
    /// Number of admin API pods (served by the `<name>-admin` Service).
    #[serde(default = "default_admin_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// CPU and memory of each admin API container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_admin_replicas() -> i32 {
    1
}

impl Default for AdminSpec {
    fn default() -> Self {
        Self {
            replicas: default_admin_replicas(),
            resources: None,
        }
    }
}

/// The Kafka cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Bootstrap servers, comma-separated `host:port`.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// Topic names.
    #[serde(default)]
    pub topics: TopicNames,
    /// Partitions of the default topics, rendered as `KAFKA_TOPIC_PARTITIONS`: the data
    /// plane creates missing topics with it.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,
    /// Replication factor of the default topics, rendered as `KAFKA_REPLICATION_FACTOR`:
    /// the data plane creates missing topics with it.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i32,
}

fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}

/// Topic names of the data plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicNames {
    /// Accepted chat messages.
    #[serde(default = "default_messages_topic")]
    pub messages: String,
    /// Persistence events.
    #[serde(default = "default_persistence_topic")]
    pub persistence_events: String,
    /// Recording events: every recording change and consent, JSON keyed
    /// `tenantId:recordingId` (the data plane's `KAFKA_RECORDING_TOPIC`).
    #[serde(default = "default_recording_topic")]
    pub recording_events: String,
}

fn default_messages_topic() -> String {
    "chat.messages".into()
}
fn default_persistence_topic() -> String {
    "chat.persistence.events".into()
}
fn default_recording_topic() -> String {
    "webrtc.recording.events".into()
}

impl Default for TopicNames {
    fn default() -> Self {
        Self {
            messages: default_messages_topic(),
            persistence_events: default_persistence_topic(),
            recording_events: default_recording_topic(),
        }
    }
}

/// The MongoDB deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoSpec {
    /// Secret key holding the connection string.
    pub uri_secret_ref: SecretKeyRef,
    /// Database name.
    #[serde(default = "default_database")]
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
}

fn default_database() -> String {
    "realtime".into()
}

/// The Redis deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Secret key holding the Redis URL (Redis 7 or newer).
    pub url_secret_ref: SecretKeyRef,
}

/// Token verification: an HS256 secret, a JWKS document (RS256/ES256), or both, with
/// issuer and audience. A cluster with neither is refused (or, on servers that ignore CEL
/// rules, reported `Stalled` with reason `InvalidSpec`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret key holding the HS256 signing secret (the data plane's `JWT_SECRET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
    /// URL of a JWKS document whose keys verify RS256/ES256 tokens (the data plane's
    /// `JWT_JWKS_URL`), instead of or besides `jwtSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub jwks_url: Option<String>,
    /// Expected `iss` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Expected `aud` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// Per-user and per-message limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest message text in bytes.
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_message_bytes: i32,
    /// Messages a user may send per second, sustained.
    #[serde(default = "default_rate")]
    #[schemars(range(min = 1, max = 100000))]
    pub rate_per_user: i32,
    /// Messages a user may send in a burst.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 100000))]
    pub burst: i32,
}

fn default_max_message_bytes() -> i32 {
    16384
}
fn default_rate() -> i32 {
    10
}
fn default_burst() -> i32 {
    20
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message_bytes(),
            rate_per_user: default_rate(),
            burst: default_burst(),
        }
    }
}

/// Delivery confirmation timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Milliseconds to wait for a persistence confirmation before retrying.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 100, max = 600000))]
    pub confirmation_timeout_ms: i32,
    /// Retries before the sender is told the message failed.
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 100))]
    pub retries: i32,
}

fn default_timeout_ms() -> i32 {
    5000
}
fn default_retries() -> i32 {
    3
}

impl Default for DeliverySpec {
    fn default() -> Self {
        Self {
            confirmation_timeout_ms: default_timeout_ms(),
            retries: default_retries(),
        }
    }
}

/// Observed state of a RealtimeCluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeClusterStatus {
    /// `Ready`, `Reconciling` and `Stalled`, in the Kubernetes shape.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where clients connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// Gateway replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<ComponentStatus>,
    /// Persister replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persister: Option<ComponentStatus>,
    /// Admin API replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<ComponentStatus>,
    /// Checksum of the rendered configuration and referenced Secrets in the pod templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_checksum: Option<String>,
}

/// Where clients connect.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Socket.IO URL inside the cluster (namespace `/chat`).
    pub websocket_url: String,
    /// Admin REST API URL inside the cluster (the `<name>-admin` Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_url: Option<String>,
}

/// Replica counts of one component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Desired replicas.
    pub replicas: i32,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// Replicas running the current pod template (during a rollout, fewer than desired).
    #[serde(default)]
    pub updated_replicas: i32,
    /// Available replicas (ready for at least `minReadySeconds`).
    #[serde(default)]
    pub available_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    pub summary: String,
}

/// Labels every child of a cluster carries.
pub fn labels(cluster: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "realtime".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), cluster.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "realtime-operator".to_owned(),
        ),
    ])
}
