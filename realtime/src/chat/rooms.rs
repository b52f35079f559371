//! Being in a conversation: joining and leaving (the room state that presence reads),
//! presence and typing indicators.
//!
//! Joining is two steps around the transport's own: [`Chat::member`] decides whether
//! the caller may enter, the transport puts the socket in the room, then [`Chat::enter`]
//! records it in the room state and announces presence.

use super::replies::{ConversationRef, Joined, MutedUntil, Presence, Typing};
use super::{Answer, Chat, Emit, internal};
use crate::auth::Identity;
use crate::error::{ClientError, ErrorCode};
use crate::keys;
use crate::model::Access;
use crate::protocol::{RoomRequest, now_ms};
use crate::rate_limit::Decision;

impl Chat {
    /// Records a socket the transport has put in the conversation's room (after
    /// [`Chat::member`] allowed it) and announces the room's new online list.
    pub async fn enter(
        &self,
        id: &Identity,
        conversation: &str,
        socket: &str,
        access: &Access,
    ) -> Result<Answer<Joined>, ClientError> {
        let online = self
            .rooms
            .join(&id.tenant_id, conversation, &id.user_id, socket)
            .await
            .map_err(|e| internal(&e))?;
        let muted_until = access.muted(now_ms()).map(|m| {
            m.until_ms
                .map_or(MutedUntil::Permanently(true), MutedUntil::Until)
        });
        Ok(Answer {
            emits: vec![self.presence_emit(&id.tenant_id, conversation, online.clone())],
            reply: Joined {
                conversation_id: conversation.to_owned(),
                role: access.role,
                online,
                muted_until,
            },
        })
    }

    /// Takes a socket out of the conversation's room state (`room:leave`, a disconnect,
    /// a join that lost its socket) and announces the new online list. Never fails: a
    /// Redis error is logged and the entry expires with the gateway's heartbeat.
    pub async fn leave(&self, id: &Identity, conversation: &str, socket: &str) -> Vec<Emit> {
        let tenant = &id.tenant_id;
        match self
            .rooms
            .leave(tenant, conversation, &id.user_id, socket)
            .await
        {
            Ok(online) => vec![self.presence_emit(tenant, conversation, online)],
            Err(e) => {
                tracing::warn!(error = %e, "removing a socket from room state failed");
                Vec::new()
            }
        }
    }

    /// `presence:get`: who is online in a conversation the caller belongs to.
    pub async fn presence(&self, id: &Identity, req: RoomRequest) -> Result<Presence, ClientError> {
        self.member(id, &req.conversation_id).await?;
        let online = self
            .rooms
            .online(&id.tenant_id, &req.conversation_id)
            .await
            .map_err(|e| internal(&e))?;
        Ok(Presence {
            conversation_id: req.conversation_id,
            online,
        })
    }

    /// `typing` from a socket in the conversation's room: at most one per
    /// `TYPING_THROTTLE_MS` per user and conversation, broadcast to the others.
    pub async fn typing(
        &self,
        id: &Identity,
        req: RoomRequest,
    ) -> Result<Answer<ConversationRef>, ClientError> {
        let conversation = req.conversation_id;
        let throttle = self.settings.typing_throttle;
        let key = keys::typing(&id.tenant_id, &conversation, &id.user_id);
        if let Decision::Limited { retry_after_ms } = self
            .rate
            .throttle(key, throttle)
            .await
            .map_err(|e| internal(&e))?
        {
            return Err(ClientError::new(
                ErrorCode::RateLimited,
                format!(
                    "one typing indicator per {} ms per conversation",
                    throttle.as_millis()
                ),
            )
            .retry_after(retry_after_ms));
        }
        let body = Typing {
            conversation_id: conversation.clone(),
            user_id: id.user_id.clone(),
            ttl_ms: u64::try_from(self.settings.typing_ttl.as_millis()).unwrap_or(u64::MAX),
        };
        Ok(Answer {
            emits: vec![Emit::to_conversation(
                &id.tenant_id,
                &conversation,
                "typing",
                &body,
                false,
            )],
            reply: ConversationRef {
                conversation_id: conversation,
            },
        })
    }

    /// The `presence` broadcast of a conversation's online list, to everyone in it.
    pub(super) fn presence_emit(
        &self,
        tenant: &str,
        conversation: &str,
        online: Vec<String>,
    ) -> Emit {
        self.metrics.presence_broadcasts.inc();
        let body = Presence {
            conversation_id: conversation.to_owned(),
            online,
        };
        Emit::to_conversation(tenant, conversation, "presence", &body, true)
    }
}
