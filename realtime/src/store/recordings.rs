//! `call_recordings` in MongoDB (SPEC.md §3): one document per recording, written whole
//! at every change by the gateway that made it. Each write carries the recording's
//! version; a write older than the stored document changes nothing (two gateways may
//! write changes of one recording in either order). `storage` and `quality` belong to
//! the recorder (admin API) and are never written here.

use mongodb::bson::{Bson, DateTime, Document, doc};

use super::Store;
use crate::calls::state::Recording;
use crate::error::{Error, Result};

pub const CALL_RECORDINGS: &str = "call_recordings";
const DUPLICATE_KEY: i32 = 11000;

fn at(ms: i64) -> DateTime {
    DateTime::from_millis(ms)
}

fn maybe_at(ms: Option<i64>) -> Bson {
    ms.map_or(Bson::Null, |m| Bson::DateTime(at(m)))
}

/// The fields of the document a recording owns, with its version.
pub fn recording_fields(
    tenant: &str,
    call: &str,
    conversation: &str,
    rec: &Recording,
    now: i64,
) -> Document {
    let consents: Vec<Document> = rec
        .consents
        .iter()
        .map(|c| doc! {"user_id": &c.user_id, "consent": c.consent, "at": at(c.at)})
        .collect();
    let pending: Vec<Document> = rec
        .pending
        .iter()
        .map(|(user, deadline)| doc! {"user_id": user, "deadline": at(*deadline)})
        .collect();
    doc! {
        "tenant_id": tenant,
        "recording_id": &rec.id,
        "call_id": call,
        "conversation_id": conversation,
        "requested_by": &rec.requested_by,
        "status": rec.status.as_str(),
        "reason": rec.reason.as_deref().map_or(Bson::Null, Bson::from),
        "consents": consents,
        "pending_consents": pending,
        "consent_deadline": at(rec.deadline),
        "started_at": maybe_at(rec.started_at),
        "stopped_at": maybe_at(rec.stopped_at),
        "created_at": at(rec.created_at),
        "updated_at": at(now),
        "version": i64::try_from(rec.version).unwrap_or(i64::MAX),
    }
}

impl Store {
    /// Writes the recording's document unless a newer version is stored already. False
    /// when the recording was erased (its tombstone stays; nothing is written).
    pub async fn save_recording(&self, fields: Document) -> Result<bool> {
        let filter = doc! {
            "tenant_id": fields.get("tenant_id").cloned().unwrap_or(Bson::Null),
            "recording_id": fields.get("recording_id").cloned().unwrap_or(Bson::Null),
            "version": {"$lt": fields.get("version").cloned().unwrap_or(Bson::Null)},
        };
        let (filter_again, fields_again) = (filter.clone(), fields.clone());
        let reply = self
            .write(doc! {
                "update": CALL_RECORDINGS,
                "updates": [{"q": filter, "u": {"$set": fields}, "upsert": true}],
            })
            .await;
        match reply {
            Ok(reply) => match write_error_codes(&reply).as_slice() {
                [] => Ok(true),
                // No match, and the upsert hit the unique recording_id: a newer version
                // is stored — or another gateway inserted the first version a moment
                // ago, which this (newer) one must still replace.
                [DUPLICATE_KEY] => self.update_recording(filter_again, fields_again).await,
                codes => Err(Error::MongoWrite(format!(
                    "{CALL_RECORDINGS} write refused with codes {codes:?}"
                ))),
            },
            Err(e) if is_duplicate_key(&e) => {
                self.update_recording(filter_again, fields_again).await
            }
            Err(e) => Err(e),
        }
    }

    /// The versioned update without the upsert: changes nothing when a newer version is
    /// stored (or the recording was erased: false).
    async fn update_recording(&self, filter: Document, fields: Document) -> Result<bool> {
        let tenant = fields.get_str("tenant_id").unwrap_or_default().to_owned();
        let id = fields
            .get_str("recording_id")
            .unwrap_or_default()
            .to_owned();
        let reply = self
            .write(doc! {
                "update": CALL_RECORDINGS,
                "updates": [{"q": filter, "u": {"$set": fields}}],
            })
            .await?;
        match write_error_codes(&reply).as_slice() {
            [] if reply.get_i32("n").unwrap_or(1) == 0 => {
                Ok(!self.recording_erased(&tenant, &id).await?)
            }
            [] => Ok(true),
            codes => Err(Error::MongoWrite(format!(
                "{CALL_RECORDINGS} write refused with codes {codes:?}"
            ))),
        }
    }

    /// A recording's document as stored (tests and the admin API read it this way).
    pub async fn recording(&self, tenant: &str, recording: &str) -> Result<Option<Document>> {
        Ok(self
            .database()
            .collection::<Document>(CALL_RECORDINGS)
            .find_one(doc! {"tenant_id": tenant, "recording_id": recording})
            .await?)
    }
}

fn write_error_codes(reply: &Document) -> Vec<i32> {
    reply
        .get_array("writeErrors")
        .map(|errors| {
            errors
                .iter()
                .filter_map(Bson::as_document)
                .filter_map(|e| e.get_i32("code").ok())
                .collect()
        })
        .unwrap_or_default()
}

fn is_duplicate_key(e: &Error) -> bool {
    match e {
        Error::Mongo(e) => {
            matches!(
                *e.kind,
                mongodb::error::ErrorKind::Command(ref c) if c.code == DUPLICATE_KEY
            ) || e.to_string().contains("E11000")
        }
        Error::MongoWrite(m) => m.contains("E11000") || m.contains("11000"),
        _ => false,
    }
}
