//! The shapes of what is held about one user (the export) and of an erasure's answer,
//! read from the stored documents.

use mongodb::bson::{Bson, Document};
use serde::Serialize;
use utoipa::ToSchema;

use super::views::{RecordingView, ms, text};

/// A conversation the user belongs to, with their role.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembershipView {
    pub conversation_id: String,
    pub role: String,
    pub last_message_at: Option<i64>,
}

/// A ban or mute on the user.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestrictionView {
    pub conversation_id: String,
    /// `ban` or `mute`.
    pub kind: String,
    pub by: Option<String>,
    pub reason: Option<String>,
    pub at: Option<i64>,
    /// `null`: permanent.
    pub expires_at: Option<i64>,
}

/// A moderation log entry about the user or by them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModerationView {
    pub conversation_id: String,
    pub action: String,
    pub user_id: Option<String>,
    pub by: Option<String>,
    pub reason: Option<String>,
    pub role: Option<String>,
    pub expires_at: Option<i64>,
    pub created_at: Option<i64>,
}

impl ModerationView {
    pub fn from_document(d: &Document) -> Self {
        let opt = |k: &str| d.get_str(k).ok().map(str::to_owned);
        Self {
            conversation_id: text(d, "conversation_id"),
            action: text(d, "action"),
            user_id: opt("user_id"),
            by: opt("by"),
            reason: opt("reason"),
            role: opt("role"),
            expires_at: ms(d, "expires_at"),
            created_at: ms(d, "created_at"),
        }
    }
}

/// Memberships and restrictions of `user` in their conversations' documents.
pub fn memberships_of(
    conversations: &[Document],
    user: &str,
) -> (Vec<MembershipView>, Vec<RestrictionView>) {
    let mut memberships = Vec::new();
    let mut restrictions = Vec::new();
    for c in conversations {
        let conversation_id = text(c, "conversation_id");
        let entries = |key: &str| -> Vec<Document> {
            c.get_array(key)
                .map(|a| {
                    a.iter()
                        .filter_map(Bson::as_document)
                        .filter(|e| e.get_str("user_id") == Ok(user))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        for p in entries("participants") {
            memberships.push(MembershipView {
                conversation_id: conversation_id.clone(),
                role: text(&p, "role"),
                last_message_at: ms(c, "last_message_at"),
            });
        }
        for (key, kind) in [("bans", "ban"), ("mutes", "mute")] {
            for r in entries(key) {
                restrictions.push(RestrictionView {
                    conversation_id: conversation_id.clone(),
                    kind: kind.into(),
                    by: r.get_str("by").ok().map(str::to_owned),
                    reason: r.get_str("reason").ok().map(str::to_owned),
                    at: ms(&r, "at"),
                    expires_at: ms(&r, "expires_at"),
                });
            }
        }
    }
    (memberships, restrictions)
}

/// `GET /v1/admin/users/{userId}/export` (streamed; `messages` last).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserExport {
    pub tenant_id: String,
    pub user_id: String,
    pub exported_at: i64,
    pub memberships: Vec<MembershipView>,
    pub restrictions: Vec<RestrictionView>,
    pub moderation: Vec<ModerationView>,
    /// Recordings the user asked for, consented to or was asked to consent to.
    pub recordings: Vec<RecordingView>,
    /// Every message the user sent, by conversation and `seq`.
    pub messages: Vec<crate::model::Message>,
}

/// `DELETE /v1/admin/users/{userId}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureReport {
    pub user_id: String,
    /// What was erased, over every attempt of this user's erasure.
    pub counts: crate::store::erasure::ErasureCounts,
    /// Attempts so far (a retry after a failure or crash finishes the first).
    pub attempts: i64,
    pub erased_at: i64,
}
