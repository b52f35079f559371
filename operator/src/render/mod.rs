//! Rendering of a RealtimeCluster's children. Pure: a cluster (and the checksum of its
//! configuration and Secrets) goes in, Kubernetes objects come out. The environment
//! variable names are the data plane's configuration contract (SPEC.md §3).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{RealtimeCluster, SecretKeyRef, ServiceType, labels};

mod service;
mod storage;
pub mod turn_pool;
mod turn_reader;

pub use service::{admin_service, admin_url, gateway_pdb, gateway_service, websocket_url};
pub use storage::{INDEX_COMPONENT, TOPIC_COMPONENT, indexes, topics};
pub use turn_reader::{turn_reader_name, turn_reader_role};

/// Port the data plane listens on inside the pod.
pub const CONTAINER_PORT: i32 = 3000;
/// Pod-template annotation that changes when the configuration or a Secret changes.
pub const CHECKSUM_ANNOTATION: &str = "realtime.dev/config-checksum";

pub fn gateway_name(cluster: &str) -> String {
    format!("{cluster}-gateway")
}
pub fn persister_name(cluster: &str) -> String {
    format!("{cluster}-persister")
}
pub fn admin_name(cluster: &str) -> String {
    format!("{cluster}-admin")
}
pub fn config_name(cluster: &str) -> String {
    format!("{cluster}-config")
}

fn meta(rc: &RealtimeCluster, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: rc.namespace(),
        labels: Some(labels(&rc.name_any(), component)),
        owner_references: owner(rc).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn owner(rc: &RealtimeCluster) -> Option<OwnerReference> {
    rc.controller_owner_ref(&())
}

/// The non-secret configuration, as the data plane's environment variables.
pub fn config_data(rc: &RealtimeCluster) -> BTreeMap<String, String> {
    let s = &rc.spec;
    let mut env = BTreeMap::from([
        ("LISTEN_ADDR", format!("0.0.0.0:{CONTAINER_PORT}")),
        ("KAFKA_BROKERS", s.kafka.bootstrap_servers.clone()),
        ("KAFKA_MESSAGE_TOPIC", s.kafka.topics.messages.clone()),
        (
            "KAFKA_PERSISTENCE_TOPIC",
            s.kafka.topics.persistence_events.clone(),
        ),
        (
            "KAFKA_RECORDING_TOPIC",
            s.kafka.topics.recording_events.clone(),
        ),
        (
            "RECORDING_CONSENT_TIMEOUT_SECONDS",
            s.recording_consent_timeout_seconds.to_string(),
        ),
        ("KAFKA_TOPIC_PARTITIONS", s.kafka.partitions.to_string()),
        (
            "KAFKA_REPLICATION_FACTOR",
            s.kafka.replication_factor.to_string(),
        ),
        // One group prefix per installation. Topics must differ too: the operator does not
        // run two installations that share a topic on one broker (see `conflict`).
        (
            "KAFKA_GROUP_PREFIX",
            format!(
                "realtime-{}-{}",
                rc.namespace().unwrap_or_default(),
                rc.name_any()
            ),
        ),
        // The operator owns the topics and indexes (KafkaTopic and MongoIndex children);
        // the data plane only starts once they exist.
        ("KAFKA_CREATE_TOPICS", "false".to_owned()),
        ("MONGODB_CREATE_INDEXES", "false".to_owned()),
        ("MONGODB_DATABASE", s.mongodb.database.clone()),
        (
            "MESSAGE_PERSISTENCE_BATCH_SIZE",
            s.persister.batch_size.to_string(),
        ),
        ("MAX_MESSAGE_BYTES", s.limits.max_message_bytes.to_string()),
        ("RATE_LIMIT_PER_SECOND", s.limits.rate_per_user.to_string()),
        ("RATE_LIMIT_BURST", s.limits.burst.to_string()),
        ("ROOM_STATE_TTL_HOURS", s.room_state_ttl_hours.to_string()),
        (
            "ROOM_AUTHZ_CACHE_TTL",
            s.authz_cache_ttl_seconds.to_string(),
        ),
        (
            "PERSISTENCE_CONFIRMATION_TIMEOUT_MS",
            s.delivery.confirmation_timeout_ms.to_string(),
        ),
        (
            "PERSISTENCE_CONFIRMATION_RETRIES",
            s.delivery.retries.to_string(),
        ),
    ]);
    if let Some(pool) = &s.turn_pool_ref {
        // The gateway follows the pool through the API (see `turn_reader_role`).
        env.insert("TURN_POOL", pool.name.clone());
        env.insert("TURN_POOL_NAMESPACE", rc.namespace().unwrap_or_default());
    }
    if let Some(iss) = &s.auth.issuer {
        env.insert("JWT_ISSUER", iss.clone());
    }
    if let Some(aud) = &s.auth.audience {
        env.insert("JWT_AUDIENCE", aud.clone());
    }
    if let Some(jwks) = &s.auth.jwks_url {
        env.insert("JWT_JWKS_URL", jwks.clone());
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Secret-backed environment variables: (variable, secret reference).
pub fn secret_env(rc: &RealtimeCluster) -> Vec<(&'static str, SecretKeyRef)> {
    let s = &rc.spec;
    let mut refs = vec![
        ("MONGODB_URI", s.mongodb.uri_secret_ref.clone()),
        ("REDIS_URL", s.redis.url_secret_ref.clone()),
    ];
    if let Some(jwt) = &s.auth.jwt_secret_ref {
        refs.push(("JWT_SECRET", jwt.clone()));
    }
    refs
}

pub fn service_account(rc: &RealtimeCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(rc, rc.name_any(), "data-plane"),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

pub fn config_map(rc: &RealtimeCluster) -> ConfigMap {
    ConfigMap {
        metadata: meta(rc, config_name(&rc.name_any()), "config"),
        data: Some(config_data(rc)),
        ..ConfigMap::default()
    }
}

fn http_probe(path: &str, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(CONTAINER_PORT),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

/// A data-plane component: one Deployment each, running the `realtime` binary in the
/// role of the same name. Every component gets the same configuration (ConfigMap and
/// Secret references); its role decides what it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Gateway,
    Persister,
    /// The admin REST API (`/v1/admin`).
    Admin,
}

impl Component {
    pub const ALL: [Self; 3] = [Self::Gateway, Self::Persister, Self::Admin];

    /// The data plane's `ROLE` and the `app.kubernetes.io/component` label.
    pub fn role(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Persister => "persister",
            Self::Admin => "admin",
        }
    }

    /// The component's Deployment name (and, for the gateway and the admin API, its
    /// Service's).
    pub fn deployment_name(self, cluster: &str) -> String {
        match self {
            Self::Gateway => gateway_name(cluster),
            Self::Persister => persister_name(cluster),
            Self::Admin => admin_name(cluster),
        }
    }

    /// Desired replicas, from the spec.
    pub fn replicas(self, rc: &RealtimeCluster) -> i32 {
        match self {
            Self::Gateway => rc.spec.gateway.replicas,
            Self::Persister => rc.spec.persister.replicas,
            Self::Admin => rc.spec.admin.replicas,
        }
    }

    fn resources(self, rc: &RealtimeCluster) -> Option<ResourceRequirements> {
        match self {
            Self::Gateway => rc.spec.gateway.resources.clone(),
            Self::Persister => rc.spec.persister.resources.clone(),
            Self::Admin => rc.spec.admin.resources.clone(),
        }
    }
}

/// Deployment of one component.
pub fn deployment(rc: &RealtimeCluster, component: Component, checksum: &str) -> Deployment {
    let name = rc.name_any();
    let role = component.role();
    let dep_name = component.deployment_name(&name);
    let selector = labels(&name, role);
    let mut env = vec![EnvVar {
        name: "ROLE".into(),
        value: Some(role.to_owned()),
        ..EnvVar::default()
    }];
    env.extend(secret_env(rc).into_iter().map(|(var, r)| EnvVar {
        name: var.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: r.name,
                key: r.key,
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }));
    let container = Container {
        name: "realtime".into(),
        image: Some(rc.spec.image.clone()),
        env: Some(env),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: config_name(&name),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        // `protocol` is a list-map key: older servers refuse an apply that omits it.
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: CONTAINER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", 2)),
        liveness_probe: Some(http_probe("/healthz", 10)),
        resources: component.resources(rc),
        security_context: Some(locked_down(true)),
        ..Container::default()
    };
    let pod = PodSpec {
        service_account_name: Some(name.clone()),
        // Only a gateway following a TurnPool talks to the API server.
        automount_service_account_token: Some(
            component == Component::Gateway && rc.spec.turn_pool_ref.is_some(),
        ),
        // Long enough for the data plane's own drain (SHUTDOWN_GRACE_SECONDS).
        termination_grace_period_seconds: Some(30),
        security_context: Some(pod_security(65532)),
        containers: vec![container],
        ..PodSpec::default()
    };
    checksummed_deployment(
        meta(rc, dep_name, role),
        component.replicas(rc),
        selector,
        checksum,
        pod,
    )
}

/// A Deployment of `replicas` pods selected by `selector`, whose template carries the
/// configuration checksum (a changed checksum rolls the pods).
pub fn checksummed_deployment(
    metadata: ObjectMeta,
    replicas: i32,
    selector: BTreeMap<String, String>,
    checksum: &str,
    pod: PodSpec,
) -> Deployment {
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    annotations: Some(BTreeMap::from([(
                        CHECKSUM_ANNOTATION.to_owned(),
                        checksum.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

pub fn service_type(t: ServiceType) -> String {
    match t {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    }
    .to_owned()
}

/// No privilege escalation, no capabilities, non-root (the pod says which user).
pub fn locked_down(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(read_only_root),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

pub fn pod_security(user: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(user),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster in namespace `ns` with every required field and a few optional ones.
    pub(super) fn cluster() -> RealtimeCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster",
            "metadata": {"name": "chat", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "image": "realtime:1",
                "gateway": {"replicas": 3, "service": {"type": "LoadBalancer", "port": 443}},
                "kafka": {"bootstrapServers": "k:9092"},
                "mongodb": {"uriSecretRef": {"name": "m", "key": "uri"}},
                "redis": {"urlSecretRef": {"name": "r", "key": "url"}},
                "auth": {"jwtSecretRef": {"name": "j", "key": "s"}, "issuer": "iss"},
            }
        }))
        .unwrap()
    }

    #[test]
    fn config_uses_the_data_plane_contract_and_spec_defaults() {
        let data = config_data(&cluster());
        assert_eq!(data["KAFKA_BROKERS"], "k:9092");
        assert_eq!(data["KAFKA_MESSAGE_TOPIC"], "chat.messages");
        assert_eq!(data["MESSAGE_PERSISTENCE_BATCH_SIZE"], "100");
        assert_eq!(data["PERSISTENCE_CONFIRMATION_TIMEOUT_MS"], "5000");
        assert_eq!(data["ROOM_STATE_TTL_HOURS"], "24");
        assert_eq!(data["KAFKA_RECORDING_TOPIC"], "webrtc.recording.events");
        assert_eq!(data["RECORDING_CONSENT_TIMEOUT_SECONDS"], "30");
        assert_eq!(data["ROOM_AUTHZ_CACHE_TTL"], "300");
        assert_eq!(data["JWT_ISSUER"], "iss");
        assert!(
            !data.contains_key("JWT_AUDIENCE"),
            "unset audience is not rendered"
        );
        assert_eq!(data["KAFKA_GROUP_PREFIX"], "realtime-ns-chat");
        // The CRD's default replication factor (1) reaches the data plane.
        assert_eq!(data["KAFKA_REPLICATION_FACTOR"], "1");
        let secrets: Vec<&str> = secret_env(&cluster()).into_iter().map(|(v, _)| v).collect();
        assert_eq!(secrets, ["MONGODB_URI", "REDIS_URL", "JWT_SECRET"]);
        assert!(
            !data.contains_key("JWT_JWKS_URL"),
            "unset JWKS is not rendered"
        );
    }

    #[test]
    fn a_jwks_url_reaches_every_component_without_a_jwt_secret() {
        let mut rc = cluster();
        rc.spec.auth.jwt_secret_ref = None;
        rc.spec.auth.jwks_url = Some("https://id.example/jwks.json".into());
        assert_eq!(
            config_data(&rc)["JWT_JWKS_URL"],
            "https://id.example/jwks.json"
        );
        let secrets: Vec<&str> = secret_env(&rc).into_iter().map(|(v, _)| v).collect();
        assert_eq!(secrets, ["MONGODB_URI", "REDIS_URL"]);
    }

    #[test]
    fn the_admin_api_runs_in_its_own_deployment() {
        let mut rc = cluster();
        rc.spec.turn_pool_ref = Some(crate::crd::LocalRef {
            name: "edge".into(),
        });
        let d = deployment(&rc, Component::Admin, "abc");
        assert_eq!(d.metadata.name.as_deref(), Some("chat-admin"));
        assert_eq!(d.metadata.labels, Some(labels("chat", "admin")));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(1), "spec.admin.replicas defaults to 1");
        let selector = spec.selector.match_labels.unwrap();
        assert_eq!(selector, labels("chat", "admin"));
        let template = spec.template;
        assert_eq!(template.metadata.unwrap().labels, Some(selector));
        let pod = template.spec.unwrap();
        assert_eq!(
            pod.automount_service_account_token,
            Some(false),
            "only the gateway reads the TurnPool"
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("realtime:1"));
        let env = c.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "ROLE" && e.value.as_deref() == Some("admin"))
        );
        // The persister's database, Redis and broker settings and the gateway's token
        // settings: one ConfigMap and the same Secret references for every component.
        for var in ["MONGODB_URI", "REDIS_URL", "JWT_SECRET"] {
            let e = env.iter().find(|e| e.name == var).unwrap();
            assert!(e.value.is_none(), "{var} from a secretKeyRef");
            assert!(e.value_from.as_ref().unwrap().secret_key_ref.is_some());
        }
        assert_eq!(
            c.env_from.as_ref().unwrap()[0]
                .config_map_ref
                .as_ref()
                .unwrap()
                .name,
            "chat-config"
        );
        let path = |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, CONTAINER_PORT);
    }

    #[test]
    fn admin_replicas_and_resources_come_from_spec_admin() {
        let mut value = serde_json::to_value(cluster()).unwrap();
        value["spec"]["admin"] =
            serde_json::json!({"replicas": 2, "resources": {"limits": {"cpu": "500m"}}});
        let rc: RealtimeCluster = serde_json::from_value(value).unwrap();
        let spec = deployment(&rc, Component::Admin, "abc").spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let resources = spec.template.spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap();
        assert!(resources.limits.unwrap().contains_key("cpu"));
        assert_eq!(Component::Admin.replicas(&rc), 2);
    }

    #[test]
    fn deployments_are_owned_checksummed_and_locked_down() {
        let d = deployment(&cluster(), Component::Gateway, "abc");
        assert_eq!(d.metadata.name.as_deref(), Some("chat-gateway"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let template = spec.template;
        assert_eq!(
            template.metadata.unwrap().annotations.unwrap()[CHECKSUM_ANNOTATION],
            "abc"
        );
        let pod = template.spec.unwrap();
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            (
                sc.read_only_root_filesystem,
                sc.run_as_non_root,
                sc.allow_privilege_escalation
            ),
            (Some(true), Some(true), Some(false))
        );
        let env = c.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "ROLE" && e.value.as_deref() == Some("gateway"))
        );
        let jwt = env.iter().find(|e| e.name == "JWT_SECRET").unwrap();
        assert!(
            jwt.value.is_none(),
            "secrets come from secretKeyRef, never inline"
        );
        assert_eq!(
            deployment(&cluster(), Component::Persister, "abc")
                .spec
                .unwrap()
                .replicas,
            Some(1)
        );
    }
}
