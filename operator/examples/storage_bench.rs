//! Benchmark: apply → Ready for N KafkaTopics and N MongoIndexes through the operator
//! (its controllers in-process, against the local kube-apiserver, the stack's broker and
//! MongoDB-compatible server), against the same N creations made directly with the admin
//! client (librdkafka CreateTopics) and the driver (createIndexes) in the same run.
//!
//! ```sh
//! scripts/stack.sh up && scripts/kube.sh up && eval "$(scripts/stack.sh env)" && \
//! eval "$(scripts/kube.sh env)" && \
//! cargo run --release -p realtime-operator --example storage_bench
//! ```
//! Knobs: `BENCH_N` (100). The CRDs must be installed (the operator's tests do it, or
//! `kubectl create -f helm/realtime-operator/crds/`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::future::join_all;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use kube::{Client, ResourceExt};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use realtime_operator::crd::{KafkaTopic, MongoIndex, RealtimeCluster};
use realtime_operator::metrics::Metrics;
use serde_json::json;

fn var(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| {
        format!(
            "{name} is not set: eval \"$(scripts/stack.sh env)\" and \"$(scripts/kube.sh env)\""
        )
    })
}

/// p50, p99 and max of `samples`, in ms.
fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// Applies every object (all at once) and returns, per object, the time from its apply
/// to the first list that shows it `Ready` for its generation, and the time until all are.
async fn apply_until_ready<K>(
    api: &Api<K>,
    objects: Vec<serde_json::Value>,
) -> Result<(Vec<Duration>, Duration)>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let start = Instant::now();
    let applied: Vec<(String, Instant)> = join_all(objects.iter().map(|o| async move {
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        api.patch(
            &name,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(o),
        )
        .await
        .map(|_| (name, Instant::now()))
    }))
    .await
    .into_iter()
    .collect::<Result<_, _>>()?;
    let sent: HashMap<String, Instant> = applied.into_iter().collect();
    let mut ready: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while ready.len() < sent.len() {
        if Instant::now() > deadline {
            bail!("only {} of {} Ready after 600 s", ready.len(), sent.len());
        }
        for obj in api.list(&ListParams::default()).await?.items {
            let name = obj.name_any();
            let Some(applied_at) = sent.get(&name) else {
                continue;
            };
            let value = serde_json::to_value(&obj)?;
            let is_ready = value["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["type"] == "Ready"
                        && c["status"] == "True"
                        && c["observedGeneration"] == value["metadata"]["generation"]
                })
            });
            if is_ready {
                ready.entry(name).or_insert_with(|| applied_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((ready.into_values().collect(), start.elapsed()))
}

/// Times `n` concurrent calls of `call`: per call, and all of them.
async fn direct<F, Fut>(n: usize, call: F) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let start = Instant::now();
    let times = join_all((0..n).map(|i| {
        let fut = call(i);
        async move {
            let t = Instant::now();
            fut.await.map(|()| t.elapsed())
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    Ok((times, start.elapsed()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let brokers = var("KAFKA_BROKERS")?;
    let mongo_uri = var("MONGODB_URI")?;
    var("KUBECONFIG")?;
    let client = Client::try_default().await?;
    let run = std::process::id();
    let ns = format!("bench-storage-{run}");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    // The cluster's data plane must not run on a node (only its topics and indexes count).
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns,
            "annotations": {"scheduler.alpha.kubernetes.io/node-selector": "realtime.dev/test-pods=never"}}}))?)
        .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(realtime_operator::run::run_controllers(
        client.clone(),
        Some(ns.clone()),
        Metrics::default(),
        Reporter {
            controller: "storage-bench".into(),
            instance: None,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let result = bench(&client, &ns, n, run, &brokers, &mongo_uri).await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    result
}

async fn bench(
    client: &Client,
    ns: &str,
    n: usize,
    run: u32,
    brokers: &str,
    mongo_uri: &str,
) -> Result<()> {
    let database = format!("bench_storage_{run}");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "s"},
            "stringData": {"mongo": mongo_uri, "redis": "redis://unused", "jwt": "unused"}}))?,
        )
        .await?;
    let clusters: Api<RealtimeCluster> = Api::namespaced(client.clone(), ns);
    clusters
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster", "metadata": {"name": "rc"},
            "spec": {"image": "unused", "kafka": {"bootstrapServers": brokers, "topics": {
                    "messages": format!("bench{run}.messages"), "persistenceEvents": format!("bench{run}.events"),
                    "recordingEvents": format!("bench{run}.recordings")}},
                "mongodb": {"uriSecretRef": {"name": "s", "key": "mongo"}, "database": database},
                "redis": {"urlSecretRef": {"name": "s", "key": "redis"}},
                "auth": {"jwtSecretRef": {"name": "s", "key": "jwt"}}}}))?)
        .await?;

    // Topics: directly, then through KafkaTopics (other names, same shape).
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let admin = &admin;
    let (direct_topics, direct_topics_all) = direct(n, |i| async move {
        let name = format!("bench{run}.direct.{i}");
        let topic = NewTopic::new(&name, 3, TopicReplication::Fixed(1));
        for r in admin.create_topics([&topic], &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("{t}: {e}"))?;
        }
        Ok(())
    })
    .await?;
    let topics: Api<KafkaTopic> = Api::namespaced(client.clone(), ns);
    let objects = (0..n)
        .map(|i| json!({"apiVersion": "realtime.dev/v1alpha1", "kind": "KafkaTopic",
            "metadata": {"name": format!("t{i}")},
            "spec": {"topicName": format!("bench{run}.operator.{i}"), "partitions": 3, "replicationFactor": 1,
                "clusterRef": {"name": "rc"}}}))
        .collect();
    let (operator_topics, operator_topics_all) = apply_until_ready(&topics, objects).await?;

    // Indexes: one per collection (MongoDB allows 64 per collection).
    let db = mongodb::Client::with_uri_str(mongo_uri)
        .await?
        .database(&database);
    let db = &db;
    let (direct_indexes, direct_indexes_all) = direct(n, |i| async move {
        db.run_command(mongodb::bson::doc! {"createIndexes": format!("direct{i}"),
        "indexes": [{"key": {"tenant_id": 1, "seq": -1}, "name": "tenant_id_1_seq_-1"}]})
            .await?;
        Ok(())
    })
    .await?;
    let indexes: Api<MongoIndex> = Api::namespaced(client.clone(), ns);
    let objects = (0..n)
        .map(|i| json!({"apiVersion": "realtime.dev/v1alpha1", "kind": "MongoIndex",
            "metadata": {"name": format!("i{i}")},
            "spec": {"collection": format!("operator{i}"), "keys": [{"field": "tenant_id", "order": 1},
                {"field": "seq", "order": -1}], "clusterRef": {"name": "rc"}}}))
        .collect();
    let (operator_indexes, operator_indexes_all) = apply_until_ready(&indexes, objects).await?;

    println!("n = {n}");
    println!("| what | per object | all {n} | all, vs direct |");
    println!("|---|---|---|---|");
    let row = |what: &str, per: Vec<Duration>, all: Duration, base: Duration| {
        println!(
            "| {what} | {} | {:.2} s | {:.1}× |",
            summary(per),
            all.as_secs_f64(),
            all.as_secs_f64() / base.as_secs_f64()
        );
    };
    row(
        "topics, CreateTopics directly (baseline)",
        direct_topics,
        direct_topics_all,
        direct_topics_all,
    );
    row(
        "topics, KafkaTopic apply → Ready",
        operator_topics,
        operator_topics_all,
        direct_topics_all,
    );
    row(
        "indexes, createIndexes directly (baseline)",
        direct_indexes,
        direct_indexes_all,
        direct_indexes_all,
    );
    row(
        "indexes, MongoIndex apply → Ready",
        operator_indexes,
        operator_indexes_all,
        direct_indexes_all,
    );

    // Leave nothing behind on the broker or in the database.
    let names: Vec<String> = (0..n)
        .flat_map(|i| {
            [
                format!("bench{run}.direct.{i}"),
                format!("bench{run}.operator.{i}"),
            ]
        })
        .chain(
            ["messages", "events", "recordings", "messages.dlq"].map(|t| format!("bench{run}.{t}")),
        )
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&refs, &AdminOptions::new()).await;
    let _ = db.drop().await;
    Ok(())
}
