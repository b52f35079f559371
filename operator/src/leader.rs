//! Leader election on a `coordination.k8s.io/v1` Lease, and prompt termination.
//!
//! Only the holder of the Lease reconciles. `kube-lease-manager` campaigns and renews;
//! on top of it a guard reads the Lease itself, so that a holder stops reconciling as
//! soon as the Lease names someone else, or when it cannot confirm its hold before the
//! Lease would expire (an unreachable API server: a follower may take over then).
//!
//! Every wait that can involve the API server is raced with shutdown or bounded, so a
//! shutdown request ends the process within seconds in every state: while campaigning,
//! while leading, and while the API server does not answer.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::Reporter;
use kube::{Api, Client};

use crate::metrics::Metrics;
use crate::run::run_controllers;

/// How long in-flight reconciles may take to finish after a shutdown request.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long releasing the Lease may take at shutdown; past it, it expires by itself.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Leader election on a `coordination.k8s.io/v1` Lease.
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica (the pod name).
    pub identity: String,
    /// Seconds a lease stays valid without renewal; a follower takes over after it.
    pub duration_seconds: u64,
}

/// Why [`run_leader`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaderExit {
    /// Shutdown was requested.
    Shutdown,
    /// The lease was lost: stop writing now, let the process restart and campaign again.
    LostLease,
}

/// What a Lease says about `identity` at `now`.
#[derive(Debug, PartialEq, Eq)]
pub enum Hold {
    /// `identity` holds it for this much longer.
    Ours(Duration),
    /// Someone else holds it (or held it: the Lease names them).
    Theirs(String),
    /// Nobody, or `identity` with an expired renewal.
    Lapsed,
}

/// Reads a Lease for `identity`. Pure.
pub fn hold(lease: &Lease, identity: &str, now: Timestamp) -> Hold {
    let Some(spec) = &lease.spec else {
        return Hold::Lapsed;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder != identity => Hold::Theirs(holder.to_owned()),
        None => Hold::Lapsed,
        Some(_) => {
            let expires = spec.renew_time.as_ref().and_then(|renewed| {
                let valid = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds?));
                renewed.0.checked_add(valid).ok()
            });
            match expires.map(|t| t.duration_since(now)) {
                Some(left) if left.is_positive() => {
                    Hold::Ours(Duration::try_from(left).unwrap_or(Duration::ZERO))
                }
                _ => Hold::Lapsed,
            }
        }
    }
}

/// Resolves when this replica can no longer show that it holds the Lease: the Lease names
/// another holder or none, or no read confirmed the hold before it would expire.
async fn lease_lost(api: Api<Lease>, name: String, identity: String, duration: Duration) {
    let period = (duration / 4).max(Duration::from_millis(250));
    let mut valid_until = tokio::time::Instant::now() + duration;
    loop {
        tokio::time::sleep(period).await;
        let read = tokio::time::timeout(period, api.get(&name)).await;
        match read.map(|r| r.map(|lease| hold(&lease, &identity, Timestamp::now()))) {
            Ok(Ok(Hold::Ours(left))) => valid_until = tokio::time::Instant::now() + left,
            Ok(Ok(Hold::Theirs(holder))) => {
                tracing::warn!(%holder, lease = %name, "the lease names another holder");
                return;
            }
            Ok(Ok(Hold::Lapsed)) => {
                tracing::warn!(lease = %name, "the lease lapsed without renewal");
                return;
            }
            Ok(Err(e)) if tokio::time::Instant::now() >= valid_until => {
                tracing::warn!(error = %e, lease = %name, "could not confirm the lease before it expired");
                return;
            }
            Err(_) if tokio::time::Instant::now() >= valid_until => {
                tracing::warn!(lease = %name, "could not confirm the lease before it expired");
                return;
            }
            Ok(Err(_)) | Err(_) => {}
        }
    }
}

/// Waits for the Lease, runs the controllers while it is held, and stops them the moment
/// it is lost, so two replicas never both reconcile. Returns promptly once `shutdown`
/// resolves, whatever the API server does.
pub async fn run_leader(
    client: Client,
    namespace: Option<String>,
    metrics: Metrics,
    reporter: Reporter,
    lease: LeaseConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<LeaderExit, kube_lease_manager::LeaseManagerError> {
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let builder = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace((lease.duration_seconds / 3).max(1));
    // Building reads (or creates) the Lease, which waits as long as the API server does.
    let manager = tokio::select! {
        () = shutdown.clone() => return Ok(LeaderExit::Shutdown),
        built = builder.build() => built?,
    };
    let (mut leader, task) = manager.watch().await;
    tracing::info!(identity = %lease.identity, lease = %lease.name, "campaigning for the lease");
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            () = shutdown.clone() => {
                drop(leader);
                release(task).await;
                return Ok(LeaderExit::Shutdown);
            }
            changed = leader.changed() => if changed.is_err() {
                return Ok(LeaderExit::LostLease);
            },
        }
    }
    tracing::info!(identity = %lease.identity, lease = %lease.name, "acquired the lease; reconciling");
    let guard = lease_lost(
        Api::namespaced(client.clone(), &lease.namespace),
        lease.name.clone(),
        lease.identity.clone(),
        Duration::from_secs(lease.duration_seconds),
    );
    let mut watch = leader.clone();
    let lost = async move {
        tokio::select! {
            () = guard => {}
            () = async {
                while watch.changed().await.is_ok() {
                    if !*watch.borrow_and_update() {
                        return;
                    }
                }
            } => tracing::warn!("the lease manager reports the lease lost"),
        }
    };
    // Losing the lease drops the controllers at once, in-flight reconciles included; a
    // shutdown lets them finish for a moment.
    let why = tokio::select! {
        biased;
        () = lost => LeaderExit::LostLease,
        () = run_until_drained(run_controllers(client, namespace, metrics, reporter, shutdown.clone()), shutdown) => LeaderExit::Shutdown,
    };
    match why {
        LeaderExit::Shutdown => {
            // Closing the channel makes the manager release the lease for a fast hand-over.
            drop(leader);
            release(task).await;
        }
        LeaderExit::LostLease => {
            // No release: the Lease is someone else's now, releasing would clear it.
            task.abort();
            tracing::warn!(identity = %lease.identity, "lost the lease; stopped reconciling");
        }
    }
    Ok(why)
}

/// Waits (at most [`RELEASE_TIMEOUT`]) for the lease manager to release the Lease.
async fn release(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) {
    let abort = task.abort_handle();
    match tokio::time::timeout(RELEASE_TIMEOUT, task).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the lease"),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "releasing the lease failed; it expires by itself")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "lease manager task failed"),
        Err(_) => {
            abort.abort();
            tracing::warn!("releasing the lease timed out; it expires by itself");
        }
    }
}

/// Runs `controllers` until they end after `shutdown`, giving in-flight reconciles at
/// most [`DRAIN_TIMEOUT`] once shutdown is requested.
pub async fn run_until_drained(
    controllers: impl Future<Output = ()>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::select! {
        () = controllers => {}
        () = async {
            shutdown.await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => tracing::warn!("reconciles still running {DRAIN_TIMEOUT:?} after shutdown; stopping them"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: Option<&str>, renewed: i64, duration: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                lease_duration_seconds: Some(duration),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_lease_is_ours_until_it_expires_or_names_someone_else() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(
            hold(&lease(Some("a"), 995, 15), "a", now),
            Hold::Ours(Duration::from_secs(10))
        );
        assert_eq!(hold(&lease(Some("a"), 980, 15), "a", now), Hold::Lapsed);
        assert_eq!(
            hold(&lease(Some("thief"), 999, 60), "a", now),
            Hold::Theirs("thief".into())
        );
        assert_eq!(hold(&lease(None, 999, 60), "a", now), Hold::Lapsed);
        assert_eq!(hold(&Lease::default(), "a", now), Hold::Lapsed);
    }

    #[tokio::test]
    async fn a_shutdown_stops_controllers_that_do_not_end_within_the_drain() {
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        run_until_drained(std::future::pending(), std::future::ready(())).await;
        let took = started.elapsed();
        assert!(took >= DRAIN_TIMEOUT && took < DRAIN_TIMEOUT + Duration::from_millis(100));
        run_until_drained(std::future::ready(()), std::future::pending()).await;
    }
}
