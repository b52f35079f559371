//! Pure health bookkeeping of a TurnPool: a server's status after a probe (by the health
//! state machine of `realtime_turn::health`) and the pool's conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use realtime_turn::health::{Health, Thresholds};
use realtime_turn::probe::Report;

use crate::crd::condition::*;
use crate::crd::{ServerStatus, TurnPool, TurnPoolStatus, TurnServer, condition};

/// The status a server had before this round, if any.
pub fn previous<'a>(status: &'a TurnPoolStatus, server: &TurnServer) -> Option<&'a ServerStatus> {
    status
        .servers
        .iter()
        .find(|s| s.host == server.host && s.port == server.port)
}

/// A server's status after one probe, by the health state machine.
pub fn next_server_status(
    before: Option<&ServerStatus>,
    server: &TurnServer,
    report: &Report,
    t: Thresholds,
    at: Time,
) -> ServerStatus {
    let health = Health {
        healthy: before.is_some_and(|b| b.healthy),
        consecutive_failures: before
            .map_or(0, |b| u32::try_from(b.consecutive_failures).unwrap_or(0)),
        consecutive_successes: before
            .map_or(0, |b| u32::try_from(b.consecutive_successes).unwrap_or(0)),
    }
    .observe(report.ok, t);
    let rtt = report
        .rtt
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    ServerStatus {
        host: server.host.clone(),
        port: server.port,
        transports: server.transports.clone(),
        healthy: health.healthy,
        last_probe_time: Some(at),
        // The last good round trip is kept while a server fails, for ordering.
        rtt_millis: rtt.or(before.and_then(|b| b.rtt_millis)),
        consecutive_failures: i32::try_from(health.consecutive_failures).unwrap_or(i32::MAX),
        consecutive_successes: i32::try_from(health.consecutive_successes).unwrap_or(i32::MAX),
        message: Some(if report.message.is_empty() {
            if report.ok {
                "healthy".into()
            } else {
                "probe failed".into()
            }
        } else {
            report.message.clone()
        }),
    }
}

/// `Ready` when at least `minHealthyServers` are healthy; `Degraded` while any is not.
pub fn pool_conditions(
    pool: &TurnPool,
    servers: &[ServerStatus],
    generation: Option<i64>,
) -> Vec<Condition> {
    let total = servers.len();
    let healthy = servers.iter().filter(|s| s.healthy).count();
    let needed = usize::try_from(pool.spec.min_healthy_servers).unwrap_or(1);
    let unhealthy: Vec<String> = servers
        .iter()
        .filter(|s| !s.healthy)
        .map(|s| {
            format!(
                "{}:{} ({})",
                s.host,
                s.port,
                s.message.as_deref().unwrap_or("not probed")
            )
        })
        .collect();
    let ready = if total == 0 {
        condition(
            READY,
            false,
            REASON_NO_SERVERS,
            format!(
                "no coturn pod has an address yet: pods pending or not scheduled (host network: one pod per node; see Deployment {}-coturn)",
                pool.metadata.name.as_deref().unwrap_or_default()
            ),
            generation,
        )
    } else if healthy >= needed {
        condition(
            READY,
            true,
            REASON_AVAILABLE,
            format!("{healthy} of {total} servers healthy"),
            generation,
        )
    } else if healthy == 0 {
        condition(
            READY,
            false,
            REASON_NO_HEALTHY_SERVERS,
            format!("none of {total} servers is healthy: clients get no ICE servers"),
            generation,
        )
    } else {
        condition(
            READY,
            false,
            REASON_NOT_ENOUGH_HEALTHY_SERVERS,
            format!("{healthy} of {total} servers healthy; {needed} needed"),
            generation,
        )
    };
    let degraded = if total == 0 {
        condition(
            DEGRADED,
            false,
            REASON_NO_SERVERS,
            "no server to probe yet".to_owned(),
            generation,
        )
    } else if unhealthy.is_empty() {
        condition(
            DEGRADED,
            false,
            REASON_ALL_HEALTHY,
            format!("all {total} servers healthy"),
            generation,
        )
    } else {
        condition(
            DEGRADED,
            true,
            REASON_SERVERS_UNHEALTHY,
            format!("unhealthy: {}", unhealthy.join("; ")),
            generation,
        )
    };
    vec![ready, degraded]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::{HealthCheck, Transport, TurnPoolSpec};
    use std::time::Duration;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::now())
    }

    /// A pool of no servers that needs `min` healthy ones.
    pub(crate) fn pool(min: i32) -> TurnPool {
        TurnPool::new(
            "p",
            TurnPoolSpec {
                servers: Some(vec![]),
                managed: None,
                credential_ttl_seconds: 600,
                rotation: None,
                health_check: HealthCheck::default(),
                min_healthy_servers: min,
            },
        )
    }

    /// A UDP server on loopback.
    pub(crate) fn server(port: i32) -> TurnServer {
        TurnServer {
            host: "127.0.0.1".into(),
            port,
            transports: vec![Transport::Udp],
        }
    }

    fn report(ok: bool) -> Report {
        Report {
            ok,
            rtt: ok.then(|| Duration::from_millis(7)),
            message: if ok {
                "binding and allocate succeeded".into()
            } else {
                "udp binding: refused".into()
            },
        }
    }

    #[test]
    fn server_status_follows_the_thresholds_and_keeps_the_last_rtt() {
        let t = Thresholds {
            failure: 2,
            success: 1,
        };
        let s = server(1);
        let up = next_server_status(None, &s, &report(true), t, now());
        assert!(up.healthy);
        assert_eq!(up.rtt_millis, Some(7));
        let once = next_server_status(Some(&up), &s, &report(false), t, now());
        assert!(once.healthy, "one failure is below the threshold");
        assert_eq!(once.consecutive_failures, 1);
        assert_eq!(once.rtt_millis, Some(7));
        let twice = next_server_status(Some(&once), &s, &report(false), t, now());
        assert!(!twice.healthy);
        assert_eq!(twice.message.as_deref(), Some("udp binding: refused"));
        let back = next_server_status(Some(&twice), &s, &report(true), t, now());
        assert!(back.healthy);
        assert_eq!(back.consecutive_failures, 0);
    }

    #[test]
    fn conditions_say_ready_or_degraded() {
        let t = Thresholds {
            failure: 1,
            success: 1,
        };
        let ok = next_server_status(None, &server(1), &report(true), t, now());
        let bad = next_server_status(None, &server(2), &report(false), t, now());
        let c = pool_conditions(&pool(1), &[ok.clone(), bad.clone()], Some(3));
        assert_eq!(
            (c[0].type_.as_str(), c[0].status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(
            (c[1].type_.as_str(), c[1].status.as_str()),
            ("Degraded", "True")
        );
        assert!(c[1].message.contains("127.0.0.1:2"));
        assert_eq!(c[0].observed_generation, Some(3));
        let c = pool_conditions(&pool(2), &[ok.clone(), bad.clone()], None);
        assert_eq!(
            (c[0].status.as_str(), c[0].reason.as_str()),
            ("False", "NotEnoughHealthyServers")
        );
        let c = pool_conditions(&pool(1), &[bad], None);
        assert_eq!(c[0].reason, "NoHealthyServers");
        let c = pool_conditions(&pool(1), &[ok], None);
        assert_eq!(
            (c[1].status.as_str(), c[1].reason.as_str()),
            ("False", "AllHealthy")
        );
        let c = pool_conditions(&pool(1), &[], None);
        assert_eq!(
            (c[0].status.as_str(), c[0].reason.as_str()),
            ("False", "NoServers")
        );
        assert!(c[0].message.contains("p-coturn"), "{}", c[0].message);
    }
}
