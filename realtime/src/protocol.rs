//! Payloads of the `/chat` protocol and the records that travel through Kafka.
//!
//! Parsing is pure: a `serde_json::Value` from the socket goes in, a typed request or a
//! [`ClientError`] that names the faulty field comes out. Nothing here touches I/O.
//! (A little over 400 lines: every request of the contract, each with its checks.)

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::error::{ClientError, ErrorCode};
pub use crate::model::{Content, Message, Role};

/// Longest identifier (tenant, user, conversation, client message id) accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Largest page `messages:history` returns.
pub const MAX_HISTORY_LIMIT: u32 = 100;
/// Page size when the client gives none.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;

/// Checks an identifier: 1..=128 bytes of `A-Z a-z 0-9 . _ @ + -`. Colons and braces are
/// excluded because identifiers are joined into Redis keys and room names.
pub fn validate_id(field: &str, value: &str) -> Result<(), ClientError> {
    if value.is_empty() {
        return Err(invalid(format!("{field} must not be empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(invalid(format!(
            "{field} is longer than {MAX_ID_LEN} bytes"
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-')))
    {
        return Err(invalid(format!(
            "{field} contains {bad:?}; allowed are letters, digits and . _ @ + -"
        )));
    }
    Ok(())
}

pub(crate) fn invalid(message: String) -> ClientError {
    ClientError::new(ErrorCode::InvalidPayload, message)
}

pub(crate) fn decode<T: DeserializeOwned>(
    event: &str,
    payload: Option<&Value>,
) -> Result<T, ClientError> {
    let value = match payload {
        None => return Err(invalid(format!("{event} needs a JSON object payload"))),
        Some(v) if !v.is_object() => {
            return Err(invalid(format!(
                "{event} needs a JSON object payload, got {}",
                json_kind(v)
            )));
        }
        Some(v) => v,
    };
    T::deserialize(value).map_err(|e| invalid(format!("{event}: {e}")))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `room:join` / `room:leave` payload.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomRequest {
    pub conversation_id: String,
}

impl RoomRequest {
    pub fn parse(event: &str, payload: Option<&Value>) -> Result<Self, ClientError> {
        let req: Self = decode(event, payload)?;
        validate_id("conversationId", &req.conversation_id)?;
        Ok(req)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSend {
    conversation_id: String,
    client_message_id: String,
    content: Value,
}

/// `message:send` payload, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    pub conversation_id: String,
    pub client_message_id: String,
    pub content: Content,
}

impl SendRequest {
    pub fn parse(payload: Option<&Value>, max_text_bytes: usize) -> Result<Self, ClientError> {
        let raw: RawSend = decode("message:send", payload)?;
        validate_id("conversationId", &raw.conversation_id)?;
        validate_id("clientMessageId", &raw.client_message_id)?;
        let content = match raw.content.get("type").and_then(Value::as_str) {
            Some("text") => Content::deserialize(&raw.content)
                .map_err(|e| invalid(format!("message:send: content: {e}")))?,
            Some(other) => {
                return Err(invalid(format!(
                    "content.type {other:?} is not supported; use \"text\""
                )));
            }
            None => {
                return Err(invalid(
                    "content must be an object with type \"text\"".into(),
                ));
            }
        };
        let Content::Text { text } = &content else {
            // Only "text" is decoded above; no client can send erased content.
            return Err(invalid("content.type must be \"text\"".into()));
        };
        if text.trim().is_empty() {
            return Err(invalid("content.text must not be empty".into()));
        }
        if text.len() > max_text_bytes {
            return Err(ClientError::new(
                ErrorCode::TooLarge,
                format!(
                    "content.text is {} bytes; the limit is {max_text_bytes} bytes",
                    text.len()
                ),
            ));
        }
        Ok(Self {
            conversation_id: raw.conversation_id,
            client_message_id: raw.client_message_id,
            content,
        })
    }
}

/// `messages:history` payload, validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRequest {
    pub conversation_id: String,
    #[serde(default)]
    pub before_seq: Option<u64>,
    #[serde(default)]
    pub limit: Option<u32>,
}

impl HistoryRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, ClientError> {
        let req: Self = decode("messages:history", payload)?;
        validate_id("conversationId", &req.conversation_id)?;
        if let Some(limit) = req.limit
            && (limit == 0 || limit > MAX_HISTORY_LIMIT)
        {
            return Err(invalid(format!(
                "limit must be between 1 and {MAX_HISTORY_LIMIT}, got {limit}"
            )));
        }
        Ok(req)
    }

    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_HISTORY_LIMIT)
    }
}

/// Longest moderation reason accepted, in bytes.
pub const MAX_REASON_BYTES: usize = 500;
/// Longest temporary ban or mute: one year.
pub const MAX_RESTRICTION_SECONDS: u64 = 366 * 24 * 3600;

/// `moderation:kick|ban|unban|mute|unmute` payload, validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModerationRequest {
    pub conversation_id: String,
    pub user_id: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub duration_seconds: Option<u64>,
}

impl ModerationRequest {
    /// `timed` says whether the action may carry `durationSeconds` (ban, mute).
    pub fn parse(event: &str, payload: Option<&Value>, timed: bool) -> Result<Self, ClientError> {
        let req: Self = decode(event, payload)?;
        validate_id("conversationId", &req.conversation_id)?;
        validate_id("userId", &req.user_id)?;
        if let Some(reason) = &req.reason
            && reason.len() > MAX_REASON_BYTES
        {
            return Err(invalid(format!(
                "reason is {} bytes; the limit is {MAX_REASON_BYTES}",
                reason.len()
            )));
        }
        match req.duration_seconds {
            Some(_) if !timed => Err(invalid(format!(
                "{event} takes no durationSeconds (only moderation:ban and moderation:mute do)"
            ))),
            Some(d) if d == 0 || d > MAX_RESTRICTION_SECONDS => Err(invalid(format!(
                "durationSeconds must be between 1 and {MAX_RESTRICTION_SECONDS}, got {d}; omit it for a permanent {}",
                event.trim_start_matches("moderation:")
            ))),
            _ => Ok(req),
        }
    }
}

/// `room:role` payload, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleRequest {
    pub conversation_id: String,
    pub user_id: String,
    pub role: Role,
}

impl RoleRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, ClientError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            conversation_id: String,
            user_id: String,
            role: String,
        }
        let raw: Raw = decode("room:role", payload)?;
        validate_id("conversationId", &raw.conversation_id)?;
        validate_id("userId", &raw.user_id)?;
        let role = Role::parse(&raw.role).ok_or_else(|| {
            invalid(format!(
                "role {:?} is not one of owner, admin, moderator, member",
                raw.role
            ))
        })?;
        Ok(Self {
            conversation_id: raw.conversation_id,
            user_id: raw.user_id,
            role,
        })
    }
}

/// `messages:recover` payload, validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoverRequest {
    pub conversation_id: String,
    pub after_seq: u64,
}

impl RecoverRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, ClientError> {
        let req: Self = decode("messages:recover", payload)?;
        validate_id("conversationId", &req.conversation_id)?;
        Ok(req)
    }
}

/// An accepted message as produced to `chat.messages` (snake_case, like the stored document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRecord {
    pub tenant_id: String,
    pub conversation_id: String,
    pub message_id: String,
    pub seq: u64,
    pub sender_id: String,
    pub client_message_id: String,
    pub content: Content,
    pub created_at_ms: i64,
}

impl ChatRecord {
    /// Kafka key: all messages of a conversation land on one partition, in order.
    pub fn key(&self) -> String {
        format!("{}:{}", self.tenant_id, self.conversation_id)
    }

    pub fn to_message(&self) -> Message {
        Message {
            message_id: self.message_id.clone(),
            conversation_id: self.conversation_id.clone(),
            seq: self.seq,
            sender_id: self.sender_id.clone(),
            client_message_id: self.client_message_id.clone(),
            content: self.content.clone(),
            created_at: self.created_at_ms,
        }
    }
}

/// What the persister did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistOutcome {
    /// Stored in MongoDB (or found stored already).
    #[default]
    Persisted,
    /// The database refused it for good; it went to the dead-letter topic.
    Refused,
}

/// Published on `chat.persistence.events` once the persister dealt with a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistenceEvent {
    pub tenant_id: String,
    pub conversation_id: String,
    pub message_id: String,
    pub seq: u64,
    pub sender_id: String,
    /// Locates the delivery record; absent in events of older versions.
    #[serde(default)]
    pub client_message_id: String,
    pub persisted_at_ms: i64,
    #[serde(default)]
    pub outcome: PersistOutcome,
    /// Why the database refused the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&ChatRecord> for PersistenceEvent {
    fn from(r: &ChatRecord) -> Self {
        Self {
            tenant_id: r.tenant_id.clone(),
            conversation_id: r.conversation_id.clone(),
            message_id: r.message_id.clone(),
            seq: r.seq,
            sender_id: r.sender_id.clone(),
            client_message_id: r.client_message_id.clone(),
            persisted_at_ms: now_ms(),
            outcome: PersistOutcome::Persisted,
            reason: None,
        }
    }
}

/// `message:persisted` payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Persisted<'a> {
    pub message_id: &'a str,
    pub conversation_id: &'a str,
    pub seq: u64,
    pub client_message_id: &'a str,
}

/// Payload of `message:failed` (the message will never be stored) and `message:delayed`
/// (on the broker, not stored yet, still being retried).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome<'a> {
    pub message_id: &'a str,
    pub conversation_id: &'a str,
    pub client_message_id: &'a str,
    pub seq: u64,
    pub reason: &'a str,
}

impl<'a> Outcome<'a> {
    pub fn of(record: &'a ChatRecord, reason: &'a str) -> Self {
        Self {
            message_id: &record.message_id,
            conversation_id: &record.conversation_id,
            client_message_id: &record.client_message_id,
            seq: record.seq,
            reason,
        }
    }
}

/// Most `clientMessageId`s one `message:status` may ask about.
pub const MAX_STATUS_IDS: usize = 100;

/// `message:status` payload, validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRequest {
    pub conversation_id: String,
    pub client_message_ids: Vec<String>,
}

impl StatusRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, ClientError> {
        let req: Self = decode("message:status", payload)?;
        validate_id("conversationId", &req.conversation_id)?;
        if req.client_message_ids.is_empty() || req.client_message_ids.len() > MAX_STATUS_IDS {
            return Err(invalid(format!(
                "clientMessageIds must hold 1 to {MAX_STATUS_IDS} ids, got {}",
                req.client_message_ids.len()
            )));
        }
        for id in &req.client_message_ids {
            validate_id("clientMessageIds[]", id)?;
        }
        Ok(req)
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn send(v: Value) -> Result<SendRequest, ClientError> {
        SendRequest::parse(Some(&v), 16)
    }

    #[test]
    fn valid_send_parses() {
        let req = send(json!({"conversationId": "c1", "clientMessageId": "k1",
            "content": {"type": "text", "text": "hello"}}))
        .unwrap();
        assert_eq!(
            req.content,
            Content::Text {
                text: "hello".into()
            }
        );
    }

    #[test]
    fn send_errors_name_the_field() {
        let cases = [
            (
                json!("just a string"),
                ErrorCode::InvalidPayload,
                "got a string",
            ),
            (
                json!({"clientMessageId": "k", "content": {"type": "text", "text": "x"}}),
                ErrorCode::InvalidPayload,
                "conversationId",
            ),
            (
                json!({"conversationId": 5, "clientMessageId": "k", "content": {"type": "text", "text": "x"}}),
                ErrorCode::InvalidPayload,
                "invalid type",
            ),
            (
                json!({"conversationId": "c", "clientMessageId": "", "content": {"type": "text", "text": "x"}}),
                ErrorCode::InvalidPayload,
                "clientMessageId must not be empty",
            ),
            (
                json!({"conversationId": "c:x", "clientMessageId": "k", "content": {"type": "text", "text": "x"}}),
                ErrorCode::InvalidPayload,
                "contains ':'",
            ),
            (
                json!({"conversationId": "c", "clientMessageId": "k", "content": {"type": "image"}}),
                ErrorCode::InvalidPayload,
                "\"image\" is not supported",
            ),
            (
                json!({"conversationId": "c", "clientMessageId": "k", "content": "hi"}),
                ErrorCode::InvalidPayload,
                "content must be an object",
            ),
            (
                json!({"conversationId": "c", "clientMessageId": "k", "content": {"type": "text", "text": 3}}),
                ErrorCode::InvalidPayload,
                "invalid type",
            ),
            (
                json!({"conversationId": "c", "clientMessageId": "k", "content": {"type": "text", "text": "  "}}),
                ErrorCode::InvalidPayload,
                "must not be empty",
            ),
            (
                json!({"conversationId": "c", "clientMessageId": "k", "content": {"type": "text", "text": "x".repeat(17)}}),
                ErrorCode::TooLarge,
                "17 bytes",
            ),
        ];
        for (payload, code, needle) in cases {
            let err = send(payload.clone()).unwrap_err();
            assert_eq!(err.code, code, "{payload}");
            assert!(err.message.contains(needle), "{payload}: {}", err.message);
        }
        assert_eq!(
            SendRequest::parse(None, 16).unwrap_err().code,
            ErrorCode::InvalidPayload
        );
    }

    #[test]
    fn size_limit_counts_utf8_bytes() {
        // 6 characters, 18 bytes.
        let err = send(json!({"conversationId": "c", "clientMessageId": "k",
            "content": {"type": "text", "text": "€€€€€€"}}))
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(
            send(json!({"conversationId": "c", "clientMessageId": "k",
            "content": {"type": "text", "text": "x".repeat(16)}}))
            .is_ok()
        );
    }

    #[test]
    fn history_limits() {
        let ok = HistoryRequest::parse(Some(&json!({"conversationId": "c"}))).unwrap();
        assert_eq!(ok.limit(), DEFAULT_HISTORY_LIMIT);
        assert_eq!(ok.before_seq, None);
        for bad in [0, 101] {
            let err = HistoryRequest::parse(Some(&json!({"conversationId": "c", "limit": bad})))
                .unwrap_err();
            assert!(err.message.contains("between 1 and 100"), "{}", err.message);
        }
        let err = HistoryRequest::parse(Some(&json!({"conversationId": "c", "beforeSeq": -1})))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPayload);
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("x", "user-1@example.com").is_ok());
        assert!(validate_id("x", &"a".repeat(128)).is_ok());
        assert!(validate_id("x", &"a".repeat(129)).is_err());
        assert!(validate_id("x", "a{b}").is_err());
        assert!(validate_id("x", "a b").is_err());
    }

    #[test]
    fn record_round_trips_and_maps_to_wire() {
        let r = ChatRecord {
            tenant_id: "t".into(),
            conversation_id: "c".into(),
            message_id: "m".into(),
            seq: 7,
            sender_id: "u".into(),
            client_message_id: "k".into(),
            content: Content::Text { text: "hi".into() },
            created_at_ms: 1,
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<ChatRecord>(&bytes).unwrap(), r);
        assert_eq!(r.key(), "t:c");
        let wire = serde_json::to_value(r.to_message()).unwrap();
        assert_eq!(wire["messageId"], "m");
        assert_eq!(wire["content"], json!({"type": "text", "text": "hi"}));
    }

    #[test]
    fn moderation_payloads() {
        let ok =
            json!({"conversationId": "c", "userId": "u", "reason": "spam", "durationSeconds": 60});
        let req = ModerationRequest::parse("moderation:mute", Some(&ok), true).unwrap();
        assert_eq!(req.duration_seconds, Some(60));
        assert_eq!(req.reason.as_deref(), Some("spam"));

        let err = ModerationRequest::parse("moderation:kick", Some(&ok), false).unwrap_err();
        assert!(err.message.contains("takes no durationSeconds"), "{err}");
        let zero = json!({"conversationId": "c", "userId": "u", "durationSeconds": 0});
        let err = ModerationRequest::parse("moderation:ban", Some(&zero), true).unwrap_err();
        assert!(err.message.contains("omit it for a permanent ban"), "{err}");
        let long = json!({"conversationId": "c", "userId": "u", "reason": "x".repeat(501)});
        assert_eq!(
            ModerationRequest::parse("moderation:ban", Some(&long), true)
                .unwrap_err()
                .code,
            ErrorCode::InvalidPayload
        );
        let bad_user = json!({"conversationId": "c", "userId": "a:b"});
        assert!(
            ModerationRequest::parse("moderation:ban", Some(&bad_user), true)
                .unwrap_err()
                .message
                .contains("userId")
        );
        assert!(ModerationRequest::parse("moderation:ban", None, true).is_err());
    }

    #[test]
    fn role_and_recover_payloads() {
        let r = RoleRequest::parse(Some(
            &json!({"conversationId": "c", "userId": "u", "role": "moderator"}),
        ))
        .unwrap();
        assert_eq!(r.role, Role::Moderator);
        let err = RoleRequest::parse(Some(
            &json!({"conversationId": "c", "userId": "u", "role": "god"}),
        ))
        .unwrap_err();
        assert!(err.message.contains("\"god\" is not one of"), "{err}");

        let r =
            RecoverRequest::parse(Some(&json!({"conversationId": "c", "afterSeq": 5}))).unwrap();
        assert_eq!(r.after_seq, 5);
        for bad in [
            json!({"conversationId": "c"}),
            json!({"conversationId": "c", "afterSeq": -1}),
            json!({"conversationId": "c", "afterSeq": "5"}),
        ] {
            assert_eq!(
                RecoverRequest::parse(Some(&bad)).unwrap_err().code,
                ErrorCode::InvalidPayload,
                "{bad}"
            );
        }
    }
}
