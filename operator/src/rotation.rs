//! The TurnPool's secret rotation policy, pure: when a pool's shared secret is (re)made,
//! which of its two secrets signs new credentials, and the state a rotation leaves.
//!
//! The shared secret lives in a Secret the operator owns, `<pool>-turn-secret`, with keys
//! `current` and `previous` (and `turnserver.conf` for managed servers, which lists both);
//! its annotations record when it was last rotated and which on-demand request was
//! handled. Credentials are signed with `current`; servers accept both, so everything
//! signed before a rotation keeps working until it expires.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use realtime_turn::coturn::{self, SecretPair};

use crate::crd::{
    CURRENT_KEY, PREVIOUS_KEY, ROTATE_ANNOTATION, ROTATED_AT_ANNOTATION,
    ROTATION_REQUEST_ANNOTATION, TurnPool,
};

/// What the Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretState {
    pub pair: SecretPair,
    pub rotated_at: Timestamp,
    pub handled_request: Option<String>,
}

/// Reads the state back from the Secret; `None` when it is missing or unusable (then a
/// fresh secret is made).
pub fn read_secret(secret: &Secret) -> Option<SecretState> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| !s.is_empty())
    };
    let annotations = secret.metadata.annotations.as_ref();
    let rotated_at = annotations
        .and_then(|a| a.get(ROTATED_AT_ANNOTATION))
        .and_then(|t| t.parse::<Timestamp>().ok())?;
    Some(SecretState {
        pair: SecretPair {
            current: text(CURRENT_KEY)?,
            previous: text(PREVIOUS_KEY),
        },
        rotated_at,
        handled_request: annotations
            .and_then(|a| a.get(ROTATION_REQUEST_ANNOTATION))
            .cloned(),
    })
}

/// Why the secret is (re)made now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// There was none.
    Initial,
    /// The interval passed.
    Scheduled,
    /// The pool's `realtime.dev/rotate` annotation has a new value.
    Requested,
}

/// Time between scheduled rotations: the interval, raised to the credential TTL plus the
/// signing grace. Credentials signed with a secret are issued until `grace` after the next
/// rotation and live `ttl`; the secret is retired one period after that rotation, so the
/// period must cover both.
pub fn rotation_period(pool: &TurnPool) -> Option<Duration> {
    let floor = u64::try_from(pool.spec.credential_ttl_seconds.max(0))
        .unwrap_or(0)
        .saturating_add(coturn::SIGNING_GRACE_SECONDS);
    pool.spec
        .rotation
        .as_ref()
        .map(|r| Duration::from_secs(u64::try_from(r.interval_seconds).unwrap_or(0).max(floor)))
}

/// The secret to sign new credentials with now (see [`SecretPair::signing`]).
pub fn signing_secret(state: &SecretState, now: Timestamp) -> &str {
    state.pair.signing(
        u64::try_from(state.rotated_at.as_second()).unwrap_or(0),
        u64::try_from(now.as_second()).unwrap_or(0),
    )
}

pub fn next_rotation(pool: &TurnPool, state: &SecretState) -> Option<Timestamp> {
    let period = rotation_period(pool)?;
    let signed = SignedDuration::try_from(period).ok()?;
    state.rotated_at.checked_add(signed).ok()
}

/// Decides whether to rotate at `now`.
pub fn rotation_due(
    pool: &TurnPool,
    state: Option<&SecretState>,
    now: Timestamp,
) -> Option<Rotation> {
    let Some(state) = state else {
        return Some(Rotation::Initial);
    };
    let requested = pool.annotations().get(ROTATE_ANNOTATION);
    if requested.is_some() && requested != state.handled_request.as_ref() {
        return Some(Rotation::Requested);
    }
    match next_rotation(pool, state) {
        Some(due) if due <= now => Some(Rotation::Scheduled),
        _ => None,
    }
}

/// The state after a rotation at `now` with a fresh secret.
pub fn rotate(pool: &TurnPool, state: Option<&SecretState>, now: Timestamp) -> SecretState {
    let next = SecretPair::generate();
    SecretState {
        pair: state.map_or_else(
            || SecretPair::new(next.clone()),
            |s| s.pair.rotated(next.clone()),
        ),
        rotated_at: now,
        handled_request: pool
            .annotations()
            .get(ROTATE_ANNOTATION)
            .cloned()
            .or_else(|| state.and_then(|s| s.handled_request.clone())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::crd::{HealthCheck, Transport, TurnPoolSpec, TurnServer};

    fn pool(rotation: Option<i64>) -> TurnPool {
        TurnPool::new(
            "pool",
            TurnPoolSpec {
                servers: Some(vec![TurnServer {
                    host: "turn.example.com".into(),
                    port: 3478,
                    transports: vec![Transport::Udp],
                }]),
                managed: None,
                credential_ttl_seconds: 600,
                rotation: rotation.map(|s| crate::crd::Rotation {
                    interval_seconds: s,
                }),
                health_check: HealthCheck::default(),
                min_healthy_servers: 1,
            },
        )
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn rotation_schedule_respects_the_ttl() {
        let p = pool(Some(60));
        assert_eq!(rotation_due(&p, None, at(0)), Some(Rotation::Initial));
        let s = rotate(&p, None, at(1_000));
        assert_eq!(s.pair.previous, None);
        // An interval of 60 s is raised to the 600 s TTL plus the 120 s signing grace.
        assert_eq!(next_rotation(&p, &s), Some(at(1_720)));
        assert_eq!(rotation_due(&p, Some(&s), at(1_719)), None);
        assert_eq!(
            rotation_due(&p, Some(&s), at(1_720)),
            Some(Rotation::Scheduled)
        );
        let s2 = rotate(&p, Some(&s), at(1_720));
        assert_eq!(s2.pair.previous.as_deref(), Some(s.pair.current.as_str()));
        assert_ne!(s2.pair.current, s.pair.current);
        // Right after the rotation new credentials are still signed with the old secret.
        assert_eq!(signing_secret(&s2, at(1_720)), s.pair.current);
        assert_eq!(signing_secret(&s2, at(1_840)), s2.pair.current);
        // A longer interval is kept as it is.
        assert_eq!(
            rotation_period(&pool(Some(7_200))),
            Some(Duration::from_secs(7_200))
        );
        // No rotation block: only on demand.
        assert_eq!(
            rotation_due(&pool(None), Some(&s), at(i64::from(i32::MAX))),
            None
        );
    }

    #[test]
    fn an_annotation_requests_one_rotation_per_value() {
        let mut p = pool(None);
        let s = rotate(&p, None, at(0));
        p.metadata.annotations = Some(BTreeMap::from([(ROTATE_ANNOTATION.into(), "1".into())]));
        assert_eq!(rotation_due(&p, Some(&s), at(1)), Some(Rotation::Requested));
        let s2 = rotate(&p, Some(&s), at(1));
        assert_eq!(s2.handled_request.as_deref(), Some("1"));
        assert_eq!(rotation_due(&p, Some(&s2), at(2)), None, "handled once");
    }
}
