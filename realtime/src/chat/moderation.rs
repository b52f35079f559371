//! Moderation: kick, ban/unban, mute/unmute and role changes.
//!
//! Each action is checked against the permission matrix (`model::permissions`), written
//! to MongoDB (the conversation document and `moderation_log`), made effective on every
//! gateway at once (the target's cached standing is deleted from Redis; a kicked or banned
//! user leaves the room state and the transport removes their sockets from the room), and
//! broadcast to the room as `moderation:action`.

use super::replies::{ModerationNotice, Removed};
use super::{Answer, Chat, Emit, internal};
use crate::auth::Identity;
use crate::error::{ClientError, ErrorCode};
use crate::model::Access;
use crate::model::permissions::{self, Action, Role};
use crate::protocol::{ModerationRequest, RoleRequest, now_ms};
use crate::store::{LogEntry, RestrictionKind};

/// The `moderation_log` line of `actor` taking `action` against `target` at `at_ms`.
fn log_entry<'a>(
    actor: &'a Identity,
    conversation: &'a str,
    action: Action,
    target: &'a str,
    at_ms: i64,
) -> LogEntry<'a> {
    LogEntry::new(
        &actor.tenant_id,
        conversation,
        action.name(),
        target,
        &actor.user_id,
        at_ms,
    )
}

impl Chat {
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
            .map_err(|e| internal(&e))?;
        let target_role = theirs.as_ref().map_or(Role::Member, |a| a.role);
        permissions::check(mine.role, action, target_role)
            .map_err(|m| ClientError::new(ErrorCode::Forbidden, m))?;
        Ok(theirs)
    }

    /// A moderation event (`action` is one of kick, ban, unban, mute, unmute).
    pub async fn moderate(
        &self,
        actor: &Identity,
        action: Action,
        req: ModerationRequest,
    ) -> Result<Answer<ModerationNotice>, ClientError> {
        let (tenant, conversation, target) = (&actor.tenant_id, &req.conversation_id, &req.user_id);
        self.authority(actor, conversation, target, action).await?;

        let now = now_ms();
        let mut entry = log_entry(actor, conversation, action, target, now);
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
            Action::Kick | Action::ChangeRole(_) | Action::Send | Action::DeleteRoom => Ok(()),
        };
        stored.map_err(|e| internal(&e))?;
        self.record(&entry).await?;
        let mut emits = Vec::new();
        if matches!(action, Action::Kick | Action::Ban) {
            emits = self.remove_from_room(&entry).await?;
        }
        let notice = ModerationNotice {
            action: action.name(),
            conversation_id: conversation.clone(),
            user_id: target.clone(),
            by: actor.user_id.clone(),
            expires_at: Some(entry.expires_at_ms),
            reason: req.reason.clone(),
            role: None,
        };
        emits.push(Emit::to_conversation(
            tenant,
            conversation,
            "moderation:action",
            &notice,
            true,
        ));
        Ok(Answer {
            reply: notice,
            emits,
        })
    }

    /// `room:role`: sets a participant's role.
    pub async fn set_role(
        &self,
        actor: &Identity,
        req: RoleRequest,
    ) -> Result<Answer<ModerationNotice>, ClientError> {
        let (tenant, conversation, target) = (&actor.tenant_id, &req.conversation_id, &req.user_id);
        let action = Action::ChangeRole(req.role);
        let not_found = |why: &str| {
            ClientError::new(
                ErrorCode::NotFound,
                format!("{target} {why} conversation {conversation}"),
            )
        };
        if self
            .authority(actor, conversation, target, action)
            .await?
            .is_none()
        {
            return Err(not_found("is not a participant of"));
        }
        let changed = self
            .store
            .set_role(tenant, conversation, target, req.role)
            .await
            .map_err(|e| internal(&e))?;
        if !changed {
            return Err(not_found("left"));
        }
        let mut entry = log_entry(actor, conversation, action, target, now_ms());
        entry.role = Some(req.role);
        self.record(&entry).await?;
        let notice = ModerationNotice {
            action: action.name(),
            conversation_id: conversation.clone(),
            user_id: target.clone(),
            by: actor.user_id.clone(),
            expires_at: None,
            reason: None,
            role: Some(req.role),
        };
        Ok(Answer {
            emits: vec![Emit::to_conversation(
                tenant,
                conversation,
                "moderation:action",
                &notice,
                true,
            )],
            reply: notice,
        })
    }

    /// Logs the action and drops the target's cached standing on every gateway.
    async fn record(&self, entry: &LogEntry<'_>) -> Result<(), ClientError> {
        self.store
            .log_moderation(entry)
            .await
            .map_err(|e| internal(&e))?;
        self.access
            .invalidate(entry.tenant, entry.conversation, entry.user)
            .await
            .map_err(|e| internal(&e))?;
        self.metrics.moderation(entry.action);
        Ok(())
    }

    /// Takes the target out of the room state; the emits remove their sockets from the
    /// room wherever they are connected, tell them why, and update presence.
    async fn remove_from_room(&self, entry: &LogEntry<'_>) -> Result<Vec<Emit>, ClientError> {
        let (tenant, conversation, user) = (entry.tenant, entry.conversation, entry.user);
        let online = self
            .rooms
            .remove_user(tenant, conversation, user)
            .await
            .map_err(|e| internal(&e))?;
        let removed = Removed {
            conversation_id: conversation.to_owned(),
            reason: if entry.action == Action::Ban.name() {
                "banned"
            } else {
                "kicked"
            },
            by: entry.by.to_owned(),
            note: entry.reason.map(str::to_owned),
            expires_at: entry.expires_at_ms,
        };
        Ok(vec![
            Emit::RemoveFromConversation {
                tenant: tenant.to_owned(),
                conversation: conversation.to_owned(),
                user: user.to_owned(),
            },
            Emit::ToUser {
                tenant: tenant.to_owned(),
                user: user.to_owned(),
                event: "room:removed",
                payload: serde_json::to_value(&removed).unwrap_or_default(),
            },
            self.presence_emit(tenant, conversation, online),
        ])
    }
}
