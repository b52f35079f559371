//! MongoDB access: conversations (membership), messages (bulk upserts, history) and the
//! default indexes. Document shapes are a contract (SPEC.md §3):
//! `conversations {tenant_id, conversation_id, participants: [{user_id, role}], last_message_at}`,
//! `messages {tenant_id, conversation_id, message_id, seq, sender_id, content, created_at}`.
//! Every query carries `tenant_id`.
//!
//! Message writes carry the configured write concern (`MONGODB_WRITE_CONCERN`, majority by
//! default); a `writeConcernError` fails the write like any other error. A message that
//! will never be stored is *fenced*: a tombstone `{message_id, seq, …, tombstone: true}`
//! takes its id in the unique index, so a copy still in Kafka cannot be stored later.
//! Readers skip tombstones.
//!
//! Moderation's documents live in `rooms`; this file keeps the message writes, whose
//! error handling (which refusals are redeliveries, which are final) must be read whole.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{self, Bson, DateTime, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, Database, IndexModel};

use crate::error::{Error, Result};
use crate::model::{Content, Message};
use crate::protocol::ChatRecord;

pub mod admin;
pub mod erasure;
pub mod recordings;
mod rooms;
pub use rooms::{LogEntry, MODERATION_LOG, RestrictionKind};

pub const CONVERSATIONS: &str = "conversations";
pub const MESSAGES: &str = "messages";
const NAMESPACE_NOT_FOUND: i32 = 26;

/// Readers of `messages` skip tombstones of messages that failed.
fn not_tombstone() -> Document {
    doc! {"tombstone": {"$ne": true}}
}

/// Error codes of a write error that a retry may cure (MongoDB's retryable-write codes
/// and write-concern failures); any other write error is a verdict on the document.
const RETRYABLE_CODES: [i32; 14] = [
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 64, 50,
];

/// The outcome of writing a batch of messages.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WriteOutcome {
    /// Messages stored by this write.
    pub inserted: u64,
    /// Messages that were stored before (redeliveries, copies, fenced ids).
    pub redelivered: u64,
    /// Messages the database refused for good, by index in the batch, with the reason.
    pub refused: Vec<(usize, String)>,
}

/// The outcome of fencing a message off (see [`Store::fence_message`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// A tombstone holds the id: the message can never be stored.
    Fenced,
    /// The message itself was stored first.
    Stored,
}

#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    write_concern: Document,
}

impl Store {
    /// `write_concern` is MongoDB's `w`: `majority`, a number of nodes, or a tag set name;
    /// `write_timeout` bounds the wait for it (zero: no bound).
    pub async fn connect(
        uri: &str,
        database: &str,
        write_concern: &str,
        write_timeout: std::time::Duration,
    ) -> Result<Self> {
        let client = Client::with_uri_str(uri).await?;
        let w = match write_concern.parse::<i32>() {
            Ok(n) => Bson::Int32(n),
            Err(_) => Bson::String(write_concern.to_owned()),
        };
        let mut concern = doc! {"w": w};
        if !write_timeout.is_zero() {
            concern.insert(
                "wtimeout",
                i64::try_from(write_timeout.as_millis()).unwrap_or(i64::MAX),
            );
        }
        Ok(Self {
            db: client.database(database),
            write_concern: concern,
        })
    }

    /// Runs a write command with the configured write concern and fails on a
    /// `writeConcernError` (which arrives with `ok: 1`).
    async fn write(&self, mut command: Document) -> Result<Document> {
        command.insert("writeConcern", self.write_concern.clone());
        let reply = self.db.run_command(command).await?;
        check_write_concern(&reply)?;
        Ok(reply)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    fn messages(&self) -> Collection<Document> {
        self.db.collection(MESSAGES)
    }

    fn conversations(&self) -> Collection<Document> {
        self.db.collection(CONVERSATIONS)
    }

    pub async fn ping(&self) -> Result<()> {
        self.db.run_command(doc! {"ping": 1}).await?;
        Ok(())
    }

    /// Creates the default indexes the data plane relies on
    /// ([`realtime_api::DEFAULT_INDEXES`], the list the operator makes MongoIndex
    /// resources of) when missing.
    pub async fn ensure_indexes(&self) -> Result<()> {
        for index in realtime_api::DEFAULT_INDEXES {
            let mut keys = Document::new();
            for (field, order) in index.keys {
                keys.insert(*field, *order);
            }
            let options = IndexOptions::builder()
                .unique(index.unique.then_some(true))
                .sparse(index.sparse.then_some(true))
                .build();
            self.db
                .collection::<Document>(index.collection)
                .create_index(IndexModel::builder().keys(keys).options(options).build())
                .await?;
        }
        Ok(())
    }

    /// Highest stored sequence number of a conversation (0 when it has no messages).
    pub async fn max_seq(&self, tenant: &str, conversation: &str) -> Result<u64> {
        let last = self
            .messages()
            .find_one(doc! {"tenant_id": tenant, "conversation_id": conversation})
            .sort(doc! {"seq": -1})
            .projection(doc! {"seq": 1})
            .await?;
        Ok(last
            .and_then(|d| d.get_i64("seq").ok())
            .map_or(0, |s| u64::try_from(s).unwrap_or(0)))
    }

    /// A page of history, newest first, strictly before `before_seq` when given.
    pub async fn history(
        &self,
        tenant: &str,
        conversation: &str,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let mut filter = doc! {"tenant_id": tenant, "conversation_id": conversation};
        filter.extend(not_tombstone());
        if let Some(before) = before_seq {
            filter.insert("seq", doc! {"$lt": to_i64(before)});
        }
        let docs: Vec<Document> = self
            .messages()
            .find(filter)
            .sort(doc! {"seq": -1})
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await?;
        docs.iter().map(message_from_document).collect()
    }

    /// True when `messages` has a unique index on `message_id`, which makes a plain
    /// insert refuse a redelivered message.
    pub async fn message_id_is_unique(&self) -> Result<bool> {
        let mut cursor = match self.messages().list_indexes().await {
            Ok(cursor) => cursor,
            // The collection does not exist yet, so neither does the index.
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == NAMESPACE_NOT_FOUND) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        while let Some(index) = cursor.try_next().await? {
            let unique = index
                .options
                .as_ref()
                .and_then(|o| o.unique)
                .unwrap_or(false);
            if unique && index.keys.keys().eq(["message_id"]) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Stores a batch keyed by `message_id` so that a redelivered message changes nothing.
    /// With the unique index ([`Self::message_id_is_unique`]) this is one unordered
    /// `insert` whose duplicate-key refusals on that index are the redeliveries (about
    /// twice as fast as upserts); without it, one `update` command of `$setOnInsert`
    /// upserts. Documents the database refuses for good are reported, not retried; a
    /// failure a retry may cure (network, election, write concern) fails the call.
    pub async fn write_messages(
        &self,
        records: &[ChatRecord],
        unique_index: bool,
    ) -> Result<WriteOutcome> {
        if records.is_empty() {
            return Ok(WriteOutcome::default());
        }
        if unique_index {
            self.insert_messages(records).await
        } else {
            self.upsert_messages(records).await
        }
    }

    async fn insert_messages(&self, records: &[ChatRecord]) -> Result<WriteOutcome> {
        let documents: Vec<Bson> = records
            .iter()
            .map(|r| message_document(r).map(Bson::Document))
            .collect::<Result<_>>()?;
        let reply = self
            .write(doc! {"insert": MESSAGES, "documents": documents, "ordered": false})
            .await?;
        let (redelivered, refused) = classify_write_errors(&reply)?;
        let inserted = reply
            .get_i32("n")
            .map_or(0, |n| u64::try_from(n).unwrap_or(0));
        tracing::debug!(
            inserted,
            redelivered,
            refused = refused.len(),
            "messages inserted"
        );
        Ok(WriteOutcome {
            inserted,
            redelivered,
            refused,
        })
    }

    /// One `update` command of upserts keyed by `message_id` (`$setOnInsert`).
    async fn upsert_messages(&self, records: &[ChatRecord]) -> Result<WriteOutcome> {
        let updates: Vec<Bson> = records
            .iter()
            .map(|r| {
                Ok(Bson::Document(doc! {
                    "q": {"message_id": &r.message_id},
                    "u": {"$setOnInsert": message_document(r)?},
                    "upsert": true,
                }))
            })
            .collect::<Result<_>>()?;
        let reply = self
            .write(doc! {"update": MESSAGES, "updates": updates, "ordered": false})
            .await?;
        let (_, refused) = classify_write_errors(&reply)?;
        let inserted = reply.get_array("upserted").map_or(0, |a| a.len() as u64);
        Ok(WriteOutcome {
            inserted,
            redelivered: (records.len() as u64)
                .saturating_sub(inserted)
                .saturating_sub(refused.len() as u64),
            refused,
        })
    }

    /// Fences a message off: writes a tombstone with its id unless the message (or an
    /// earlier tombstone) holds the id already. After `Fenced`, no copy of the message
    /// can be stored (the persister's insert meets the unique id); after `Stored`, it is
    /// stored.
    pub async fn fence_message(&self, r: &ChatRecord) -> Result<Fence> {
        let mut tombstone = message_document(r)?;
        tombstone.remove("content");
        tombstone.insert("tombstone", true);
        let reply = self
            .write(doc! {
                "findAndModify": MESSAGES,
                "query": {"message_id": &r.message_id},
                "update": {"$setOnInsert": tombstone},
                "upsert": true,
                "new": false,
            })
            .await?;
        Ok(match reply.get_document("value") {
            Ok(existing) if !existing.get_bool("tombstone").unwrap_or(false) => Fence::Stored,
            _ => Fence::Fenced,
        })
    }

    /// Moves `last_message_at` of each conversation forward to its newest message in the
    /// batch (never backwards: redelivered old messages do not rewind it).
    pub async fn touch_conversations(&self, records: &[ChatRecord]) -> Result<()> {
        let mut newest: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for r in records {
            let at = newest
                .entry((&r.tenant_id, &r.conversation_id))
                .or_insert(r.created_at_ms);
            *at = (*at).max(r.created_at_ms);
        }
        if newest.is_empty() {
            return Ok(());
        }
        let updates: Vec<Bson> = newest
            .into_iter()
            .map(|((tenant, conversation), at)| {
                Bson::Document(doc! {
                    "q": {"tenant_id": tenant, "conversation_id": conversation},
                    "u": {"$max": {"last_message_at": DateTime::from_millis(at)}},
                })
            })
            .collect();
        let reply = self
            .write(doc! {"update": CONVERSATIONS, "updates": updates, "ordered": false})
            .await?;
        check_write_reply(&reply)
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn code_of(d: &Document) -> Option<i64> {
    match d.get("code")? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

/// True when a duplicate-key error is about the `message_id` index (a redelivery), not
/// about another unique index a deployment added.
fn on_message_id(error: &Document) -> bool {
    match error.get_document("keyPattern") {
        Ok(pattern) => pattern.keys().eq(["message_id"]),
        // Servers that omit keyPattern name the index in the message.
        Err(_) => error
            .get_str("errmsg")
            .is_ok_and(|m| m.contains("message_id")),
    }
}

/// Sorts the write errors of an unordered write: duplicates of `message_id` are
/// redeliveries; codes a retry may cure fail the call; anything else is a refusal of
/// that document, returned with its index and reason.
fn classify_write_errors(reply: &Document) -> Result<(u64, Vec<(usize, String)>)> {
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Ok((0, Vec::new()));
    };
    let mut redelivered = 0;
    let mut refused = Vec::new();
    for e in errors {
        let Some(e) = e.as_document() else { continue };
        let code = code_of(e);
        let reason = format!(
            "code {}: {}",
            code.unwrap_or(0),
            e.get_str("errmsg").unwrap_or("no message")
        );
        if code == Some(11000) && on_message_id(e) {
            redelivered += 1;
        } else if code.is_some_and(|c| RETRYABLE_CODES.iter().any(|r| i64::from(*r) == c)) {
            return Err(Error::MongoWrite(format!(
                "a retryable write error: {reason}"
            )));
        } else {
            let index = e
                .get_i32("index")
                .ok()
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or(usize::MAX);
            refused.push((index, reason));
        }
    }
    Ok((redelivered, refused))
}

/// A `writeConcernError` means the write may not survive a failover: a failed write.
fn check_write_concern(reply: &Document) -> Result<()> {
    match reply.get_document("writeConcernError") {
        Ok(e) => Err(Error::MongoWrite(format!(
            "write concern not satisfied (code {}): {}",
            code_of(e).unwrap_or(0),
            e.get_str("errmsg").unwrap_or("no message")
        ))),
        Err(_) => Ok(()),
    }
}

fn check_write_reply(reply: &Document) -> Result<()> {
    match reply.get_array("writeErrors") {
        Ok(errors) if !errors.is_empty() => Err(Error::MongoWrite(format!(
            "{} write errors: {:?}",
            errors.len(),
            errors.first()
        ))),
        _ => Ok(()),
    }
}

pub fn message_document(r: &ChatRecord) -> Result<Document> {
    Ok(doc! {
        "tenant_id": &r.tenant_id,
        "conversation_id": &r.conversation_id,
        "message_id": &r.message_id,
        "seq": to_i64(r.seq),
        "sender_id": &r.sender_id,
        "client_message_id": &r.client_message_id,
        "content": bson::to_bson(&r.content)?,
        "created_at": DateTime::from_millis(r.created_at_ms),
    })
}

pub(crate) fn message_from_document(d: &Document) -> Result<Message> {
    let field = |name: &str| -> Result<String> {
        d.get_str(name)
            .map(str::to_owned)
            .map_err(|_| Error::Corrupt {
                what: "stored message",
                detail: format!("no string field {name}"),
            })
    };
    let content: Content = bson::from_bson(d.get("content").cloned().unwrap_or(Bson::Null))
        .map_err(|e| Error::Corrupt {
            what: "stored message",
            detail: format!("content: {e}"),
        })?;
    Ok(Message {
        message_id: field("message_id")?,
        conversation_id: field("conversation_id")?,
        seq: d
            .get_i64("seq")
            .map_or(0, |s| u64::try_from(s).unwrap_or(0)),
        sender_id: field("sender_id")?,
        client_message_id: field("client_message_id").unwrap_or_default(),
        content,
        created_at: d
            .get_datetime("created_at")
            .map_or(0, |t| t.timestamp_millis()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_shape_and_round_trip() {
        let r = ChatRecord {
            tenant_id: "t".into(),
            conversation_id: "c".into(),
            message_id: "m".into(),
            seq: 3,
            sender_id: "u".into(),
            client_message_id: "k".into(),
            content: Content::Text { text: "hi".into() },
            created_at_ms: 1_700_000_000_000,
        };
        let d = message_document(&r).unwrap();
        for key in [
            "tenant_id",
            "conversation_id",
            "message_id",
            "seq",
            "sender_id",
            "content",
            "created_at",
        ] {
            assert!(d.contains_key(key), "{key}");
        }
        assert_eq!(
            d.get_document("content").unwrap().get_str("type").unwrap(),
            "text"
        );
        assert_eq!(message_from_document(&d).unwrap(), r.to_message());
    }

    #[test]
    fn only_duplicates_of_message_id_are_redeliveries() {
        assert_eq!(
            classify_write_errors(&doc! {"n": 2}).unwrap(),
            (0, Vec::new())
        );
        let reply = doc! {"n": 1, "writeErrors": [
            {"index": 1, "code": 11000, "keyPattern": {"message_id": 1}},
            {"index": 2, "code": 11000_i64, "errmsg": "E11000 index: message_id_1 dup key"},
            {"index": 3, "code": 11000, "keyPattern": {"client_message_id": 1}, "errmsg": "dup"},
            {"index": 4, "code": 121, "errmsg": "Document failed validation"},
        ]};
        let (redelivered, refused) = classify_write_errors(&reply).unwrap();
        assert_eq!(redelivered, 2);
        assert_eq!(refused.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [3, 4]);
        assert!(refused[1].1.contains("failed validation"));
        let retry = doc! {"writeErrors": [{"index": 0, "code": 91, "errmsg": "shutting down"}]};
        assert!(classify_write_errors(&retry).is_err());
    }

    #[test]
    fn a_write_concern_error_is_a_failed_write() {
        assert!(check_write_concern(&doc! {"ok": 1, "n": 1}).is_ok());
        let e = check_write_concern(&doc! {"ok": 1, "n": 1, "writeConcernError": {"code": 100, "errmsg": "Not enough data-bearing nodes"}})
            .unwrap_err();
        assert!(e.to_string().contains("write concern"), "{e}");
    }

    #[test]
    fn write_errors_are_errors() {
        assert!(check_write_reply(&doc! {"ok": 1, "n": 1}).is_ok());
        assert!(check_write_reply(&doc! {"ok": 1, "writeErrors": [{"code": 11000}]}).is_err());
    }
}
