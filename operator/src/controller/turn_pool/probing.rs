//! Steps 3 and 4 of a TurnPool reconcile: probing every server like a client would, and
//! each server's health after its probe (metrics, and an Event on each transition). The
//! bookkeeping itself is pure (`status`).

use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use realtime_turn::credentials;
use realtime_turn::health::Thresholds;
use realtime_turn::probe;

use super::{seconds, status};
use crate::controller::{Context, Error, publish};
use crate::crd::event;
use crate::crd::{ServerStatus, TurnPool, TurnPoolStatus, TurnServer};
use crate::metrics::ResultLabel;
use crate::render::turn_pool as render;
use crate::rotation;

/// The user named in the credentials the operator's probes use.
pub const PROBE_USER: &str = "realtime-operator-probe";
const PROBE_CREDENTIAL_TTL: Duration = Duration::from_secs(300);

/// Step 3: every server probed (a STUN Binding per transport and a TURN Allocate) with a
/// credential signed like the ones clients get now, so a probe fails exactly when they
/// would. A managed pool's servers are its pods, each at its node's address.
pub(super) async fn probe(
    pool: &TurnPool,
    ctx: &Context,
    ns: &str,
    state: &rotation::SecretState,
) -> Result<Vec<(TurnServer, probe::Report)>, Error> {
    let pods = if render::probes_pods(pool) {
        let api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
        let selector = render::coturn_selector(pool);
        api.list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::listing(&api, &selector))?
            .items
    } else {
        Vec::new()
    };
    let servers = render::servers(pool, &pods);
    let timeout = seconds(pool.spec.health_check.timeout_seconds);
    let credential = credentials::mint(
        rotation::signing_secret(state, Timestamp::now()).as_bytes(),
        PROBE_USER,
        PROBE_CREDENTIAL_TTL,
        credentials::now_unix(),
    );
    let reports = join_all(servers.iter().map(|s| {
        let transports: Vec<probe::Transport> =
            s.transports.iter().map(|t| probe_transport(*t)).collect();
        let (username, password) = (credential.username.clone(), credential.password.clone());
        async move {
            probe::check(
                &s.host,
                u16::try_from(s.port).unwrap_or(0),
                &transports,
                &username,
                &password,
                timeout,
            )
            .await
        }
    }))
    .await;
    Ok(servers.into_iter().zip(reports).collect())
}

/// Step 4: each server's health after its probe (metrics, and an Event on a transition).
pub(super) async fn record_health(
    pool: &TurnPool,
    ctx: &Context,
    current: &TurnPoolStatus,
    probed: &[(TurnServer, probe::Report)],
    probed_at: &Time,
) -> Vec<ServerStatus> {
    let mut statuses = Vec::with_capacity(probed.len());
    for (server, report) in probed {
        ctx.metrics
            .turn_probes
            .get_or_create(&ResultLabel {
                result: if report.ok { "healthy" } else { "failed" },
            })
            .inc();
        let before = status::previous(current, server);
        let after =
            status::next_server_status(before, server, report, thresholds(pool), probed_at.clone());
        if before.is_some_and(|b| b.healthy != after.healthy)
            || (before.is_none() && !after.healthy)
        {
            let (type_, reason) = if after.healthy {
                (EventType::Normal, event::SERVER_HEALTHY)
            } else {
                (EventType::Warning, event::SERVER_UNHEALTHY)
            };
            publish(
                ctx,
                pool,
                type_,
                reason,
                "Probe",
                format!(
                    "{}:{} {}: {}",
                    server.host,
                    server.port,
                    if after.healthy {
                        "is healthy"
                    } else {
                        "is unhealthy"
                    },
                    after.message.as_deref().unwrap_or("")
                ),
            )
            .await;
        }
        statuses.push(after);
    }
    statuses
}

fn thresholds(pool: &TurnPool) -> Thresholds {
    let hc = &pool.spec.health_check;
    Thresholds {
        failure: u32::try_from(hc.failure_threshold).unwrap_or(1),
        success: u32::try_from(hc.success_threshold).unwrap_or(1),
    }
}

/// The probe's name for a transport of the resource.
fn probe_transport(t: crate::crd::Transport) -> probe::Transport {
    match t {
        crate::crd::Transport::Udp => probe::Transport::Udp,
        crate::crd::Transport::Tcp => probe::Transport::Tcp,
        crate::crd::Transport::Tls => probe::Transport::Tls,
    }
}
