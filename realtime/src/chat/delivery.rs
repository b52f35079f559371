//! Sending a message and driving it to an outcome: first sends and resends, the
//! sweeper's retries and failures, and persistence confirmations.
//!
//! Knows nothing of Socket.IO: every operation returns what it decided plus the
//! [`Emit`](super::Emit)s the transport must perform. The state machine itself is the ledger's
//! (`delivery`); this module adds the broker, the recovery window and MongoDB's fence.
//!
//! The rules that make "acknowledged means stored exactly once" hold:
//! - an id and number are drawn once per idempotency key, and every produce of that key,
//!   by whoever makes it, carries them (storage is keyed by message id);
//! - a produce error never frees the key: the outcome is unknown (a delivery that timed
//!   out in flight may be on the broker), so the message is retried with the same id;
//! - a resend never answers `ok` before the broker acknowledged the message, and never
//!   starts a second produce while one may still succeed (the lease);
//! - a message fails only if its id was fenced in MongoDB first, so it cannot be stored
//!   afterwards; a message the broker has is never failed, only reported delayed.
//!
//! Longer than most files on purpose: these rules hold only together, so they are kept
//! in one place.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::Emit;
use crate::delivery::{Accepted, Allocation, Confirmation, Due, Ledger, State, Status, TakeOver};
use crate::error::{ClientError, Error, ErrorCode};
use crate::kafka;
use crate::metrics::Metrics;
use crate::protocol::{
    ChatRecord, Message, Outcome, PersistOutcome, Persisted, PersistenceEvent, now_ms,
};
use crate::rooms::recent::RecentMessages;
use crate::sequence::Sequencer;
use crate::store::{Fence, Store};

/// A send (or resend) that the broker has.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub message_id: String,
    pub seq: u64,
    /// The idempotency key was used before.
    pub duplicate: bool,
    pub state: State,
    /// The message, when this send is the first to know it is durable: the transport
    /// broadcasts it.
    pub announce: Option<Message>,
}

/// A send that is not (yet) on the broker, with the message's id and number when it has
/// them (a resend learns the outcome).
#[derive(Debug, Clone, PartialEq)]
pub struct SendError {
    pub error: ClientError,
    pub message: Option<(String, u64)>,
}

impl From<ClientError> for SendError {
    fn from(error: ClientError) -> Self {
        Self {
            error,
            message: None,
        }
    }
}

/// One entry of a `message:status` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageStatus {
    pub client_message_id: String,
    /// `None`: no record (never sent, or older than the idempotency TTL).
    pub status: Option<Status>,
}

pub struct Delivery {
    pub ledger: Ledger,
    pub sequencer: Sequencer,
    pub producer: Arc<kafka::Producer>,
    pub store: Store,
    pub recent: RecentMessages,
    pub metrics: Arc<Metrics>,
    pub topic: String,
}

/// How often a resend looks again while another produce of the same message is in flight.
const RESEND_POLL: Duration = Duration::from_millis(50);

fn internal(e: &Error) -> ClientError {
    tracing::warn!(error = %e, category = e.category(), "dependency failure");
    e.to_client()
}

impl Delivery {
    /// Sends `template` (its id is used when the key is new; its `seq` is ignored).
    pub async fn send(&self, template: ChatRecord) -> Result<Sent, SendError> {
        let key = Ledger::key(&template);
        for _ in 0..3 {
            match self
                .ledger
                .allocate(&template)
                .await
                .map_err(|e| internal(&e))?
            {
                Allocation::New(record) => {
                    return self.produce_for_client(&key, record, false).await;
                }
                Allocation::Existing(status) => return self.resend(&key, status).await,
                Allocation::Verify { run_id } => {
                    let (t, c) = (&template.tenant_id, &template.conversation_id);
                    if let Some(next) = self
                        .sequencer
                        .repair(t, c, &run_id)
                        .await
                        .map_err(|e| internal(&e))?
                    {
                        self.metrics.sequence_repairs.inc();
                        tracing::info!(tenant = %t, conversation = %c, next, "sequence counter verified");
                    }
                }
            }
        }
        Err(internal(&Error::Contended("the conversation's sequence counter")).into())
    }

    /// Produces a record whose lease the caller holds and answers the client.
    async fn produce_for_client(
        &self,
        key: &str,
        record: ChatRecord,
        duplicate: bool,
    ) -> Result<Sent, SendError> {
        let ids = Some((record.message_id.clone(), record.seq));
        match self.produce(key, &record).await {
            Ok(Some(Accepted {
                state: State::Failed,
                ..
            })) => Err(SendError {
                error: failed_error(&record.message_id, None),
                message: ids,
            }),
            Ok(accepted) => {
                let announce = accepted.is_some_and(|a| a.announce);
                Ok(Sent {
                    message_id: record.message_id.clone(),
                    seq: record.seq,
                    duplicate,
                    state: accepted.map_or(State::Accepted, |a| a.state),
                    announce: if announce {
                        Some(self.remember(&record).await)
                    } else {
                        None
                    },
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, message_id = %record.message_id, "produce failed; the message is kept and retried");
                Err(SendError {
                    error: ClientError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "the message broker did not acknowledge message {} in time; it is kept and retried \
                             with the same id: resend it with the same clientMessageId to learn the outcome, or \
                             wait for message:persisted or message:failed",
                            record.message_id
                        ),
                    ),
                    message: ids,
                })
            }
        }
    }

    /// Produces the record and records the outcome. `Ok(None)`: the broker has it but
    /// the ledger could not be told (the confirmation path finishes the job).
    async fn produce(&self, key: &str, record: &ChatRecord) -> Result<Option<Accepted>, Error> {
        let bytes = serde_json::to_vec(record)?;
        let sent = self.producer.send(&self.topic, &record.key(), &bytes).await;
        if let Err(e) = sent {
            if let Err(re) = self
                .ledger
                .produce_failed(key, self.ledger.timing().confirmation_timeout)
                .await
            {
                // The lease runs out by itself; the sweeper retries then.
                tracing::warn!(error = %re, "recording a failed produce failed");
            }
            return Err(e);
        }
        self.metrics.messages_accepted.inc();
        match self.ledger.accepted(key).await {
            Ok(a) => Ok(Some(a)),
            Err(e) => {
                tracing::warn!(error = %e, message_id = %record.message_id, "the broker has the message; recording it failed");
                Ok(None)
            }
        }
    }

    /// Answers a resend with the first send's outcome, waiting while it is in flight and
    /// taking over production when nobody produces it.
    async fn resend(&self, key: &str, mut status: Status) -> Result<Sent, SendError> {
        let deadline =
            tokio::time::Instant::now() + self.ledger.timing().lease + Duration::from_secs(1);
        let mut waited = false;
        loop {
            let ids = Some((status.message_id.clone(), status.seq));
            match status.state {
                State::Accepted | State::Persisted => {
                    return Ok(Sent {
                        message_id: status.message_id,
                        seq: status.seq,
                        duplicate: true,
                        state: status.state,
                        announce: None,
                    });
                }
                State::Failed => {
                    return Err(SendError {
                        error: failed_error(&status.message_id, status.reason.as_deref()),
                        message: ids,
                    });
                }
                State::Sending => {}
            }
            match self.ledger.take_over(key).await.map_err(|e| internal(&e))? {
                TakeOver::Take(record) => return self.produce_for_client(key, record, true).await,
                TakeOver::Moved(Some(state)) => status.state = state,
                TakeOver::Moved(None) => {
                    return Err(ClientError::unavailable("the delivery record").into());
                }
                TakeOver::Busy(left_ms) => {
                    if !waited {
                        waited = true;
                        self.metrics.resend_waits.inc();
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(SendError {
                            error: ClientError::new(
                                ErrorCode::Unavailable,
                                format!(
                                    "message {} is still being sent ({left_ms} ms left on the attempt in flight); \
                                     resend it with the same clientMessageId later",
                                    status.message_id
                                ),
                            ),
                            message: ids,
                        });
                    }
                    tokio::time::sleep(RESEND_POLL).await;
                    match self.ledger.status(key).await.map_err(|e| internal(&e))? {
                        Some(s) => status = s,
                        None => return Err(ClientError::unavailable("the delivery record").into()),
                    }
                }
            }
        }
    }

    /// Adds a message that just became durable to the recovery window.
    async fn remember(&self, record: &ChatRecord) -> Message {
        let wire = record.to_message();
        if let Err(e) = self.recent.remember(&record.tenant_id, &wire).await {
            // The message is durable in the broker; recovery falls back to MongoDB.
            tracing::warn!(error = %e, "recording the message for recovery failed");
        }
        wire
    }

    /// Where the caller's messages stand, by `clientMessageId`.
    pub async fn statuses(
        &self,
        tenant: &str,
        conversation: &str,
        sender: &str,
        client_message_ids: &[String],
    ) -> Result<Vec<MessageStatus>, ClientError> {
        let mut out = Vec::with_capacity(client_message_ids.len());
        for id in client_message_ids {
            let key = crate::keys::message(tenant, conversation, sender, id);
            let status = self.ledger.status(&key).await.map_err(|e| internal(&e))?;
            out.push(MessageStatus {
                client_message_id: id.clone(),
                status,
            });
        }
        Ok(out)
    }

    /// Handles one persistence event (from the persister, via any gateway).
    pub async fn on_persistence_event(&self, event: &PersistenceEvent) -> Result<Vec<Emit>, Error> {
        if event.client_message_id.is_empty() {
            // From a version before delivery records were keyed by clientMessageId.
            return Ok(Vec::new());
        }
        let key = crate::keys::message(
            &event.tenant_id,
            &event.conversation_id,
            &event.sender_id,
            &event.client_message_id,
        );
        match event.outcome {
            PersistOutcome::Persisted => self.confirmed(&key).await,
            PersistOutcome::Refused => {
                let reason = event
                    .reason
                    .clone()
                    .unwrap_or_else(|| "the database refused it".into());
                Ok(self
                    .fail(&key, event_record(event), &reason)
                    .await?
                    .into_iter()
                    .collect())
            }
        }
    }

    /// The persister stored the message: confirm it (once) and announce it when nobody did.
    async fn confirmed(&self, key: &str) -> Result<Vec<Emit>, Error> {
        let Confirmation::Confirmed { record, announce } = self.ledger.persisted(key).await? else {
            return Ok(Vec::new());
        };
        let latency_ms = now_ms().saturating_sub(record.created_at_ms).max(0);
        self.metrics
            .confirmation_latency
            .observe(latency_ms as f64 / 1000.0);
        self.metrics.confirmations.inc();
        let mut emits = Vec::with_capacity(2);
        if announce {
            emits.push(Emit::NewMessage {
                tenant: record.tenant_id.clone(),
                message: self.remember(&record).await,
            });
        }
        emits.push(to_sender(
            &record,
            "message:persisted",
            json!(Persisted {
                message_id: &record.message_id,
                conversation_id: &record.conversation_id,
                seq: record.seq,
                client_message_id: &record.client_message_id,
            }),
        ));
        Ok(emits)
    }

    /// Records a final failure and tells the sender (once).
    async fn fail(
        &self,
        key: &str,
        record: ChatRecord,
        reason: &str,
    ) -> Result<Option<Emit>, Error> {
        if !self.ledger.failed(key, reason).await? {
            return Ok(None);
        }
        self.metrics.delivery_failures.inc();
        tracing::warn!(message_id = %record.message_id, %reason, "message failed");
        Ok(Some(to_sender(
            &record,
            "message:failed",
            json!(Outcome::of(&record, reason)),
        )))
    }

    /// Works on one record the sweeper claimed.
    pub async fn on_due(&self, due: Due) -> Result<Vec<Emit>, Error> {
        match due {
            Due::Produce { key, record } => {
                self.metrics.delivery_retries.inc();
                let accepted = self.produce(&key, &record).await?;
                Ok(match accepted {
                    Some(Accepted { announce: true, .. }) => vec![Emit::NewMessage {
                        tenant: record.tenant_id.clone(),
                        message: self.remember(&record).await,
                    }],
                    _ => Vec::new(),
                })
            }
            Due::Reproduce { key, record } => {
                self.metrics.delivery_retries.inc();
                self.produce(&key, &record).await?;
                Ok(Vec::new())
            }
            Due::Delayed { key, record } => {
                self.metrics.delivery_delayed.inc();
                let t = self.ledger.timing();
                let reason = format!(
                    "accepted by the broker but not stored after {} attempts of {} ms; it will be stored — \
                     retries go on, do not send it again",
                    t.attempts,
                    t.confirmation_timeout.as_millis()
                );
                tracing::warn!(message_id = %record.message_id, "message delayed: {reason}");
                let emit = to_sender(
                    &record,
                    "message:delayed",
                    json!(Outcome::of(&record, &reason)),
                );
                self.metrics.delivery_retries.inc();
                if let Err(e) = self.produce(&key, &record).await {
                    tracing::warn!(error = %e, "copy of a delayed message not produced; retried later");
                }
                Ok(vec![emit])
            }
            Due::Fail { key, record } => {
                let reason = format!(
                    "the message broker did not acknowledge it after {} attempts; it will not be stored — \
                     send it again with a new clientMessageId",
                    self.ledger.timing().attempts
                );
                match self.store.fence_message(&record).await {
                    Ok(Fence::Fenced) => Ok(self
                        .fail(&key, record, &reason)
                        .await?
                        .into_iter()
                        .collect()),
                    Ok(Fence::Stored) => self.confirmed(&key).await,
                    Err(e) => {
                        // Without the fence a copy could still be stored: no verdict yet.
                        self.ledger
                            .produce_failed(&key, self.ledger.timing().confirmation_timeout)
                            .await?;
                        Err(e)
                    }
                }
            }
            Due::Lost { key } => {
                self.metrics.delivery_lost.inc();
                tracing::error!(record = %key, "a delivery record vanished from Redis before an outcome (evicted?); its sender hears nothing more — give Redis enough memory and a noeviction policy");
                Ok(Vec::new())
            }
        }
    }
}

/// The record an event describes (its content is not needed to fail it).
fn event_record(e: &PersistenceEvent) -> ChatRecord {
    ChatRecord {
        tenant_id: e.tenant_id.clone(),
        conversation_id: e.conversation_id.clone(),
        message_id: e.message_id.clone(),
        seq: e.seq,
        sender_id: e.sender_id.clone(),
        client_message_id: e.client_message_id.clone(),
        content: crate::model::Content::Text {
            text: String::new(),
        },
        created_at_ms: e.persisted_at_ms,
    }
}

fn to_sender(record: &ChatRecord, event: &'static str, payload: serde_json::Value) -> Emit {
    Emit::ToUser {
        tenant: record.tenant_id.clone(),
        user: record.sender_id.clone(),
        event,
        payload,
    }
}

fn failed_error(message_id: &str, reason: Option<&str>) -> ClientError {
    ClientError::new(
        ErrorCode::DeliveryFailed,
        format!(
            "message {message_id} will not be stored ({}); send it again with a new clientMessageId",
            reason.unwrap_or("the broker never acknowledged it")
        ),
    )
}
