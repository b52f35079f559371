//! Conversation standing and moderation in MongoDB.
//!
//! Bans and mutes extend the `conversations` document (SPEC.md §3 names its other
//! fields): `bans: [{user_id, expires_at, by, reason, at}]` and the same for `mutes`, one
//! entry per user, `expires_at: null` for a permanent one. Every action is also appended
//! to `moderation_log {tenant_id, conversation_id, action, user_id, by, reason, role,
//! expires_at, created_at}`.

use futures::TryStreamExt;
use mongodb::Collection;
use mongodb::bson::{Bson, DateTime, Document, doc};

use super::{MESSAGES, Store, message_from_document, to_i64};
use crate::error::{Error, Result};
use crate::model::Message;
use crate::model::Role;
use crate::model::{Access, Restriction};

pub const MODERATION_LOG: &str = "moderation_log";

/// Which list of the conversation document a restriction lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestrictionKind {
    Ban,
    Mute,
}

impl RestrictionKind {
    fn field(self) -> &'static str {
        match self {
            RestrictionKind::Ban => "bans",
            RestrictionKind::Mute => "mutes",
        }
    }
}

/// One line of `moderation_log`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry<'a> {
    pub tenant: &'a str,
    pub conversation: &'a str,
    pub action: &'static str,
    pub user: &'a str,
    pub by: &'a str,
    pub reason: Option<&'a str>,
    pub role: Option<Role>,
    pub expires_at_ms: Option<i64>,
    pub at_ms: i64,
}

impl<'a> LogEntry<'a> {
    /// An action by `by` against `user`, now; reason, role and expiry are set after.
    pub fn new(
        tenant: &'a str,
        conversation: &'a str,
        action: &'static str,
        user: &'a str,
        by: &'a str,
        at_ms: i64,
    ) -> Self {
        Self {
            tenant,
            conversation,
            action,
            user,
            by,
            reason: None,
            role: None,
            expires_at_ms: None,
            at_ms,
        }
    }
}

impl Store {
    fn moderation_log(&self) -> Collection<Document> {
        self.db.collection(MODERATION_LOG)
    }

    /// The user's role, ban and mute in the tenant's conversation; `None` when the user
    /// is not a participant. A conversation of another tenant is indistinguishable from a
    /// missing one.
    pub async fn access(
        &self,
        tenant: &str,
        conversation: &str,
        user: &str,
    ) -> Result<Option<Access>> {
        let only_user = doc! {"$elemMatch": {"user_id": user}};
        let found = self
            .conversations()
            .find_one(doc! {
                "tenant_id": tenant,
                "conversation_id": conversation,
                "participants.user_id": user,
            })
            .projection(doc! {
                "participants": only_user.clone(),
                "bans": only_user.clone(),
                "mutes": only_user,
            })
            .await?;
        Ok(found.map(|d| access_from_document(&d)))
    }

    /// The participants of the tenant's conversation who are not banned now; `None` when
    /// it does not exist (for this tenant).
    pub async fn participants(
        &self,
        tenant: &str,
        conversation: &str,
        now_ms: i64,
    ) -> Result<Option<Vec<String>>> {
        let found = self
            .conversations()
            .find_one(doc! {"tenant_id": tenant, "conversation_id": conversation})
            .projection(doc! {"participants.user_id": 1, "bans": 1})
            .await?;
        let Some(d) = found else {
            return Ok(None);
        };
        let users_of = |field: &str| -> Vec<(String, &Document)> {
            d.get_array(field)
                .map(|a| {
                    a.iter()
                        .filter_map(Bson::as_document)
                        .filter_map(|e| Some((e.get_str("user_id").ok()?.to_owned(), e)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let banned: Vec<String> = users_of("bans")
            .into_iter()
            .filter(|(_, e)| restriction_from(Some(e)).is_some_and(|r| r.active(now_ms)))
            .map(|(u, _)| u)
            .collect();
        Ok(Some(
            users_of("participants")
                .into_iter()
                .map(|(u, _)| u)
                .filter(|u| !banned.contains(u))
                .collect(),
        ))
    }

    /// Bans or mutes `user` until `expires_at_ms` (forever when `None`), replacing an
    /// earlier restriction of the same kind.
    pub async fn restrict(&self, kind: RestrictionKind, entry: &LogEntry<'_>) -> Result<()> {
        let filter = doc! {"tenant_id": entry.tenant, "conversation_id": entry.conversation};
        let field = kind.field();
        self.conversations()
            .update_one(
                filter.clone(),
                doc! {"$pull": {field: {"user_id": entry.user}}},
            )
            .await?;
        let expires = entry
            .expires_at_ms
            .map_or(Bson::Null, |ms| Bson::DateTime(DateTime::from_millis(ms)));
        let result = self
            .conversations()
            .update_one(
                filter,
                doc! {"$push": {field: {
                    "user_id": entry.user,
                    "expires_at": expires,
                    "by": entry.by,
                    "reason": entry.reason,
                    "at": DateTime::from_millis(entry.at_ms),
                }}},
            )
            .await?;
        if result.matched_count == 0 {
            return Err(Error::Vanished(format!(
                "conversation {} (deleted during moderation)",
                entry.conversation
            )));
        }
        Ok(())
    }

    /// Lifts a ban or mute; true when there was one.
    pub async fn lift(
        &self,
        kind: RestrictionKind,
        tenant: &str,
        conversation: &str,
        user: &str,
    ) -> Result<bool> {
        let result = self
            .conversations()
            .update_one(
                doc! {"tenant_id": tenant, "conversation_id": conversation},
                doc! {"$pull": {kind.field(): {"user_id": user}}},
            )
            .await?;
        Ok(result.modified_count > 0)
    }

    /// Gives a participant a new role; false when the user is not a participant.
    pub async fn set_role(
        &self,
        tenant: &str,
        conversation: &str,
        user: &str,
        role: Role,
    ) -> Result<bool> {
        let result = self
            .conversations()
            .update_one(
                doc! {"tenant_id": tenant, "conversation_id": conversation, "participants.user_id": user},
                doc! {"$set": {"participants.$.role": role.as_str()}},
            )
            .await?;
        Ok(result.matched_count > 0)
    }

    pub async fn log_moderation(&self, entry: &LogEntry<'_>) -> Result<()> {
        self.moderation_log()
            .insert_one(doc! {
                "tenant_id": entry.tenant,
                "conversation_id": entry.conversation,
                "action": entry.action,
                "user_id": entry.user,
                "by": entry.by,
                "reason": entry.reason,
                "role": entry.role.map(Role::as_str),
                "expires_at": entry.expires_at_ms.map(DateTime::from_millis),
                "created_at": DateTime::from_millis(entry.at_ms),
            })
            .await?;
        Ok(())
    }

    /// Stored messages with `seq > after_seq`, oldest first, at most `limit`.
    pub async fn messages_after(
        &self,
        tenant: &str,
        conversation: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let docs: Vec<Document> = self
            .db
            .collection::<Document>(MESSAGES)
            .find(doc! {
                "tenant_id": tenant,
                "conversation_id": conversation,
                "seq": {"$gt": to_i64(after_seq)},
                "tombstone": {"$ne": true},
            })
            .sort(doc! {"seq": 1})
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await?;
        docs.iter().map(message_from_document).collect()
    }
}

fn first_of<'a>(d: &'a Document, field: &str) -> Option<&'a Document> {
    d.get_array(field)
        .ok()
        .and_then(|a| a.first())
        .and_then(Bson::as_document)
}

fn restriction_from(entry: Option<&Document>) -> Option<Restriction> {
    entry.map(|e| Restriction {
        until_ms: e
            .get_datetime("expires_at")
            .ok()
            .map(|t| t.timestamp_millis()),
    })
}

fn access_from_document(d: &Document) -> Access {
    // An unknown stored role is the least privileged one, never more.
    let role = first_of(d, "participants")
        .and_then(|p| p.get_str("role").ok())
        .and_then(Role::parse)
        .unwrap_or(Role::Member);
    Access {
        role,
        ban: restriction_from(first_of(d, "bans")),
        mute: restriction_from(first_of(d, "mutes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_from_stored_document() {
        let d = doc! {
            "participants": [{"user_id": "u", "role": "moderator"}],
            "bans": [{"user_id": "u", "expires_at": Bson::Null}],
            "mutes": [{"user_id": "u", "expires_at": DateTime::from_millis(5)}],
        };
        assert_eq!(
            access_from_document(&d),
            Access {
                role: Role::Moderator,
                ban: Some(Restriction { until_ms: None }),
                mute: Some(Restriction { until_ms: Some(5) }),
            }
        );
        let plain = doc! {"participants": [{"user_id": "u", "role": "superuser"}]};
        assert_eq!(
            access_from_document(&plain),
            Access {
                role: Role::Member,
                ban: None,
                mute: None
            }
        );
    }
}
