//! The Socket.IO gateway: the `/chat` namespace, its handshake and its events.
//!
//! A handler here validates, authorizes and sequences; it never writes messages to MongoDB
//! (that is the persister's job; moderation writes its own records) and never acks a
//! message before the broker has acknowledged it.

mod confirm;
mod moderation;
mod reply;
mod rooms;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Event, SocketRef, State, TryData};

pub use confirm::{CONFIRMATIONS_GROUP, perform, run_confirmations, run_sweeper};
use reply::Reply;

use crate::auth::{self, Identity, Verifier};
use crate::chat::delivery::{Delivery, SendError, Sent};
use crate::config::Config;
use crate::error::{ClientError, Error, ErrorCode};
use crate::keys;
use crate::metrics::Metrics;
use crate::protocol::{ChatRecord, HistoryRequest, SendRequest, StatusRequest, now_ms};
use crate::rate_limit::{ConnectionBudget, Decision, EventClass, RateLimiter};
use crate::rooms::access::{Access, AccessCache};
use crate::rooms::recent::RecentMessages;
use crate::rooms::state::RoomState;
use crate::sequence::Sequencer;
use crate::store::Store;

pub const CHAT_NAMESPACE: &str = "/chat";
pub const WEBRTC_NAMESPACE: &str = "/webrtc";

/// Everything a gateway handler needs; shared as Socket.IO state.
pub struct Gateway {
    pub cfg: Config,
    pub verifier: Verifier,
    pub store: Store,
    pub redis: ConnectionManager,
    pub rate: RateLimiter,
    pub sequencer: Sequencer,
    pub delivery: Delivery,
    pub metrics: Arc<Metrics>,
    pub access: AccessCache,
    pub rooms: RoomState,
    pub recent: RecentMessages,
    pub ice: crate::ice::IceProvider,
}

pub type Shared = Arc<Gateway>;

/// Checks the handshake's token (Socket.IO `auth` payload or `Authorization` header).
fn verify_handshake<A: Adapter>(
    s: &SocketRef<A>,
    auth: Option<&Value>,
    gw: &Gateway,
) -> Result<Identity, ClientError> {
    let from_header = auth::token_from_headers(&s.req_parts().headers);
    let token = auth::token_from_auth(auth).or(from_header);
    let result = match token {
        None => Err(ClientError::new(
            ErrorCode::Unauthorized,
            "no token: connect with auth {\"token\": \"<JWT>\"}",
        )),
        Some(token) => gw.verifier.verify(token),
    };
    if let Err(e) = &result {
        gw.metrics.connections_refused.inc();
        tracing::debug!(reason = %e.message, "connection refused");
    }
    result
}

/// Handshake middleware of `/webrtc`: no valid token, no connection. Its events are
/// registered here for the same reason as in [`authenticate`].
pub async fn authenticate_webrtc<A: Adapter>(
    s: SocketRef<A>,
    TryData(auth): TryData<Value>,
    State(gw): State<Shared>,
) -> Result<(), ClientError> {
    let identity = verify_handshake(&s, auth.as_ref().ok(), &gw)?;
    s.extensions.insert(identity);
    s.extensions.insert(Arc::new(ConnectionBudget::new(
        gw.cfg.limits.connection_events,
    )));
    s.on("call:ice-servers", on_ice_servers::<A>);
    s.on_fallback(on_unknown::<A>);
    Ok(())
}

async fn on_ice_servers<A: Adapter>(s: SocketRef<A>, reply: Reply<A>, State(gw): State<Shared>) {
    let result = async {
        let id = gw.admit(&s, EventClass::Other).await?;
        gw.ice.configuration(&id.user_id)
    }
    .await;
    reply.send(result);
}

/// Handshake middleware of `/chat`: no valid token, no connection.
pub async fn authenticate<A: Adapter>(
    s: SocketRef<A>,
    TryData(auth): TryData<Value>,
    State(gw): State<Shared>,
) -> Result<(), ClientError> {
    match verify_handshake(&s, auth.as_ref().ok(), &gw) {
        Ok(identity) => {
            // Everything a client may rely on right after `connect` is set up here, not in
            // the connect handler: socketioxide sends CONNECT before it spawns that handler,
            // so an event sent at once could otherwise find no handler and be lost.
            s.join(keys::user_room(&identity.tenant_id, &identity.user_id));
            s.extensions.insert(identity);
            s.extensions.insert(Arc::new(ConnectionBudget::new(
                gw.cfg.limits.connection_events,
            )));
            register_events(&s);
            gw.metrics.connected_sockets.inc();
            s.on_disconnect(rooms::on_disconnect::<A>);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Connect handler of `/chat`; use with [`authenticate`] as middleware, which does the
/// work (see there).
pub async fn on_connect<A: Adapter>(s: SocketRef<A>) {
    tracing::trace!(socket = %s.id, "connected");
}

fn register_events<A: Adapter>(s: &SocketRef<A>) {
    rooms::register(s);
    moderation::register(s);
    s.on("message:send", on_send::<A>);
    s.on("message:status", on_status::<A>);
    s.on("messages:history", on_history::<A>);
    s.on_fallback(on_unknown::<A>);
}

fn identity<A: Adapter>(s: &SocketRef<A>) -> Result<Identity, ClientError> {
    s.extensions
        .get::<Identity>()
        .ok_or_else(|| ClientError::new(ErrorCode::Unauthorized, "socket is not authenticated"))
}

/// Refuses unless the socket has joined the conversation's room (it is removed from the
/// room when kicked or banned, on whichever gateway holds it).
fn require_joined<A: Adapter>(
    s: &SocketRef<A>,
    id: &Identity,
    conversation: &str,
    doing: &str,
) -> Result<(), ClientError> {
    let room = keys::conversation_room(&id.tenant_id, conversation);
    if s.rooms().iter().any(|r| *r == room) {
        Ok(())
    } else {
        Err(ClientError::new(
            ErrorCode::Forbidden,
            format!("join conversation {conversation} (room:join) before {doing}"),
        ))
    }
}

fn payload(data: Result<Value, impl std::fmt::Display>) -> Option<Value> {
    data.ok().filter(|v| !v.is_null())
}

async fn on_send<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let started = Instant::now();
    match gw.accept(&s, payload(data).as_ref()).await {
        Ok(sent) => {
            gw.metrics
                .ack_latency
                .observe(started.elapsed().as_secs_f64());
            reply.ok(json!({
                "messageId": sent.message_id,
                "seq": sent.seq,
                "duplicate": sent.duplicate,
                "status": sent.state.as_str(),
            }));
            if let Some(message) = sent.announce {
                let room = keys::conversation_room(&tenant_of(&s), &message.conversation_id);
                if let Err(e) = s.to(room).emit("message:new", &message).await {
                    tracing::warn!(error = %e, "broadcast of message:new failed");
                }
            }
        }
        Err(SendError { error, message }) => {
            gw.metrics.reject(error.code);
            match message {
                Some((id, seq)) => reply.err_with(&error, json!({"messageId": id, "seq": seq})),
                None => reply.err(&error),
            }
        }
    }
}

/// The socket's tenant (empty when unauthenticated, which the handshake prevents).
fn tenant_of<A: Adapter>(s: &SocketRef<A>) -> String {
    identity(s).map(|i| i.tenant_id).unwrap_or_default()
}

/// `message:status`: where the caller's own messages stand, by `clientMessageId` — how a
/// client that missed `message:persisted`/`message:failed` (it was offline, or reconnected
/// to another gateway) learns the outcome of its sends.
async fn on_status<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = gw
            .admitted_read(&s, data, StatusRequest::parse, |r| &r.conversation_id)
            .await?;
        let found = gw
            .delivery
            .statuses(
                &id.tenant_id,
                &req.conversation_id,
                &id.user_id,
                &req.client_message_ids,
            )
            .await?;
        let messages: Vec<Value> = found
            .into_iter()
            .map(|m| match m.status {
                Some(st) => json!({
                    "clientMessageId": m.client_message_id,
                    "status": st.state.as_str(),
                    "messageId": st.message_id,
                    "seq": st.seq,
                    "reason": st.reason,
                }),
                None => json!({"clientMessageId": m.client_message_id, "status": "unknown"}),
            })
            .collect();
        Ok(json!({"conversationId": req.conversation_id, "messages": messages}))
    }
    .await;
    reply.send(result);
}

async fn on_history<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = gw
            .admitted_read(&s, data, HistoryRequest::parse, |r| &r.conversation_id)
            .await?;
        let limit = req.limit();
        // One extra row tells whether an older page exists.
        let mut messages = gw
            .store
            .history(&id.tenant_id, &req.conversation_id, req.before_seq, limit + 1)
            .await
            .map_err(|e| gw.internal(&e))?;
        let has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        Ok(json!({"conversationId": req.conversation_id, "messages": messages, "hasMore": has_more}))
    }
    .await;
    reply.send(result);
}

async fn on_unknown<A: Adapter>(Event(event): Event, reply: Reply<A>) {
    let mut name: String = event.chars().take(64).collect();
    if name.len() < event.len() {
        name.push('…');
    }
    reply.err(&ClientError::new(
        ErrorCode::UnknownEvent,
        format!("event {name:?} is not part of the protocol of this namespace"),
    ));
}

impl Gateway {
    /// Takes one event of `class` from the connection's budget and the user's, and
    /// returns the caller; refuses with `rate_limited` (and when to retry) past either.
    async fn admit<A: Adapter>(
        &self,
        s: &SocketRef<A>,
        class: EventClass,
    ) -> Result<Identity, ClientError> {
        let id = identity(s)?;
        let limited = |scope: &str, retry_after_ms: u64| {
            self.metrics
                .rate_limited
                .get_or_create(&crate::metrics::ClassLabel {
                    class: class.as_str(),
                })
                .inc();
            let mut e = ClientError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many {} events on this {scope}; retry in {retry_after_ms} ms",
                    class.as_str()
                ),
            );
            e.retry_after_ms = Some(retry_after_ms);
            e
        };
        if let Some(budget) = s.extensions.get::<Arc<ConnectionBudget>>()
            && let Decision::Limited { retry_after_ms } = budget.take(class)
        {
            return Err(limited("connection", retry_after_ms));
        }
        match self
            .rate
            .check_events(&id.tenant_id, &id.user_id, self.cfg.limits.user_events)
            .await
            .map_err(|e| self.internal(&e))?
        {
            Decision::Allowed => Ok(id),
            Decision::Limited { retry_after_ms } => Err(limited("account", retry_after_ms)),
        }
    }

    /// A read event: admitted by the read budget, its payload parsed, the caller's
    /// standing in the conversation it names checked.
    async fn admitted_read<A: Adapter, R>(
        &self,
        s: &SocketRef<A>,
        data: Result<Value, impl std::fmt::Display>,
        parse: impl FnOnce(Option<&Value>) -> Result<R, ClientError>,
        conversation: impl Fn(&R) -> &str,
    ) -> Result<(Identity, R), ClientError> {
        let id = self.admit(s, EventClass::Read).await?;
        let req = parse(payload(data).as_ref())?;
        self.member(&id, conversation(&req)).await?;
        Ok((id, req))
    }

    /// Logs a dependency failure and turns it into what the client may see.
    fn internal(&self, e: &Error) -> ClientError {
        tracing::warn!(error = %e, category = e.category(), "dependency failure");
        e.to_client()
    }

    /// The caller's standing in a conversation: a participant who is not banned.
    async fn member(&self, id: &Identity, conversation: &str) -> Result<Access, ClientError> {
        let (access, source) = self
            .access
            .get(&id.tenant_id, conversation, &id.user_id)
            .await
            .map_err(|e| self.internal(&e))?;
        self.metrics.authz_lookup(source);
        let access = access.ok_or_else(|| {
            ClientError::new(
                ErrorCode::Forbidden,
                format!("you are not a participant of conversation {conversation}"),
            )
        })?;
        let now = now_ms();
        if let Some(ban) = access.banned(now) {
            let mut e = ClientError::new(
                ErrorCode::Banned,
                format!(
                    "you are banned from conversation {conversation} {}",
                    ban.describe(now)
                ),
            );
            e.retry_after_ms = ban.remaining_ms(now);
            return Err(e);
        }
        Ok(access)
    }

    /// Validates, authorizes and rate-limits a message, then sends it (see
    /// `chat::delivery`): on success the broker has it.
    async fn accept<A: Adapter>(
        &self,
        s: &SocketRef<A>,
        data: Option<&Value>,
    ) -> Result<Sent, SendError> {
        let id = identity(s)?;
        let req = SendRequest::parse(data, self.cfg.limits.max_message_bytes)?;
        require_joined(s, &id, &req.conversation_id, "sending to it")?;
        let now = now_ms();
        if let Some(mute) = self.member(&id, &req.conversation_id).await?.muted(now) {
            let mut e = ClientError::new(
                ErrorCode::Muted,
                format!(
                    "you are muted in conversation {} {}",
                    req.conversation_id,
                    mute.describe(now)
                ),
            );
            e.retry_after_ms = mute.remaining_ms(now);
            return Err(e.into());
        }
        match self
            .rate
            .check(&id.tenant_id, &id.user_id)
            .await
            .map_err(|e| self.internal(&e))?
        {
            Decision::Allowed => {}
            Decision::Limited { retry_after_ms } => {
                let mut e = ClientError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "more than {} messages per second; retry in {retry_after_ms} ms",
                        self.cfg.limits.rate_per_second
                    ),
                );
                e.retry_after_ms = Some(retry_after_ms);
                return Err(e.into());
            }
        }
        let SendRequest {
            conversation_id,
            client_message_id,
            content,
        } = req;
        self.delivery
            .send(ChatRecord {
                tenant_id: id.tenant_id,
                conversation_id,
                message_id: uuid::Uuid::now_v7().to_string(),
                seq: 0,
                sender_id: id.user_id,
                client_message_id,
                content,
                created_at_ms: now,
            })
            .await
    }

    pub fn confirmation_poll_interval(&self) -> Duration {
        (self.cfg.confirmation_timeout() / 10)
            .clamp(Duration::from_millis(20), Duration::from_millis(250))
    }
}
