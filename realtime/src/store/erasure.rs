//! A user's erasure in MongoDB, keeping no personal data and keeping history whole: their
//! messages stay in place with their `seq` (other members' history pages and recovery do
//! not shift) but lose sender, content and client id (`{type: "erased"}`). Every step is
//! idempotent and runs in a transaction with its count in the erasure job
//! (`user_erasures`, keyed by a digest of tenant and user, never the id): a crash counts
//! a step fully or not at all, and running the erasure again finishes what the first
//! left and changes nothing else.

use futures::TryStreamExt;
use mongodb::ClientSession;
use mongodb::bson::{Bson, DateTime, Document, doc};

use super::admin::took_part;
use super::{CONVERSATIONS, MESSAGES, MODERATION_LOG, Store};
use crate::error::Result;

pub const USER_ERASURES: &str = "user_erasures";

/// How long an erasure step retries a write conflict (a crashed attempt's transaction
/// holds its documents until the server expires it: 60 s on MongoDB).
const TRANSACTION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(90);

/// Messages redacted per write while erasing a user.
pub const ERASE_BATCH: usize = 500;

/// One step of a user's erasure, run in a transaction with its count (see
/// [`Store::counted`]).
#[derive(Debug)]
pub enum Step<'a> {
    /// A batch of the user's messages, by `_id`.
    Messages { user: &'a str, ids: &'a [Bson] },
    /// A recording they took part in, by id.
    Recording(&'a str),
    /// Their memberships and restrictions.
    Memberships(&'a str),
    /// The moderation log about them and by them.
    Moderation(&'a str),
    /// What was erased elsewhere (Redis), only to be counted.
    Counted(ErasureCounts),
}

/// What a user's erasure changed, per kind of record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureCounts {
    /// Messages the user sent, redacted (kept as `{type: "erased"}` with their `seq`).
    pub messages: u64,
    /// Conversations the user was taken out of.
    pub memberships: u64,
    /// Bans and mutes on the user, lifted; bans and mutes they imposed, made anonymous.
    pub restrictions: u64,
    /// Moderation log entries about the user (deleted) or by them (made anonymous).
    pub moderation_entries: u64,
    /// Recordings the user took part in, erased (consents included).
    pub recordings: u64,
    /// Redis keys and entries: room state, presence, caches, rate limits, idempotency
    /// records, recovery-window entries, call sockets.
    pub redis_entries: u64,
}

impl ErasureCounts {
    /// One count by its metric name.
    pub fn field(&self, kind: &str) -> u64 {
        match kind {
            "messages" => self.messages,
            "memberships" => self.memberships,
            "restrictions" => self.restrictions,
            "moderation_entries" => self.moderation_entries,
            "recordings" => self.recordings,
            "redis_entries" => self.redis_entries,
            _ => 0,
        }
    }

    pub fn add(&mut self, other: &ErasureCounts) {
        self.messages += other.messages;
        self.memberships += other.memberships;
        self.restrictions += other.restrictions;
        self.moderation_entries += other.moderation_entries;
        self.recordings += other.recordings;
        self.redis_entries += other.redis_entries;
    }

    fn to_document(self) -> Document {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        doc! {
            "messages": n(self.messages),
            "memberships": n(self.memberships),
            "restrictions": n(self.restrictions),
            "moderation_entries": n(self.moderation_entries),
            "recordings": n(self.recordings),
            "redis_entries": n(self.redis_entries),
        }
    }

    fn from_document(d: &Document) -> Self {
        let n = |k: &str| {
            d.get_i64(k)
                .ok()
                .or_else(|| d.get_i32(k).ok().map(i64::from))
                .map_or(0, |v| u64::try_from(v).unwrap_or(0))
        };
        Self {
            messages: n("messages"),
            memberships: n("memberships"),
            restrictions: n("restrictions"),
            moderation_entries: n("moderation_entries"),
            recordings: n("recordings"),
            redis_entries: n("redis_entries"),
        }
    }
}

/// An erasure attempt: the job as stored (identified by a digest of tenant and user —
/// the job keeps no user id — with the conversations it must visit and what it erased
/// so far) and the MongoDB session its transactions run in. The session's id is stored
/// in the job, so that the next attempt after a crash ends this one's transaction at once
/// (`killSessions`) instead of waiting for the server to expire it.
pub struct ErasureJob {
    pub tenant: String,
    pub subject: String,
    pub conversations: Vec<String>,
    /// Counts as they were when this attempt began.
    pub counts: ErasureCounts,
    pub attempts: i64,
    session: ClientSession,
}

impl std::fmt::Debug for ErasureJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasureJob")
            .field("subject", &self.subject)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Store {
    fn erasures(&self) -> mongodb::Collection<Document> {
        self.database().collection(USER_ERASURES)
    }

    /// One job per tenant and user, also when two first attempts race (created by the
    /// admin role at start-up: the collection is its own bookkeeping).
    pub async fn ensure_erasure_index(&self) -> Result<()> {
        let index = mongodb::IndexModel::builder()
            .keys(doc! {"tenant_id": 1, "subject": 1})
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .name("tenant_subject".to_owned())
                    .build(),
            )
            .build();
        self.erasures().create_index(index).await?;
        Ok(())
    }

    /// True when an erasure of `subject` was started before (finished or not).
    pub async fn erasure_started(&self, tenant: &str, subject: &str) -> Result<bool> {
        Ok(self
            .erasures()
            .find_one(doc! {"tenant_id": tenant, "subject": subject})
            .projection(doc! {"_id": 1})
            .await?
            .is_some())
    }

    /// Starts (or resumes) the erasure job of `subject`, adding `conversations` to those
    /// it must visit. An earlier attempt's session is killed first: a transaction it left
    /// open when its process died would hold its documents until the server expires it.
    pub async fn begin_erasure(
        &self,
        tenant: &str,
        subject: &str,
        conversations: &[String],
    ) -> Result<ErasureJob> {
        let filter = doc! {"tenant_id": tenant, "subject": subject};
        let earlier = self
            .erasures()
            .find_one(filter.clone())
            .projection(doc! {"session": 1})
            .await?
            .and_then(|j| j.get_document("session").ok().cloned());
        if let Some(lsid) = earlier {
            let killed = self
                .database()
                .client()
                .database("admin")
                .run_command(doc! {"killSessions": [lsid]})
                .await;
            if let Err(e) = killed {
                tracing::warn!(error = %e, "the earlier erasure attempt's session could not be ended; its transaction expires on its own");
            }
        }
        let session = self.database().client().start_session().await?;
        let now = DateTime::now();
        let job = self
            .erasures()
            .find_one_and_update(
                filter,
                doc! {
                    "$setOnInsert": {"started_at": now, "counts": ErasureCounts::default().to_document()},
                    "$set": {"attempted_at": now, "finished": false, "session": session.id().clone()},
                    "$inc": {"attempts": 1_i64},
                    "$addToSet": {"conversations": {"$each": conversations}},
                },
            )
            .upsert(true)
            .return_document(mongodb::options::ReturnDocument::After)
            .await?
            .unwrap_or_default();
        Ok(ErasureJob {
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            conversations: job
                .get_array("conversations")
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            counts: job
                .get_document("counts")
                .map(ErasureCounts::from_document)
                .unwrap_or_default(),
            attempts: job.get_i64("attempts").unwrap_or(1),
            session,
        })
    }

    /// Marks the job finished and returns its counts over every attempt.
    pub async fn finish_erasure(&self, job: &ErasureJob) -> Result<ErasureCounts> {
        let job = self
            .erasures()
            .find_one_and_update(
                doc! {"tenant_id": &job.tenant, "subject": &job.subject},
                doc! {
                    "$set": {"finished": true, "finished_at": DateTime::now()},
                    "$unset": {"session": "", "conversations": ""},
                },
            )
            .return_document(mongodb::options::ReturnDocument::After)
            .await?
            .unwrap_or_default();
        Ok(job
            .get_document("counts")
            .map(ErasureCounts::from_document)
            .unwrap_or_default())
    }

    /// Conversations the user sent messages to (also those they have left since).
    pub async fn conversations_written_to(&self, tenant: &str, user: &str) -> Result<Vec<String>> {
        let ids = self
            .database()
            .collection::<Document>(MESSAGES)
            .distinct(
                "conversation_id",
                doc! {"tenant_id": tenant, "sender_id": user},
            )
            .await?;
        Ok(ids
            .into_iter()
            .filter_map(|b| match b {
                Bson::String(s) => Some(s),
                _ => None,
            })
            .collect())
    }

    /// Runs one erasure step and adds what it erased to the job's counts in one
    /// transaction: a crash counts a step fully or not at all (and then the retry redoes
    /// it), so the totals are exact over any number of attempts.
    pub async fn counted(&self, job: &mut ErasureJob, step: &Step<'_>) -> Result<ErasureCounts> {
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(50);
        let (tenant, subject, attempt) = (job.tenant.as_str(), job.subject.as_str(), job.attempts);
        let session = &mut job.session;
        loop {
            let attempt = async {
                session.start_transaction().await?;
                let counts = self.run_step(tenant, step, session).await?;
                let inc: Document = counts
                    .to_document()
                    .into_iter()
                    .map(|(k, v)| (format!("counts.{k}"), v))
                    .collect();
                // Only the latest attempt counts: an older one still running (its client
                // gave up and retried) stops here, its step undone with the transaction.
                let counted = self
                    .erasures()
                    .update_one(
                        doc! {"tenant_id": tenant, "subject": subject, "attempts": attempt},
                        doc! {"$inc": inc},
                    )
                    .session(&mut *session)
                    .await?;
                if counted.matched_count == 0 {
                    return Err(crate::error::Error::Vanished(format!(
                        "erasure attempt {attempt} (a newer attempt took over)"
                    )));
                }
                session.commit_transaction().await?;
                Ok::<_, crate::error::Error>(counts)
            }
            .await;
            match attempt {
                // A write conflict passes: a concurrent write, or a crashed attempt's
                // transaction that `begin_erasure` could not end (it expires): try again.
                Err(crate::error::Error::Mongo(e))
                    if e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
                        && started.elapsed() < TRANSACTION_PATIENCE =>
                {
                    let _ = session.abort_transaction().await;
                    tracing::debug!(error = %e, "erasure step conflicted; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                }
                Ok(counts) => return Ok(counts),
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    return Err(e);
                }
            }
        }
    }

    async fn run_step(
        &self,
        tenant: &str,
        step: &Step<'_>,
        session: &mut ClientSession,
    ) -> Result<ErasureCounts> {
        match step {
            Step::Messages { user, ids } => {
                let result = self
                    .database()
                    .collection::<Document>(MESSAGES)
                    .update_many(
                        doc! {"_id": {"$in": ids.to_vec()}, "sender_id": *user},
                        doc! {"$set": {
                            "sender_id": "",
                            "client_message_id": "",
                            "content": {"type": "erased"},
                            "erased": true,
                        }},
                    )
                    .session(session)
                    .await?;
                Ok(ErasureCounts {
                    messages: result.modified_count,
                    ..Default::default()
                })
            }
            Step::Recording(id) => Ok(ErasureCounts {
                recordings: u64::from(self.erase_recording_in(tenant, id, session).await?),
                ..Default::default()
            }),
            Step::Memberships(user) => self.erase_memberships(tenant, user, session).await,
            Step::Moderation(user) => self.erase_moderation(tenant, user, session).await,
            Step::Counted(counts) => Ok(*counts),
        }
    }

    /// Redacts the user's messages in batches of [`ERASE_BATCH`], each counted in the job
    /// of `subject` in its own transaction. Sender, client id and content go; id, seq
    /// and time stay. The number redacted by this call.
    pub async fn redact_messages(&self, job: &mut ErasureJob, user: &str) -> Result<u64> {
        let tenant = job.tenant.clone();
        let tenant = tenant.as_str();
        let messages = self.database().collection::<Document>(MESSAGES);
        let mut cursor = messages
            .find(doc! {"tenant_id": tenant, "sender_id": user})
            .projection(doc! {"_id": 1})
            .batch_size(u32::try_from(ERASE_BATCH).unwrap_or(u32::MAX))
            .await?;
        let mut done = 0;
        let mut ids = Vec::with_capacity(ERASE_BATCH);
        loop {
            let next = cursor.try_next().await?;
            if let Some(id) = next.as_ref().and_then(|d| d.get("_id").cloned()) {
                ids.push(id);
            }
            if ids.len() == ERASE_BATCH || (next.is_none() && !ids.is_empty()) {
                let batch = std::mem::take(&mut ids);
                let step = Step::Messages { user, ids: &batch };
                let counts = self.counted(job, &step).await?;
                done += counts.messages;
                tracing::debug!(subject = %job.subject, done, "messages redacted");
            }
            if next.is_none() {
                return Ok(done);
            }
        }
    }

    /// Takes the user out of every conversation of the tenant: participant entries, bans
    /// and mutes on them go; bans and mutes they imposed lose their `by`.
    pub async fn erase_memberships(
        &self,
        tenant: &str,
        user: &str,
        session: &mut ClientSession,
    ) -> Result<ErasureCounts> {
        let conversations = self.database().collection::<Document>(CONVERSATIONS);
        let memberships = conversations
            .update_many(
                doc! {"tenant_id": tenant, "participants.user_id": user},
                doc! {"$pull": {"participants": {"user_id": user}}},
            )
            .session(&mut *session)
            .await?
            .modified_count;
        let mut restrictions = 0;
        for field in ["bans", "mutes"] {
            restrictions += conversations
                .update_many(
                    doc! {"tenant_id": tenant, format!("{field}.user_id"): user},
                    doc! {"$pull": {field: {"user_id": user}}},
                )
                .session(&mut *session)
                .await?
                .modified_count;
            // Restrictions the user imposed stay (they protect others) without their name.
            let imposed: Vec<Document> = conversations
                .find(doc! {"tenant_id": tenant, format!("{field}.by"): user})
                .projection(doc! {"_id": 1, field: 1})
                .session(&mut *session)
                .await?
                .stream(&mut *session)
                .try_collect()
                .await?;
            for conv in imposed {
                let list: Vec<Bson> = conv
                    .get_array(field)
                    .map(|a| {
                        a.iter()
                            .map(|e| match e {
                                Bson::Document(d) if d.get_str("by") == Ok(user) => {
                                    let mut d = d.clone();
                                    d.insert("by", Bson::Null);
                                    Bson::Document(d)
                                }
                                other => other.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                restrictions += conversations
                    .update_one(
                        doc! {"_id": conv.get("_id").cloned().unwrap_or(Bson::Null)},
                        doc! {"$set": {field: list}},
                    )
                    .session(&mut *session)
                    .await?
                    .modified_count;
            }
        }
        Ok(ErasureCounts {
            memberships,
            restrictions,
            ..Default::default()
        })
    }

    /// Deletes moderation entries about the user; entries by them lose their `by`.
    pub async fn erase_moderation(
        &self,
        tenant: &str,
        user: &str,
        session: &mut ClientSession,
    ) -> Result<ErasureCounts> {
        let log = self.database().collection::<Document>(MODERATION_LOG);
        let about = log
            .delete_many(doc! {"tenant_id": tenant, "user_id": user})
            .session(&mut *session)
            .await?
            .deleted_count;
        let by = log
            .update_many(
                doc! {"tenant_id": tenant, "by": user},
                doc! {"$set": {"by": Bson::Null}},
            )
            .session(&mut *session)
            .await?
            .modified_count;
        Ok(ErasureCounts {
            moderation_entries: about + by,
            ..Default::default()
        })
    }

    /// Ids (with their call and conversation) of the recordings the user took part in.
    pub async fn recordings_of(&self, tenant: &str, user: &str) -> Result<Vec<Document>> {
        Ok(self
            .recordings()
            .find(took_part(tenant, user))
            .projection(doc! {"recording_id": 1, "call_id": 1, "conversation_id": 1})
            .await?
            .try_collect()
            .await?)
    }
}
