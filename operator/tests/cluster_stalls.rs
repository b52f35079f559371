//! RealtimeClusters the operator must not run, on the local kube-apiserver: installations
//! that would share Kafka topics on one broker (the older one runs, the other stops and
//! recovers when the conflict goes), and a cluster that verifies no token (neither
//! `jwtSecretRef` nor `jwksUrl`).
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::cluster::{condition, wait_condition, wait_event};
use common::{Env, eventually, minimal_cluster};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use realtime_operator::crd::RealtimeCluster;
use serde_json::json;

async fn replicas(env: &Env, name: &str) -> Option<i32> {
    env.api::<Deployment>()
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|d| d.spec?.replicas)
}

#[tokio::test]
async fn clusters_sharing_topics_on_one_broker_do_not_both_run() {
    let env = Env::start("rtc-topics").await;
    env.minimal_cluster_secret().await;
    let clusters = env.api::<RealtimeCluster>();
    let create = |name: &'static str, topics: serde_json::Value| {
        let mut rc = minimal_cluster(name);
        rc.spec.kafka.topics = serde_json::from_value(topics).unwrap();
        let clusters = clusters.clone();
        async move { clusters.create(&PostParams::default(), &rc).await.unwrap() }
    };
    // alpha, then beta, with the same topic names on the same broker.
    let shared = common::own_topics("shared");
    let messages = shared["messages"].as_str().unwrap().to_owned();
    let gamma_topics = common::own_topics("gamma");
    create("alpha", shared.clone()).await;
    eventually("alpha's gateway", 30, || async {
        replicas(&env, "alpha-gateway").await
    })
    .await;
    create("beta", shared.clone()).await;
    // beta is newer: it stalls, says with whom and on which topic, and runs nothing.
    let (reason, message) = wait_condition(&clusters, "beta", "Stalled", "True").await;
    assert_eq!(reason, "TopicConflict");
    assert!(
        message.contains(&format!("RealtimeCluster {}/alpha", env.ns))
            && message.contains(&format!("\"{}", messages.trim_end_matches("messages"))),
        "{message}"
    );
    assert_eq!(
        condition(&clusters, "beta", "Ready").await.unwrap().0,
        "False"
    );
    wait_event(&env, "TopicConflict", "Warning", "alpha").await;
    assert_eq!(
        replicas(&env, "beta-gateway").await,
        None,
        "no data plane for the newer cluster"
    );
    // The older one keeps running.
    wait_condition(&clusters, "alpha", "Stalled", "False").await;

    // gamma, newer still, has topics of its own and runs.
    create("gamma", gamma_topics.clone()).await;
    eventually("gamma's gateway", 30, || async {
        replicas(&env, "gamma-gateway").await.filter(|r| *r == 2)
    })
    .await;
    wait_condition(&clusters, "gamma", "Stalled", "False").await;

    // gamma, running, is edited onto alpha's topic: its data plane is scaled to 0.
    clusters
        .patch(
            "gamma",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"kafka": {"topics": {"messages": messages}}}})),
        )
        .await
        .unwrap();
    let (reason, _) = wait_condition(&clusters, "gamma", "Stalled", "True").await;
    assert_eq!(reason, "TopicConflict");
    eventually("gamma scaled to 0", 30, || async {
        (replicas(&env, "gamma-gateway").await == Some(0)
            && replicas(&env, "gamma-persister").await == Some(0)
            && replicas(&env, "gamma-admin").await == Some(0))
        .then_some(())
    })
    .await;
    let gamma = clusters.get("gamma").await.unwrap().status.unwrap();
    assert_eq!(
        gamma.gateway.unwrap().replicas,
        0,
        "status says it is stopped"
    );

    // alpha goes away: beta, the older of the two left, recovers at once; gamma now
    // conflicts with beta.
    clusters
        .delete("alpha", &DeleteParams::default())
        .await
        .unwrap();
    wait_condition(&clusters, "beta", "Stalled", "False").await;
    eventually("beta's gateway", 30, || async {
        replicas(&env, "beta-gateway").await.filter(|r| *r == 2)
    })
    .await;
    let beta = format!("{}/beta", env.ns);
    eventually("gamma now loses to beta", 30, || async {
        condition(&clusters, "gamma", "Stalled")
            .await
            .filter(|c| c.0 == "True" && c.1 == "TopicConflict" && c.2.contains(&beta))
    })
    .await;

    // gamma gets its own topic back: it runs again with its replicas.
    clusters
        .patch(
            "gamma",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"kafka": {"topics": {"messages": gamma_topics["messages"]}}}}),
            ),
        )
        .await
        .unwrap();
    wait_condition(&clusters, "gamma", "Stalled", "False").await;
    eventually("gamma scaled back", 30, || async {
        (replicas(&env, "gamma-gateway").await == Some(2)).then_some(())
    })
    .await;

    // beta, the older one, is edited onto one of gamma's topics: gamma, untouched, is
    // looked at again (the operator watches every cluster) and stops.
    clusters
        .patch(
            "beta",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"kafka": {"topics": {"recordingEvents": gamma_topics["recordingEvents"]}}}}),
            ),
        )
        .await
        .unwrap();
    let (_, message) = wait_condition(&clusters, "gamma", "Stalled", "True").await;
    assert!(
        message.contains(&gamma_topics["recordingEvents"].to_string()) && message.contains(&beta),
        "{message}"
    );
    eventually("gamma scaled to 0 again", 30, || async {
        (replicas(&env, "gamma-gateway").await == Some(0)).then_some(())
    })
    .await;
    assert_eq!(
        condition(&clusters, "beta", "Stalled").await.unwrap().0,
        "False"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_cluster_that_verifies_no_token_is_refused_or_stalled_and_jwks_alone_runs() {
    const JWKS: &str = "https://id.example/.well-known/jwks.json";
    let env = Env::start("rtc-jwks").await;
    env.minimal_cluster_secret().await;
    let clusters = env.api::<RealtimeCluster>();
    let mut rc = minimal_cluster("jwks");
    rc.spec.auth.jwt_secret_ref = None;
    let created = clusters.create(&PostParams::default(), &rc).await;
    // Servers from 1.25 on apply the CRD's CEL rule; older ones (the local 1.20) ignore
    // it, and the operator's Stalled condition is the guard.
    let version = env.client.apiserver_version().await.unwrap();
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap();
    if version.major == "1" && minor >= 25 {
        let err = created.unwrap_err().to_string();
        assert!(err.contains("jwtSecretRef or jwksUrl"), "{err}");
        rc.spec.auth.jwks_url = Some(JWKS.into());
        clusters.create(&PostParams::default(), &rc).await.unwrap();
    } else {
        created.unwrap();
        let (reason, message) = wait_condition(&clusters, "jwks", "Stalled", "True").await;
        assert_eq!(reason, "InvalidSpec");
        assert!(
            message.contains("spec.auth.jwtSecretRef") && message.contains("spec.auth.jwksUrl"),
            "{message}"
        );
        assert_eq!(
            condition(&clusters, "jwks", "Ready").await.unwrap().1,
            "InvalidSpec"
        );
        wait_event(&env, "InvalidSpec", "Warning", "jwksUrl").await;
        assert!(
            env.api::<Deployment>()
                .get_opt("jwks-gateway")
                .await
                .unwrap()
                .is_none(),
            "no data plane that could verify no token"
        );
        clusters
            .patch(
                "jwks",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"auth": {"jwksUrl": JWKS}}})),
            )
            .await
            .unwrap();
    }
    // With a JWKS URL and no secret it runs: every component is told where the keys are.
    wait_condition(&clusters, "jwks", "Stalled", "False").await;
    for name in ["jwks-gateway", "jwks-admin"] {
        let d = eventually(name, 60, || async {
            env.api::<Deployment>().get_opt(name).await.unwrap()
        })
        .await;
        let env_vars = d.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        assert!(
            !env_vars.iter().any(|e| e.name == "JWT_SECRET"),
            "{name}: {env_vars:?}"
        );
    }
    let config = env.api::<ConfigMap>().get("jwks-config").await.unwrap();
    assert_eq!(config.data.unwrap()["JWT_JWKS_URL"], JWKS);
    env.stop().await;
}
