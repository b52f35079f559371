//! Performing the [`Emit`]s a use case returned, through the Socket.IO adapter (so on
//! every gateway): from a client's event ([`from_socket`], which can leave the caller out
//! of a broadcast) or from background work ([`from_server`]).

use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;

use super::CHAT_NAMESPACE;
use crate::chat::Emit;
use crate::error::ClientError;
use crate::keys;

/// Where an emit goes: the room and whether the caller (if any) is left out.
fn target(emit: &Emit) -> (String, bool) {
    match emit {
        Emit::NewMessage { tenant, message } => (
            keys::conversation_room(tenant, &message.conversation_id),
            true,
        ),
        Emit::ToUser { tenant, user, .. } | Emit::RemoveFromConversation { tenant, user, .. } => {
            (keys::user_room(tenant, user), false)
        }
        Emit::ToConversation {
            tenant,
            conversation,
            include_caller,
            ..
        } => (
            keys::conversation_room(tenant, conversation),
            !include_caller,
        ),
    }
}

/// Performs one emit on `to` (the operators already aimed at its room).
async fn perform<A: Adapter>(to: BroadcastOperators<A>, emit: &Emit) -> Result<(), String> {
    let sent = match emit {
        Emit::NewMessage { message, .. } => to.emit("message:new", message).await,
        Emit::ToUser { event, payload, .. } | Emit::ToConversation { event, payload, .. } => {
            to.emit(*event, payload).await
        }
        Emit::RemoveFromConversation {
            tenant,
            conversation,
            ..
        } => {
            return to
                .leave(keys::conversation_room(tenant, conversation))
                .await
                .map_err(|e| e.to_string());
        }
    };
    sent.map_err(|e| e.to_string())
}

fn name(emit: &Emit) -> &'static str {
    match emit {
        Emit::NewMessage { .. } => "message:new",
        Emit::ToUser { event, .. } | Emit::ToConversation { event, .. } => event,
        Emit::RemoveFromConversation { .. } => "room leave",
    }
}

/// Performs the emits of a client's event, in order. A failed removal from a room is the
/// caller's error (`unavailable`: the target may still be in the room); a failed event
/// is logged (the state it reports is stored; clients catch up through recovery and
/// presence).
pub async fn from_socket<A: Adapter>(
    s: &SocketRef<A>,
    emits: Vec<Emit>,
) -> Result<(), ClientError> {
    let mut result = Ok(());
    for emit in &emits {
        let (room, skip_caller) = target(emit);
        let to = if skip_caller {
            s.to(room.clone())
        } else {
            s.within(room.clone())
        };
        if let Err(e) = perform(to, emit).await {
            tracing::warn!(error = %e, event = name(emit), %room, "emit failed");
            if matches!(emit, Emit::RemoveFromConversation { .. }) {
                result = Err(ClientError::unavailable("the room service"));
            }
        }
    }
    result
}

/// Performs the emits of background work (confirmations, the sweeper), in order.
pub async fn from_server<A: Adapter>(io: &SocketIo<A>, emits: Vec<Emit>) {
    let Some(ns) = io.of(CHAT_NAMESPACE) else {
        return;
    };
    for emit in &emits {
        let (room, _) = target(emit);
        if let Err(e) = perform(ns.clone().to(room.clone()), emit).await {
            tracing::warn!(error = %e, event = name(emit), %room, "emit failed");
        }
    }
}
