//! The ack bodies and broadcast payloads of `/chat`, typed (SPEC.md §3 names their
//! fields; the transport adds `ok`). Serialized in camelCase like every payload.

use serde::Serialize;

use crate::model::{Message, Role};

/// `{conversationId}`: the ack of `room:leave` and `typing`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRef {
    pub conversation_id: String,
}

/// Ack of `message:send`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendAck {
    pub message_id: String,
    pub seq: u64,
    /// The idempotency key was used before.
    pub duplicate: bool,
    pub status: &'static str,
}

/// What a refused send still tells: the message's id and number when it has them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRef {
    pub message_id: String,
    pub seq: u64,
}

/// Ack of `messages:history`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    pub conversation_id: String,
    pub messages: Vec<Message>,
    /// An older page exists.
    pub has_more: bool,
}

/// Ack of `messages:recover`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovered {
    pub conversation_id: String,
    pub messages: Vec<Message>,
    pub complete: bool,
    pub latest_seq: u64,
}

/// What a `too_far_behind` refusal of `messages:recover` carries beside the error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NothingRecovered {
    pub complete: bool,
    pub messages: [Message; 0],
}

impl NothingRecovered {
    pub const BODY: NothingRecovered = NothingRecovered {
        complete: false,
        messages: [],
    };
}

/// Ack of `message:status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Statuses {
    pub conversation_id: String,
    pub messages: Vec<StatusEntry>,
}

/// One message of a `message:status` answer; `status: "unknown"` has no other fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEntry {
    pub client_message_id: String,
    pub status: &'static str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub known: Option<KnownStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KnownStatus {
    pub message_id: String,
    pub seq: u64,
    /// Why it failed (`null` otherwise).
    pub reason: Option<String>,
}

/// Ack of `room:join`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    pub conversation_id: String,
    pub role: Role,
    pub online: Vec<String>,
    /// `null`, `true` (permanently) or the end of the mute (ms since the epoch).
    pub muted_until: Option<MutedUntil>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MutedUntil {
    Permanently(bool),
    Until(i64),
}

/// Ack of `presence:get`, and the `presence` broadcast.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub conversation_id: String,
    pub online: Vec<String>,
}

/// The `typing` broadcast.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Typing {
    pub conversation_id: String,
    pub user_id: String,
    pub ttl_ms: u64,
}

/// Ack of a moderation event or `room:role`, and the `moderation:action` broadcast.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModerationNotice {
    pub action: &'static str,
    pub conversation_id: String,
    pub user_id: String,
    pub by: String,
    /// Moderation actions: when the ban or mute ends (`null`: never, or not timed).
    /// Absent for role changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Option<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// `room:removed`, to the sockets of a kicked or banned user.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub conversation_id: String,
    /// `kicked` or `banned`.
    pub reason: &'static str,
    pub by: String,
    pub note: Option<String>,
    pub expires_at: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_keep_the_shapes_clients_read() {
        let unknown = StatusEntry {
            client_message_id: "c1".into(),
            status: "unknown",
            known: None,
        };
        assert_eq!(
            serde_json::to_value(&unknown).unwrap(),
            json!({"clientMessageId": "c1", "status": "unknown"})
        );
        let known = StatusEntry {
            client_message_id: "c2".into(),
            status: "persisted",
            known: Some(KnownStatus {
                message_id: "m".into(),
                seq: 7,
                reason: None,
            }),
        };
        assert_eq!(
            serde_json::to_value(&known).unwrap(),
            json!({"clientMessageId": "c2", "status": "persisted", "messageId": "m", "seq": 7, "reason": null})
        );
        let joined = Joined {
            conversation_id: "c".into(),
            role: Role::Moderator,
            online: vec!["u".into()],
            muted_until: Some(MutedUntil::Permanently(true)),
        };
        assert_eq!(
            serde_json::to_value(&joined).unwrap(),
            json!({"conversationId": "c", "role": "moderator", "online": ["u"], "mutedUntil": true})
        );
        let kick = ModerationNotice {
            action: "kick",
            conversation_id: "c".into(),
            user_id: "u".into(),
            by: "m".into(),
            expires_at: Some(None),
            reason: None,
            role: None,
        };
        assert_eq!(
            serde_json::to_value(&kick).unwrap(),
            json!({"action": "kick", "conversationId": "c", "userId": "u", "by": "m", "expiresAt": null})
        );
        assert_eq!(
            serde_json::to_value(NothingRecovered::BODY).unwrap(),
            json!({"complete": false, "messages": []})
        );
    }
}
