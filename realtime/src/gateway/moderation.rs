//! Moderation on `/chat`: kick, ban/unban, mute/unmute and role changes.
//!
//! Each action is checked against the permission matrix (`rooms::permissions`), written
//! to MongoDB (the conversation document and `moderation_log`), made effective on every
//! gateway at once (the target's cached standing is deleted from Redis; a kicked or banned
//! user's sockets are removed from the room through the adapter), and broadcast to the
//! room as `moderation:action`.

use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Event, SocketRef, State, TryData};

use super::reply::Reply;
use super::rooms::announce_presence;
use super::{Gateway, Shared, identity, payload};
use crate::auth::Identity;
use crate::error::{ClientError, ErrorCode};
use crate::keys;
use crate::protocol::{ModerationRequest, RoleRequest, now_ms};
use crate::rooms::access::Access;
use crate::rooms::permissions::{self, Action, Role};
use crate::store::{LogEntry, RestrictionKind};

const EVENTS: [(&str, Action); 5] = [
    ("moderation:kick", Action::Kick),
    ("moderation:ban", Action::Ban),
    ("moderation:unban", Action::Unban),
    ("moderation:mute", Action::Mute),
    ("moderation:unmute", Action::Unmute),
];

pub(super) fn register<A: Adapter>(s: &SocketRef<A>) {
    for (event, _) in EVENTS {
        s.on(event, on_moderation::<A>);
    }
    s.on("room:role", on_role::<A>);
}

async fn on_moderation<A: Adapter>(
    s: SocketRef<A>,
    Event(event): Event,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = match gw.admit(&s, crate::rate_limit::EventClass::Other).await {
        Ok(_) => gw.moderate(&s, &event, payload(data).as_ref()).await,
        Err(e) => Err(e),
    };
    reply.send(result);
}

async fn on_role<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = match gw.admit(&s, crate::rate_limit::EventClass::Other).await {
        Ok(_) => gw.change_role(&s, payload(data).as_ref()).await,
        Err(e) => Err(e),
    };
    reply.send(result);
}

impl Gateway {
    /// Checks that `actor` may take `action` against `target` in the conversation and
    /// returns the target's standing (`None` when not a participant).
    async fn authority(
        &self,
        actor: &Identity,
        conversation: &str,
        target: &str,
        action: Action,
    ) -> Result<Option<Access>, ClientError> {
        if target == actor.user_id {
            return Err(ClientError::new(
                ErrorCode::Forbidden,
                format!("you cannot {} yourself", action.name()),
            ));
        }
        let mine = self.member(actor, conversation).await?;
        let (theirs, _) = self
            .access
            .get(&actor.tenant_id, conversation, target)
            .await
            .map_err(|e| self.internal(&e))?;
        let target_role = theirs.as_ref().map_or(Role::Member, |a| a.role);
        permissions::check(mine.role, action, target_role)
            .map_err(|m| ClientError::new(ErrorCode::Forbidden, m))?;
        Ok(theirs)
    }

    async fn moderate<A: Adapter>(
        &self,
        s: &SocketRef<A>,
        event: &str,
        data: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let actor = identity(s)?;
        let action = EVENTS
            .iter()
            .find(|(name, _)| *name == event)
            .map(|(_, a)| *a)
            .ok_or_else(|| ClientError::new(ErrorCode::UnknownEvent, event.to_owned()))?;
        let timed = matches!(action, Action::Ban | Action::Mute);
        let req = ModerationRequest::parse(event, data, timed)?;
        let (tenant, conversation, target) = (&actor.tenant_id, &req.conversation_id, &req.user_id);
        self.authority(&actor, conversation, target, action).await?;

        let now = now_ms();
        let mut entry = LogEntry::new(
            tenant,
            conversation,
            action.name(),
            target,
            &actor.user_id,
            now,
        );
        entry.reason = req.reason.as_deref();
        entry.expires_at_ms = req
            .duration_seconds
            .map(|d| now.saturating_add(i64::try_from(d).unwrap_or(i64::MAX / 1000) * 1000));
        let stored = match action {
            Action::Ban => self.store.restrict(RestrictionKind::Ban, &entry).await,
            Action::Mute => self.store.restrict(RestrictionKind::Mute, &entry).await,
            Action::Unban => self
                .store
                .lift(RestrictionKind::Ban, tenant, conversation, target)
                .await
                .map(drop),
            Action::Unmute => self
                .store
                .lift(RestrictionKind::Mute, tenant, conversation, target)
                .await
                .map(drop),
            _ => Ok(()),
        };
        stored.map_err(|e| self.internal(&e))?;
        self.record(&entry).await?;
        if matches!(action, Action::Kick | Action::Ban) {
            self.remove_from_room(s, &entry).await?;
        }
        let mut body = json!({
            "action": action.name(),
            "conversationId": conversation,
            "userId": target,
            "by": actor.user_id,
            "expiresAt": entry.expires_at_ms,
        });
        if let Some(reason) = &req.reason {
            body["reason"] = json!(reason);
        }
        self.announce(s, &entry, &body).await;
        Ok(body)
    }

    async fn change_role<A: Adapter>(
        &self,
        s: &SocketRef<A>,
        data: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let actor = identity(s)?;
        let req = RoleRequest::parse(data)?;
        let (tenant, conversation, target) = (&actor.tenant_id, &req.conversation_id, &req.user_id);
        let action = Action::ChangeRole(req.role);
        if self
            .authority(&actor, conversation, target, action)
            .await?
            .is_none()
        {
            return Err(ClientError::new(
                ErrorCode::NotFound,
                format!("{target} is not a participant of conversation {conversation}"),
            ));
        }
        let changed = self
            .store
            .set_role(tenant, conversation, target, req.role)
            .await
            .map_err(|e| self.internal(&e))?;
        if !changed {
            return Err(ClientError::new(
                ErrorCode::NotFound,
                format!("{target} left conversation {conversation}"),
            ));
        }
        let mut entry = LogEntry::new(
            tenant,
            conversation,
            action.name(),
            target,
            &actor.user_id,
            now_ms(),
        );
        entry.role = Some(req.role);
        self.record(&entry).await?;
        let body = json!({
            "action": action.name(),
            "conversationId": conversation,
            "userId": target,
            "by": actor.user_id,
            "role": req.role,
        });
        self.announce(s, &entry, &body).await;
        Ok(body)
    }

    /// Logs the action and drops the target's cached standing on every gateway.
    async fn record(&self, entry: &LogEntry<'_>) -> Result<(), ClientError> {
        self.store
            .log_moderation(entry)
            .await
            .map_err(|e| self.internal(&e))?;
        self.access
            .invalidate(entry.tenant, entry.conversation, entry.user)
            .await
            .map_err(|e| self.internal(&e))?;
        self.metrics.moderation(entry.action);
        Ok(())
    }

    /// Removes every socket of the target from the room, wherever it is connected, tells
    /// the target why, and updates presence.
    async fn remove_from_room<A: Adapter>(
        &self,
        s: &SocketRef<A>,
        entry: &LogEntry<'_>,
    ) -> Result<(), ClientError> {
        let room = keys::conversation_room(entry.tenant, entry.conversation);
        let target_sockets = keys::user_room(entry.tenant, entry.user);
        s.within(target_sockets.clone())
            .leave(room)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "removing sockets from a room failed");
                ClientError::unavailable("the room service")
            })?;
        let removed = json!({
            "conversationId": entry.conversation,
            "reason": if entry.action == "ban" { "banned" } else { "kicked" },
            "by": entry.by,
            "note": entry.reason,
            "expiresAt": entry.expires_at_ms,
        });
        if let Err(e) = s
            .within(target_sockets)
            .emit("room:removed", &removed)
            .await
        {
            tracing::warn!(error = %e, "room:removed not delivered");
        }
        let online = self
            .rooms
            .remove_user(entry.tenant, entry.conversation, entry.user)
            .await
            .map_err(|e| self.internal(&e))?;
        announce_presence(s, self, entry.tenant, entry.conversation, &online).await;
        Ok(())
    }

    async fn announce<A: Adapter>(&self, s: &SocketRef<A>, entry: &LogEntry<'_>, body: &Value) {
        let room = keys::conversation_room(entry.tenant, entry.conversation);
        if let Err(e) = s.within(room).emit("moderation:action", body).await {
            tracing::warn!(error = %e, "moderation:action broadcast failed");
        }
    }
}
