//! The call service: every use case of `/webrtc` apart from the transport (SPEC.md §3
//! "Calls on `/webrtc`", "Recording on `/webrtc`").
//!
//! A call's state is one JSON value in Redis (`keys::call`, tenant-scoped), changed only by
//! compare-and-set: load → apply a transition of [`state::Call`] → store if nobody changed
//! it meanwhile (else load again). So any gateway can act on any call, and a gateway that
//! restarts loses nothing. After a change the service
//! - keeps the indexes in line: the conversation's call, each member's calls, the set of
//!   active calls;
//! - keeps the call's deadlines in one sorted set shared by every gateway
//!   (`keys::CALL_DEADLINES`): the ring deadline, the earliest open consent deadline, and a
//!   presence check per joined member. Each gateway's sweeper claims what is due (a claim
//!   is a lease: a gateway that dies holding it leaves it to another after the lease);
//! - writes a changed recording to MongoDB `call_recordings` (versioned, so writes of two
//!   gateways cannot go back in time) and publishes each change on
//!   `webrtc.recording.events`, keyed `tenantId:recordingId`;
//! - returns the [`Notice`]s the transport emits to users' `/webrtc` sockets.
//!
//! Presence: each `/webrtc` socket is registered under its user with its gateway's id. A
//! joined member's presence check runs every `CALL_LEAVE_GRACE_SECONDS` (and one grace
//! period after a socket of theirs disconnects); a member with no socket on a live gateway
//! then leaves the call. A reconnect within the grace period keeps the member in.

pub mod protocol;
pub mod state;

mod deadlines;
mod outbox;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};

use crate::auth::Identity;
use crate::error::{ClientError, Error, ErrorCode, Result};
use crate::kafka::Producer;
use crate::keys;
use crate::metrics::{KindLabel, Metrics, ReasonLabel};
use crate::protocol::now_ms;
use crate::store::Store;
pub use deadlines::Due;
pub use outbox::OutboxEntry;
pub use state::{Call, Effects, Notice, Timeouts};

/// How long a call lives in Redis without a change or a presence check.
const CALL_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a claimed deadline or outbox entry is left to the gateway that claimed it.
const CLAIM_LEASE_MS: i64 = 10_000;
/// Attempts of one compare-and-set change under contention.
const CAS_ATTEMPTS: usize = 20;

/// Claims up to `ARGV[2]` members due by `ARGV[1]`, leasing each until `ARGV[3]`.
const CLAIM: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[3], m) end
return due
";

/// Counts the user's sockets on live gateways (`ARGV[1]`: the liveness key prefix),
/// dropping entries of gateways that are gone.
const LIVE_SOCKETS: &str = r"
local n, alive = 0, {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local gw = all[i + 1]
  if alive[gw] == nil then alive[gw] = redis.call('EXISTS', ARGV[1] .. gw) == 1 end
  if alive[gw] then n = n + 1 else redis.call('HDEL', KEYS[1], all[i]) end
end
return n
";

/// Settings of the call service (from `Config`).
#[derive(Debug, Clone)]
pub struct CallSettings {
    pub timeouts: Timeouts,
    /// How long a member without sockets stays in a call.
    pub leave_grace: Duration,
    pub max_signal_bytes: usize,
    /// Members of one call at most (joined and ringing).
    pub max_members: usize,
    pub recording_topic: String,
}

impl CallSettings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            timeouts: Timeouts {
                ring_ms: ms_duration(cfg.calls.ring_timeout),
                consent_ms: ms_duration(cfg.calls.recording_consent_timeout),
            },
            leave_grace: cfg.calls.leave_grace,
            max_signal_bytes: cfg.calls.max_signal_bytes,
            max_members: cfg.calls.max_members,
            recording_topic: cfg.kafka.recording_topic.clone(),
        }
    }
}

/// A stored change: the call after it, its effects, and the recording outbox entry to
/// deliver (see [`Calls::deliver`]) when the recording changed.
#[derive(Debug, Clone)]
pub struct Updated {
    pub call: Call,
    pub fx: Effects,
    pub outbox: Option<String>,
}

pub struct Calls {
    pub settings: CallSettings,
    redis: ConnectionManager,
    store: Store,
    producer: Arc<Producer>,
    metrics: Arc<Metrics>,
    gateway_id: String,
    cas: Script,
    start: Script,
    claim: Script,
    live_sockets: Script,
    take: Script,
    done: Script,
}

fn not_found(call: &str) -> ClientError {
    ClientError::new(
        ErrorCode::NotFound,
        format!("call {call} does not exist or is over"),
    )
}

fn internal(e: &Error) -> ClientError {
    tracing::warn!(error = %e, category = e.category(), "dependency failure");
    e.to_client()
}

fn ms_duration(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Calls {
    pub fn new(
        settings: CallSettings,
        redis: ConnectionManager,
        store: Store,
        producer: Arc<Producer>,
        metrics: Arc<Metrics>,
        gateway_id: String,
    ) -> Self {
        Self {
            settings,
            redis,
            store,
            producer,
            metrics,
            gateway_id,
            cas: sync::cas_script(),
            start: sync::start_script(),
            claim: Script::new(CLAIM),
            live_sockets: Script::new(LIVE_SOCKETS),
            take: outbox::take_script(),
            done: outbox::done_script(),
        }
    }

    /// The call, as stored; `not_found` when it is over or belongs to another tenant.
    pub async fn get(&self, tenant: &str, call: &str) -> Result<Call, ClientError> {
        self.load(tenant, call)
            .await
            .map_err(|e| internal(&e))?
            .map(|(c, _)| c)
            .ok_or_else(|| not_found(call))
    }

    async fn load(&self, tenant: &str, call: &str) -> Result<Option<(Call, String)>> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(keys::call(tenant, call))
            .query_async(&mut self.redis.clone())
            .await?;
        raw.map(|raw| {
            serde_json::from_str(&raw)
                .map(|c| (c, raw))
                .map_err(|e| Error::Corrupt {
                    what: "call state",
                    detail: e.to_string(),
                })
        })
        .transpose()
    }

    fn grace_ms(&self) -> i64 {
        ms_duration(self.settings.leave_grace)
    }

    /// Applies `change` to the stored call with compare-and-set; the same script brings
    /// indexes, deadlines and the recording outbox in line (`sync`).
    pub async fn update(
        &self,
        tenant: &str,
        id: &str,
        mut change: impl FnMut(&mut Call, i64) -> Result<Effects, ClientError>,
    ) -> Result<Updated, ClientError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut call, raw) = self
                .load(tenant, id)
                .await
                .map_err(|e| internal(&e))?
                .ok_or_else(|| not_found(id))?;
            let now = now_ms();
            let fx = change(&mut call, now)?;
            let new = if fx.ended.is_some() {
                String::new()
            } else {
                serde_json::to_string(&call).map_err(|e| internal(&e.into()))?
            };
            if new == raw {
                return Ok(Updated {
                    call,
                    fx,
                    outbox: None,
                });
            }
            let (batch, outbox) = sync::follow_up(&call, &fx, now, self.grace_ms());
            let stored: i32 = self
                .cas
                .key(keys::call(tenant, id))
                .arg(&raw)
                .arg(&new)
                .arg(ms_duration(CALL_TTL))
                .arg(batch.args())
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(|e| internal(&e.into()))?;
            if stored == 1 {
                self.count(&call, &fx, now);
                return Ok(Updated { call, fx, outbox });
            }
        }
        Err(internal(&Error::Contended("call state")))
    }

    fn count(&self, call: &Call, fx: &Effects, now: i64) {
        if fx.answered {
            self.metrics
                .call_setup
                .observe(now.saturating_sub(call.created_at).max(0) as f64 / 1000.0);
        }
        if let Some(reason) = fx.ended {
            self.metrics
                .calls_ended
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }

    fn too_many(&self, members: usize) -> ClientError {
        ClientError::new(
            ErrorCode::TooLarge,
            format!(
                "a call takes at most {} members (CALL_MAX_MEMBERS); this one would have {members}",
                self.settings.max_members
            ),
        )
    }

    /// `call:accept` (and `call:start` into a call going on).
    pub async fn accept(&self, id: &Identity, call: &str) -> Result<Updated, ClientError> {
        let (timeouts, max) = (self.settings.timeouts, self.settings.max_members);
        self.update(&id.tenant_id, call, |c, now| {
            let joined = c.in_state(state::MemberState::Joined).count();
            if !c.is_joined(&id.user_id) && joined >= max {
                return Err(self.too_many(joined + 1));
            }
            Ok(c.accept(&id.user_id, now, timeouts))
        })
        .await
    }

    /// `call:start`: a new call in the conversation, or the one going on there (joined,
    /// the ack says `joined: true`).
    pub async fn start(
        &self,
        id: &Identity,
        req: &protocol::StartRequest,
    ) -> Result<(Value, Updated), ClientError> {
        let tenant = &id.tenant_id;
        let now = now_ms();
        let participants = self
            .store
            .participants(tenant, &req.conversation_id, now)
            .await
            .map_err(|e| internal(&e))?
            .ok_or_else(|| {
                ClientError::new(
                    ErrorCode::NotFound,
                    format!("conversation {} does not exist", req.conversation_id),
                )
            })?;
        if !participants.iter().any(|p| *p != id.user_id) {
            return Err(ClientError::new(
                ErrorCode::Conflict,
                format!(
                    "conversation {} has nobody else to call",
                    req.conversation_id
                ),
            ));
        }
        if participants.len() > self.settings.max_members {
            return Err(self.too_many(participants.len()));
        }
        let index = keys::conversation_call(tenant, &req.conversation_id);
        for _ in 0..CAS_ATTEMPTS {
            let (call, fx) = Call::start(
                uuid::Uuid::now_v7().to_string(),
                tenant,
                &req.conversation_id,
                req.media,
                &id.user_id,
                &participants,
                now,
                self.settings.timeouts,
            );
            let (batch, outbox) = sync::follow_up(&call, &fx, now, self.grace_ms());
            let json = serde_json::to_string(&call).map_err(|e| internal(&e.into()))?;
            let winner: String = self
                .start
                .key(keys::call(tenant, &call.id))
                .key(&index)
                .arg(&json)
                .arg(ms_duration(CALL_TTL))
                .arg(&call.id)
                .arg(batch.args())
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(|e| internal(&e.into()))?;
            if winner == call.id {
                self.metrics.calls_started.inc();
                return Ok((call.view(), Updated { call, fx, outbox }));
            }
            // A call goes on in this conversation (created with its index in one
            // script, so it exists unless it just ended or its index outlived it): join.
            match self.accept(id, &winner).await {
                Ok(up) => {
                    let mut ack = up.call.view();
                    ack["joined"] = json!(true);
                    return Ok((ack, up));
                }
                Err(e) if e.code == ErrorCode::NotFound => {
                    let _: std::result::Result<(), _> = redis::cmd("EVAL")
                        .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end")
                        .arg(1)
                        .arg(&index)
                        .arg(&winner)
                        .query_async(&mut self.redis.clone())
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(internal(&Error::Contended("conversation call")))
    }

    /// Takes `user` out of the call going on in the conversation, if any (kicked or
    /// banned from it).
    pub async fn remove_from_conversation_call(
        &self,
        tenant: &str,
        conversation: &str,
        user: &str,
    ) -> Result<Option<Updated>, ClientError> {
        let call: Option<String> = redis::cmd("GET")
            .arg(keys::conversation_call(tenant, conversation))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| internal(&e.into()))?;
        let Some(call) = call else {
            return Ok(None);
        };
        match self
            .update(tenant, &call, |c, now| Ok(c.leave(user, now)))
            .await
        {
            Ok(up) => Ok(Some(up)),
            Err(e) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `call:signal`: the notice for the named member, if both are in the call.
    pub async fn relay(
        &self,
        id: &Identity,
        req: protocol::SignalRequest,
    ) -> Result<Notice, ClientError> {
        let call = self.get(&id.tenant_id, &req.call_id).await?;
        call.require_joined(&id.user_id, "signalling in it")?;
        if !call.is_joined(&req.to) {
            return Err(ClientError::new(
                ErrorCode::Forbidden,
                format!("{} is not in call {}", req.to, req.call_id),
            ));
        }
        self.metrics
            .signals_relayed
            .get_or_create(&KindLabel {
                kind: req.kind.as_str(),
            })
            .inc();
        Ok(Notice {
            user: req.to,
            event: "call:signal",
            payload: json!({"callId": req.call_id, "from": id.user_id, "signal": req.signal}),
        })
    }

    /// The call a recording belongs to.
    pub async fn call_of_recording(
        &self,
        tenant: &str,
        recording: &str,
    ) -> Result<String, ClientError> {
        let call: Option<String> = redis::cmd("GET")
            .arg(keys::recording_call(tenant, recording))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| internal(&e.into()))?;
        call.ok_or_else(|| {
            ClientError::new(
                ErrorCode::NotFound,
                format!("recording {recording} does not exist or is over"),
            )
        })
    }

    // --- presence ---

    /// Registers a `/webrtc` socket of the user on this gateway (again: also when it
    /// starts or joins a call, so a registration that expired on a long-lived socket is
    /// back before its first presence check).
    pub async fn socket_connected(&self, id: &Identity, socket: &str) -> Result<()> {
        let key = keys::call_sockets(&id.tenant_id, &id.user_id);
        redis::pipe()
            .hset(&key, socket, &self.gateway_id)
            .ignore()
            .pexpire(&key, ms_duration(CALL_TTL))
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// Forgets a socket. When it was the user's last one, they are absent from their
    /// calls from now on, and each call checks on them one grace period later.
    pub async fn socket_disconnected(&self, id: &Identity, socket: &str) -> Result<()> {
        let mut redis = self.redis.clone();
        let (_, calls): ((), Vec<String>) = redis::pipe()
            .hdel(keys::call_sockets(&id.tenant_id, &id.user_id), socket)
            .smembers(keys::user_calls(&id.tenant_id, &id.user_id))
            .query_async(&mut redis)
            .await?;
        if calls.is_empty() || self.live_sockets(&id.tenant_id, &id.user_id).await? > 0 {
            return Ok(());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for call in calls {
            let absent = keys::call_absent(&id.tenant_id, &call);
            let due = Due::Presence {
                tenant: id.tenant_id.clone(),
                call,
                user: id.user_id.clone(),
            };
            pipe.hset_nx(&absent, &id.user_id, now)
                .ignore()
                .pexpire(&absent, ms_duration(CALL_TTL))
                .ignore()
                .zadd(keys::CALL_DEADLINES, due.member(), now + self.grace_ms())
                .ignore();
        }
        pipe.query_async::<()>(&mut redis).await?;
        Ok(())
    }

    async fn live_sockets(&self, tenant: &str, user: &str) -> Result<u32> {
        Ok(self
            .live_sockets
            .key(keys::call_sockets(tenant, user))
            .arg(keys::GATEWAY_ALIVE_PREFIX)
            .invoke_async(&mut self.redis.clone())
            .await?)
    }
}
