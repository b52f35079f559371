//! Moderation events on the socket: kick, ban/unban, mute/unmute and `room:role`. The
//! decisions and records are the chat service's (`chat::moderation`).

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Event, SocketRef, State, TryData};

use super::reply::Reply;
use super::{Shared, emit, payload};
use crate::error::{ClientError, ErrorCode};
use crate::model::Action;
use crate::protocol::{ModerationRequest, RoleRequest};
use crate::rate_limit::EventClass;

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
    io: SocketIo<A>,
    Event(event): Event,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let actor = gw.admit(&s, EventClass::Other).await?;
        let action = EVENTS
            .iter()
            .find(|(name, _)| *name == event)
            .map(|(_, a)| *a)
            .ok_or_else(|| ClientError::new(ErrorCode::UnknownEvent, event.clone()))?;
        let timed = matches!(action, Action::Ban | Action::Mute);
        let req = ModerationRequest::parse(&event, payload(data).as_ref(), timed)?;
        let (conversation, target) = (req.conversation_id.clone(), req.user_id.clone());
        let answer = gw.chat.moderate(&actor, action, req).await?;
        emit::from_socket(&s, answer.emits).await?;
        if matches!(action, Action::Kick | Action::Ban) {
            super::calls::remove_from_call(&io, &gw, &actor.tenant_id, &conversation, &target)
                .await;
        }
        Ok(answer.reply)
    }
    .await;
    reply.send(result);
}

async fn on_role<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let actor = gw.admit(&s, EventClass::Other).await?;
        let req = RoleRequest::parse(payload(data).as_ref())?;
        let answer = gw.chat.set_role(&actor, req).await?;
        emit::from_socket(&s, answer.emits).await?;
        Ok(answer.reply)
    }
    .await;
    reply.send(result);
}
