//! coturn configuration for a pool's shared secrets: the one place that turns the secret
//! pair into a `turnserver.conf`, used by the operator for managed servers and by the
//! tests that run real `turnserver` processes.
//!
//! coturn accepts several `static-auth-secret` lines and checks a credential against each:
//! that is how the previous secret keeps working during a rotation's overlap.

use std::fmt::Write;

/// How long after a rotation credentials are still signed with the previous secret: time
/// for every server to pick up the new one (managed pods roll, external servers reload)
/// before any client presents a credential signed with it.
pub const SIGNING_GRACE_SECONDS: u64 = 120;

/// The current and the previous shared secret of a pool.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPair {
    pub current: String,
    pub previous: Option<String>,
}

impl std::fmt::Debug for SecretPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretPair")
            .field("current", &"<redacted>")
            .field("previous", &self.previous.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl SecretPair {
    /// A fresh random secret (32 bytes, URL-safe base64).
    pub fn generate() -> String {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn new(current: String) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    /// The pair after a rotation: `next` becomes current, current becomes previous, and
    /// the old previous is retired.
    #[must_use]
    pub fn rotated(&self, next: String) -> Self {
        Self {
            current: next,
            previous: Some(self.current.clone()),
        }
    }

    /// The secret to sign new credentials with, `now_unix` seconds after a rotation at
    /// `rotated_at_unix`: the previous one during [`SIGNING_GRACE_SECONDS`] (servers may not
    /// accept the new one yet), the current one after.
    pub fn signing(&self, rotated_at_unix: u64, now_unix: u64) -> &str {
        match &self.previous {
            Some(previous) if now_unix < rotated_at_unix.saturating_add(SIGNING_GRACE_SECONDS) => {
                previous
            }
            _ => &self.current,
        }
    }

    /// Secrets a server must accept, current first.
    pub fn accepted(&self) -> Vec<&str> {
        std::iter::once(self.current.as_str())
            .chain(self.previous.as_deref())
            .collect()
    }
}

/// Where and how a coturn process listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Listening address; `None` listens on every interface (in a pod).
    pub ip: Option<String>,
    pub port: u16,
    /// Relay address (defaults to the listening address).
    pub relay_ip: Option<String>,
    pub min_relay_port: u16,
    pub max_relay_port: u16,
    /// Allow relaying to loopback peers (tests on one machine only).
    pub loopback_peers: bool,
}

/// A `turnserver.conf` for a pool: REST-API authentication with every accepted secret,
/// the realm, fingerprints, no CLI, plain TCP/UDP (TLS certificates are not managed).
pub fn config(realm: &str, secrets: &SecretPair, listen: &Listen) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "# rendered by realtime-operator; do not edit");
    if let Some(ip) = &listen.ip {
        let _ = writeln!(c, "listening-ip={ip}");
    }
    if let Some(ip) = listen.relay_ip.as_ref().or(listen.ip.as_ref()) {
        let _ = writeln!(c, "relay-ip={ip}");
    }
    let _ = writeln!(c, "listening-port={}", listen.port);
    let _ = writeln!(c, "min-port={}", listen.min_relay_port);
    let _ = writeln!(c, "max-port={}", listen.max_relay_port);
    let _ = writeln!(c, "realm={realm}");
    let _ = writeln!(c, "use-auth-secret");
    for secret in secrets.accepted() {
        let _ = writeln!(c, "static-auth-secret={secret}");
    }
    for line in [
        "fingerprint",
        "no-cli",
        "no-tls",
        "no-dtls",
        "no-multicast-peers",
        "log-file=stdout",
        "simple-log",
    ] {
        let _ = writeln!(c, "{line}");
    }
    if listen.loopback_peers {
        let _ = writeln!(c, "allow-loopback-peers");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_one_previous() {
        let p = SecretPair::new("a".into());
        assert_eq!(p.accepted(), ["a"]);
        let p = p.rotated("b".into());
        assert_eq!(p.accepted(), ["b", "a"]);
        let p = p.rotated("c".into());
        assert_eq!(p.accepted(), ["c", "b"], "a is retired");
        assert_eq!(
            format!("{p:?}"),
            r#"SecretPair { current: "<redacted>", previous: Some("<redacted>") }"#
        );
        assert_ne!(SecretPair::generate(), SecretPair::generate());
        assert_eq!(SecretPair::generate().len(), 43);
    }

    #[test]
    fn new_credentials_use_the_previous_secret_until_servers_had_time_to_reload() {
        let p = SecretPair::new("a".into());
        assert_eq!(p.signing(1_000, 1_000), "a", "nothing else to sign with");
        let p = p.rotated("b".into());
        assert_eq!(p.signing(1_000, 1_000), "a");
        assert_eq!(p.signing(1_000, 1_000 + SIGNING_GRACE_SECONDS - 1), "a");
        assert_eq!(p.signing(1_000, 1_000 + SIGNING_GRACE_SECONDS), "b");
    }

    #[test]
    fn config_lists_every_accepted_secret() {
        let pair = SecretPair::new("old".into()).rotated("new".into());
        let listen = Listen {
            ip: Some("127.0.0.1".into()),
            port: 3478,
            relay_ip: None,
            min_relay_port: 49152,
            max_relay_port: 49200,
            loopback_peers: true,
        };
        let c = config("example.org", &pair, &listen);
        assert!(
            c.contains("static-auth-secret=new\nstatic-auth-secret=old\n"),
            "{c}"
        );
        assert!(c.contains("relay-ip=127.0.0.1\n"));
        assert!(c.contains("use-auth-secret\n"));
        assert!(c.contains("realm=example.org\n"));
        assert!(c.contains("allow-loopback-peers"));
        let pod = Listen {
            ip: None,
            loopback_peers: false,
            ..listen
        };
        let c = config("r", &SecretPair::new("s".into()), &pod);
        assert!(!c.contains("listening-ip") && !c.contains("relay-ip") && !c.contains("loopback"));
    }
}
