//! TURN REST API credentials (draft-uberti-behave-turn-rest), as coturn's
//! `use-auth-secret` checks them: username `<expiry-unix>:<user>`, password
//! `base64(HMAC-SHA1(secret, username))`. The server recomputes the password from the
//! username and refuses it once the expiry has passed.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// A credential for one user, valid until `expires_at` (seconds since the epoch).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
    pub expires_at: u64,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `<expiry-unix>:<user>`.
pub fn username(user: &str, expires_at: u64) -> String {
    format!("{expires_at}:{user}")
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn password(secret: &[u8], username: &str) -> String {
    STANDARD.encode(mac(secret, username).finalize().into_bytes())
}

fn mac(secret: &[u8], username: &str) -> HmacSha1 {
    // HMAC accepts keys of any length, so the fallback is never taken.
    let mut mac = HmacSha1::new_from_slice(secret)
        .unwrap_or_else(|_| <HmacSha1 as KeyInit>::new(&Default::default()));
    mac.update(username.as_bytes());
    mac
}

/// Mints a credential for `user` valid for `ttl` from `now_unix`.
pub fn mint(secret: &[u8], user: &str, ttl: Duration, now_unix: u64) -> Credential {
    let expires_at = now_unix.saturating_add(ttl.as_secs());
    let username = username(user, expires_at);
    Credential {
        password: password(secret, &username),
        username,
        expires_at,
    }
}

/// Why a credential is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("username is not <expiry-unix>:<user>")]
    Malformed,
    #[error("credential expired")]
    Expired,
    #[error("password does not match any accepted secret")]
    WrongPassword,
}

/// Checks a credential as a TURN server with these secrets would: the expiry in the
/// username must be in the future and the password must be the HMAC of one of the
/// secrets. The comparison is constant-time.
pub fn verify(
    secrets: &[&[u8]],
    username: &str,
    password: &str,
    now_unix: u64,
) -> Result<(), Refusal> {
    let expiry: u64 = username
        .split_once(':')
        .and_then(|(e, user)| (!user.is_empty()).then_some(e))
        .and_then(|e| e.parse().ok())
        .ok_or(Refusal::Malformed)?;
    if expiry <= now_unix {
        return Err(Refusal::Expired);
    }
    let given = STANDARD
        .decode(password)
        .map_err(|_| Refusal::WrongPassword)?;
    let mut matched = false;
    for secret in secrets {
        // `verify_slice` compares in constant time; every secret is tried.
        matched |= mac(secret, username).verify_slice(&given).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(Refusal::WrongPassword)
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently with
    /// `printf %s "$username" | openssl dgst -sha1 -hmac "$secret" -binary | base64`.
    const VECTORS: [(&str, &str, &str); 3] = [
        ("north", "1700000000:alice", "Cd/49soE35ICqcJF/bCTn8Z4OyE="),
        (
            "s3cr3t-with-symbols!@#",
            "4102444800:user.name@example.com",
            "eB5AXwiFGbU51a91nxBdAa58nrY=",
        ),
        ("", "0:x", "gT4DOD4JZ/CCaiekEJvCWY/SIT8="),
    ];

    #[test]
    fn passwords_match_openssl() {
        for (secret, username, expected) in VECTORS {
            assert_eq!(
                password(secret.as_bytes(), username),
                expected,
                "{username}"
            );
        }
    }

    #[test]
    fn mint_builds_the_rest_username() {
        let c = mint(b"north", "alice", Duration::from_secs(300), 1_699_999_700);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.password, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
        assert_eq!(c.expires_at, 1_700_000_000);
        assert!(
            !format!("{c:?}").contains("Cd/49"),
            "Debug hides the password"
        );
    }

    #[test]
    fn verify_accepts_either_secret_until_expiry() {
        let c = mint(b"old", "bob", Duration::from_secs(60), 1_000);
        let both: [&[u8]; 2] = [b"new", b"old"];
        assert_eq!(verify(&both, &c.username, &c.password, 1_059), Ok(()));
        assert_eq!(
            verify(&both, &c.username, &c.password, 1_060),
            Err(Refusal::Expired)
        );
        assert_eq!(
            verify(&[b"new"], &c.username, &c.password, 1_000),
            Err(Refusal::WrongPassword)
        );
        assert_eq!(
            verify(&both, "bob", &c.password, 0),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            verify(&both, "12:", &c.password, 0),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            verify(&both, &c.username, "not base64!", 0),
            Err(Refusal::WrongPassword)
        );
    }
}
