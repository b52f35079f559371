//! TurnPool reconciler, in steps: ensure the secret (rotated when due) → apply the managed
//! coturn children (and prune) → probe every server → record health → write the status.
//!
//! The shared secret is kept in `<pool>-turn-secret` (current and previous) and rotated
//! on schedule or on demand (see `crate::rotation`). Every server is probed each
//! `healthCheck.intervalSeconds`: a STUN Binding per transport and a TURN Allocate with a
//! credential freshly minted from the current secret. Health follows the thresholds;
//! status lists every server, the counts, the rotation times and `Ready`/`Degraded`.
//! Children the spec no longer asks for (the coturn Deployment and Service of a pool
//! switched from managed to external) are deleted; the Secret stays.
//! No secret material reaches status, Events or logs.

mod probing;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::children::{Children, announce_pruned, describe};
use super::{Context, Error, instrumented, object_key, publish, retry_later, update_status};
use crate::crd::condition::*;
use crate::crd::event;
use crate::crd::{ServerStatus, TurnPool, TurnPoolStatus, condition, merge_conditions};
use crate::render::turn_pool as render;
use crate::rotation;

pub const KIND: &str = "TurnPool";
pub use probing::PROBE_USER;
/// The TurnPool controller's context: the shared one, and when each pool was last
/// probed (at which generation), so that status writes do not trigger probe rounds.
pub struct PoolContext {
    shared: Arc<Context>,
    probes: Mutex<HashMap<String, (Option<i64>, std::time::Instant)>>,
}

impl PoolContext {
    pub fn new(shared: Arc<Context>) -> Self {
        Self {
            shared,
            probes: Mutex::default(),
        }
    }

    /// Time left before `key` (at `generation`) is due for another probe round; zero
    /// when due now.
    pub fn probe_wait(&self, key: &str, generation: Option<i64>, interval: Duration) -> Duration {
        let map = self
            .probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(key) {
            Some((g, at)) if *g == generation => interval.saturating_sub(at.elapsed()),
            _ => Duration::ZERO,
        }
    }

    /// Records that `key` was probed now, at `generation`.
    pub fn probed(&self, key: &str, generation: Option<i64>) {
        self.probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_owned(), (generation, std::time::Instant::now()));
    }
}

impl std::ops::Deref for PoolContext {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.shared
    }
}

pub async fn reconcile(pool: Arc<TurnPool>, ctx: Arc<PoolContext>) -> Result<Action, Error> {
    instrumented(&ctx, KIND, &*pool, reconcile_inner(&pool, &ctx)).await
}

pub fn error_policy(pool: Arc<TurnPool>, error: &Error, ctx: Arc<PoolContext>) -> Action {
    retry_later(&ctx, KIND, &object_key(&*pool), error)
}

/// What is wrong with the spec that the schema cannot say (or that 1.20 does not check).
pub fn invalid(pool: &TurnPool) -> Option<String> {
    match (&pool.spec.servers, &pool.spec.managed) {
        (None, None) => Some(
            "set spec.servers (external TURN servers) or spec.managed (a coturn Deployment)".into(),
        ),
        (Some(_), Some(_)) => Some("set either spec.servers or spec.managed, not both".into()),
        (Some(s), None) if s.is_empty() => {
            Some("spec.servers is empty: list at least one server".into())
        }
        (None, Some(m)) if m.min_relay_port > m.max_relay_port => Some(format!(
            "spec.managed.minRelayPort ({}) is above maxRelayPort ({})",
            m.min_relay_port, m.max_relay_port
        )),
        (None, Some(m)) if (m.min_relay_port..=m.max_relay_port).contains(&m.port) => {
            Some(format!(
                "spec.managed.port ({}) lies in the relay range {}-{}",
                m.port, m.min_relay_port, m.max_relay_port
            ))
        }
        _ => None,
    }
}

pub(super) fn seconds(v: i32) -> Duration {
    Duration::from_secs(u64::try_from(v).unwrap_or(1).max(1))
}

async fn reconcile_inner(pool: &TurnPool, ctx: &PoolContext) -> Result<Action, Error> {
    let ns = pool
        .namespace()
        .ok_or_else(|| Error::Invalid("TurnPool must be namespaced".into()))?;
    let current = pool.status.clone().unwrap_or_default();
    if let Some(problem) = invalid(pool) {
        return stall(pool, ctx, problem).await;
    }
    let (state, rotated) = ensure_secret(pool, ctx, &ns).await?;
    if let Err(problem) = apply_children(pool, ctx, &ns, &state).await? {
        return stall(pool, ctx, problem).await;
    }
    let next_rotation = rotation::next_rotation(pool, &state);
    let until_rotation = next_rotation
        .map(|t| Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO));
    let requeue = |d: Duration| {
        Action::requeue(
            until_rotation
                .map_or(d, |r| d.min(r))
                .max(Duration::from_millis(100)),
        )
    };
    // Probes, once per interval (a status write wakes the controller; it must not probe),
    // and at once after a rotation.
    let interval = seconds(pool.spec.health_check.interval_seconds);
    let wait = ctx.probe_wait(&object_key(pool), pool.metadata.generation, interval);
    if !rotated && !wait.is_zero() {
        return Ok(requeue(wait));
    }
    ctx.probed(&object_key(pool), pool.metadata.generation);
    let servers = probing::probe(pool, ctx, &ns, &state).await?;
    let probed_at = now();
    let statuses = probing::record_health(pool, ctx, &current, &servers, &probed_at).await;
    write_status(pool, ctx, statuses, &state, next_rotation).await?;
    Ok(requeue(
        interval.saturating_sub(probed_at_elapsed(&probed_at)),
    ))
}

/// Step 1: the pool's Secret, created or rotated when due (announced by an Event).
/// Returns the secret state and whether it was just created or rotated.
async fn ensure_secret(
    pool: &TurnPool,
    ctx: &Context,
    ns: &str,
) -> Result<(rotation::SecretState, bool), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = render::secret_name(&pool.name_any());
    let stored = secrets
        .get_opt(&secret_name)
        .await
        .map_err(Error::reading(&secrets, &secret_name))?
        .as_ref()
        .and_then(rotation::read_secret);
    let at = Timestamp::now();
    let due = rotation::rotation_due(pool, stored.as_ref(), at);
    let state = match (due, stored) {
        (None, Some(state)) => return Ok((state, false)),
        (reason, previous) => {
            let next = rotation::rotate(pool, previous.as_ref(), at);
            ctx.metrics.turn_rotations.inc();
            let why = match reason {
                Some(rotation::Rotation::Initial) | None => "created",
                Some(rotation::Rotation::Scheduled) => "rotated on schedule",
                Some(rotation::Rotation::Requested) => "rotated on request (realtime.dev/rotate)",
            };
            publish(
                ctx,
                pool,
                EventType::Normal,
                event::SECRET_ROTATED,
                "Rotate",
                format!(
                    "shared secret in Secret {secret_name} {why}; the previous secret stays accepted until the credentials it signed expire"
                ),
            )
            .await;
            next
        }
    };
    Ok((state, true))
}

/// Step 2: the Secret, and for a managed pool the coturn Deployment and Service, applied
/// (a no-op unless the rotation or the spec changed them); children no longer wanted are
/// deleted. `Ok(Err(problem))` when the API server refuses the spec's Service.
async fn apply_children(
    pool: &TurnPool,
    ctx: &Context,
    ns: &str,
    state: &rotation::SecretState,
) -> Result<Result<(), String>, Error> {
    let client = &ctx.client;
    let name = pool.name_any();
    let mut wanted = Children::of(pool)?;
    wanted
        .apply(
            &Api::<Secret>::namespaced(client.clone(), ns),
            &render::secret_name(&name),
            &render::secret(pool, state),
        )
        .await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let services = Api::<Service>::namespaced(client.clone(), ns);
    if let Some(managed) = &pool.spec.managed {
        let checksum = render::secret_checksum(state);
        let coturn = render::coturn_name(&name);
        wanted
            .apply(
                &deployments,
                &coturn,
                &render::coturn_deployment(pool, managed, &checksum),
            )
            .await?;
        let service = wanted
            .apply(&services, &coturn, &render::coturn_service(pool, managed))
            .await;
        match service {
            Err(refused) if refused.api_status().is_some_and(|e| e.code == 422) => {
                let message = refused
                    .api_status()
                    .map(|e| e.message.clone())
                    .unwrap_or_default();
                let hint = if message.contains("more than 1 protocol") {
                    "this API server refuses a LoadBalancer Service carrying both UDP and TCP (Kubernetes before 1.24 without MixedProtocolLBService); set spec.managed.serviceType to NodePort or ClusterIP, or upgrade the cluster"
                } else {
                    "fix spec.managed"
                };
                return Ok(Err(format!(
                    "the coturn Service was refused: {message}; {hint}"
                )));
            }
            other => {
                other?;
            }
        }
    }
    prune(pool, ctx, &wanted, &deployments, &services).await?;
    Ok(Ok(()))
}

/// Step 5: the status — every server, the counts, the rotation times, the conditions
/// (written only when it changed).
async fn write_status(
    pool: &TurnPool,
    ctx: &Context,
    statuses: Vec<ServerStatus>,
    state: &rotation::SecretState,
    next_rotation: Option<Timestamp>,
) -> Result<(), Error> {
    let generation = pool.metadata.generation;
    let healthy = statuses.iter().filter(|s| s.healthy).count();
    let conditions = status::pool_conditions(pool, &statuses, generation);
    update_status(pool, ctx, |current| TurnPoolStatus {
        conditions: merge_conditions(&current.conditions, conditions.clone(), now()),
        observed_generation: generation,
        healthy_servers: i32::try_from(healthy).unwrap_or(i32::MAX),
        total_servers: i32::try_from(statuses.len()).unwrap_or(i32::MAX),
        servers: statuses.clone(),
        last_rotation_time: Some(Time(state.rotated_at)),
        next_rotation_time: next_rotation.map(Time),
    })
    .await?;
    Ok(())
}

/// Reports a spec the operator cannot act on: `Stalled`, not `Ready`, one Warning Event
/// per change, and no retry until the pool changes.
async fn stall(pool: &TurnPool, ctx: &Context, problem: String) -> Result<Action, Error> {
    let generation = pool.metadata.generation;
    let conditions = vec![
        condition(
            READY,
            false,
            REASON_INVALID_SPEC,
            problem.clone(),
            generation,
        ),
        condition(
            STALLED,
            true,
            REASON_INVALID_SPEC,
            problem.clone(),
            generation,
        ),
    ];
    let replaced = update_status(pool, ctx, |current| TurnPoolStatus {
        conditions: merge_conditions(&current.conditions, conditions.clone(), now()),
        observed_generation: generation,
        ..current.clone()
    })
    .await?;
    if replaced.is_some() {
        publish(
            ctx,
            pool,
            EventType::Warning,
            REASON_INVALID_SPEC,
            "Validate",
            problem,
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Deletes the coturn Deployment and Service when the pool no longer asks for them (it
/// was switched to external servers). The Secret is always wanted: external servers load
/// it too.
async fn prune(
    pool: &TurnPool,
    ctx: &Context,
    wanted: &Children,
    deployments: &Api<Deployment>,
    services: &Api<Service>,
) -> Result<(), Error> {
    announce_pruned(
        ctx,
        pool,
        [
            describe::<Deployment>(&wanted.prune(deployments).await?),
            describe::<Service>(&wanted.prune(services).await?),
        ],
    )
    .await;
    Ok(())
}

fn probed_at_elapsed(t: &Time) -> Duration {
    Duration::try_from(Timestamp::now().duration_since(t.0)).unwrap_or(Duration::ZERO)
}

fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::status::tests::{pool, server};
    use super::*;

    #[test]
    fn invalid_specs_are_named() {
        let mut p = pool(1);
        assert!(invalid(&p).unwrap().contains("empty"));
        p.spec.servers = None;
        assert!(invalid(&p).unwrap().contains("spec.servers"));
        p.spec.servers = Some(vec![server(1)]);
        assert_eq!(invalid(&p), None);
    }
}
