//! TURN for the realtime platform, in one small crate shared by the operator and the data
//! plane:
//! - [`credentials`]: TURN REST credentials (username `<expiry-unix>:<user>`, password
//!   `base64(HMAC-SHA1(secret, username))`), pure and constant-time where it verifies;
//! - [`stun`]: the few STUN/TURN messages a health probe needs (RFC 5389, RFC 5766);
//! - [`probe`]: a STUN Binding and a TURN Allocate over UDP or TCP, with round-trip time;
//! - [`health`]: the healthy/unhealthy state machine with failure and success thresholds;
//! - [`ice`]: the RTCConfiguration-shaped list handed to clients.

pub mod coturn;
pub mod credentials;
pub mod health;
pub mod ice;
pub mod probe;
pub mod stun;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
