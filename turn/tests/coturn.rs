//! Our credentials and probe against real coturn processes on loopback, cross-checked
//! with coturn's own client `turnutils_uclient`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use realtime_turn::coturn::SecretPair;
use realtime_turn::credentials::{self, now_unix};
use realtime_turn::probe::{self, ProbeError, Transport};
use realtime_turn::testing::{Coturn, uclient};

const T: Duration = Duration::from_secs(3);

async fn allocates(c: &Coturn, username: &str, password: &str) -> Result<(), ProbeError> {
    for t in [Transport::Udp, Transport::Tcp] {
        let a = probe::allocate(c.addr(), t, username, password, T).await?;
        assert_eq!(a.relayed.ip().to_string(), "127.0.0.1", "{t:?}");
    }
    Ok(())
}

fn unauthorized(r: Result<(), ProbeError>) -> bool {
    matches!(r, Err(ProbeError::Refused { code: 401, .. }))
}

#[tokio::test]
async fn a_minted_credential_allocates_a_relay() {
    let pair = SecretPair::new(SecretPair::generate());
    let c = Coturn::start("test.realm", &pair).await.unwrap();
    let cred = credentials::mint(
        pair.current.as_bytes(),
        "alice",
        Duration::from_secs(600),
        now_unix(),
    );
    allocates(&c, &cred.username, &cred.password).await.unwrap();
    let b = probe::binding(c.addr(), Transport::Udp, T).await.unwrap();
    assert_eq!(b.mapped.unwrap().ip().to_string(), "127.0.0.1");
    assert!(
        uclient(c.port, &cred.username, &cred.password, false)
            .await
            .unwrap(),
        "uclient over UDP"
    );
    assert!(
        uclient(c.port, &cred.username, &cred.password, true)
            .await
            .unwrap(),
        "uclient over TCP"
    );
    let report = probe::check(
        "127.0.0.1",
        c.port,
        &[Transport::Udp, Transport::Tcp],
        &cred.username,
        &cred.password,
        T,
    )
    .await;
    assert!(report.ok, "{report:?}");
    assert!(report.rtt.is_some());
}

#[tokio::test]
async fn expired_or_wrongly_signed_credentials_are_refused() {
    let pair = SecretPair::new(SecretPair::generate());
    let c = Coturn::start("test.realm", &pair).await.unwrap();
    let expired = credentials::mint(
        pair.current.as_bytes(),
        "alice",
        Duration::from_secs(5),
        now_unix() - 60,
    );
    assert!(unauthorized(
        allocates(&c, &expired.username, &expired.password).await
    ));
    let forged = credentials::mint(
        b"not-the-secret",
        "alice",
        Duration::from_secs(600),
        now_unix(),
    );
    assert!(unauthorized(
        allocates(&c, &forged.username, &forged.password).await
    ));
    assert!(
        !uclient(c.port, &forged.username, &forged.password, false)
            .await
            .unwrap()
    );
    assert!(
        !uclient(c.port, &expired.username, &expired.password, false)
            .await
            .unwrap()
    );
    let report = probe::check(
        "127.0.0.1",
        c.port,
        &[Transport::Udp],
        &forged.username,
        &forged.password,
        T,
    )
    .await;
    assert!(!report.ok);
    assert!(report.message.contains("401"), "{}", report.message);
    assert!(
        !report.message.contains(&forged.password),
        "no secret material in reports"
    );
}

#[tokio::test]
async fn after_a_rotation_old_credentials_work_until_expiry_and_new_ones_at_once() {
    let first = SecretPair::new(SecretPair::generate());
    let mut c = Coturn::start("test.realm", &first).await.unwrap();
    let ttl = Duration::from_secs(3);
    let old = credentials::mint(first.current.as_bytes(), "alice", ttl, now_unix());
    allocates(&c, &old.username, &old.password).await.unwrap();

    // Rotate: the server now accepts the new and the previous secret.
    let second = first.rotated(SecretPair::generate());
    c.restart(&second).await.unwrap();
    let new = credentials::mint(
        second.current.as_bytes(),
        "bob",
        Duration::from_secs(600),
        now_unix(),
    );
    allocates(&c, &new.username, &new.password).await.unwrap();
    allocates(&c, &old.username, &old.password).await.unwrap();
    assert!(
        uclient(c.port, &old.username, &old.password, false)
            .await
            .unwrap()
    );

    // The old credential stops at its expiry, even though its secret is still accepted.
    let wait = old.expires_at.saturating_sub(now_unix()) + 1;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert!(unauthorized(
        allocates(&c, &old.username, &old.password).await
    ));

    // The next rotation retires the first secret: nothing it signs works any more.
    let third = second.rotated(SecretPair::generate());
    c.restart(&third).await.unwrap();
    let stale = credentials::mint(
        first.current.as_bytes(),
        "alice",
        Duration::from_secs(600),
        now_unix(),
    );
    assert!(unauthorized(
        allocates(&c, &stale.username, &stale.password).await
    ));
    allocates(&c, &new.username, &new.password).await.unwrap();
}
