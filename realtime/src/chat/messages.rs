//! Messages: sending one (mute and rate checks, then `delivery`), reading history,
//! asking where one's own sends stand, and recovering what a reconnecting client missed.

use super::delivery::{SendError, Sent};
use super::replies::{HistoryPage, KnownStatus, Recovered, SendAck, StatusEntry, Statuses};
use super::{Answer, Chat, Emit, internal};
use crate::auth::Identity;
use crate::error::{ClientError, ErrorCode};
use crate::protocol::{
    ChatRecord, HistoryRequest, RecoverRequest, SendRequest, StatusRequest, now_ms,
};
use crate::rate_limit::Decision;
use crate::rooms::recent::{self, Plan};

impl Chat {
    /// `message:send` from a socket that has joined the conversation: checks standing,
    /// mute and the message rate, then sends (see `delivery`): on success the broker has
    /// it.
    pub async fn send(
        &self,
        id: &Identity,
        req: SendRequest,
    ) -> Result<Answer<SendAck>, SendError> {
        let now = now_ms();
        if let Some(mute) = self.member(id, &req.conversation_id).await?.muted(now) {
            let e = ClientError::new(
                ErrorCode::Muted,
                format!(
                    "you are muted in conversation {} {}",
                    req.conversation_id,
                    mute.describe(now)
                ),
            );
            return Err(match mute.remaining_ms(now) {
                Some(ms) => e.retry_after(ms),
                None => e,
            }
            .into());
        }
        match self
            .rate
            .check(&id.tenant_id, &id.user_id)
            .await
            .map_err(|e| internal(&e))?
        {
            Decision::Allowed => {}
            Decision::Limited { retry_after_ms } => {
                return Err(ClientError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "more than {} messages per second; retry in {retry_after_ms} ms",
                        self.settings.rate_per_second
                    ),
                )
                .retry_after(retry_after_ms)
                .into());
            }
        }
        let SendRequest {
            conversation_id,
            client_message_id,
            content,
        } = req;
        let Sent {
            message_id,
            seq,
            duplicate,
            state,
            announce,
        } = self
            .delivery
            .send(ChatRecord {
                tenant_id: id.tenant_id.clone(),
                conversation_id,
                message_id: uuid::Uuid::now_v7().to_string(),
                seq: 0,
                sender_id: id.user_id.clone(),
                client_message_id,
                content,
                created_at_ms: now,
            })
            .await?;
        Ok(Answer {
            reply: SendAck {
                message_id,
                seq,
                duplicate,
                status: state.as_str(),
            },
            emits: announce
                .map(|message| Emit::NewMessage {
                    tenant: id.tenant_id.clone(),
                    message,
                })
                .into_iter()
                .collect(),
        })
    }

    /// `messages:history`: a page of stored messages, newest first, before `beforeSeq`.
    pub async fn history(
        &self,
        id: &Identity,
        req: HistoryRequest,
    ) -> Result<HistoryPage, ClientError> {
        self.member(id, &req.conversation_id).await?;
        let limit = req.limit();
        // One extra row tells whether an older page exists.
        let mut messages = self
            .store
            .history(
                &id.tenant_id,
                &req.conversation_id,
                req.before_seq,
                limit + 1,
            )
            .await
            .map_err(|e| internal(&e))?;
        let has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        Ok(HistoryPage {
            conversation_id: req.conversation_id,
            messages,
            has_more,
        })
    }

    /// `message:status`: where the caller's own messages stand, by `clientMessageId` — how
    /// a client that missed `message:persisted`/`message:failed` (it was offline, or
    /// reconnected to another gateway) learns the outcome of its sends.
    pub async fn statuses(
        &self,
        id: &Identity,
        req: StatusRequest,
    ) -> Result<Statuses, ClientError> {
        self.member(id, &req.conversation_id).await?;
        let found = self
            .delivery
            .statuses(
                &id.tenant_id,
                &req.conversation_id,
                &id.user_id,
                &req.client_message_ids,
            )
            .await?;
        let messages = found
            .into_iter()
            .map(|m| match m.status {
                Some(st) => StatusEntry {
                    client_message_id: m.client_message_id,
                    status: st.state.as_str(),
                    known: Some(KnownStatus {
                        message_id: st.message_id,
                        seq: st.seq,
                        reason: st.reason,
                    }),
                },
                None => StatusEntry {
                    client_message_id: m.client_message_id,
                    status: "unknown",
                    known: None,
                },
            })
            .collect();
        Ok(Statuses {
            conversation_id: req.conversation_id,
            messages,
        })
    }

    /// The messages after `after_seq` when there are no more than the window, although
    /// their numbers span more (a repaired counter's jump): the stored ones with what the
    /// window adds. Always read from MongoDB too: the window alone may hold older entries
    /// and miss newer ones that Redis lost before the repair. `None` when there really
    /// are more.
    async fn across_gap(
        &self,
        tenant: &str,
        conversation: &str,
        after_seq: u64,
    ) -> crate::error::Result<Option<Vec<crate::model::Message>>> {
        let recent = &self.delivery.recent;
        let window = recent.window();
        let buffered = recent.after(tenant, conversation, after_seq).await?;
        let stored = self
            .store
            .messages_after(tenant, conversation, after_seq, window.saturating_add(1))
            .await?;
        if stored.len() > window as usize {
            return Ok(None);
        }
        let merged = recent::merge(buffered, stored);
        Ok((merged.len() <= window as usize).then_some(merged))
    }

    /// `messages:recover`: everything after `afterSeq`, in order, from the recovery
    /// window and, for what it no longer holds, from MongoDB; `too_far_behind` past the
    /// window.
    pub async fn recover(
        &self,
        id: &Identity,
        req: RecoverRequest,
    ) -> Result<Recovered, ClientError> {
        self.member(id, &req.conversation_id).await?;
        let (tenant, conversation) = (&id.tenant_id, &req.conversation_id);
        let latest = self
            .delivery
            .sequencer
            .current(tenant, conversation)
            .await
            .map_err(|e| internal(&e))?;
        let recent = &self.delivery.recent;
        let window = recent.window();
        let messages = match recent::plan(req.after_seq, latest, window) {
            Plan::UpToDate => Vec::new(),
            Plan::TooFarBehind { missed } => {
                // Numbers are not messages: a counter repaired after Redis lost writes
                // skips SEQUENCE_REPAIR_GAP numbers. What is really there may still fit.
                if let Some(messages) = self
                    .across_gap(tenant, conversation, req.after_seq)
                    .await
                    .map_err(|e| internal(&e))?
                {
                    self.metrics.recovery("across_gap");
                    self.metrics.recovery("complete");
                    return Ok(Recovered {
                        conversation_id: req.conversation_id,
                        messages,
                        complete: true,
                        latest_seq: latest,
                    });
                }
                self.metrics.recovery("too_far_behind");
                return Err(ClientError::new(
                    ErrorCode::TooFarBehind,
                    format!(
                        "{missed} messages were missed (newest seq {latest}); recovery covers the last {window}: page messages:history instead"
                    ),
                ));
            }
            Plan::Recover => {
                let buffered = recent
                    .after(tenant, conversation, req.after_seq)
                    .await
                    .map_err(|e| internal(&e))?;
                if recent::covers(&buffered, req.after_seq) {
                    buffered
                } else {
                    self.metrics.recovery("from_database");
                    let stored = self
                        .store
                        .messages_after(tenant, conversation, req.after_seq, window)
                        .await
                        .map_err(|e| internal(&e))?;
                    recent::merge(buffered, stored)
                }
            }
        };
        self.metrics.recovery("complete");
        Ok(Recovered {
            conversation_id: req.conversation_id,
            messages,
            complete: true,
            latest_seq: latest,
        })
    }
}
