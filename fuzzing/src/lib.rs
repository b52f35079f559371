//! What each fuzz target does with one input: the decoders of untrusted input, driven the
//! way the servers drive them, with the properties that must hold for every input (beyond
//! "does not panic, does not hang").
//!
//! The libFuzzer targets in `fuzzing/fuzz/` (run by `scripts/fuzz.sh`, see its header) call
//! these functions; `tests/corpus.rs` replays the committed corpus and every crash ever
//! found (`fuzzing/regressions/<target>/`) through them on the stable toolchain, so a
//! regression fails the ordinary test suite.
//!
//! A property that fails panics with a message naming it: libFuzzer records the input as a
//! crash.

// Properties fail by panicking: that is how libFuzzer learns of them.
#![allow(clippy::panic)]

use std::collections::BTreeMap;

use realtime::auth::Verifier;
use realtime::error::ErrorCode;
use realtime_operator::crd::{KafkaTopic, MongoIndex, RealtimeCluster, TurnPool};
use realtime_turn::stun::{self, Class, Message};
use serde_json::Value;
use socketioxide_core::Str;
use socketioxide_core::packet::PacketData;
use socketioxide_core::parser::{Parse, ParseConfig, ParserState};
use socketioxide_parser_common::CommonParser;

/// What a fuzz target runs on one input.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (the directories of the corpus and regressions).
pub const TARGETS: [(&str, Target); 7] = [
    ("socketio", socketio),
    ("jwt", jwt),
    ("jwt_claims", jwt_claims),
    ("jwks", jwks),
    ("stun", stun_message),
    ("crd", crd),
    ("admin_patch", admin_patch),
];

/// Largest message text the fuzzed gateway accepts (bytes), as `MAX_MESSAGE_BYTES`.
const MAX_TEXT: usize = 64;
/// Largest signal payload (bytes), as `MAX_SIGNAL_BYTES`.
const MAX_SIGNAL: usize = 256;

/// One Socket.IO text frame from a client (`42/chat,7["message:send",{...}]`): the
/// socketioxide common parser, then the event's payload as the handlers read it
/// (`TryData<Value>`), then the handler's validation of that event.
pub fn socketio(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parser = CommonParser;
    let Ok(packet) = parser.decode_str(
        &ParseConfig::default(),
        &ParserState::default(),
        Str::from(text.to_owned()),
    ) else {
        return;
    };
    let (PacketData::Event(mut value, _) | PacketData::BinaryEvent(mut value, _)) = packet.inner
    else {
        return;
    };
    let Ok(event) = parser.read_event(&value).map(str::to_owned) else {
        return;
    };
    let payload: Option<Value> = parser
        .decode_value::<Value>(&mut value, true)
        .ok()
        .filter(|v| !v.is_null());
    validate_event(&event, payload.as_ref());
}

/// The validation a handler applies to `event`'s payload; checks what an accepted request
/// promises.
pub fn validate_event(event: &str, payload: Option<&Value>) {
    use realtime::calls::protocol as calls;
    use realtime::protocol::*;
    match event {
        "room:join" | "room:leave" | "presence:get" | "typing" => {
            if let Ok(r) = RoomRequest::parse(event, payload) {
                valid_id(&r.conversation_id);
            }
        }
        "message:send" => match SendRequest::parse(payload, MAX_TEXT) {
            Ok(r) => {
                valid_id(&r.conversation_id);
                valid_id(&r.client_message_id);
                let Content::Text { text } = &r.content else {
                    panic!("an accepted message:send carries text content: {r:?}");
                };
                assert!(
                    text.len() <= MAX_TEXT && !text.trim().is_empty(),
                    "accepted text within the limit and not blank"
                );
            }
            Err(e) => refused_sanely(&e),
        },
        "message:status" => drop(StatusRequest::parse(payload)),
        "messages:history" => {
            if let Ok(r) = HistoryRequest::parse(payload) {
                valid_id(&r.conversation_id);
                assert!(
                    (1..=MAX_HISTORY_LIMIT).contains(&r.limit()),
                    "history limit in range"
                );
            }
        }
        "messages:recover" => drop(RecoverRequest::parse(payload)),
        "room:role" => drop(RoleRequest::parse(payload)),
        "moderation:ban" | "moderation:mute" | "moderation:kick" | "moderation:unban"
        | "moderation:unmute" => {
            let timed = matches!(event, "moderation:ban" | "moderation:mute");
            if let Ok(r) = ModerationRequest::parse(event, payload, timed) {
                valid_id(&r.conversation_id);
                valid_id(&r.user_id);
            }
        }
        "call:start" => drop(calls::StartRequest::parse(payload)),
        "call:accept" | "call:decline" | "call:hangup" | "recording:request" => {
            if let Ok(r) = calls::CallRequest::parse(event, payload) {
                valid_id(&r.call_id);
            }
        }
        "call:signal" => {
            if let Err(e) = calls::SignalRequest::parse(payload, MAX_SIGNAL) {
                refused_sanely(&e);
            }
        }
        "recording:consent" => drop(calls::ConsentRequest::parse(payload)),
        "recording:stop" => drop(calls::StopRequest::parse(payload)),
        _ => {}
    }
}

fn valid_id(id: &str) {
    assert!(
        realtime::protocol::validate_id("id", id).is_ok(),
        "an accepted request carries only valid ids: {id:?}"
    );
}

/// A refusal is a client error with a bounded message (it must not echo a huge payload).
fn refused_sanely(e: &realtime::error::ClientError) {
    assert!(
        matches!(e.code, ErrorCode::InvalidPayload | ErrorCode::TooLarge),
        "refusal code {:?}",
        e.code
    );
    assert!(
        e.message.len() <= realtime::error::MAX_ERROR_MESSAGE_BYTES,
        "refusal message of {} bytes",
        e.message.len()
    );
}

const SECRET: &str = "fuzzing-secret-0123456789abcdef";

/// A token from a client (`auth.token`, `Authorization: Bearer`): never accepted unless
/// signed with the secret, and no refusal names the secret.
pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let verifier = Verifier::new(SECRET, Some("issuer"), Some("audience"));
    match verifier.verify(token) {
        Ok(id) => panic!("a token nobody signed was accepted: {id:?}"),
        Err(e) => {
            assert_eq!(e.code, ErrorCode::Unauthorized);
            assert!(!e.message.contains(SECRET), "a refusal names the secret");
        }
    }
}

/// Claims signed with the right key (what an identity provider may send, however odd):
/// the identity the verifier gives is the claims' own, with valid ids, and every refusal
/// says why.
pub fn jwt_claims(data: &[u8]) {
    let Ok(claims) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let Ok(token) = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key) else {
        return;
    };
    let verifier = Verifier::new(SECRET, None, None);
    match verifier.verify(&token) {
        Ok(id) => {
            assert_eq!(
                claims.get("sub").and_then(Value::as_str),
                Some(&*id.user_id)
            );
            assert_eq!(
                claims.get("tenant_id").and_then(Value::as_str),
                Some(&*id.tenant_id)
            );
            valid_id(&id.user_id);
            valid_id(&id.tenant_id);
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::Unauthorized);
            assert!(!e.message.is_empty() && !e.message.contains(SECRET));
        }
    }
}

/// A JWK set from the identity provider: read leniently, never a panic.
pub fn jwks(data: &[u8]) {
    if let Ok(keys) = realtime::jwks::parse_set(data) {
        for key in keys {
            let _ = jsonwebtoken::DecodingKey::from_jwk(&key);
        }
    }
}

/// A STUN/TURN response from a server the operator probes (or a client's relay): decoded,
/// its attributes read, its integrity checked; what decodes re-encodes to the same
/// message.
pub fn stun_message(data: &[u8]) {
    let _ = stun::verify_integrity(data, b"key");
    let Ok(message) = Message::decode(data) else {
        return;
    };
    let _ = message.error_code();
    for kind in [
        stun::ATTR_XOR_MAPPED_ADDRESS,
        stun::ATTR_XOR_RELAYED_ADDRESS,
    ] {
        let _ = message.xor_address(kind);
    }
    // (A body near 64 KiB can grow past the u16 length by padding the last attribute.)
    let body: usize = message
        .attributes
        .iter()
        .map(|(_, v)| 4 + v.len().div_ceil(4) * 4)
        .sum();
    if message.class != Class::Other && body <= usize::from(u16::MAX) {
        let again = Message::decode(&message.encode());
        assert_eq!(again.as_ref(), Ok(&message), "decode(encode(m)) == m");
    }
}

/// A custom resource as a platform team writes it (YAML or JSON): read as the API server
/// would hand it over, checked by the reconciler's own validation, and, when valid,
/// rendered without a panic.
pub fn crd(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let Ok(value) = serde_norway::from_slice::<Value>(body) else {
        return;
    };
    match selector % 4 {
        0 => {
            if let Ok(rc) = serde_json::from_value::<RealtimeCluster>(value) {
                render_cluster(&rc);
            }
        }
        1 => {
            if let Ok(pool) = serde_json::from_value::<TurnPool>(value) {
                render_turn_pool(&pool);
            }
        }
        2 => {
            if let Ok(mi) = serde_json::from_value::<MongoIndex>(value) {
                let _ = realtime_operator::controller::mongo_index::plan::wanted(&mi.spec);
            }
        }
        _ => {
            if let Ok(kt) = serde_json::from_value::<KafkaTopic>(value) {
                let _ = realtime_operator::controller::kafka_topic::sync::config_ops(
                    &kt.spec.config,
                    &BTreeMap::new(),
                );
            }
        }
    }
}

/// What the RealtimeCluster reconciler makes of a spec it accepts.
fn render_cluster(rc: &RealtimeCluster) {
    use realtime_operator::controller::realtime_cluster::decide;
    use realtime_operator::render::{self, Component};
    if decide::invalid(rc).is_some() || rc.metadata.name.is_none() {
        return;
    }
    let _ = render::config_map(rc);
    let _ = render::service_account(rc);
    for component in Component::ALL {
        let d = render::deployment(rc, component, "checksum");
        assert_eq!(
            d.spec.and_then(|s| s.replicas),
            Some(component.replicas(rc)),
            "the Deployment asks for the spec's replicas"
        );
    }
    let _ = render::gateway_service(rc);
    let _ = render::admin_service(rc);
    let _ = render::gateway_pdb(rc, "policy/v1");
    let _ = render::topics(rc);
    for index in render::indexes(rc) {
        let _ = realtime_operator::controller::mongo_index::plan::wanted(&index.spec);
    }
}

/// What the TurnPool reconciler makes of a spec it accepts.
fn render_turn_pool(pool: &TurnPool) {
    use realtime_operator::controller::turn_pool;
    use realtime_operator::render::turn_pool as render;
    if turn_pool::invalid(pool).is_some() || pool.metadata.name.is_none() {
        return;
    }
    if let Some(managed) = &pool.spec.managed {
        let _ = render::coturn_deployment(pool, managed, "checksum");
        let _ = render::coturn_service(pool, managed);
    }
    let _ = render::servers(pool, &[]);
}

/// A `PATCH /v1/admin/recordings/{id}` body: refused with a specific error, or turned into
/// a `$set` of `storage`/`quality` fields only.
pub fn admin_patch(data: &[u8]) {
    match realtime::admin::views::RecordingPatch::parse(data) {
        Ok(set) => {
            assert!(!set.is_empty(), "an accepted patch changes something");
            for key in set.keys() {
                assert!(
                    key.starts_with("storage") || key.starts_with("quality"),
                    "patch sets only storage/quality: {key}"
                );
            }
        }
        Err(e) => refused_sanely(&e),
    }
}
