//! The MongoIndex controller against the local kube-apiserver and the local
//! MongoDB-compatible server (`scripts/stack.sh`): creation, status as the server reports
//! it, a TTL changed in place, a conflict reported and left alone then replaced when the
//! spec opts in, an index dropped behind the operator's back created again, pause, a
//! missing cluster, and both deletion policies. What the database holds is read with the
//! MongoDB driver directly, not through the operator. Needs KUBECONFIG and MONGODB_URI.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::cluster::{annotate, apply_spec, delete_and_wait, message_of, wait_event, wait_reason};
use common::{Env, eventually, minimal_cluster};
use futures::TryStreamExt;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use mongodb::bson::{Document, doc};
use realtime_operator::crd::{MONGO_INDEX_FINALIZER, MongoIndex, RealtimeCluster};
use serde_json::{Value, json};

fn mongodb_uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| {
        panic!("MONGODB_URI is not set: run `scripts/stack.sh up` and `eval \"$(scripts/stack.sh env)\"` (scripts/test.sh does both)")
    })
}

/// The test's environment: the operator, a RealtimeCluster `rc` whose Secret holds the
/// stack's MongoDB URI, and a database of the test's own.
async fn setup(prefix: &str) -> (Env, mongodb::Database) {
    let env = Env::start(prefix).await;
    let uri = mongodb_uri();
    env.secret_keys(
        "s",
        &[("mongo", &uri), ("redis", "redis://r"), ("jwt", "j")],
    )
    .await;
    env.api::<RealtimeCluster>()
        .create(&PostParams::default(), &minimal_cluster("rc"))
        .await
        .unwrap();
    let database = format!("mi_{}", uuid_like(&env.ns));
    let db = mongodb::Client::with_uri_str(&uri)
        .await
        .unwrap()
        .database(&database);
    (env, db)
}

fn uuid_like(ns: &str) -> String {
    ns.chars().filter(char::is_ascii_alphanumeric).collect()
}

async fn apply(env: &Env, name: &str, database: &str, spec: Value) {
    let mut spec = spec;
    spec["database"] = json!(database);
    spec["clusterRef"] = json!({"name": "rc"});
    apply_spec::<MongoIndex>(env, name, spec).await;
}

/// The index named `name` as the server lists it.
async fn server_index(db: &mongodb::Database, collection: &str, name: &str) -> Option<Document> {
    let cursor = db
        .collection::<Document>(collection)
        .list_indexes()
        .await
        .ok()?;
    let all: Vec<_> = cursor.try_collect().await.ok()?;
    all.into_iter()
        .map(|m| mongodb::bson::to_document(&m).unwrap())
        .find(|d| d.get_str("name").ok() == Some(name))
}

fn ttl(index: &Document) -> Option<i64> {
    index
        .get_i64("expireAfterSeconds")
        .ok()
        .or_else(|| index.get_i32("expireAfterSeconds").ok().map(i64::from))
}

#[tokio::test]
async fn an_index_is_created_reported_kept_in_line_and_its_ttl_changed_in_place() {
    let (env, db) = setup("mi-create").await;
    let database = db.name().to_owned();
    let spec = json!({
        "collection": "messages",
        "keys": [{"field": "created_at", "order": 1}],
        "unique": false, "sparse": true, "expireAfterSeconds": 3600,
    });
    // Every status the operator writes, as a watch delivers it.
    let states = {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        let config = kube::runtime::watcher::Config::default().fields("metadata.name=expiry");
        let mut stream = kube::runtime::watcher(env.api::<MongoIndex>(), config)
            .applied_objects()
            .boxed();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(mi)) = stream.next().await {
                let state = mi.status.and_then(|s| s.build_state);
                if tx.send(state).is_err() {
                    break;
                }
            }
        });
        rx
    };
    apply(&env, "expiry", &database, spec.clone()).await;
    let mi = wait_reason::<MongoIndex>(&env, "expiry", "Ready", "True", "InSync").await;
    let mut states = states;
    let mut seen = Vec::new();
    let delivered = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(state) = states.recv().await {
            let ready = state.as_deref() == Some("Ready");
            seen.push(state);
            if ready {
                break;
            }
        }
    })
    .await;
    assert!(
        delivered.is_ok(),
        "the watch delivered the Ready status: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.as_deref() == Some("Building")),
        "the build was reported while it ran: {seen:?}"
    );
    let status = mi.status.unwrap();
    assert_eq!(status.index_name.as_deref(), Some("created_at_1"));
    assert_eq!(status.database.as_deref(), Some(database.as_str()));
    let reported = status.index.unwrap();
    assert_eq!(reported["key"], json!({"created_at": 1}));
    // The server agrees, read directly.
    let index = server_index(&db, "messages", "created_at_1").await.unwrap();
    assert_eq!(index.get_document("key").unwrap(), &doc! {"created_at": 1});
    assert_eq!(index.get_bool("sparse"), Ok(true));
    assert_eq!(ttl(&index), Some(3600));
    // Built in the background: the start and the end announced, the state in status.
    assert_eq!(status.build_state.as_deref(), Some("Ready"));
    assert!(status.build_started_at.is_some());
    wait_event(
        &env,
        "IndexBuildStarted",
        "Normal",
        "building index created_at_1",
    )
    .await;
    wait_event(&env, "IndexCreated", "Normal", "created_at_1").await;
    // Retain (default): no finalizer.
    let mi = env.api::<MongoIndex>().get("expiry").await.unwrap();
    assert!(
        !mi.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == MONGO_INDEX_FINALIZER)
    );

    // A new TTL is applied in place.
    let mut changed = spec.clone();
    changed["expireAfterSeconds"] = json!(60);
    apply(&env, "expiry", &database, changed).await;
    eventually("the server's TTL to be 60", 30, || async {
        let index = server_index(&db, "messages", "created_at_1").await?;
        (ttl(&index) == Some(60)).then_some(())
    })
    .await;
    wait_event(&env, "IndexTTLChanged", "Normal", "from 3600 to 60").await;

    // Dropped behind the operator's back (the command succeeds only if it existed): created
    // again, as the spec says now, when it next reconciles (every resync, and on any event
    // about the resource — which can be at once; a metadata change makes sure of it).
    db.run_command(doc! {"dropIndexes": "messages", "index": "created_at_1"})
        .await
        .unwrap();
    annotate::<MongoIndex>(&env, "expiry", "test/poke", json!("1")).await;
    eventually("the dropped index to be back with TTL 60", 30, || async {
        let index = server_index(&db, "messages", "created_at_1").await?;
        (ttl(&index) == Some(60)).then_some(())
    })
    .await;

    // Retain: the resource goes at once, the index stays.
    delete_and_wait::<MongoIndex>(&env, "expiry").await;
    assert!(
        server_index(&db, "messages", "created_at_1")
            .await
            .is_some()
    );
    db.drop().await.unwrap();
    env.stop().await;
}

#[tokio::test]
async fn a_conflict_is_reported_and_left_alone_until_the_spec_opts_in_to_replace_it() {
    let (env, db) = setup("mi-conflict").await;
    let database = db.name().to_owned();
    // Someone made `by_user` without `unique`.
    db.run_command(doc! {"createIndexes": "memberships", "indexes": [
        {"key": {"user_id": 1}, "name": "by_user"}
    ]})
    .await
    .unwrap();
    let spec = json!({
        "collection": "memberships", "name": "by_user",
        "keys": [{"field": "user_id", "order": 1}], "unique": true,
    });
    apply(&env, "by-user", &database, spec.clone()).await;
    let mi = wait_reason::<MongoIndex>(&env, "by-user", "Stalled", "True", "Conflict").await;
    let message = &message_of(&mi, "Stalled");
    assert!(
        message.contains("by_user") && message.contains("unique"),
        "{message}"
    );
    assert!(
        message.contains("replaceConflicting"),
        "says the way out: {message}"
    );
    wait_event(&env, "Conflict", "Warning", "by_user").await;
    let untouched = server_index(&db, "memberships", "by_user").await.unwrap();
    assert!(
        untouched.get_bool("unique").is_err(),
        "never dropped on its own: {untouched}"
    );

    let mut replace = spec;
    replace["replaceConflicting"] = json!(true);
    apply(&env, "by-user", &database, replace).await;
    wait_reason::<MongoIndex>(&env, "by-user", "Ready", "True", "InSync").await;
    let replaced = server_index(&db, "memberships", "by_user").await.unwrap();
    assert_eq!(replaced.get_bool("unique"), Ok(true));
    wait_event(&env, "IndexReplaced", "Normal", "by_user").await;
    db.drop().await.unwrap();
    env.stop().await;
}

#[tokio::test]
async fn delete_policy_drops_the_index_pause_stops_and_a_missing_cluster_stalls() {
    let (env, db) = setup("mi-delete").await;
    let database = db.name().to_owned();
    let spec = json!({
        "collection": "conversations", "name": "by_tenant",
        "keys": [{"field": "tenant_id", "order": 1}], "deletionPolicy": "Delete",
    });
    apply(&env, "by-tenant", &database, spec.clone()).await;
    wait_reason::<MongoIndex>(&env, "by-tenant", "Ready", "True", "InSync").await;
    let mi = env.api::<MongoIndex>().get("by-tenant").await.unwrap();
    assert!(mi.finalizers().iter().any(|f| f == MONGO_INDEX_FINALIZER));
    assert!(
        server_index(&db, "conversations", "by_tenant")
            .await
            .is_some()
    );

    // Paused: a change is not applied, and a condition says why.
    annotate::<MongoIndex>(&env, "by-tenant", "realtime.dev/paused", json!("true")).await;
    wait_reason::<MongoIndex>(&env, "by-tenant", "Reconciling", "False", "Paused").await;
    db.run_command(doc! {"dropIndexes": "conversations", "index": "by_tenant"})
        .await
        .unwrap();
    let mut changed = spec.clone();
    changed["sparse"] = json!(true);
    apply(&env, "by-tenant", &database, changed).await;
    eventually("the pause to be reported for generation 2", 30, || async {
        let mi = env.api::<MongoIndex>().get("by-tenant").await.unwrap();
        (mi.status?.observed_generation == Some(2)).then_some(())
    })
    .await;
    wait_reason::<MongoIndex>(&env, "by-tenant", "Reconciling", "False", "Paused").await;
    assert!(
        server_index(&db, "conversations", "by_tenant")
            .await
            .is_none(),
        "not repaired while paused"
    );
    annotate::<MongoIndex>(&env, "by-tenant", "realtime.dev/paused", json!(null)).await;
    eventually("the index back after the pause", 30, || async {
        server_index(&db, "conversations", "by_tenant").await
    })
    .await;

    // Delete: the index goes with the resource.
    delete_and_wait::<MongoIndex>(&env, "by-tenant").await;
    assert!(
        server_index(&db, "conversations", "by_tenant")
            .await
            .is_none(),
        "dropped"
    );
    wait_event(&env, "IndexDropped", "Normal", "by_tenant").await;

    // A cluster that does not exist: Stalled, naming it.
    let body = json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "MongoIndex",
        "metadata": {"name": "orphan"},
        "spec": {"collection": "x", "keys": [{"field": "a", "order": 1}], "clusterRef": {"name": "nowhere"},
            "database": database},
    });
    env.api::<MongoIndex>()
        .patch(
            "orphan",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    let mi = wait_reason::<MongoIndex>(&env, "orphan", "Stalled", "True", "MissingReference").await;
    let stalled = message_of(&mi, "Stalled");
    assert!(stalled.contains("nowhere"), "{stalled}");
    // The cluster appears (after the index, as `kubectl apply -f` in file order does): the
    // index follows without anyone touching it.
    env.api::<RealtimeCluster>()
        .create(&PostParams::default(), &minimal_cluster("nowhere"))
        .await
        .unwrap();
    wait_reason::<MongoIndex>(&env, "orphan", "Ready", "True", "InSync").await;
    assert!(server_index(&db, "x", "a_1").await.is_some());
    db.drop().await.unwrap();
    env.stop().await;
}
