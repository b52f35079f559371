//! The STUN/TURN messages a health probe needs: Binding (RFC 5389), Allocate and Refresh
//! (RFC 5766) with the long-term credential mechanism (MESSAGE-INTEGRITY keyed with
//! `MD5(username:realm:password)`). Encoding and decoding are pure.
//!
//! Hand-written on purpose: the probe needs five attributes of three methods. The
//! maintained crates are either a whole sans-IO TURN client (`turn-client-proto`, whose
//! state machine would be more code than this file) or pull in tokio/ring or an older
//! RustCrypto line (webrtc-rs `stun`/`turn`, `stun_codec`). The RFC 5769 test vectors
//! (2.2, 2.4) are tests below; a response's MESSAGE-INTEGRITY is verified
//! ([`verify_integrity`]), so a healthy Allocate proves the server holds the pool's
//! secret. Not done: FINGERPRINT on requests (optional, RFC 5389 §15.5; no server we
//! probe requires it). If the probe ever needs permissions or channels, revisit
//! `turn-client-proto`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;

pub const BINDING_REQUEST: u16 = 0x0001;
pub const ALLOCATE_REQUEST: u16 = 0x0003;
pub const REFRESH_REQUEST: u16 = 0x0004;
const SUCCESS: u16 = 0x0100;
const ERROR: u16 = 0x0110;

pub const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
pub const ATTR_USERNAME: u16 = 0x0006;
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ATTR_ERROR_CODE: u16 = 0x0009;
pub const ATTR_LIFETIME: u16 = 0x000D;
pub const ATTR_REALM: u16 = 0x0014;
pub const ATTR_NONCE: u16 = 0x0015;
pub const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// Whether the MESSAGE-INTEGRITY of the message `raw` verifies with `key` (RFC 5389
/// §15.4: HMAC-SHA1 over the message up to the attribute, with the header's length
/// counting up to the end of it); `None` when it has none (or is not a STUN message).
pub fn verify_integrity(raw: &[u8], key: &[u8]) -> Option<bool> {
    let len = usize::from(u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?]));
    let body = raw.get(HEADER_LEN..HEADER_LEN + len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        if kind == ATTR_MESSAGE_INTEGRITY {
            let expected = body.get(at + 4..at + 4 + alen)?;
            let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).ok()?;
            mac.update(&raw[..2]);
            mac.update(&u16::try_from(at + 24).ok()?.to_be_bytes());
            mac.update(&raw[4..HEADER_LEN]);
            mac.update(&body[..at]);
            return Some(mac.verify_slice(expected).is_ok());
        }
        at += 4 + alen + pad(alen);
    }
    None
}

/// Protocol number of UDP, the relay transport requested in an Allocate.
pub const TRANSPORT_UDP: u8 = 17;

/// What kind of message a response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Success,
    Error,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub method: u16,
    pub class: Class,
    pub transaction: [u8; 12],
    pub attributes: Vec<(u16, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message shorter than a STUN header")]
    Short,
    #[error("not a STUN message (magic cookie missing)")]
    NotStun,
    #[error("attribute runs past the end of the message")]
    Truncated,
}

/// Long-term credential key: `MD5(username ":" realm ":" password)`.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(format!("{username}:{realm}:{password}").as_bytes());
    h.finalize().into()
}

fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

impl Message {
    pub fn request(method: u16, transaction: [u8; 12]) -> Self {
        Self {
            method,
            class: Class::Request,
            transaction,
            attributes: Vec::new(),
        }
    }

    pub fn with(mut self, kind: u16, value: impl Into<Vec<u8>>) -> Self {
        self.attributes.push((kind, value.into()));
        self
    }

    pub fn attribute(&self, kind: u16) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    fn message_type(&self) -> u16 {
        let class = match self.class {
            Class::Request | Class::Other => 0,
            Class::Success => SUCCESS,
            Class::Error => ERROR,
        };
        self.method | class
    }

    fn encode_body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in &self.attributes {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            body.extend(std::iter::repeat_n(0, pad(value.len())));
        }
        body
    }

    fn header(&self, body_len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + body_len);
        out.extend_from_slice(&self.message_type().to_be_bytes());
        out.extend_from_slice(&(body_len as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&self.transaction);
        out
    }

    /// The message on the wire, without integrity.
    pub fn encode(&self) -> Vec<u8> {
        let body = self.encode_body();
        let mut out = self.header(body.len());
        out.extend_from_slice(&body);
        out
    }

    /// The message on the wire with a MESSAGE-INTEGRITY attribute (HMAC-SHA1 with `key`)
    /// appended, computed as RFC 5389 §15.4 says: over the message whose header length
    /// already counts the integrity attribute.
    pub fn encode_with_integrity(&self, key: &[u8]) -> Vec<u8> {
        let body = self.encode_body();
        let mut out = self.header(body.len() + 24);
        out.extend_from_slice(&body);
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| <Hmac<Sha1> as KeyInit>::new(&Default::default()));
        mac.update(&out);
        out.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        out.extend_from_slice(&20u16.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::Short);
        }
        let ty = u16::from_be_bytes([bytes[0], bytes[1]]);
        let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) != MAGIC_COOKIE {
            return Err(DecodeError::NotStun);
        }
        let body = bytes
            .get(HEADER_LEN..HEADER_LEN + len)
            .ok_or(DecodeError::Truncated)?;
        let mut transaction = [0; 12];
        transaction.copy_from_slice(&bytes[8..20]);
        let class = match ty & 0x0110 {
            0x0000 => Class::Request,
            0x0100 => Class::Success,
            0x0110 => Class::Error,
            _ => Class::Other,
        };
        let mut attributes = Vec::new();
        let mut at = 0;
        while at + 4 <= body.len() {
            let kind = u16::from_be_bytes([body[at], body[at + 1]]);
            let alen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
            let value = body
                .get(at + 4..at + 4 + alen)
                .ok_or(DecodeError::Truncated)?;
            attributes.push((kind, value.to_vec()));
            at += 4 + alen + pad(alen);
        }
        Ok(Self {
            method: ty & !0x0110,
            class,
            transaction,
            attributes,
        })
    }

    /// ERROR-CODE as (code, reason).
    pub fn error_code(&self) -> Option<(u16, String)> {
        let v = self.attribute(ATTR_ERROR_CODE)?;
        if v.len() < 4 {
            return None;
        }
        let code = u16::from(v[2] & 0x07) * 100 + u16::from(v[3]);
        Some((code, String::from_utf8_lossy(&v[4..]).into_owned()))
    }

    /// An XOR-…-ADDRESS attribute, decoded.
    pub fn xor_address(&self, kind: u16) -> Option<SocketAddr> {
        let v = self.attribute(kind)?;
        if v.len() < 8 {
            return None;
        }
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
        let ip = match v[1] {
            0x01 => {
                let mut a = [0u8; 4];
                for i in 0..4 {
                    a[i] = v[4 + i] ^ cookie[i];
                }
                IpAddr::V4(Ipv4Addr::from(a))
            }
            0x02 if v.len() >= 20 => {
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&cookie);
                key[4..].copy_from_slice(&self.transaction);
                let mut a = [0u8; 16];
                for i in 0..16 {
                    a[i] = v[4 + i] ^ key[i];
                }
                IpAddr::V6(Ipv6Addr::from(a))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// REQUESTED-TRANSPORT value: protocol number then three reserved bytes.
pub fn requested_transport(protocol: u8) -> Vec<u8> {
    vec![protocol, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_term_key_matches_openssl() {
        // printf %s "alice:test:pw" | openssl dgst -md5
        let hex: String = long_term_key("alice", "test", "pw")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "f568ad0b3ba31f978e9cb1788c7c2f9e");
    }

    #[test]
    fn encode_decode_round_trip_with_padding() {
        let m = Message::request(ALLOCATE_REQUEST, [7; 12])
            .with(ATTR_REQUESTED_TRANSPORT, requested_transport(TRANSPORT_UDP))
            .with(ATTR_USERNAME, "abcde");
        let wire = m.encode();
        assert_eq!(wire.len(), HEADER_LEN + 8 + 12);
        assert_eq!(&wire[0..2], &[0x00, 0x03]);
        assert_eq!(Message::decode(&wire).unwrap(), m);
    }

    #[test]
    fn integrity_covers_the_header_with_its_own_length() {
        let m = Message::request(BINDING_REQUEST, [1; 12]).with(ATTR_USERNAME, "u");
        let wire = m.encode_with_integrity(b"key");
        let declared = usize::from(u16::from_be_bytes([wire[2], wire[3]]));
        assert_eq!(declared, wire.len() - HEADER_LEN);
        // Recompute independently over the bytes before the attribute.
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(b"key").unwrap();
        mac.update(&wire[..wire.len() - 24]);
        assert_eq!(
            &wire[wire.len() - 20..],
            mac.finalize().into_bytes().as_slice()
        );
    }

    #[test]
    fn decodes_error_codes_and_xor_addresses() {
        // 401 Unauthorized
        let e = Message {
            method: ALLOCATE_REQUEST,
            class: Class::Error,
            transaction: [0; 12],
            attributes: vec![(ATTR_ERROR_CODE, vec![0, 0, 4, 1, b'U', b'n'])],
        };
        let back = Message::decode(&e.encode()).unwrap();
        assert_eq!(back.class, Class::Error);
        assert_eq!(back.error_code(), Some((401, "Un".into())));
        // 192.0.2.1:32853 from RFC 5769's sample response.
        let x = Message {
            method: BINDING_REQUEST,
            class: Class::Success,
            transaction: [0; 12],
            attributes: vec![(
                ATTR_XOR_MAPPED_ADDRESS,
                vec![0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43],
            )],
        };
        assert_eq!(
            x.xor_address(ATTR_XOR_MAPPED_ADDRESS),
            Some("192.0.2.1:32853".parse().unwrap())
        );
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(Message::decode(&[0; 4]), Err(DecodeError::Short));
        assert_eq!(Message::decode(&[0; 20]), Err(DecodeError::NotStun));
        let mut truncated = Message::request(BINDING_REQUEST, [0; 12])
            .with(ATTR_USERNAME, "abcd")
            .encode();
        truncated.truncate(26);
        assert_eq!(Message::decode(&truncated), Err(DecodeError::Truncated));
    }

    /// RFC 5769 §2.4: a request with long-term authentication, byte for byte (USERNAME
    /// "マトリックス", password "TheMatrIX", zero padding, MESSAGE-INTEGRITY last).
    #[test]
    fn rfc5769_long_term_authentication_request() {
        const EXPECTED: [u8; 116] = [
            0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad,
            0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3,
            0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9,
            0x00, 0x00, 0x00, 0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39,
            0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54,
            0x76, 0x79, 0x36, 0x34, 0x73, 0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d,
            0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70,
            0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2,
            0x8c, 0xa8, 0x96, 0x66,
        ];
        let (user, realm) = (
            "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}",
            "example.org",
        );
        let transaction = [
            0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e,
        ];
        let wire = Message::request(BINDING_REQUEST, transaction)
            .with(ATTR_USERNAME, user.as_bytes())
            .with(ATTR_NONCE, "f//499k954d6OL34oL9FSTvy64sA".as_bytes())
            .with(ATTR_REALM, realm.as_bytes())
            .encode_with_integrity(&long_term_key(user, realm, "TheMatrIX"));
        assert_eq!(wire, EXPECTED);
        let decoded = Message::decode(&EXPECTED).unwrap();
        assert_eq!(decoded.attribute(ATTR_REALM), Some(realm.as_bytes()));
        let key = long_term_key(user, realm, "TheMatrIX");
        assert_eq!(verify_integrity(&EXPECTED, &key), Some(true));
        assert_eq!(
            verify_integrity(&EXPECTED, &long_term_key(user, realm, "other")),
            Some(false)
        );
    }

    /// RFC 5769 §2.2: an IPv4 response (SOFTWARE padded with spaces, MESSAGE-INTEGRITY,
    /// FINGERPRINT) decodes to its XOR-MAPPED-ADDRESS.
    #[test]
    fn rfc5769_ipv4_response() {
        const RESPONSE: [u8; 80] = [
            0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34,
            0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74,
            0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01,
            0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99,
            0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b,
            0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
        ];
        let m = Message::decode(&RESPONSE).unwrap();
        assert_eq!(m.class, Class::Success);
        // Short-term credential: the key is the password. FINGERPRINT after
        // MESSAGE-INTEGRITY is not covered by it.
        let password = b"VOkJxbRl1RmTxUk/WvJxBt";
        assert_eq!(verify_integrity(&RESPONSE, password), Some(true));
        let mut tampered = RESPONSE;
        tampered[45] ^= 1; // the mapped address
        assert_eq!(verify_integrity(&tampered, password), Some(false));
        let unsigned = Message::request(BINDING_REQUEST, [1; 12]).encode();
        assert_eq!(verify_integrity(&unsigned, password), None);
        assert_eq!(
            m.xor_address(ATTR_XOR_MAPPED_ADDRESS),
            Some("192.0.2.1:32853".parse().unwrap())
        );
    }
}
