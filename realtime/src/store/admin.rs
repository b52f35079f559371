//! What the admin API reads and changes in MongoDB: recordings (list, patch, erase), the
//! records about one user (export), the audit log. A user's erasure is in `erasure`.
//!
//! An erased recording leaves a tombstone `{tenant_id, recording_id, erased: true}` of the
//! highest version, so a change of its call still queued in Redis can never write it
//! again (see `recordings::save_recording`); readers skip tombstones.

use futures::TryStreamExt;
use mongodb::ClientSession;
use mongodb::bson::{DateTime, Document, doc};

use super::recordings::CALL_RECORDINGS;
use super::{CONVERSATIONS, MESSAGES, MODERATION_LOG, Store};
use crate::error::Result;

pub const ADMIN_AUDIT: &str = "admin_audit";
/// Filters of `GET /v1/admin/recordings`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordingQuery {
    pub conversation: Option<String>,
    pub status: Option<String>,
    /// Only recordings older than this id (ids are time-ordered UUIDv7).
    pub before: Option<String>,
    pub limit: usize,
}

/// The filter of the recordings a user took part in (asked, consented or was asked).
pub(super) fn took_part(tenant: &str, user: &str) -> Document {
    doc! {
        "tenant_id": tenant,
        "erased": {"$ne": true},
        "$or": [
            {"requested_by": user},
            {"consents.user_id": user},
            {"pending_consents.user_id": user},
        ],
    }
}

impl Store {
    pub(super) fn recordings(&self) -> mongodb::Collection<Document> {
        self.database().collection(CALL_RECORDINGS)
    }

    /// A page of recordings, newest first; one more than `limit` tells there is a next page.
    pub async fn list_recordings(&self, tenant: &str, q: &RecordingQuery) -> Result<Vec<Document>> {
        let mut filter = doc! {"tenant_id": tenant, "erased": {"$ne": true}};
        if let Some(c) = &q.conversation {
            filter.insert("conversation_id", c);
        }
        if let Some(s) = &q.status {
            filter.insert("status", s);
        }
        if let Some(before) = &q.before {
            filter.insert("recording_id", doc! {"$lt": before});
        }
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        Ok(self
            .recordings()
            .find(filter)
            .sort(doc! {"recording_id": -1})
            .limit(limit + 1)
            .await?
            .try_collect()
            .await?)
    }

    /// A recording that is not erased.
    pub async fn live_recording(&self, tenant: &str, recording: &str) -> Result<Option<Document>> {
        Ok(self
            .recordings()
            .find_one(
                doc! {"tenant_id": tenant, "recording_id": recording, "erased": {"$ne": true}},
            )
            .await?)
    }

    /// Sets `storage` and/or `quality` (a `Null` clears one); the document after, or
    /// `None` when there is no such recording.
    pub async fn patch_recording(
        &self,
        tenant: &str,
        recording: &str,
        set: Document,
    ) -> Result<Option<Document>> {
        let mut set = set;
        set.insert("updated_at", DateTime::now());
        Ok(self
            .recordings()
            .find_one_and_update(
                doc! {"tenant_id": tenant, "recording_id": recording, "erased": {"$ne": true}},
                doc! {"$set": set},
            )
            .return_document(mongodb::options::ReturnDocument::After)
            .await?)
    }

    /// Replaces a recording by its tombstone: nothing of it is left but its id, and no
    /// later write of its call can bring it back. True when there was one to erase.
    pub async fn erase_recording(&self, tenant: &str, recording: &str) -> Result<bool> {
        let mut session = self.database().client().start_session().await?;
        self.erase_recording_in(tenant, recording, &mut session)
            .await
    }

    /// [`Self::erase_recording`] in `session` (a user's erasure counts it in the same
    /// transaction).
    pub async fn erase_recording_in(
        &self,
        tenant: &str,
        recording: &str,
        session: &mut ClientSession,
    ) -> Result<bool> {
        let result = self
            .recordings()
            .replace_one(
                doc! {"tenant_id": tenant, "recording_id": recording, "erased": {"$ne": true}},
                doc! {
                    "tenant_id": tenant,
                    "recording_id": recording,
                    "erased": true,
                    "erased_at": DateTime::now(),
                    "version": i64::MAX,
                },
            )
            .session(session)
            .await?;
        Ok(result.modified_count > 0)
    }

    /// True when the recording was erased (its tombstone is stored).
    pub async fn recording_erased(&self, tenant: &str, recording: &str) -> Result<bool> {
        Ok(self
            .recordings()
            .find_one(doc! {"tenant_id": tenant, "recording_id": recording, "erased": true})
            .projection(doc! {"_id": 1})
            .await?
            .is_some())
    }

    pub async fn audit(&self, entry: Document) -> Result<()> {
        self.database()
            .collection::<Document>(ADMIN_AUDIT)
            .insert_one(entry)
            .await?;
        Ok(())
    }

    // --- export -------------------------------------------------------------------

    /// Conversations the user is a participant of, or restricted in.
    pub async fn user_conversations(&self, tenant: &str, user: &str) -> Result<Vec<Document>> {
        Ok(self
            .database()
            .collection::<Document>(CONVERSATIONS)
            .find(doc! {"tenant_id": tenant, "$or": [
                {"participants.user_id": user},
                {"bans.user_id": user},
                {"mutes.user_id": user},
                {"bans.by": user},
                {"mutes.by": user},
            ]})
            .sort(doc! {"conversation_id": 1})
            .await?
            .try_collect()
            .await?)
    }

    /// Moderation log entries about the user or by them, oldest first.
    pub async fn user_moderation(&self, tenant: &str, user: &str) -> Result<Vec<Document>> {
        Ok(self
            .database()
            .collection::<Document>(MODERATION_LOG)
            .find(doc! {"tenant_id": tenant, "$or": [{"user_id": user}, {"by": user}]})
            .sort(doc! {"created_at": 1, "_id": 1})
            .await?
            .try_collect()
            .await?)
    }

    pub async fn user_recordings(&self, tenant: &str, user: &str) -> Result<Vec<Document>> {
        Ok(self
            .recordings()
            .find(took_part(tenant, user))
            .sort(doc! {"recording_id": 1})
            .await?
            .try_collect()
            .await?)
    }

    /// The user's messages (not failed ones), by conversation and sequence, as a cursor.
    pub async fn user_messages(
        &self,
        tenant: &str,
        user: &str,
    ) -> Result<mongodb::Cursor<Document>> {
        Ok(self
            .database()
            .collection::<Document>(MESSAGES)
            .find(doc! {"tenant_id": tenant, "sender_id": user, "tombstone": {"$ne": true}})
            .sort(doc! {"conversation_id": 1, "seq": 1})
            .batch_size(1000)
            .await?)
    }
}
