//! Errors the gateway reports to clients, with their stable codes.
//!
//! The codes are a contract (SPEC.md §3): tenants' apps switch on them. Add codes; never
//! rename one.

use serde::Serialize;

/// Stable error codes sent to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No token, or a token that is expired, wrongly signed or for another issuer/audience.
    Unauthorized,
    /// Valid identity, but not allowed (not a participant, another tenant's conversation).
    Forbidden,
    /// The event's payload has the wrong shape or values.
    InvalidPayload,
    /// The message text is larger than the configured limit.
    TooLarge,
    /// The user sends faster than the configured rate.
    RateLimited,
    /// The conversation does not exist (for this tenant).
    NotFound,
    /// A dependency (broker, database, Redis) did not answer; retrying later may work.
    Unavailable,
    /// The event name is not part of the protocol.
    UnknownEvent,
    /// The user is banned from the conversation (permanently or until the ban expires).
    Banned,
    /// The user is muted in the conversation and may not send until the mute ends.
    Muted,
    /// `messages:recover` past the recovery window: page `messages:history` instead.
    TooFarBehind,
    /// A resent message that will never be stored (the broker never took it): send it
    /// again with a new `clientMessageId`.
    DeliveryFailed,
    /// `room:join` past the number of conversations one connection may join.
    TooManyRooms,
    /// The request contradicts the current state (a recording already pending or
    /// running, declining a call one is in).
    Conflict,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::Banned => "banned",
            ErrorCode::Muted => "muted",
            ErrorCode::TooFarBehind => "too_far_behind",
            ErrorCode::DeliveryFailed => "delivery_failed",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::Conflict => "conflict",
        }
    }
}

/// An error as the client sees it: `{code, message}` (plus `retryAfterMs` when rate-limited).
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ClientError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(rename = "retryAfterMs", skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Longest refusal message, in bytes. Messages quote what was refused (a field name, a
/// value); a client must not be able to make the server echo, log and audit kilobytes of
/// its own input (found by fuzzing the admin PATCH body).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 512;

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_BYTES {
            let mut cut = MAX_ERROR_MESSAGE_BYTES - '…'.len_utf8();
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        Self {
            code,
            message,
            retry_after_ms: None,
        }
    }

    /// The same error, telling the client when to try again.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    pub fn unavailable(what: &str) -> Self {
        Self::new(
            ErrorCode::Unavailable,
            format!("{what} is not reachable right now; retry later"),
        )
    }
}

/// Failures of the data plane's dependencies, labelled by category for metrics and logs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error("bson encoding: {0}")]
    Bson(#[from] mongodb::bson::ser::Error),
    /// MongoDB answered, but refused a write (write errors, an unmet write concern).
    #[error("mongodb refused the write: {0}")]
    MongoWrite(String),
    /// A document the data plane relies on is gone (it was deleted meanwhile).
    #[error("mongodb: {0} is gone")]
    Vanished(String),
    /// Stored state the data plane cannot read (a ledger record, a stored message).
    #[error("unreadable {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// Redis kept changing a value that had to be read consistently.
    #[error("redis: {0} kept changing; gave up")]
    Contended(&'static str),
    /// The broker refused to create a topic.
    #[error("kafka: creating topic {topic} failed: {code}")]
    TopicCreation { topic: String, code: String },
}

impl Error {
    /// A short label for metrics and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Redis(_) | Error::Contended(_) => "redis",
            Error::Mongo(_) | Error::MongoWrite(_) | Error::Vanished(_) => "mongodb",
            Error::Kafka(_) | Error::TopicCreation { .. } => "kafka",
            Error::Encoding(_) | Error::Bson(_) => "encoding",
            Error::Corrupt { .. } => "corrupt",
        }
    }

    /// What the client is told: the dependency is down; internals stay in the logs.
    pub fn to_client(&self) -> ClientError {
        match self {
            Error::Redis(_) | Error::Contended(_) => ClientError::unavailable("redis"),
            Error::Mongo(_) | Error::MongoWrite(_) | Error::Vanished(_) => {
                ClientError::unavailable("the database")
            }
            Error::Kafka(_) | Error::TopicCreation { .. } => {
                ClientError::unavailable("the message broker")
            }
            Error::Encoding(_) | Error::Bson(_) | Error::Corrupt { .. } => {
                ClientError::unavailable("the service")
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character() {
        let long = format!("unknown field `{}`", "é".repeat(600));
        let e = ClientError::new(ErrorCode::InvalidPayload, long);
        assert!(
            e.message.len() <= MAX_ERROR_MESSAGE_BYTES,
            "{}",
            e.message.len()
        );
        assert!(e.message.starts_with("unknown field `é") && e.message.ends_with('…'));
        let short = ClientError::new(ErrorCode::InvalidPayload, "short");
        assert_eq!(short.message, "short");
    }

    #[test]
    fn codes_serialize_as_their_stable_strings() {
        for code in [
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::InvalidPayload,
            ErrorCode::TooLarge,
            ErrorCode::RateLimited,
            ErrorCode::NotFound,
            ErrorCode::Unavailable,
            ErrorCode::UnknownEvent,
            ErrorCode::Banned,
            ErrorCode::Muted,
            ErrorCode::TooFarBehind,
            ErrorCode::DeliveryFailed,
            ErrorCode::TooManyRooms,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn client_error_shape() {
        let mut e = ClientError::new(ErrorCode::RateLimited, "slow down");
        e.retry_after_ms = Some(120);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"code": "rate_limited", "message": "slow down", "retryAfterMs": 120})
        );
        assert_eq!(e.to_string(), "rate_limited: slow down");
    }
}
