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
use crate::store::recordings::recording_fields;
pub use state::{Call, Effects, Notice, Timeouts};

/// How long a call lives in Redis without a change or a presence check.
const CALL_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a claimed deadline is left to the gateway that claimed it.
const CLAIM_LEASE_MS: i64 = 10_000;
/// Attempts of one compare-and-set change under contention.
const CAS_ATTEMPTS: usize = 20;

/// Stores `ARGV[2]` (or deletes the key when it is empty) if the key still holds `ARGV[1]`
/// (empty: the key must not exist).
const CAS: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if cur then return 0 end
elseif cur ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then redis.call('DEL', KEYS[1])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
";

/// Deletes `KEYS[1]` if it holds `ARGV[1]`.
const DELETE_IF: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Claims up to `ARGV[2]` deadlines due by `ARGV[1]`, leasing each until `ARGV[3]`.
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
    pub recording_topic: String,
}

impl CallSettings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            timeouts: Timeouts {
                ring_ms: ms(cfg.calls.ring_timeout),
                consent_ms: ms(cfg.calls.recording_consent_timeout),
            },
            leave_grace: cfg.calls.leave_grace,
            max_signal_bytes: cfg.calls.max_signal_bytes,
            recording_topic: cfg.kafka.recording_topic.clone(),
        }
    }
}

/// A deadline of the sorted set, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Due {
    Ring {
        tenant: String,
        call: String,
    },
    Consent {
        tenant: String,
        call: String,
    },
    Presence {
        tenant: String,
        call: String,
        user: String,
    },
}

impl Due {
    fn member(&self) -> String {
        match self {
            Due::Ring { tenant, call } => format!("ring|{tenant}|{call}"),
            Due::Consent { tenant, call } => format!("consent|{tenant}|{call}"),
            Due::Presence { tenant, call, user } => format!("presence|{tenant}|{call}|{user}"),
        }
    }

    fn parse(member: &str) -> Option<Self> {
        let parts: Vec<&str> = member.split('|').collect();
        let (tenant, call) = ((*parts.get(1)?).to_owned(), (*parts.get(2)?).to_owned());
        match (parts[0], parts.len()) {
            ("ring", 3) => Some(Due::Ring { tenant, call }),
            ("consent", 3) => Some(Due::Consent { tenant, call }),
            ("presence", 4) => Some(Due::Presence {
                tenant,
                call,
                user: parts[3].to_owned(),
            }),
            _ => None,
        }
    }
}

pub struct Calls {
    pub settings: CallSettings,
    redis: ConnectionManager,
    store: Store,
    producer: Arc<Producer>,
    metrics: Arc<Metrics>,
    gateway_id: String,
    cas: Script,
    delete_if: Script,
    claim: Script,
    live_sockets: Script,
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
            cas: Script::new(CAS),
            delete_if: Script::new(DELETE_IF),
            claim: Script::new(CLAIM),
            live_sockets: Script::new(LIVE_SOCKETS),
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

    /// Stores `new` (deletes the call when `None`) if the key still holds `old`.
    async fn swap(&self, tenant: &str, id: &str, old: &str, new: Option<&Call>) -> Result<bool> {
        let new = new
            .map(serde_json::to_string)
            .transpose()?
            .unwrap_or_default();
        let done: i32 = self
            .cas
            .key(keys::call(tenant, id))
            .arg(old)
            .arg(new)
            .arg(ms_duration(CALL_TTL))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(done == 1)
    }

    /// Applies `change` to the stored call with compare-and-set, then performs what
    /// follows from it (indexes, deadlines, recording writes and events).
    pub async fn update(
        &self,
        tenant: &str,
        id: &str,
        mut change: impl FnMut(&mut Call, i64) -> Result<Effects, ClientError>,
    ) -> Result<(Call, Effects), ClientError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut call, raw) = self
                .load(tenant, id)
                .await
                .map_err(|e| internal(&e))?
                .ok_or_else(|| not_found(id))?;
            let now = now_ms();
            let fx = change(&mut call, now)?;
            let stored = if fx.ended.is_some() {
                None
            } else {
                Some(&call)
            };
            if stored.is_some_and(|c| serde_json::to_string(c).ok().as_deref() == Some(&raw)) {
                return Ok((call, fx));
            }
            if self
                .swap(tenant, id, &raw, stored)
                .await
                .map_err(|e| internal(&e))?
            {
                self.after(&call, &fx, now).await;
                return Ok((call, fx));
            }
        }
        Err(internal(&Error::Contended("call state")))
    }

    /// `call:start`: a new call in the conversation, or the one going on there (joined).
    pub async fn start(
        &self,
        id: &Identity,
        req: &protocol::StartRequest,
    ) -> Result<(Value, Vec<Notice>), ClientError> {
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
        let index = keys::conversation_call(tenant, &req.conversation_id);
        for _ in 0..CAS_ATTEMPTS {
            let call_id = uuid::Uuid::now_v7().to_string();
            let claimed: bool = redis::cmd("SET")
                .arg(&index)
                .arg(&call_id)
                .arg("NX")
                .arg("PX")
                .arg(ms_duration(CALL_TTL))
                .query_async::<Option<String>>(&mut self.redis.clone())
                .await
                .map_err(|e| internal(&e.into()))?
                .is_some();
            if !claimed {
                // A call goes on in this conversation: join it.
                let existing: Option<String> = redis::cmd("GET")
                    .arg(&index)
                    .query_async(&mut self.redis.clone())
                    .await
                    .map_err(|e| internal(&e.into()))?;
                let Some(existing) = existing else { continue };
                let timeouts = self.settings.timeouts;
                match self
                    .update(tenant, &existing, |c, now| {
                        Ok(c.accept(&id.user_id, now, timeouts))
                    })
                    .await
                {
                    Ok((call, fx)) => {
                        let mut ack = call.view();
                        ack["joined"] = json!(true);
                        return Ok((ack, fx.notices));
                    }
                    Err(e) if e.code == ErrorCode::NotFound => {
                        // The index outlived its call: clear it and try again.
                        let _: std::result::Result<i32, _> = self
                            .delete_if
                            .key(&index)
                            .arg(&existing)
                            .invoke_async(&mut self.redis.clone())
                            .await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let (call, fx) = Call::start(
                call_id,
                tenant,
                &req.conversation_id,
                req.media,
                &id.user_id,
                &participants,
                now,
                self.settings.timeouts,
            );
            let stored = self
                .swap(tenant, &call.id, "", Some(&call))
                .await
                .map_err(|e| internal(&e))?;
            if !stored {
                return Err(internal(&Error::Contended("call id")));
            }
            self.metrics.calls_started.inc();
            self.after(&call, &fx, now).await;
            return Ok((call.view(), fx.notices));
        }
        Err(internal(&Error::Contended("conversation call")))
    }

    /// Takes `user` out of the call going on in the conversation, if any (kicked or
    /// banned from it); returns the notices.
    pub async fn remove_from_conversation_call(
        &self,
        tenant: &str,
        conversation: &str,
        user: &str,
    ) -> Result<Vec<Notice>, ClientError> {
        let call: Option<String> = redis::cmd("GET")
            .arg(keys::conversation_call(tenant, conversation))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| internal(&e.into()))?;
        let Some(call) = call else {
            return Ok(Vec::new());
        };
        match self
            .update(tenant, &call, |c, now| Ok(c.leave(user, now)))
            .await
        {
            Ok((_, fx)) => Ok(fx.notices),
            Err(e) if e.code == ErrorCode::NotFound => Ok(Vec::new()),
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

    /// What follows a stored change: indexes, deadlines, metrics, the recording's
    /// document and events. Failures are logged: the state is stored, deadlines are
    /// set again at the next change, the recording document is written whole then.
    async fn after(&self, call: &Call, fx: &Effects, now: i64) {
        if let Err(e) = self.index(call, fx, now).await {
            tracing::warn!(error = %e, call = %call.id, "call indexes and deadlines not updated");
        }
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
        if let Some(rec) = &fx.recording {
            self.record(call, rec, &fx.changes, now).await;
        }
    }

    async fn index(&self, call: &Call, fx: &Effects, now: i64) -> Result<()> {
        let tenant = &call.tenant;
        let due = |d: Due| d.member();
        let ring = due(Due::Ring {
            tenant: tenant.clone(),
            call: call.id.clone(),
        });
        let consent = due(Due::Consent {
            tenant: tenant.clone(),
            call: call.id.clone(),
        });
        let active = format!("{tenant}|{}", call.id);
        let mut pipe = redis::pipe();
        let grace_at = now + ms_duration(self.settings.leave_grace);
        for (user, member) in &call.members {
            let presence = due(Due::Presence {
                tenant: tenant.clone(),
                call: call.id.clone(),
                user: user.clone(),
            });
            let calls_of_user = keys::user_calls(tenant, user);
            if fx.ended.is_none() && member.state == state::MemberState::Joined {
                pipe.cmd("ZADD")
                    .arg(keys::CALL_DEADLINES)
                    .arg("NX")
                    .arg(grace_at)
                    .arg(&presence)
                    .ignore();
                pipe.sadd(&calls_of_user, &call.id).ignore();
                pipe.pexpire(&calls_of_user, ms_duration(CALL_TTL)).ignore();
            } else {
                pipe.zrem(keys::CALL_DEADLINES, &presence).ignore();
                pipe.srem(&calls_of_user, &call.id).ignore();
            }
        }
        if fx.ended.is_some() {
            pipe.zrem(keys::CALL_DEADLINES, &[&ring, &consent]).ignore();
            pipe.srem(keys::ACTIVE_CALLS, &active).ignore();
        } else {
            pipe.sadd(keys::ACTIVE_CALLS, &active).ignore();
            if call.in_state(state::MemberState::Ringing).next().is_some() {
                pipe.zadd(keys::CALL_DEADLINES, &ring, call.ring_deadline)
                    .ignore();
            } else {
                pipe.zrem(keys::CALL_DEADLINES, &ring).ignore();
            }
            match call.consent_deadline() {
                Some(at) => pipe.zadd(keys::CALL_DEADLINES, &consent, at).ignore(),
                None => pipe.zrem(keys::CALL_DEADLINES, &consent).ignore(),
            };
            pipe.pexpire(
                keys::conversation_call(tenant, &call.conversation),
                ms_duration(CALL_TTL),
            )
            .ignore();
        }
        if let Some(rec) = &call.recording {
            pipe.set(keys::recording_call(tenant, &rec.id), &call.id)
                .arg("PX")
                .arg(ms_duration(CALL_TTL))
                .ignore();
        }
        pipe.query_async::<()>(&mut self.redis.clone()).await?;
        if fx.ended.is_some() {
            let _: i32 = self
                .delete_if
                .key(keys::conversation_call(tenant, &call.conversation))
                .arg(&call.id)
                .invoke_async(&mut self.redis.clone())
                .await?;
        }
        Ok(())
    }

    /// Writes the recording's document and publishes its changes.
    async fn record(
        &self,
        call: &Call,
        rec: &state::Recording,
        changes: &[state::RecordingChange],
        now: i64,
    ) {
        if let Err(e) = self
            .store
            .save_recording(recording_fields(call, rec, now))
            .await
        {
            self.metrics.recording_write_errors.inc();
            tracing::warn!(error = %e, recording = %rec.id, "recording document not written; written whole with its next change");
        }
        let key = format!("{}:{}", call.tenant, rec.id);
        for change in changes {
            self.metrics
                .recording_changes
                .get_or_create(&KindLabel { kind: change.kind })
                .inc();
            let mut event = json!({
                "type": change.kind,
                "tenantId": call.tenant,
                "recordingId": rec.id,
                "callId": call.id,
                "conversationId": call.conversation,
                "at": now,
                "status": change.status.as_str(),
            });
            if let (Some(into), Some(extra)) = (event.as_object_mut(), change.extra.as_object()) {
                into.extend(extra.clone());
            }
            let payload = event.to_string();
            if let Err(e) = self
                .producer
                .send(&self.settings.recording_topic, &key, payload.as_bytes())
                .await
            {
                self.metrics.recording_write_errors.inc();
                tracing::warn!(error = %e, recording = %rec.id, kind = change.kind, "recording event not published");
            }
        }
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

    /// Forgets a socket; the user's calls check their presence one grace period later.
    pub async fn socket_disconnected(&self, id: &Identity, socket: &str) -> Result<()> {
        let mut redis = self.redis.clone();
        let (_, calls): ((), Vec<String>) = redis::pipe()
            .hdel(keys::call_sockets(&id.tenant_id, &id.user_id), socket)
            .smembers(keys::user_calls(&id.tenant_id, &id.user_id))
            .query_async(&mut redis)
            .await?;
        if calls.is_empty() {
            return Ok(());
        }
        let at = now_ms() + ms_duration(self.settings.leave_grace);
        let mut pipe = redis::pipe();
        for call in calls {
            let due = Due::Presence {
                tenant: id.tenant_id.clone(),
                call,
                user: id.user_id.clone(),
            };
            pipe.cmd("ZADD")
                .arg(keys::CALL_DEADLINES)
                .arg("LT")
                .arg(at)
                .arg(due.member())
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

    // --- deadlines ---

    /// Claims up to `limit` due deadlines (each leased to this gateway for a while).
    pub async fn claim_due(&self, limit: usize) -> Result<Vec<Due>> {
        let now = now_ms();
        let members: Vec<String> = self
            .claim
            .key(keys::CALL_DEADLINES)
            .arg(now)
            .arg(limit)
            .arg(now + CLAIM_LEASE_MS)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let mut due = Vec::with_capacity(members.len());
        for m in members {
            match Due::parse(&m) {
                Some(d) => due.push(d),
                None => {
                    tracing::warn!(member = %m, "unreadable call deadline dropped");
                    let _: std::result::Result<(), _> = redis::cmd("ZREM")
                        .arg(keys::CALL_DEADLINES)
                        .arg(&m)
                        .query_async(&mut self.redis.clone())
                        .await;
                }
            }
        }
        Ok(due)
    }

    /// The tenant a deadline belongs to.
    pub fn tenant_of(due: &Due) -> &str {
        match due {
            Due::Ring { tenant, .. }
            | Due::Consent { tenant, .. }
            | Due::Presence { tenant, .. } => tenant,
        }
    }

    /// Handles one due deadline; returns the notices to emit (to users of its tenant).
    pub async fn on_due(&self, due: &Due) -> Result<Vec<Notice>, ClientError> {
        let outcome = match due {
            Due::Ring { tenant, call } => {
                self.update(tenant, call, |c, now| Ok(c.ring_timeout(now)))
                    .await
            }
            Due::Consent { tenant, call } => {
                self.update(tenant, call, |c, now| Ok(c.consent_timeout(now)))
                    .await
            }
            Due::Presence { tenant, call, user } => {
                let live = self
                    .live_sockets(tenant, user)
                    .await
                    .map_err(|e| internal(&e))?;
                if live > 0 {
                    let sockets = keys::call_sockets(tenant, user);
                    // Still connected: check again one grace period on, and keep the
                    // call's state alive meanwhile.
                    let at = now_ms() + ms_duration(self.settings.leave_grace);
                    redis::pipe()
                        .cmd("ZADD")
                        .arg(keys::CALL_DEADLINES)
                        .arg("XX")
                        .arg(at)
                        .arg(due.member())
                        .ignore()
                        .pexpire(keys::call(tenant, call), ms_duration(CALL_TTL))
                        .ignore()
                        .pexpire(&sockets, ms_duration(CALL_TTL))
                        .ignore()
                        .query_async::<()>(&mut self.redis.clone())
                        .await
                        .map_err(|e| internal(&e.into()))?;
                    return Ok(Vec::new());
                }
                self.update(tenant, call, |c, now| Ok(c.leave(user, now)))
                    .await
            }
        };
        match outcome {
            Ok((_, fx)) => {
                // A deadline that changed nothing (already handled, or not due after all)
                // was set again from the stored state by `after`, or is dropped here.
                if fx == Effects::default() {
                    self.settle_deadline(due).await;
                }
                Ok(fx.notices)
            }
            Err(e) if e.code == ErrorCode::NotFound => {
                let _: std::result::Result<(), _> = redis::cmd("ZREM")
                    .arg(keys::CALL_DEADLINES)
                    .arg(due.member())
                    .query_async(&mut self.redis.clone())
                    .await;
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Sets a deadline that fired without effect back from the stored call.
    async fn settle_deadline(&self, due: &Due) {
        let (tenant, call) = match due {
            Due::Ring { tenant, call }
            | Due::Consent { tenant, call }
            | Due::Presence { tenant, call, .. } => (tenant, call),
        };
        let Ok(Some((c, _))) = self.load(tenant, call).await else {
            return;
        };
        let mut pipe = redis::pipe();
        let next = match due {
            Due::Ring { .. } => c
                .in_state(state::MemberState::Ringing)
                .next()
                .map(|_| c.ring_deadline),
            Due::Consent { .. } => c.consent_deadline(),
            Due::Presence { user, .. } => c
                .is_joined(user)
                .then(|| now_ms() + ms_duration(self.settings.leave_grace)),
        };
        match next {
            Some(at) => pipe.zadd(keys::CALL_DEADLINES, due.member(), at).ignore(),
            None => pipe.zrem(keys::CALL_DEADLINES, due.member()).ignore(),
        };
        if let Err(e) = pipe.query_async::<()>(&mut self.redis.clone()).await {
            tracing::warn!(error = %e, "call deadline not set again");
        }
    }

    /// Active calls (every tenant), for the gauge.
    pub async fn active(&self) -> Result<u64> {
        Ok(redis::cmd("SCARD")
            .arg(keys::ACTIVE_CALLS)
            .query_async(&mut self.redis.clone())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_trip() {
        for due in [
            Due::Ring {
                tenant: "t".into(),
                call: "c".into(),
            },
            Due::Consent {
                tenant: "t".into(),
                call: "c".into(),
            },
            Due::Presence {
                tenant: "t".into(),
                call: "c".into(),
                user: "u@x".into(),
            },
        ] {
            assert_eq!(Due::parse(&due.member()), Some(due));
        }
        assert_eq!(Due::parse("ring|t"), None);
        assert_eq!(Due::parse("other|t|c"), None);
    }
}
