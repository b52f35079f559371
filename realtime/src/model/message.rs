//! A chat message as the data plane holds it and clients see it (`message:new`, history
//! pages, recovery); the broker's record of it is `protocol::ChatRecord`.

use serde::{Deserialize, Serialize};

/// Message content. Only text exists today; the `type` tag leaves room for more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    Text {
        text: String,
    },
    /// What is left of a message whose sender was erased (GDPR): its place in the
    /// history (id, seq, time), nothing of what it said or who said it. Never accepted
    /// from clients.
    Erased,
}

/// A message as clients see it (`message:new`, history pages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub message_id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub sender_id: String,
    pub client_message_id: String,
    pub content: Content,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}
