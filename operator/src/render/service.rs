//! The Services in front of a RealtimeCluster's data plane (the gateway's, for tenants;
//! the admin API's, in-cluster only), the gateway's PodDisruptionBudget, and the
//! in-cluster URLs status advertises for them. Pure.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as K8sServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{CONTAINER_PORT, Component, admin_name, gateway_name, meta, service_type};
use crate::crd::{RealtimeCluster, ServiceType, labels};

pub fn gateway_service(rc: &RealtimeCluster) -> Service {
    let svc = &rc.spec.gateway.service;
    // Socket.IO's HTTP long-polling (the standard client's first transport) needs every
    // request of a session on the same gateway.
    component_service(
        rc,
        Component::Gateway,
        svc.type_,
        svc.port,
        Some("ClientIP"),
    )
}

/// The admin API's Service: in-cluster only, on the pods' own port (`kubectl
/// port-forward` reaches it from outside).
pub fn admin_service(rc: &RealtimeCluster) -> Service {
    component_service(
        rc,
        Component::Admin,
        ServiceType::ClusterIP,
        CONTAINER_PORT,
        None,
    )
}

/// The Service in front of a component's pods, to their `http` port.
fn component_service(
    rc: &RealtimeCluster,
    component: Component,
    type_: ServiceType,
    port: i32,
    session_affinity: Option<&str>,
) -> Service {
    let name = rc.name_any();
    Service {
        metadata: meta(rc, component.deployment_name(&name), component.role()),
        spec: Some(K8sServiceSpec {
            type_: Some(service_type(type_)),
            selector: Some(labels(&name, component.role())),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            session_affinity: session_affinity.map(str::to_owned),
            ..K8sServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The gateway's PodDisruptionBudget as JSON, for `policy/v1` or, on servers older than
/// 1.21 that lack it, `policy/v1beta1` (the fields used here are the same in both).
pub fn gateway_pdb(rc: &RealtimeCluster, api_version: &str) -> serde_json::Value {
    let name = rc.name_any();
    serde_json::json!({
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": meta(rc, gateway_name(&name), "gateway"),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": labels(&name, "gateway")},
        },
    })
}

/// In-cluster Socket.IO URL of the gateway Service.
pub fn websocket_url(rc: &RealtimeCluster) -> String {
    format!(
        "http://{}.{}.svc:{}/chat",
        gateway_name(&rc.name_any()),
        rc.namespace().unwrap_or_else(|| "default".into()),
        rc.spec.gateway.service.port
    )
}

/// In-cluster URL of the admin REST API, through the admin Service.
pub fn admin_url(rc: &RealtimeCluster) -> String {
    format!(
        "http://{}.{}.svc:{CONTAINER_PORT}/v1/admin",
        admin_name(&rc.name_any()),
        rc.namespace().unwrap_or_else(|| "default".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::deployment;
    use crate::render::tests::cluster;

    #[test]
    fn service_pdb_and_endpoints() {
        let svc = gateway_service(&cluster()).spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(svc.ports.unwrap()[0].port, 443);
        assert_eq!(svc.session_affinity.as_deref(), Some("ClientIP"));
        let pdb = gateway_pdb(&cluster(), "policy/v1beta1");
        assert_eq!(pdb["apiVersion"], "policy/v1beta1");
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert_eq!(
            websocket_url(&cluster()),
            "http://chat-gateway.ns.svc:443/chat"
        );
    }

    #[test]
    fn the_admin_service_selects_the_admin_pods_on_their_port() {
        let rc = cluster();
        let svc = admin_service(&rc);
        assert_eq!(svc.metadata.name.as_deref(), Some("chat-admin"));
        assert_eq!(svc.metadata.labels, Some(labels("chat", "admin")));
        assert!(svc.metadata.owner_references.is_some());
        let svc = svc.spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
        let pods = deployment(&rc, Component::Admin, "abc").spec.unwrap();
        assert_eq!(svc.selector, pods.selector.match_labels);
        let port = &svc.ports.unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (CONTAINER_PORT, Some(IntOrString::String("http".into())))
        );
        assert_eq!(svc.session_affinity, None);
        assert_eq!(admin_url(&rc), "http://chat-admin.ns.svc:3000/v1/admin");
    }
}
