//! Room events on the socket: joining and leaving (the socket's own rooms), presence,
//! typing and recovery. The decisions are the chat service's.

use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, State, TryData};

use super::reply::Reply;
use super::{Shared, emit, identity, payload, require_joined};
use crate::auth::Identity;
use crate::chat::replies::{ConversationRef, NothingRecovered};
use crate::error::{ClientError, ErrorCode};
use crate::keys;
use crate::protocol::{RecoverRequest, RoomRequest};
use crate::rate_limit::EventClass;

pub(super) fn register<A: Adapter>(s: &SocketRef<A>) {
    s.on("room:join", on_join::<A>);
    s.on("room:leave", on_leave::<A>);
    s.on("presence:get", on_presence::<A>);
    s.on("typing", on_typing::<A>);
    s.on("messages:recover", on_recover::<A>);
}

/// The caller, admitted by the rate limits of `class`, and the `{conversationId}`
/// payload of a room event.
async fn room_request<A: Adapter>(
    s: &SocketRef<A>,
    gw: &super::Gateway,
    class: EventClass,
    event: &str,
    data: Result<Value, impl std::fmt::Display>,
) -> Result<(Identity, RoomRequest), ClientError> {
    let id = gw.admit(s, class).await?;
    let req = RoomRequest::parse(event, payload(data).as_ref())?;
    Ok((id, req))
}

/// Refuses a join past `MAX_ROOMS_PER_SOCKET` (rejoining a room is always allowed).
fn check_room_count<A: Adapter>(
    s: &SocketRef<A>,
    gw: &super::Gateway,
    room: &str,
    tenant: &str,
) -> Result<(), ClientError> {
    let conversation_prefix = keys::conversation_room(tenant, "");
    let joined = s.rooms();
    let max = gw.cfg.limits.max_rooms_per_socket as usize;
    if !joined.iter().any(|r| **r == *room)
        && joined
            .iter()
            .filter(|r| r.starts_with(conversation_prefix.as_str()))
            .count()
            >= max
    {
        return Err(ClientError::new(
            ErrorCode::TooManyRooms,
            format!(
                "this connection has joined {max} conversations, the most allowed; room:leave one first"
            ),
        ));
    }
    Ok(())
}

async fn on_join<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = room_request(&s, &gw, EventClass::Join, "room:join", data).await?;
        let conversation = &req.conversation_id;
        let room = keys::conversation_room(&id.tenant_id, conversation);
        check_room_count(&s, &gw, &room, &id.tenant_id)?;
        let access = gw.chat.member(&id, conversation).await?;
        let gone = || {
            gw.metrics.room_join("gone");
            ClientError::new(
                ErrorCode::Forbidden,
                "the connection closed during room:join",
            )
        };
        // The socket may have closed while the membership was read: a closed socket must
        // not enter the room state, where it would stay as a ghost in presence.
        if !s.connected() {
            return Err(gone());
        }
        s.join(room);
        let socket_id = s.id.to_string();
        let answer = gw
            .chat
            .enter(&id, conversation, &socket_id, &access)
            .await?;
        if !s.connected() {
            // It closed meanwhile, and its disconnect handler may not have seen the room.
            leave_room(&s, &gw, &id, conversation).await;
            return Err(gone());
        }
        gw.metrics.room_join("joined");
        let _ = emit::from_socket(&s, answer.emits).await;
        Ok(answer.reply)
    }
    .await;
    reply.send(result);
}

async fn on_leave<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = room_request(&s, &gw, EventClass::Join, "room:leave", data).await?;
        s.leave(keys::conversation_room(&id.tenant_id, &req.conversation_id));
        leave_room(&s, &gw, &id, &req.conversation_id).await;
        Ok(ConversationRef {
            conversation_id: req.conversation_id,
        })
    }
    .await;
    reply.send(result);
}

async fn leave_room<A: Adapter>(s: &SocketRef<A>, gw: &Shared, id: &Identity, conversation: &str) {
    let emits = gw.chat.leave(id, conversation, &s.id.to_string()).await;
    let _ = emit::from_socket(s, emits).await;
}

/// Takes the socket out of the room state of every conversation it had joined.
pub(super) async fn on_disconnect<A: Adapter>(s: SocketRef<A>, State(gw): State<Shared>) {
    gw.metrics.connected_sockets.dec();
    let Ok(id) = identity(&s) else { return };
    let prefix = keys::conversation_room(&id.tenant_id, "");
    for room in s.rooms() {
        if let Some(conversation) = room.strip_prefix(prefix.as_str()) {
            leave_room(&s, &gw, &id, conversation).await;
        }
    }
}

async fn on_presence<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = room_request(&s, &gw, EventClass::Read, "presence:get", data).await?;
        gw.chat.presence(&id, req).await
    }
    .await;
    reply.send(result);
}

async fn on_typing<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = room_request(&s, &gw, EventClass::Other, "typing", data).await?;
        require_joined(&s, &id, &req.conversation_id, "typing in it")?;
        let answer = gw.chat.typing(&id, req).await?;
        let _ = emit::from_socket(&s, answer.emits).await;
        Ok(answer.reply)
    }
    .await;
    reply.send(result);
}

async fn on_recover<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = gw.admit_read(&s, data, RecoverRequest::parse).await?;
        gw.chat.recover(&id, req).await
    }
    .await;
    match result {
        Ok(body) => reply.ok(&body),
        Err(e) if e.code == ErrorCode::TooFarBehind => reply.err_with(&e, &NothingRecovered::BODY),
        Err(e) => reply.err(&e),
    }
}
