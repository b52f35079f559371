//! Joining and leaving conversations, presence, typing indicators and recovery.

use redis::AsyncCommands;
use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, State, TryData};

use super::reply::Reply;
use super::{Shared, identity, payload, require_joined};
use crate::error::{ClientError, ErrorCode};
use crate::keys;
use crate::protocol::{RecoverRequest, RoomRequest};
use crate::rate_limit::EventClass;
use crate::rooms::recent::{self, Plan};

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
) -> Result<(crate::auth::Identity, RoomRequest), ClientError> {
    let id = gw.admit(s, class).await?;
    let req = RoomRequest::parse(event, payload(data).as_ref())?;
    Ok((id, req))
}

/// Sends the room's online list to everyone in it, on every gateway.
pub(super) async fn announce_presence<A: Adapter>(
    s: &SocketRef<A>,
    gw: &super::Gateway,
    tenant: &str,
    conversation: &str,
    online: &[String],
) {
    gw.metrics.presence_broadcasts.inc();
    let room = keys::conversation_room(tenant, conversation);
    let body = json!({"conversationId": conversation, "online": online});
    if let Err(e) = s.within(room).emit("presence", &body).await {
        tracing::warn!(error = %e, "presence broadcast failed");
    }
}

async fn on_join<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = room_request(&s, &gw, EventClass::Join, "room:join", data).await?;
        let conversation_prefix = keys::conversation_room(&id.tenant_id, "");
        let room = keys::conversation_room(&id.tenant_id, &req.conversation_id);
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
                format!("this connection has joined {max} conversations, the most allowed; room:leave one first"),
            ));
        }
        let conversation = &req.conversation_id;
        let access = gw.member(&id, conversation).await?;
        let gone = || {
            gw.metrics.room_join("gone");
            ClientError::new(ErrorCode::Forbidden, "the connection closed during room:join")
        };
        // The socket may have closed while the membership was read: a closed socket must
        // not enter the room state, where it would stay as a ghost in presence.
        if !s.connected() {
            return Err(gone());
        }
        s.join(keys::conversation_room(&id.tenant_id, conversation));
        let socket_id = s.id.to_string();
        let online = gw
            .rooms
            .join(&id.tenant_id, conversation, &id.user_id, &socket_id)
            .await
            .map_err(|e| gw.internal(&e))?;
        if !s.connected() {
            // It closed meanwhile, and its disconnect handler may not have seen the room.
            leave_room(&s, &gw, &id.tenant_id, conversation, &id.user_id).await;
            return Err(gone());
        }
        gw.metrics.room_join("joined");
        announce_presence(&s, &gw, &id.tenant_id, conversation, &online).await;
        let now = crate::protocol::now_ms();
        let muted_until = access
            .muted(now)
            .map(|m| m.until_ms.map_or(Value::Bool(true), Value::from));
        Ok(json!({
            "conversationId": conversation,
            "role": access.role,
            "online": online,
            "mutedUntil": muted_until,
        }))
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
        leave_room(&s, &gw, &id.tenant_id, &req.conversation_id, &id.user_id).await;
        Ok(json!({"conversationId": req.conversation_id}))
    }
    .await;
    reply.send(result);
}

async fn leave_room<A: Adapter>(
    s: &SocketRef<A>,
    gw: &Shared,
    tenant: &str,
    conversation: &str,
    user: &str,
) {
    match gw
        .rooms
        .leave(tenant, conversation, user, &s.id.to_string())
        .await
    {
        Ok(online) => announce_presence(s, gw, tenant, conversation, &online).await,
        Err(e) => tracing::warn!(error = %e, "removing a socket from room state failed"),
    }
}

/// Takes the socket out of the room state of every conversation it had joined.
pub(super) async fn on_disconnect<A: Adapter>(s: SocketRef<A>, State(gw): State<Shared>) {
    gw.metrics.connected_sockets.dec();
    let Ok(id) = identity(&s) else { return };
    let prefix = keys::conversation_room(&id.tenant_id, "");
    for room in s.rooms() {
        if let Some(conversation) = room.strip_prefix(prefix.as_str()) {
            leave_room(&s, &gw, &id.tenant_id, conversation, &id.user_id).await;
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
        gw.member(&id, &req.conversation_id).await?;
        let online = gw
            .rooms
            .online(&id.tenant_id, &req.conversation_id)
            .await
            .map_err(|e| gw.internal(&e))?;
        Ok(json!({"conversationId": req.conversation_id, "online": online}))
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
        let conversation = &req.conversation_id;
        require_joined(&s, &id, conversation, "typing in it")?;
        let cfg = &gw.cfg.rooms;
        let key = keys::typing(&id.tenant_id, conversation, &id.user_id);
        let mut conn = gw.redis.clone();
        let first: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(cfg.typing_throttle_ms)
            .query_async(&mut conn)
            .await
            .map_err(|e| gw.internal(&e.into()))?;
        if first.is_none() {
            let left: i64 = conn.pttl(&key).await.unwrap_or(0);
            let mut e = ClientError::new(
                ErrorCode::RateLimited,
                format!(
                    "one typing indicator per {} ms per conversation",
                    cfg.typing_throttle_ms
                ),
            );
            e.retry_after_ms = Some(u64::try_from(left).unwrap_or(0));
            return Err(e);
        }
        let body = json!({"conversationId": conversation, "userId": id.user_id, "ttlMs": cfg.typing_ttl_ms});
        let room = keys::conversation_room(&id.tenant_id, conversation);
        if let Err(e) = s.to(room).emit("typing", &body).await {
            tracing::warn!(error = %e, "typing broadcast failed");
        }
        Ok(json!({"conversationId": conversation}))
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
        let (id, req) = gw
            .admitted_read(&s, data, RecoverRequest::parse, |r| &r.conversation_id)
            .await?;
        gw.recover(&id.tenant_id, &req).await
    }
    .await;
    match result {
        Ok(body) => reply.ok(body),
        Err(e) if e.code == ErrorCode::TooFarBehind => {
            reply.err_with(&e, json!({"complete": false, "messages": []}));
        }
        Err(e) => reply.err(&e),
    }
}

impl super::Gateway {
    /// Everything after `after_seq`, in order, from the recovery window and, for what it
    /// no longer holds, from MongoDB.
    async fn recover(&self, tenant: &str, req: &RecoverRequest) -> Result<Value, ClientError> {
        let conversation = &req.conversation_id;
        let fail = |e: &crate::error::Error| self.internal(e);
        let latest = self
            .sequencer
            .current(tenant, conversation)
            .await
            .map_err(|e| fail(&e))?;
        let window = self.recent.window();
        let messages = match recent::plan(req.after_seq, latest, window) {
            Plan::UpToDate => Vec::new(),
            Plan::TooFarBehind { missed } => {
                self.metrics.recovery("too_far_behind");
                return Err(ClientError::new(
                    ErrorCode::TooFarBehind,
                    format!(
                        "{missed} messages were missed (newest seq {latest}); recovery covers the last {window}: page messages:history instead"
                    ),
                ));
            }
            Plan::Recover => {
                let buffered = self
                    .recent
                    .after(tenant, conversation, req.after_seq)
                    .await
                    .map_err(|e| fail(&e))?;
                if recent::covers(&buffered, req.after_seq) {
                    buffered
                } else {
                    self.metrics.recovery("from_database");
                    let stored = self
                        .store
                        .messages_after(tenant, conversation, req.after_seq, window)
                        .await
                        .map_err(|e| fail(&e))?;
                    recent::merge(buffered, stored)
                }
            }
        };
        self.metrics.recovery("complete");
        Ok(json!({
            "conversationId": conversation,
            "messages": messages,
            "complete": true,
            "latestSeq": latest,
        }))
    }
}
