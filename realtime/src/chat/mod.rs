//! The chat service: every use case of `/chat`, apart from the transport.
//!
//! An operation takes the caller's [`Identity`] and a typed request (`protocol::*Request`)
//! and returns a typed answer (the ack body, [`replies`]) plus the [`Emit`]s the transport
//! must perform. It knows nothing of Socket.IO: the gateway keeps the handshake, the
//! connection's own state (which rooms a socket has joined, its event budget), ack
//! replies, socket join/leave and performing the emits. That keeps the decisions
//! testable without sockets (`tests/chat_service.rs` runs them against the real Redis and
//! MongoDB).
//!
//! - [`delivery`]: sending a message and driving it to an outcome;
//! - `messages`: send, history, status, recovery;
//! - `rooms`: join, leave, presence, typing;
//! - `moderation`: kick, ban, mute and their inverses, role changes.

pub mod delivery;
mod messages;
mod moderation;
pub mod replies;
mod rooms;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::auth::Identity;
use crate::delivery::{Ledger, Timing};
use crate::error::{ClientError, Error, ErrorCode};
use crate::metrics::Metrics;
use crate::model::{Access, Message};
use crate::protocol::now_ms;
use crate::rate_limit::{ConnectionBudget, Decision, EventClass, Rate, RateLimiter};
use crate::rooms::access::AccessCache;
use crate::rooms::recent::RecentMessages;
use crate::rooms::state::RoomState;
use crate::sequence::Sequencer;
use crate::store::Store;
use delivery::Delivery;
use redis::aio::ConnectionManager;

/// Something the transport must send (or, for [`Emit::RemoveFromConversation`], do)
/// after an operation, on every gateway through the adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum Emit {
    /// `message:new` to the members of the message's conversation (not to the socket
    /// that sent it: its ack carries the outcome).
    NewMessage { tenant: String, message: Message },
    /// An event to every socket of one user.
    ToUser {
        tenant: String,
        user: String,
        event: &'static str,
        payload: serde_json::Value,
    },
    /// An event to the sockets in a conversation's room; `include_caller`: also to the
    /// socket whose event caused it.
    ToConversation {
        tenant: String,
        conversation: String,
        event: &'static str,
        payload: serde_json::Value,
        include_caller: bool,
    },
    /// Takes every socket of `user` out of the conversation's room, wherever it is
    /// connected (kick, ban).
    RemoveFromConversation {
        tenant: String,
        conversation: String,
        user: String,
    },
}

impl Emit {
    fn to_conversation(
        tenant: &str,
        conversation: &str,
        event: &'static str,
        payload: &impl Serialize,
        include_caller: bool,
    ) -> Self {
        Emit::ToConversation {
            tenant: tenant.to_owned(),
            conversation: conversation.to_owned(),
            event,
            payload: serde_json::to_value(payload).unwrap_or_default(),
            include_caller,
        }
    }
}

/// An operation's ack body and what the transport must emit afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<T> {
    pub reply: T,
    pub emits: Vec<Emit>,
}

/// The limits the use cases apply (from `Config`, parsed once).
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_message_bytes: usize,
    /// `RATE_LIMIT_PER_SECOND`, named in `rate_limited` messages.
    pub rate_per_second: f64,
    /// `USER_EVENT_LIMIT`: every event of a user, all connections, all gateways.
    pub user_events: Rate,
    pub typing_throttle: Duration,
    pub typing_ttl: Duration,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            max_message_bytes: cfg.limits.max_message_bytes,
            rate_per_second: cfg.limits.rate_per_second,
            user_events: cfg.limits.user_events,
            typing_throttle: cfg.rooms.typing_throttle,
            typing_ttl: cfg.rooms.typing_ttl,
        }
    }
}

pub struct Chat {
    pub settings: Settings,
    pub store: Store,
    pub rate: RateLimiter,
    pub delivery: Delivery,
    pub access: AccessCache,
    pub rooms: RoomState,
    pub metrics: Arc<Metrics>,
}

/// Logs a dependency failure and turns it into what the client may see.
fn internal(e: &Error) -> ClientError {
    tracing::warn!(error = %e, category = e.category(), "dependency failure");
    e.to_client()
}

impl Chat {
    /// The service of one gateway (its room state is registered under a new gateway id).
    pub fn new(
        cfg: &crate::config::Config,
        redis: &ConnectionManager,
        store: &Store,
        producer: Arc<crate::kafka::Producer>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let delivery = Delivery {
            ledger: Ledger::new(redis.clone(), delivery_timing(cfg)),
            sequencer: Sequencer::new(
                redis.clone(),
                store.clone(),
                cfg.delivery.sequence_repair_gap,
            ),
            producer,
            store: store.clone(),
            recent: RecentMessages::new(
                redis.clone(),
                cfg.rooms.recovery_window,
                cfg.rooms.state_ttl,
            ),
            metrics: metrics.clone(),
            topic: cfg.kafka.message_topic.clone(),
        };
        Chat {
            settings: Settings::from_config(cfg),
            store: store.clone(),
            rate: RateLimiter::new(redis.clone(), cfg.limits.rate_per_second, cfg.limits.burst),
            delivery,
            access: AccessCache::new(redis.clone(), store.clone(), cfg.rooms.authz_cache_ttl),
            rooms: RoomState::new(
                redis.clone(),
                uuid::Uuid::now_v7().to_string(),
                cfg.rooms.state_ttl,
                cfg.rooms.presence_heartbeat,
            ),
            metrics,
        }
    }

    /// Takes one event of `class` from the connection's budget (when there is one) and
    /// the user's; refuses with `rate_limited` (and when to retry) past either.
    pub async fn admit(
        &self,
        id: &Identity,
        class: EventClass,
        connection: Option<&ConnectionBudget>,
    ) -> Result<(), ClientError> {
        let limited = |scope: &str, retry_after_ms: u64| {
            self.metrics
                .rate_limited
                .get_or_create(&crate::metrics::ClassLabel {
                    class: class.as_str(),
                })
                .inc();
            ClientError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many {} events on this {scope}; retry in {retry_after_ms} ms",
                    class.as_str()
                ),
            )
            .retry_after(retry_after_ms)
        };
        if let Some(budget) = connection
            && let Decision::Limited { retry_after_ms } = budget.take(class)
        {
            return Err(limited("connection", retry_after_ms));
        }
        match self
            .rate
            .check_events(&id.tenant_id, &id.user_id, self.settings.user_events)
            .await
            .map_err(|e| internal(&e))?
        {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after_ms } => Err(limited("account", retry_after_ms)),
        }
    }

    /// The caller's standing in a conversation: a participant who is not banned.
    pub async fn member(&self, id: &Identity, conversation: &str) -> Result<Access, ClientError> {
        let (access, source) = self
            .access
            .get(&id.tenant_id, conversation, &id.user_id)
            .await
            .map_err(|e| internal(&e))?;
        self.metrics.authz_lookup(source);
        let access = access.ok_or_else(|| {
            ClientError::new(
                ErrorCode::Forbidden,
                format!("you are not a participant of conversation {conversation}"),
            )
        })?;
        let now = now_ms();
        if let Some(ban) = access.banned(now) {
            let e = ClientError::new(
                ErrorCode::Banned,
                format!(
                    "you are banned from conversation {conversation} {}",
                    ban.describe(now)
                ),
            );
            return Err(match ban.remaining_ms(now) {
                Some(ms) => e.retry_after(ms),
                None => e,
            });
        }
        Ok(access)
    }
}

/// Ledger timing from the configuration: a produce's lease outlasts the producer's
/// delivery timeout, so no second produce starts while the first may still succeed.
fn delivery_timing(cfg: &crate::config::Config) -> Timing {
    Timing {
        lease: Duration::from_millis(u64::from(cfg.kafka.message_timeout_ms) + 1000),
        confirmation_timeout: cfg.delivery.timeout,
        attempts: cfg.delivery.retries.saturating_add(1),
        max_interval: cfg.delivery.max_retry_interval,
        ttl: cfg.delivery.idempotency_ttl,
    }
}
