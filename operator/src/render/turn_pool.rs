//! Rendering of a TurnPool's children: its Secret (from the state `crate::rotation`
//! decides), the managed coturn Deployment and Service, and the servers to probe. Pure:
//! a pool, its secret state and its pods go in, Kubernetes objects come out.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector, Pod, PodSpec,
    Secret, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use realtime_turn::coturn::{self, Listen};
use sha2::{Digest, Sha256};

use super::{checksummed_deployment, locked_down, pod_security, service_type};
use crate::crd::{ManagedTurn, Transport, TurnPool, TurnServer, labels};
use crate::rotation::SecretState;

pub use crate::crd::{
    CONFIG_KEY, CURRENT_KEY, PREVIOUS_KEY, ROTATE_ANNOTATION, ROTATED_AT_ANNOTATION,
    ROTATION_REQUEST_ANNOTATION, coturn_name, secret_name,
};
const CONFIG_DIR: &str = "/etc/coturn";

fn meta(pool: &TurnPool, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: pool.namespace(),
        labels: Some(labels(&pool.name_any(), component)),
        owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn listen(managed: &ManagedTurn) -> Listen {
    Listen {
        ip: None,
        port: u16::try_from(managed.port).unwrap_or(3478),
        relay_ip: None,
        min_relay_port: u16::try_from(managed.min_relay_port).unwrap_or(49152),
        max_relay_port: u16::try_from(managed.max_relay_port).unwrap_or(65535),
        loopback_peers: false,
    }
}

pub fn secret(pool: &TurnPool, state: &SecretState) -> Secret {
    let mut data = BTreeMap::from([(
        CURRENT_KEY.to_owned(),
        ByteString(state.pair.current.clone().into_bytes()),
    )]);
    if let Some(previous) = &state.pair.previous {
        data.insert(
            PREVIOUS_KEY.to_owned(),
            ByteString(previous.clone().into_bytes()),
        );
    }
    if let Some(managed) = &pool.spec.managed {
        data.insert(
            CONFIG_KEY.to_owned(),
            ByteString(coturn::config(&managed.realm, &state.pair, &listen(managed)).into_bytes()),
        );
    }
    let mut annotations = BTreeMap::from([(
        ROTATED_AT_ANNOTATION.to_owned(),
        state.rotated_at.to_string(),
    )]);
    if let Some(r) = &state.handled_request {
        annotations.insert(ROTATION_REQUEST_ANNOTATION.to_owned(), r.clone());
    }
    let mut metadata = meta(pool, secret_name(&pool.name_any()), "turn-secret");
    metadata.annotations = Some(annotations);
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Checksum of the secret pair: changes with every rotation, which rolls managed pods.
pub fn secret_checksum(state: &SecretState) -> String {
    let mut h = Sha256::new();
    for s in state.pair.accepted() {
        h.update(s.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn coturn_deployment(pool: &TurnPool, managed: &ManagedTurn, checksum: &str) -> Deployment {
    let name = pool.name_any();
    let selector = labels(&name, "coturn");
    let port = managed.port;
    let container = Container {
        name: "coturn".into(),
        image: Some(managed.image.clone()),
        // Listens and relays on the node's address only (host network, see `ManagedTurn`).
        args: Some(vec![
            "-c".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
            "--listening-ip=$(POD_IP)".into(),
            "--relay-ip=$(POD_IP)".into(),
        ]),
        env: Some(vec![EnvVar {
            name: "POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(
            ["UDP", "TCP"]
                .into_iter()
                .map(|p| ContainerPort {
                    name: Some(format!("turn-{}", p.to_lowercase())),
                    container_port: port,
                    protocol: Some(p.into()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        volume_mounts: Some(vec![VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        // coturn writes its pid file; the root filesystem stays writable for it.
        security_context: Some(locked_down(false)),
        ..Container::default()
    };
    let pod = PodSpec {
        automount_service_account_token: Some(false),
        host_network: Some(true),
        dns_policy: Some("ClusterFirstWithHostNet".into()),
        security_context: Some(pod_security(65534)),
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: "config".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name(&name)),
                items: Some(vec![KeyToPath {
                    key: CONFIG_KEY.into(),
                    path: CONFIG_KEY.into(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    let mut deployment = checksummed_deployment(
        meta(pool, coturn_name(&name), "coturn"),
        managed.replicas,
        selector,
        checksum,
        pod,
    );
    // One pod per node (its ports are host ports): a new pod can only start where an old
    // one stopped, so a roll replaces pods one at a time instead of surging.
    if let Some(spec) = deployment.spec.as_mut() {
        spec.strategy = Some(DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(0)),
                max_unavailable: Some(IntOrString::Int(1)),
            }),
        });
    }
    deployment
}

pub fn coturn_service(pool: &TurnPool, managed: &ManagedTurn) -> Service {
    let name = pool.name_any();
    Service {
        metadata: meta(pool, coturn_name(&name), "coturn"),
        spec: Some(ServiceSpec {
            type_: Some(service_type(managed.service_type)),
            selector: Some(labels(&name, "coturn")),
            ports: Some(
                ["UDP", "TCP"]
                    .into_iter()
                    .map(|p| ServicePort {
                        name: Some(format!("turn-{}", p.to_lowercase())),
                        port: managed.port,
                        protocol: Some(p.into()),
                        target_port: Some(IntOrString::Int(managed.port)),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Whether the servers of this pool are its coturn pods, each at its node's address
/// (managed, no `publicHost`): the caller lists them for [`servers`].
pub fn probes_pods(pool: &TurnPool) -> bool {
    pool.spec
        .managed
        .as_ref()
        .is_some_and(|m| m.public_host.is_none())
}

/// The label selector of a pool's coturn pods.
pub fn coturn_selector(pool: &TurnPool) -> String {
    labels(&pool.name_any(), "coturn")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The servers to probe and hand out: the external list, the managed `publicHost`, or
/// every coturn pod that has an address and is not going away (`pods`, listed by the
/// caller when [`probes_pods`]), ordered by address.
pub fn servers(pool: &TurnPool, pods: &[Pod]) -> Vec<TurnServer> {
    if let Some(servers) = &pool.spec.servers {
        return servers.clone();
    }
    let Some(m) = &pool.spec.managed else {
        return Vec::new();
    };
    let server = |host: String| TurnServer {
        host,
        port: m.port,
        transports: vec![Transport::Udp, Transport::Tcp],
    };
    if let Some(host) = &m.public_host {
        return vec![server(host.clone())];
    }
    let mut hosts: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts.into_iter().map(server).collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::crd::{HealthCheck, TurnPoolSpec};
    use crate::rotation::{read_secret, rotate};

    fn pool(rotation: Option<i64>, managed: bool) -> TurnPool {
        let mut p = TurnPool::new(
            "pool",
            TurnPoolSpec {
                servers: (!managed).then(|| {
                    vec![TurnServer {
                        host: "turn.example.com".into(),
                        port: 3478,
                        transports: vec![Transport::Udp],
                    }]
                }),
                managed: managed.then(|| ManagedTurn {
                    replicas: 2,
                    image: "coturn/coturn:4.6".into(),
                    realm: "example.com".into(),
                    port: 3478,
                    min_relay_port: 49152,
                    max_relay_port: 65535,
                    service_type: crate::crd::ServiceType::LoadBalancer,
                    public_host: None,
                }),
                credential_ttl_seconds: 600,
                rotation: rotation.map(|s| crate::crd::Rotation {
                    interval_seconds: s,
                }),
                health_check: HealthCheck::default(),
                min_healthy_servers: 1,
            },
        );
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("uid".into());
        p
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn secret_round_trips_and_config_lists_both_secrets() {
        let p = pool(Some(600), true);
        let s = rotate(&p, Some(&rotate(&p, None, at(10))), at(700));
        let secret = secret(&p, &s);
        assert_eq!(read_secret(&secret), Some(s.clone()));
        let conf = String::from_utf8(secret.data.as_ref().unwrap()[CONFIG_KEY].0.clone()).unwrap();
        assert_eq!(conf.matches("static-auth-secret=").count(), 2);
        assert!(conf.contains("realm=example.com"));
        assert_eq!(
            secret.metadata.owner_references.as_ref().unwrap()[0].kind,
            "TurnPool"
        );
        assert_ne!(
            secret_checksum(&s),
            secret_checksum(&rotate(&p, Some(&s), at(1_400)))
        );
    }

    #[test]
    fn managed_pool_renders_deployment_service_and_server() {
        let p = pool(None, true);
        let m = p.spec.managed.clone().unwrap();
        let d = coturn_deployment(&p, &m, "abc");
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.containers[0].args.as_ref().unwrap()[1],
            "/etc/coturn/turnserver.conf"
        );
        assert_eq!(
            pod.volumes.unwrap()[0]
                .secret
                .as_ref()
                .unwrap()
                .secret_name
                .as_deref(),
            Some("pool-turn-secret")
        );
        let svc = coturn_service(&p, &m).spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(svc.ports.unwrap().len(), 2);
        assert_eq!(servers(&pool(None, false), &[])[0].host, "turn.example.com");
    }

    #[test]
    fn managed_pods_run_on_the_host_network_one_per_node() {
        let p = pool(None, true);
        let m = p.spec.managed.clone().unwrap();
        let spec = coturn_deployment(&p, &m, "abc").spec.unwrap();
        let rolling = spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.host_network, Some(true));
        let args = pod.containers[0].args.clone().unwrap();
        assert!(
            args.contains(&"--relay-ip=$(POD_IP)".to_owned()),
            "{args:?}"
        );
        let env = pod.containers[0].env.clone().unwrap();
        assert_eq!(
            env[0]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "status.podIP"
        );
        let conf = coturn::config(&m.realm, &coturn::SecretPair::new("s".into()), &listen(&m));
        assert!(conf.contains("min-port=49152\nmax-port=65535\n"), "{conf}");
    }

    #[test]
    fn managed_servers_are_the_pods_with_an_address_or_the_public_host() {
        let mut p = pool(None, true);
        let pod = |ip: Option<&str>, deleting: bool| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "x", "deletionTimestamp": deleting.then_some("2026-11-27T00:00:00Z")},
                "status": {"podIP": ip},
            }))
            .unwrap()
        };
        let pods = [
            pod(Some("10.0.0.2"), false),
            pod(None, false),
            pod(Some("10.0.0.3"), true),
            pod(Some("10.0.0.1"), false),
        ];
        assert!(probes_pods(&p));
        let hosts: Vec<String> = servers(&p, &pods).into_iter().map(|s| s.host).collect();
        assert_eq!(
            hosts,
            ["10.0.0.1", "10.0.0.2"],
            "pending and terminating pods are not servers"
        );
        assert_eq!(
            coturn_selector(&p),
            "app.kubernetes.io/component=coturn,app.kubernetes.io/instance=pool,app.kubernetes.io/managed-by=realtime-operator,app.kubernetes.io/name=realtime"
        );
        p.spec.managed.as_mut().unwrap().public_host = Some("turn.example.org".into());
        assert!(!probes_pods(&p));
        assert_eq!(servers(&p, &pods)[0].host, "turn.example.org");
    }
}
