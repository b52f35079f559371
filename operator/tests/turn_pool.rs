//! The TurnPool controller against the local kube-apiserver: secret ownership and
//! rotation with overlap, the managed coturn children, status with conditions, and the
//! deletion of coturn when a pool switches to external servers. (Failover through the
//! data plane's ICE list is in `turn_failover.rs`.) No node runs pods here (the test
//! namespace keeps them off any node): the one coturn pod address the per-pod probing
//! needs is written into a pod's status as a kubelet would; real coturn pods are probed
//! in `e2e/cluster/product.test.mjs`.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::cluster::wait_event;
use common::turn::{apply_pool, condition, everything_written, rotate, secret_pair, text};
use common::{Env, eventually, wait_both, wait_both_gone};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use realtime_operator::controller::turn_pool::KIND;
use realtime_operator::crd::TurnPool;
use realtime_operator::render::CHECKSUM_ANNOTATION;
use realtime_operator::render::turn_pool::CONFIG_KEY;
use serde_json::json;

#[tokio::test]
async fn a_managed_pool_renders_coturn_rotates_with_overlap_and_reports_status() {
    let env = Env::start("turn-managed").await;
    let spec = json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "TurnPool", "metadata": {"name": "calls"},
        "spec": {
            "managed": {"replicas": 2, "realm": "calls.example.org"},
            "credentialTTLSeconds": 600,
            "rotation": {"intervalSeconds": 3600},
            "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1},
        }
    });
    let created = apply_pool(&env, spec.clone()).await;
    // The default LoadBalancer Service mixes UDP and TCP, which API servers before 1.24
    // refuse (the local one is 1.20): the pool says so, with what to change. Newer
    // clusters (kind) accept it; the test then goes on with NodePort all the same.
    let version = env.client.apiserver_version().await.unwrap();
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap();
    if version.major == "1" && minor < 24 {
        let stalled = eventually("Stalled with a clear message", 20, || async {
            let p = env.api::<TurnPool>().get("calls").await.unwrap();
            let c = p
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Stalled" && c.status == "True")?;
            Some(c.message)
        })
        .await;
        assert!(
            stalled.contains("set spec.managed.serviceType to NodePort"),
            "{stalled}"
        );
    }
    let mut spec = spec;
    spec["spec"]["managed"]["serviceType"] = json!("NodePort");
    apply_pool(&env, spec.clone()).await;
    let first = secret_pair(&env, "calls").await;
    assert_eq!(first.previous, None);
    let secret = env.api::<Secret>().get("calls-turn-secret").await.unwrap();
    assert_eq!(secret.owner_references()[0].kind, "TurnPool");
    assert_eq!(secret.owner_references()[0].uid, created.uid().unwrap());
    let conf = text(&secret, CONFIG_KEY).unwrap();
    assert_eq!(conf.matches("static-auth-secret=").count(), 1);
    assert!(conf.contains("realm=calls.example.org"));

    let deployment = eventually("the coturn Deployment", 20, || async {
        env.api::<Deployment>()
            .get_opt("calls-coturn")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(deployment.owner_references()[0].kind, "TurnPool");
    let checksum = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CHECKSUM_ANNOTATION]
            .clone()
    };
    let first_checksum = checksum(&deployment);
    let service = eventually("the coturn Service", 20, || async {
        env.api::<Service>().get_opt("calls-coturn").await.unwrap()
    })
    .await;
    let ports: Vec<String> = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| p.protocol.unwrap())
        .collect();
    assert_eq!(ports, ["UDP", "TCP"]);

    // No kubelet runs the pods here (the test namespace keeps pods off any node): no
    // coturn pod has an address, and the status says so, with conditions for this
    // generation.
    let pool = eventually("status with conditions", 30, || async {
        let p = env.api::<TurnPool>().get("calls").await.unwrap();
        let s = p.status.as_ref()?;
        (s.observed_generation == p.metadata.generation && !s.conditions.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(
        condition(&pool, "Stalled"),
        None,
        "the stall cleared with the fix"
    );
    assert_eq!(
        condition(&pool, "Ready"),
        Some(("False".into(), "NoServers".into()))
    );
    // A coturn pod gets an address (its status written here as a kubelet would): it is
    // probed at that address — nothing answers there, so it is unhealthy.
    let pods = env.api::<Pod>();
    let labels = deployment
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "calls-coturn-test", "labels": labels},
        "spec": {"containers": [{"name": "coturn", "image": "coturn"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        "calls-coturn-test",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "127.0.0.2"}})),
    )
    .await
    .unwrap();
    let pool = eventually("the pod probed at its address", 30, || async {
        let p = env.api::<TurnPool>().get("calls").await.unwrap();
        (p.status.as_ref()?.servers.first()?.host == "127.0.0.2").then_some(p)
    })
    .await;
    let status = pool.status.as_ref().unwrap();
    assert_eq!(
        condition(&pool, "Ready"),
        Some(("False".into(), "NoHealthyServers".into()))
    );
    assert_eq!(condition(&pool, "Degraded").unwrap().0, "True");
    assert_eq!((status.healthy_servers, status.total_servers), (0, 1));
    assert_eq!(status.servers[0].port, 3478);
    assert!(status.servers[0].last_probe_time.is_some());
    let last = status.last_rotation_time.clone().unwrap().0;
    let next = status.next_rotation_time.clone().unwrap().0;
    assert_eq!(next.as_second() - last.as_second(), 3600);

    // On-demand rotation: the new secret is current, the old one stays accepted, the
    // managed pods roll. (Status times have one-second precision: wait for the clock to
    // pass the last rotation's second.)
    eventually(
        "the clock to pass the last rotation's second",
        5,
        || async {
            (k8s_openapi::jiff::Timestamp::now().as_second() > last.as_second()).then_some(())
        },
    )
    .await;
    let second = rotate(&env, "calls", "2026-11-27", &first).await;
    assert_eq!(second.previous.as_deref(), Some(first.current.as_str()));
    let secret = env.api::<Secret>().get("calls-turn-secret").await.unwrap();
    let conf = text(&secret, CONFIG_KEY).unwrap();
    assert!(conf.contains(&format!(
        "static-auth-secret={}\nstatic-auth-secret={}\n",
        second.current, first.current
    )));
    eventually("the coturn pods to roll", 20, || async {
        let d = env.api::<Deployment>().get("calls-coturn").await.unwrap();
        (checksum(&d) != first_checksum).then_some(())
    })
    .await;
    eventually("lastRotationTime to move", 20, || async {
        let p = env.api::<TurnPool>().get("calls").await.unwrap();
        (p.status?.last_rotation_time?.0 > last).then_some(())
    })
    .await;
    // The same annotation value is one request: nothing rotates again. Two reconciles
    // that saw the annotation finish (a probe round each second) and the Secret is as it
    // was.
    let secret_version = env
        .api::<Secret>()
        .get("calls-turn-secret")
        .await
        .unwrap()
        .resource_version();
    let seen = env.reconciles(KIND, "calls");
    env.reconciles_after(KIND, "calls", seen, 2).await;
    assert_eq!(secret_pair(&env, "calls").await, second);
    assert_eq!(
        env.api::<Secret>()
            .get("calls-turn-secret")
            .await
            .unwrap()
            .resource_version(),
        secret_version,
        "the Secret was not written again"
    );

    // A spec edit is observed in the children and in observedGeneration.
    let mut edited = spec.clone();
    edited["spec"]["managed"]["replicas"] = json!(3);
    let edited = apply_pool(&env, edited).await;
    eventually("3 replicas and the new generation observed", 20, || async {
        let d = env.api::<Deployment>().get("calls-coturn").await.unwrap();
        let p = env.api::<TurnPool>().get("calls").await.unwrap();
        (d.spec?.replicas == Some(3) && p.status?.observed_generation == edited.metadata.generation)
            .then_some(())
    })
    .await;

    let written = everything_written(&env, "calls").await;
    assert!(
        written.contains("SecretRotated"),
        "rotation is announced by an Event"
    );
    for secret in [&first.current, &second.current] {
        assert!(
            !written.contains(secret.as_str()),
            "secret material in status or events"
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn switching_a_pool_to_external_servers_deletes_coturn_and_keeps_the_secret() {
    let env = Env::start("turn-prune").await;
    let managed = json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "TurnPool", "metadata": {"name": "calls"},
        "spec": {
            "managed": {"replicas": 1, "realm": "calls.example.org", "serviceType": "NodePort"},
            "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1},
        }
    });
    apply_pool(&env, managed).await;
    let (deployments, services) = (env.api::<Deployment>(), env.api::<Service>());
    wait_both(&deployments, &services, "calls-coturn").await;
    let pair = secret_pair(&env, "calls").await;
    // A Service of the same name pattern that the pool does not own stays.
    let bystander: Service = serde_json::from_value(json!({
        "metadata": {"name": "calls-bystander", "labels": {
            "app.kubernetes.io/instance": "calls",
            "app.kubernetes.io/managed-by": "realtime-operator"}},
        "spec": {"ports": [{"port": 1, "protocol": "TCP"}]}
    }))
    .unwrap();
    services
        .create(&Default::default(), &bystander)
        .await
        .unwrap();

    // The pool now lists external servers: coturn is not wanted any more.
    let external = json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "TurnPool", "metadata": {"name": "calls"},
        "spec": {
            "servers": [{"host": "127.0.0.1", "port": 9, "transports": ["udp"]}],
            "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1},
        }
    });
    apply_pool(&env, external).await;
    wait_both_gone(&deployments, &services, "calls-coturn").await;
    wait_event(&env, "Pruned", "Normal", "Deployment/calls-coturn").await;
    // External servers load the same Secret: it stays, with the same secret.
    assert_eq!(secret_pair(&env, "calls").await.current, pair.current);
    let secret = env.api::<Secret>().get("calls-turn-secret").await.unwrap();
    assert_eq!(secret.owner_references()[0].kind, "TurnPool");
    assert!(services.get_opt("calls-bystander").await.unwrap().is_some());
    env.stop().await;
}
