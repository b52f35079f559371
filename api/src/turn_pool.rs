//! TurnPool: a set of TURN servers, external or a managed coturn Deployment, and the
//! layout of the shared-secret Secret the operator writes and the data plane (and external
//! TURN servers) read.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// TURN servers handed to clients for WebRTC calls: external servers, or a coturn
/// Deployment the operator runs. The operator keeps the shared secret (current and
/// previous) in a Secret it owns, rotates it, and health-checks every server.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "realtime.dev",
    version = "v1alpha1",
    kind = "TurnPool",
    namespaced,
    shortname = "turn",
    status = "TurnPoolStatus",
    validation = Rule::new("has(self.spec.servers) || has(self.spec.managed)").message("set spec.servers (external TURN servers) or spec.managed (a coturn Deployment)"),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Healthy","type":"integer","jsonPath":".status.healthyServers"}"#,
    printcolumn = r#"{"name":"Servers","type":"integer","jsonPath":".status.totalServers"}"#,
    printcolumn = r#"{"name":"Last Rotation","type":"date","jsonPath":".status.lastRotationTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TurnPoolSpec {
    /// External TURN servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<TurnServer>>,
    /// A coturn Deployment run by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedTurn>,
    /// Lifetime of the TURN REST credentials handed to clients, in seconds.
    #[serde(default = "default_credential_ttl", rename = "credentialTTLSeconds")]
    #[schemars(range(min = 60, max = 604800))]
    pub credential_ttl_seconds: i64,
    /// Shared-secret rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
    /// Health checks of every server.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Healthy servers needed for the pool to be `Ready`.
    #[serde(default = "default_min_healthy")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_healthy_servers: i32,
}

fn default_min_healthy() -> i32 {
    1
}

fn default_credential_ttl() -> i64 {
    86400
}

/// One TURN server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnServer {
    /// Host name or IP address.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Port (3478 for udp/tcp, 5349 for tls by convention).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Transports the server offers.
    #[schemars(length(min = 1))]
    pub transports: Vec<Transport>,
}

/// A TURN transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// A coturn Deployment run by the operator.
///
/// The pods use the host network: a TURN server hands out relay addresses from a port
/// range, which no Service can carry, so each pod listens and relays on its node's
/// address (`status.podIP`), one pod per node (the listening port is a host port). Each
/// pod is probed and handed to clients at that address, unless `publicHost` names a
/// load-balanced host in front of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedTurn {
    /// Number of coturn pods.
    #[serde(default = "default_turn_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// coturn image (`images/coturn.Containerfile`; its entrypoint is `turnserver`).
    #[serde(default = "default_turn_image")]
    pub image: String,
    /// TURN realm.
    #[schemars(length(min = 1, max = 253))]
    pub realm: String,
    /// Port coturn listens on (UDP and TCP).
    #[serde(default = "default_turn_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// First port of the relay range (UDP and TCP) on each node; open it in the nodes'
    /// firewall together with `port`.
    #[serde(default = "default_min_relay_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub min_relay_port: i32,
    /// Last port of the relay range.
    #[serde(default = "default_max_relay_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub max_relay_port: i32,
    /// Type of the Service in front of the pods. Clients outside the cluster need a
    /// `LoadBalancer` (the default) or `NodePort`.
    #[serde(default = "default_turn_service_type")]
    pub service_type: super::ServiceType,
    /// A load-balanced host name in front of the pods (e.g. a DNS name listing every
    /// node), probed and handed to clients as one server. Without it, every coturn pod is
    /// probed and handed out at its node's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub public_host: Option<String>,
}

fn default_turn_port() -> i32 {
    3478
}
fn default_turn_service_type() -> super::ServiceType {
    super::ServiceType::LoadBalancer
}

fn default_turn_replicas() -> i32 {
    2
}
fn default_turn_image() -> String {
    concat!(
        "ghcr.io/realtime-operator/coturn:",
        env!("CARGO_PKG_VERSION")
    )
    .into()
}
fn default_min_relay_port() -> i32 {
    49152
}
fn default_max_relay_port() -> i32 {
    65535
}

/// Shared-secret rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// Seconds between rotations. An interval shorter than `credentialTTLSeconds` + 120 s
    /// is raised to it, so that the previous secret covers every credential still valid
    /// (for 120 s after a rotation new credentials are still signed with the previous
    /// secret, while servers pick up the new one).
    /// Annotate the pool with `realtime.dev/rotate=<any new value>` to rotate at once.
    #[schemars(range(min = 60))]
    pub interval_seconds: i64,
}

/// Health checks of every server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Seconds between probes.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: i32,
    /// Seconds a probe may take.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: i32,
    /// Consecutive failures that mark a server unhealthy.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
    /// Consecutive successes that mark a server healthy again.
    #[serde(default = "default_success_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: i32,
}

fn default_interval() -> i32 {
    10
}
fn default_timeout() -> i32 {
    2
}
fn default_failure_threshold() -> i32 {
    3
}
fn default_success_threshold() -> i32 {
    1
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval_seconds: default_interval(),
            timeout_seconds: default_timeout(),
            failure_threshold: default_failure_threshold(),
            success_threshold: default_success_threshold(),
        }
    }
}

/// Observed state of a TurnPool. Never holds secret material.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnPoolStatus {
    /// `Ready` and `Degraded`, in the Kubernetes shape.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Health of every server.
    #[serde(default)]
    pub servers: Vec<ServerStatus>,
    /// Servers currently healthy.
    #[serde(default)]
    pub healthy_servers: i32,
    /// Servers in the pool.
    #[serde(default)]
    pub total_servers: i32,
    /// When the shared secret was last rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// When the next rotation is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,
}

/// Health of one server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    pub host: String,
    pub port: i32,
    /// Transports the server offers (as probed).
    #[serde(default)]
    pub transports: Vec<Transport>,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_millis: Option<i64>,
    #[serde(default)]
    pub consecutive_failures: i32,
    #[serde(default)]
    pub consecutive_successes: i32,
    /// What the last probe found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// On the pool: set to a new value to rotate the secret at once.
pub const ROTATE_ANNOTATION: &str = "realtime.dev/rotate";
/// On the Secret: when it was last rotated (RFC 3339).
pub const ROTATED_AT_ANNOTATION: &str = "realtime.dev/rotated-at";
/// On the Secret: the last value of [`ROTATE_ANNOTATION`] that was acted on.
pub const ROTATION_REQUEST_ANNOTATION: &str = "realtime.dev/rotation-request";
/// Secret key: the secret new credentials are signed with.
pub const CURRENT_KEY: &str = "current";
/// Secret key: the previous secret, still accepted until what it signed expires.
pub const PREVIOUS_KEY: &str = "previous";
/// Secret key (managed pools): coturn's configuration, listing both secrets.
pub const CONFIG_KEY: &str = "turnserver.conf";

/// The Secret holding a pool's shared secrets.
pub fn secret_name(pool: &str) -> String {
    format!("{pool}-turn-secret")
}

/// The coturn Deployment and Service of a managed pool.
pub fn coturn_name(pool: &str) -> String {
    format!("{pool}-coturn")
}
