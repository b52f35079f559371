//! MongoDB access: conversations (membership), messages (bulk upserts, history) and the
//! default indexes. Document shapes are a contract (SPEC.md §3):
//! `conversations {tenant_id, conversation_id, participants: [{user_id, role}], last_message_at}`,
//! `messages {tenant_id, conversation_id, message_id, seq, sender_id, content, created_at}`.
//! Every query carries `tenant_id`.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{self, Bson, DateTime, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, Database, IndexModel};

use crate::error::{Error, Result};
use crate::protocol::{ChatRecord, Content, WireMessage};

mod rooms;
pub use rooms::{LogEntry, MODERATION_LOG, RestrictionKind};

pub const CONVERSATIONS: &str = "conversations";
pub const MESSAGES: &str = "messages";
const NAMESPACE_NOT_FOUND: i32 = 26;

#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    pub async fn connect(uri: &str, database: &str) -> Result<Self> {
        let client = Client::with_uri_str(uri).await?;
        Ok(Self {
            db: client.database(database),
        })
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

    /// Creates the default indexes of SPEC.md §3 that this data plane relies on, plus the
    /// history index `(tenant_id, conversation_id, seq)`.
    pub async fn ensure_indexes(&self) -> Result<()> {
        let unique_sparse = IndexOptions::builder().unique(true).sparse(true).build();
        self.messages()
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! {"message_id": 1})
                    .options(unique_sparse)
                    .build(),
                IndexModel::builder()
                    .keys(doc! {"tenant_id": 1, "conversation_id": 1, "seq": -1})
                    .build(),
            ])
            .await?;
        self.conversations()
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! {"tenant_id": 1, "participants.user_id": 1})
                    .build(),
                IndexModel::builder()
                    .keys(doc! {"tenant_id": 1, "conversation_id": 1})
                    .build(),
            ])
            .await?;
        self.db
            .collection::<Document>(MODERATION_LOG)
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"tenant_id": 1, "conversation_id": 1, "created_at": -1})
                    .build(),
            )
            .await?;
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
    ) -> Result<Vec<WireMessage>> {
        let mut filter = doc! {"tenant_id": tenant, "conversation_id": conversation};
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
        docs.iter().map(wire_from_document).collect()
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
    /// `insert` whose duplicate-key refusals are the redeliveries (about twice as fast as
    /// upserts); without it, one `update` command of `$setOnInsert` upserts. Returns how
    /// many documents were new.
    pub async fn write_messages(&self, records: &[ChatRecord], unique_index: bool) -> Result<u64> {
        if unique_index {
            self.insert_messages(records).await
        } else {
            self.upsert_messages(records).await
        }
    }

    async fn insert_messages(&self, records: &[ChatRecord]) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        let documents: Vec<Bson> = records
            .iter()
            .map(|r| message_document(r).map(Bson::Document))
            .collect::<Result<_>>()?;
        let reply = self
            .db
            .run_command(doc! {"insert": MESSAGES, "documents": documents, "ordered": false})
            .await?;
        let duplicates = duplicate_key_errors(&reply)?;
        let inserted = reply
            .get_i32("n")
            .map_or(0, |n| u64::try_from(n).unwrap_or(0));
        tracing::debug!(inserted, duplicates, "messages inserted");
        Ok(inserted)
    }

    /// Stores a batch with one `update` command of upserts keyed by `message_id`
    /// (`$setOnInsert`), so a redelivered message changes nothing. Returns how many
    /// documents were newly inserted.
    pub async fn upsert_messages(&self, records: &[ChatRecord]) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
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
            .db
            .run_command(doc! {"update": MESSAGES, "updates": updates, "ordered": false})
            .await?;
        check_write_reply(&reply)?;
        Ok(reply.get_array("upserted").map_or(0, |a| a.len() as u64))
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
            .db
            .run_command(doc! {"update": CONVERSATIONS, "updates": updates, "ordered": false})
            .await?;
        check_write_reply(&reply)
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Counts write errors that are duplicate-key refusals (code 11000); any other write error
/// fails the whole call.
fn duplicate_key_errors(reply: &Document) -> Result<usize> {
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Ok(0);
    };
    let mut duplicates = 0;
    for e in errors {
        let code = e
            .as_document()
            .and_then(|d| d.get("code"))
            .and_then(|c| match c {
                Bson::Int32(v) => Some(i64::from(*v)),
                Bson::Int64(v) => Some(*v),
                Bson::Double(v) => Some(*v as i64),
                _ => None,
            });
        if code == Some(11000) {
            duplicates += 1;
        } else {
            return Err(Error::Other(format!("mongodb write error: {e}")));
        }
    }
    Ok(duplicates)
}

fn check_write_reply(reply: &Document) -> Result<()> {
    match reply.get_array("writeErrors") {
        Ok(errors) if !errors.is_empty() => Err(Error::Other(format!(
            "mongodb reported {} write errors: {:?}",
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
        "content": bson::to_bson(&r.content).map_err(|e| Error::Other(e.to_string()))?,
        "created_at": DateTime::from_millis(r.created_at_ms),
    })
}

fn wire_from_document(d: &Document) -> Result<WireMessage> {
    let field = |name: &str| -> Result<String> {
        d.get_str(name)
            .map(str::to_owned)
            .map_err(|_| Error::Other(format!("stored message lacks string field {name}")))
    };
    let content: Content = bson::from_bson(d.get("content").cloned().unwrap_or(Bson::Null))
        .map_err(|e| Error::Other(format!("stored message content: {e}")))?;
    Ok(WireMessage {
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
        assert_eq!(wire_from_document(&d).unwrap(), r.to_wire());
    }

    #[test]
    fn duplicate_keys_are_redeliveries_other_errors_fail() {
        assert_eq!(duplicate_key_errors(&doc! {"n": 2}).unwrap(), 0);
        let dup = doc! {"n": 1, "writeErrors": [{"index": 1, "code": 11000}, {"index": 2, "code": 11000_i64}]};
        assert_eq!(duplicate_key_errors(&dup).unwrap(), 2);
        let other =
            doc! {"n": 0, "writeErrors": [{"index": 0, "code": 11000}, {"index": 1, "code": 121}]};
        assert!(duplicate_key_errors(&other).is_err());
    }

    #[test]
    fn write_errors_are_errors() {
        assert!(check_write_reply(&doc! {"ok": 1, "n": 1}).is_ok());
        assert!(check_write_reply(&doc! {"ok": 1, "writeErrors": [{"code": 11000}]}).is_err());
    }
}
