//! MongoIndex reconciler, in steps: paused? → deleting? (drop with `deletionPolicy:
//! Delete`, then release the finalizer) → keep the finalizer in line with the policy →
//! resolve the cluster's database → list the indexes → create / change the TTL in place /
//! report or replace a conflict → write the status with the index as the server reports it.
//!
//! An index of the same name with other options (or the same keys under another name) is
//! never dropped unless `replaceConflicting` is set: the resource is `Stalled` with reason
//! `Conflict`, naming what differs. A changed TTL is applied with `collMod`, without a
//! rebuild. The indexes are listed again every [`RESYNC`], so an index dropped behind the
//! operator's back is created again. The finalizer is only there while the policy is
//! `Delete`, so a `Retain` resource never waits in Terminating.
//! Connection strings come from the RealtimeCluster's Secret and appear nowhere else; a
//! host without a dot in them is a Service of the resource's namespace (`mongo` →
//! `mongo.<ns>.svc`), so the URI the data plane's pods use works for the operator too.

pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use mongodb::bson::{Document, doc};
use sha2::{Digest, Sha256};

use super::external::{self, External};
use super::{Context, Error, instrumented, object_key, publish, retry_later};
use crate::crd::condition::*;
use crate::crd::event;
use crate::crd::{
    DeletionPolicy, MONGO_INDEX_FINALIZER, MongoIndex, MongoIndexStatus, RealtimeCluster, condition,
};
use plan::Plan;

pub const KIND: &str = "MongoIndex";
/// How often the indexes are listed again (drift repair).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a MongoIndex whose cluster or Secret is missing looks again.
const MISSING_RETRY: Duration = Duration::from_secs(15);
/// How often a running build is looked at.
const BUILD_POLL: Duration = Duration::from_secs(2);
/// Longest wait for the database to answer (server selection).
const SERVER_SELECTION: Duration = Duration::from_secs(5);

/// The MongoIndex controller's context: the shared one and a client per database (by the
/// hash of its connection string).
pub struct IndexContext {
    shared: Arc<Context>,
    clients: Mutex<HashMap<String, mongodb::Client>>,
    /// The builds running or finished since the last look, by object key.
    builds: Mutex<HashMap<String, Build>>,
}

/// How a build ended: `Err((reason, problem))` when the server refused or went away.
type Outcome = Result<(), (&'static str, String)>;

/// An index build the operator started in the background.
struct Build {
    started: Time,
    outcome: Arc<Mutex<Option<Outcome>>>,
    /// The Event to publish when it succeeds.
    done: (&'static str, &'static str, String),
}

/// How a build the operator started stands.
enum Progress {
    Running(Time),
    Done(Build, Outcome),
}

impl IndexContext {
    pub fn new(shared: Arc<Context>) -> Self {
        Self {
            shared,
            clients: Mutex::default(),
            builds: Mutex::default(),
        }
    }

    fn builds(&self) -> std::sync::MutexGuard<'_, HashMap<String, Build>> {
        self.builds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `createIndexes` in the background: a large collection takes minutes, and the
    /// reconcile looks again every [`BUILD_POLL`] instead of waiting.
    fn start_build(
        &self,
        key: String,
        target: &Target,
        command: Document,
        done: (&'static str, &'static str, String),
    ) -> Time {
        let outcome = Arc::new(Mutex::new(None));
        let slot = outcome.clone();
        let db = target.collection.client().database(&target.database);
        tokio::spawn(async move {
            let result = db
                .run_command(command)
                .await
                .map(|_| ())
                .map_err(|e| database_error("building the index (createIndexes)", &e));
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(result);
        });
        // Whole seconds: what the API server keeps of a time (a finer one would never
        // compare equal to the status read back).
        let started = Time(
            k8s_openapi::jiff::Timestamp::from_second(external::now().0.as_second())
                .unwrap_or_else(|_| external::now().0),
        );
        self.builds().insert(
            key,
            Build {
                started: started.clone(),
                outcome,
                done,
            },
        );
        started
    }

    /// The build of `key`, if the operator started one: still running, or done (then
    /// forgotten).
    fn progress(&self, key: &str) -> Option<Progress> {
        let mut builds = self.builds();
        let build = builds.get(key)?;
        let outcome = build
            .outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match outcome {
            None => Some(Progress::Running(build.started.clone())),
            Some(outcome) => builds
                .remove(key)
                .map(|build| Progress::Done(build, outcome)),
        }
    }

    /// A client for `uri`, whose hosts without a dot are Services of namespace `ns` (as
    /// the data plane's pods, in that namespace, resolve them).
    async fn client(&self, uri: &str, ns: &str) -> Result<mongodb::Client, mongodb::error::Error> {
        let id: String = Sha256::digest(format!("{ns}\n{uri}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
        {
            return Ok(c.clone());
        }
        let mut options = mongodb::options::ClientOptions::parse(uri).await?;
        for host in &mut options.hosts {
            if let mongodb::options::ServerAddress::Tcp { host, .. } = host {
                *host = external::in_namespace(host, ns);
            }
        }
        options.server_selection_timeout = Some(SERVER_SELECTION);
        options.app_name = Some("realtime-operator".into());
        let client = mongodb::Client::with_options(options)?;
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, client.clone());
        Ok(client)
    }
}

impl std::ops::Deref for IndexContext {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.shared
    }
}

impl External for MongoIndex {
    const FINALIZER: &'static str = MONGO_INDEX_FINALIZER;
    const OBJECT: &'static str = "index";
    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy
    }
    fn conditions(status: &MongoIndexStatus) -> &[Condition] {
        &status.conditions
    }
    fn set_conditions(
        status: &mut MongoIndexStatus,
        conditions: Vec<Condition>,
        generation: Option<i64>,
    ) {
        status.conditions = conditions;
        status.observed_generation = generation;
    }
}

pub async fn reconcile(mi: Arc<MongoIndex>, ctx: Arc<IndexContext>) -> Result<Action, Error> {
    instrumented(&ctx, KIND, &*mi, reconcile_inner(&mi, &ctx)).await
}

pub fn error_policy(mi: Arc<MongoIndex>, error: &Error, ctx: Arc<IndexContext>) -> Action {
    retry_later(&ctx, KIND, &object_key(&*mi), error)
}

/// Where the index lives.
struct Target {
    database: String,
    collection: mongodb::Collection<Document>,
}

/// Why a MongoDB call failed, for the condition and the error (no connection string in
/// it), and whether the server answered (`Refused`) or not (`Unreachable`).
fn database_error(doing: &str, e: &mongodb::error::Error) -> (&'static str, String) {
    let reason = if code(e).is_some() {
        REASON_REFUSED
    } else {
        REASON_UNREACHABLE
    };
    (reason, format!("{doing}: {}", e.kind))
}

async fn reconcile_inner(mi: &MongoIndex, ctx: &IndexContext) -> Result<Action, Error> {
    let ns = mi
        .namespace()
        .ok_or_else(|| Error::Invalid("MongoIndex must be namespaced".into()))?;
    let api: Api<MongoIndex> = Api::namespaced(ctx.client.clone(), &ns);
    if mi.metadata.deletion_timestamp.is_some() {
        return finish_deletion(mi, ctx, &api, &ns).await;
    }
    if let Some(message) = external::paused(mi) {
        external::pause(mi, ctx, &message).await?;
        return Ok(Action::await_change());
    }
    external::keep_finalizer_in_line(mi, &api).await?;
    let target = match resolve(mi, ctx, &ns).await? {
        Ok(target) => target,
        Err(problem) => {
            external::stall(mi, ctx, REASON_MISSING_REFERENCE, problem, |_| {}).await?;
            // The cluster's appearance triggers a reconcile; its Secret's does not.
            return Ok(Action::requeue(MISSING_RETRY));
        }
    };
    let wanted = match plan::wanted(&mi.spec) {
        Ok(w) => w,
        Err(problem) => {
            external::stall(mi, ctx, REASON_INVALID_SPEC, problem, |_| {}).await?;
            return Ok(Action::await_change());
        }
    };
    let key = object_key(mi);
    match ctx.progress(&key) {
        None => {}
        Some(Progress::Running(started)) => return building(mi, ctx, &target, started).await,
        Some(Progress::Done(build, Ok(()))) => {
            let (reason, action, note) = build.done;
            publish(ctx, mi, EventType::Normal, reason, action, note).await;
        }
        Some(Progress::Done(build, Err((reason, problem)))) => {
            publish(
                ctx,
                mi,
                EventType::Warning,
                event::INDEX_BUILD_FAILED,
                "Create",
                problem.clone(),
            )
            .await;
            let generation = mi.metadata.generation;
            let conditions = vec![
                condition(READY, false, reason, problem.clone(), generation),
                condition(RECONCILING, true, reason, problem.clone(), generation),
            ];
            external::write(mi, ctx, conditions, |status| {
                status.build_state = Some("Failed".into());
                status.build_started_at = Some(build.started.clone());
            })
            .await?;
            return Err(Error::Database(problem));
        }
    }
    let existing = list(mi, ctx, &target).await?;
    let create = doc! {"createIndexes": &mi.spec.collection, "indexes": [wanted.clone()]};
    match plan::plan(&wanted, &existing) {
        Plan::InSync => {}
        Plan::Create => {
            let note = format!(
                "created index {} on {}.{}",
                mi.spec.index_name(),
                target.database,
                mi.spec.collection
            );
            let done = (event::INDEX_CREATED, "Create", note);
            let started = ctx.start_build(key, &target, create, done);
            return building(mi, ctx, &target, started).await;
        }
        Plan::ChangeTtl { from, to } => {
            let command = doc! {
                "collMod": &mi.spec.collection,
                "index": {"name": mi.spec.index_name(), "expireAfterSeconds": to},
            };
            run(
                mi,
                ctx,
                &target,
                command,
                "changing the index's TTL (collMod)",
            )
            .await?;
            let note = format!(
                "expireAfterSeconds of index {} changed in place from {} to {to}",
                mi.spec.index_name(),
                from.map_or("none".into(), |f| f.to_string())
            );
            publish(
                ctx,
                mi,
                EventType::Normal,
                event::INDEX_TTL_CHANGED,
                "CollMod",
                note,
            )
            .await;
        }
        Plan::Conflict { existing, differs } if mi.spec.replace_conflicting => {
            let command = doc! {"dropIndexes": &mi.spec.collection, "index": &existing};
            run(mi, ctx, &target, command, "dropping the conflicting index").await?;
            let note = format!(
                "index {existing} differed ({differs}); dropped and created as the spec says (replaceConflicting)"
            );
            let done = (event::INDEX_REPLACED, "Replace", note);
            let started = ctx.start_build(key, &target, create, done);
            return building(mi, ctx, &target, started).await;
        }
        Plan::Conflict { existing, differs } => {
            let problem = format!(
                "index {existing} on {}.{} exists with other options ({differs}); it is left alone: drop it, change the spec, or set replaceConflicting: true",
                target.database, mi.spec.collection
            );
            external::stall(mi, ctx, REASON_CONFLICT, problem, |_| {}).await?;
            return Ok(Action::requeue(RESYNC));
        }
    }
    let name = mi.spec.index_name();
    let reported = list(mi, ctx, &target)
        .await?
        .into_iter()
        .find(|i| i.get_str("name").ok() == Some(name.as_str()));
    let message = format!(
        "index {name} on {}.{} matches the spec",
        target.database, mi.spec.collection
    );
    let mut conditions = external::reconciling(false, REASON_IN_SYNC, &message, mi);
    conditions.push(condition(
        READY,
        reported.is_some(),
        REASON_IN_SYNC,
        message,
        mi.metadata.generation,
    ));
    let index = reported.and_then(|d| serde_json::to_value(d).ok());
    external::write(mi, ctx, conditions, |status| {
        status.index_name = Some(name.clone());
        status.database = Some(target.database.clone());
        status.build_state = Some(if index.is_some() { "Ready" } else { "Missing" }.into());
        status.index.clone_from(&index);
    })
    .await?;
    Ok(Action::requeue(RESYNC))
}

/// The database and collection of the cluster named by `clusterRef`, or what is missing.
async fn resolve(
    mi: &MongoIndex,
    ctx: &IndexContext,
    ns: &str,
) -> Result<Result<Target, String>, Error> {
    let clusters: Api<RealtimeCluster> = Api::namespaced(ctx.client.clone(), ns);
    let name = &mi.spec.cluster_ref.name;
    let Some(rc) = clusters
        .get_opt(name)
        .await
        .map_err(Error::reading(&clusters, name))?
    else {
        return Ok(Err(format!(
            "RealtimeCluster {ns}/{name} (spec.clusterRef) does not exist"
        )));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let r = &rc.spec.mongodb.uri_secret_ref;
    let Some(secret) = secrets
        .get_opt(&r.name)
        .await
        .map_err(Error::reading(&secrets, &r.name))?
    else {
        return Ok(Err(format!(
            "Secret {ns}/{} (the MongoDB URI of RealtimeCluster {name}) does not exist",
            r.name
        )));
    };
    let Some(uri) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
    else {
        return Ok(Err(format!(
            "Secret {ns}/{} has no key {:?}",
            r.name, r.key
        )));
    };
    let database = mi
        .spec
        .database
        .clone()
        .unwrap_or_else(|| rc.spec.mongodb.database.clone());
    let client = match ctx.client(&uri, ns).await {
        Ok(c) => c,
        Err(e) => {
            return Ok(Err(format!(
                "the MongoDB URI in Secret {ns}/{} is not usable: {}",
                r.name, e.kind
            )));
        }
    };
    Ok(Ok(Target {
        collection: client.database(&database).collection(&mi.spec.collection),
        database,
    }))
}

/// The collection's indexes (none when it does not exist yet).
async fn list(mi: &MongoIndex, ctx: &Context, target: &Target) -> Result<Vec<Document>, Error> {
    use futures::TryStreamExt;
    let listed = match target.collection.list_indexes().await {
        Ok(cursor) => cursor.try_collect::<Vec<_>>().await,
        Err(e) => Err(e),
    };
    match listed {
        Ok(indexes) => Ok(indexes
            .into_iter()
            .filter_map(|m| mongodb::bson::to_document(&m).ok())
            .collect()),
        Err(e) if code(&e) == Some(26) => Ok(Vec::new()),
        Err(e) => Err(unreachable(mi, ctx, database_error("listing the indexes", &e)).await),
    }
}

/// Reports a build in progress (`Ready=False`/`Building`, `buildState: Building`, since
/// when) and looks again in [`BUILD_POLL`].
async fn building(
    mi: &MongoIndex,
    ctx: &Context,
    target: &Target,
    started: Time,
) -> Result<Action, Error> {
    let name = mi.spec.index_name();
    let message = format!(
        "building index {name} on {}.{} since {} (createIndexes runs in the background)",
        target.database, mi.spec.collection, started.0
    );
    let generation = mi.metadata.generation;
    let conditions = vec![
        condition(READY, false, REASON_BUILDING, message.clone(), generation),
        condition(
            RECONCILING,
            true,
            REASON_BUILDING,
            message.clone(),
            generation,
        ),
        condition(STALLED, false, REASON_BUILDING, message.clone(), generation),
    ];
    let replaced = external::write(mi, ctx, conditions, |status| {
        status.index_name = Some(name.clone());
        status.database = Some(target.database.clone());
        status.build_state = Some("Building".into());
        status.build_started_at = Some(started.clone());
    })
    .await?;
    // Announced once per build: when the status first says it started.
    if replaced.is_some_and(|old| old.build_started_at.as_ref() != Some(&started)) {
        publish(
            ctx,
            mi,
            EventType::Normal,
            event::INDEX_BUILD_STARTED,
            "Create",
            message,
        )
        .await;
    }
    Ok(Action::requeue(BUILD_POLL))
}

/// Runs a command on the index's database.
async fn run(
    mi: &MongoIndex,
    ctx: &Context,
    target: &Target,
    command: Document,
    doing: &str,
) -> Result<(), Error> {
    let db = target.collection.client().database(&target.database);
    match db.run_command(command).await {
        Ok(_) => Ok(()),
        Err(e) => Err(unreachable(mi, ctx, database_error(doing, &e)).await),
    }
}

/// Reports a database failure in the conditions and returns it as the reconcile's error
/// (retried with back-off).
async fn unreachable(mi: &MongoIndex, ctx: &Context, (reason, problem): (&str, String)) -> Error {
    external::failing(mi, ctx, reason, &problem).await;
    Error::Database(problem)
}

fn code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// The resource is being deleted: with `Delete`, drop the index (gone already counts),
/// then release the finalizer; with `Retain` only release it.
async fn finish_deletion(
    mi: &MongoIndex,
    ctx: &IndexContext,
    api: &Api<MongoIndex>,
    ns: &str,
) -> Result<Action, Error> {
    if !external::holds_finalizer(mi) {
        return Ok(Action::await_change());
    }
    if mi.spec.deletion_policy == DeletionPolicy::Delete {
        let name = mi.spec.index_name();
        let dropped = match resolve(mi, ctx, ns).await? {
            Ok(target) => {
                let db = target.collection.client().database(&target.database);
                match db
                    .run_command(doc! {"dropIndexes": &mi.spec.collection, "index": &name})
                    .await
                {
                    Ok(_) => Ok(()),
                    // The collection or the index is gone already.
                    Err(e) if matches!(code(&e), Some(26 | 27)) => Ok(()),
                    Err(e) => Err(database_error("dropping the index", &e).1),
                }
            }
            Err(problem) => Err(problem),
        };
        if let Err(problem) = dropped {
            external::deletion_blocked(mi, ctx, event::INDEX_DROP_FAILED, &problem).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        let note = format!("index {name} dropped with the resource (deletionPolicy: Delete)");
        publish(
            ctx,
            mi,
            EventType::Normal,
            event::INDEX_DROPPED,
            "Delete",
            note,
        )
        .await;
    }
    external::set_finalizer(mi, api, false).await?;
    Ok(Action::await_change())
}
