//! The Socket.IO transport of `/chat` and `/webrtc`: the handshake, each event's
//! admission (the connection's budget), its payload parsed, the connection's own state
//! (which rooms this socket is in), the ack reply and performing the emits. What an event
//! does is the chat service's (`chat::Chat`); nothing here touches Redis, MongoDB or the
//! broker.

mod calls;
mod confirm;
mod emit;
mod moderation;
pub mod pubsub;
mod reply;
mod rooms;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Event, SocketRef, State, TryData};

pub use calls::run_call_sweeper;
pub use confirm::{CONFIRMATIONS_GROUP, run_confirmations, run_sweeper};
pub use emit::from_server as perform;
use reply::Reply;

use crate::auth::{self, Identity, Verifier};
use crate::chat::Chat;
use crate::chat::delivery::SendError;
use crate::chat::replies::MessageRef;
use crate::config::Config;
use crate::error::{ClientError, ErrorCode};
use crate::keys;
use crate::metrics::Metrics;
use crate::protocol::{HistoryRequest, SendRequest, StatusRequest};
use crate::rate_limit::{ConnectionBudget, EventClass};

pub const CHAT_NAMESPACE: &str = "/chat";
pub const WEBRTC_NAMESPACE: &str = "/webrtc";

/// Everything a gateway handler needs; shared as Socket.IO state.
pub struct Gateway {
    pub cfg: Config,
    pub verifier: Verifier,
    pub chat: Chat,
    pub calls: Arc<crate::calls::Calls>,
    pub metrics: Arc<Metrics>,
    pub ice: crate::ice::IceProvider,
}

pub type Shared = Arc<Gateway>;

/// Checks the handshake's token (Socket.IO `auth` payload or `Authorization` header).
async fn verify_handshake<A: Adapter>(
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
        Some(token) => gw.verifier.authenticate(token).await,
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
    let identity = verify_handshake(&s, auth.as_ref().ok(), &gw).await?;
    // The user's room reaches every socket of theirs on `/webrtc` (call notices,
    // signals), wherever it is connected; the registration counts it as present in
    // their calls.
    s.join(keys::user_room(&identity.tenant_id, &identity.user_id));
    if let Err(e) = gw
        .calls
        .socket_connected(&identity, &s.id.to_string())
        .await
    {
        tracing::warn!(error = %e, "a /webrtc socket was not registered for call presence");
        return Err(e.to_client());
    }
    s.extensions.insert(identity);
    s.extensions.insert(Arc::new(ConnectionBudget::new(
        gw.cfg.limits.connection_events,
    )));
    s.on("call:ice-servers", on_ice_servers::<A>);
    calls::register(&s);
    s.on_fallback(on_unknown::<A>);
    s.on_disconnect(calls::on_disconnect::<A>);
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
    match verify_handshake(&s, auth.as_ref().ok(), &gw).await {
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
    let sent = async {
        let id = identity(&s)?;
        let req = SendRequest::parse(payload(data).as_ref(), gw.cfg.limits.max_message_bytes)?;
        require_joined(&s, &id, &req.conversation_id, "sending to it")?;
        gw.chat.send(&id, req).await
    }
    .await;
    match sent {
        Ok(answer) => {
            gw.metrics
                .ack_latency
                .observe(started.elapsed().as_secs_f64());
            reply.ok(&answer.reply);
            // The broadcast cannot fail the send: the message is on the broker.
            let _ = emit::from_socket(&s, answer.emits).await;
        }
        Err(SendError { error, message }) => {
            gw.metrics.reject(error.code);
            match message {
                Some((message_id, seq)) => reply.err_with(&error, &MessageRef { message_id, seq }),
                None => reply.err(&error),
            }
        }
    }
}

async fn on_status<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = gw.admit_read(&s, data, StatusRequest::parse).await?;
        gw.chat.statuses(&id, req).await
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
        let (id, req) = gw.admit_read(&s, data, HistoryRequest::parse).await?;
        gw.chat.history(&id, req).await
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
        let budget = s.extensions.get::<Arc<ConnectionBudget>>();
        self.chat.admit(&id, class, budget.as_deref()).await?;
        Ok(id)
    }

    /// A read event: admitted by the read budget, its payload parsed.
    async fn admit_read<A: Adapter, R>(
        &self,
        s: &SocketRef<A>,
        data: Result<Value, impl std::fmt::Display>,
        parse: impl FnOnce(Option<&Value>) -> Result<R, ClientError>,
    ) -> Result<(Identity, R), ClientError> {
        let id = self.admit(s, EventClass::Read).await?;
        let req = parse(payload(data).as_ref())?;
        Ok((id, req))
    }

    pub fn confirmation_poll_interval(&self) -> Duration {
        (self.cfg.delivery.timeout / 10)
            .clamp(Duration::from_millis(20), Duration::from_millis(250))
    }
}
