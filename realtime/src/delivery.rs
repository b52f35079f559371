//! The delivery ledger: one Redis record per message, from its first `message:send` to a
//! final outcome, which is also the message's idempotency key.
//!
//! A record is keyed by tenant, conversation, sender and `clientMessageId`
//! ([`keys::message`]) and moves through these states:
//!
//! - `sending` (`s`): it has an id and a sequence number; a produce may be in flight. Who
//!   produces holds a *lease* (until the producer's delivery timeout has surely passed), so
//!   a resend or the sweeper never starts a second produce while one may still succeed.
//! - `accepted` (`a`): the broker acknowledged it. It will be stored: the persister retries
//!   until it is. The sweeper produces it again (same id: storage is keyed by message id,
//!   so a copy changes nothing) when no confirmation comes in time.
//! - `persisted` (`p`): the persister stored it. The record keeps the id and number (not
//!   the content) so a resend or a status query learns the outcome for the idempotency TTL.
//! - `failed` (`f`): it will never be stored. Only a message that never reached the broker
//!   can fail, and only after a tombstone with its id was written to MongoDB first
//!   (`store::fence_message`), so a produce that timed out but did reach the broker
//!   cannot be stored later.
//!
//! Every unresolved record sits in one schedule ([`keys::DELIVERY_SCHEDULE`]) with the time
//! it next needs attention; the sweeper claims due records in batches. Nothing leaves the
//! schedule except by reaching a final state, and a record whose hash vanished (evicted)
//! is reported, never dropped silently.
//!
//! All transitions are Lua scripts, so every gateway sees one order of events and exactly
//! one of them announces a message (`message:new`) and confirms it.
//!
//! Longer than most files on purpose: the scripts and the Rust that reads their replies
//! belong side by side, so that a change of one is seen with the other.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::error::{Error, Result};
use crate::keys;
use crate::protocol::ChatRecord;

const NOW: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

// KEYS: record, counter, counter verification, schedule.
// ARGV: message id, record JSON (seq 0), lease ms, ttl s.
const ALLOCATE: &str = r#"
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 1 then
  local v = redis.call('HMGET', KEYS[1], 'mid', 'seq', 'state', 'lease', 'reason')
  return {'existing', v[1] or '', v[2] or '0', v[3] or 's', tostring((tonumber(v[4]) or 0) - now), v[5] or ''}
end
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if redis.call('GET', KEYS[3]) ~= run_id then
  return {'verify', run_id}
end
local seq = redis.call('INCR', KEYS[2])
local lease = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'mid', ARGV[1], 'seq', seq, 'state', 's', 'record', ARGV[2],
  'lease', lease, 'attempts', 1, 'announced', 0)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[4], lease, KEYS[1])
return {'new', ARGV[1], tostring(seq)}
"#;

// A produce succeeded. KEYS: record, schedule. ARGV: confirmation timeout ms.
const ACCEPTED: &str = r#"
local v = redis.call('HMGET', KEYS[1], 'state', 'announced')
if not v[1] then return {'gone', '0'} end
if v[1] == 's' then
  redis.call('HSET', KEYS[1], 'state', 'a', 'lease', 0)
  redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[1]), KEYS[1])
  v[1] = 'a'
elseif v[1] == 'a' then
  redis.call('HSET', KEYS[1], 'lease', 0)
end
local announce = '0'
if v[1] ~= 'f' and v[2] ~= '1' then
  redis.call('HSET', KEYS[1], 'announced', 1)
  announce = '1'
end
return {v[1], announce}
"#;

// A produce failed (the broker may or may not have the message). KEYS: record, schedule.
// ARGV: retry delay ms.
const PRODUCE_FAILED: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 's' then
  redis.call('HSET', KEYS[1], 'lease', 0)
  redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[1]), KEYS[1])
elseif state == 'a' then
  redis.call('HSET', KEYS[1], 'lease', 0)
end
return state or 'gone'
"#;

// A resend takes over production when no produce is in flight. KEYS: record, schedule.
// ARGV: lease ms.
const TAKE_OVER: &str = r#"
local now = now_ms()
local v = redis.call('HMGET', KEYS[1], 'state', 'lease', 'record', 'seq', 'attempts')
if not v[1] then return {'gone'} end
if v[1] ~= 's' then return {v[1]} end
local lease = tonumber(v[2]) or 0
if lease > now then return {'busy', tostring(lease - now)} end
lease = now + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'lease', lease, 'attempts', (tonumber(v[5]) or 0) + 1)
redis.call('ZADD', KEYS[2], lease, KEYS[1])
return {'take', v[3], v[4]}
"#;

// The persister stored the message. KEYS: record, schedule. ARGV: ttl s.
const PERSISTED: &str = r#"
local v = redis.call('HMGET', KEYS[1], 'state', 'record', 'announced', 'seq')
if not v[1] then return {'unknown'} end
if v[1] == 'p' or v[1] == 'f' then return {v[1]} end
redis.call('HSET', KEYS[1], 'state', 'p', 'lease', 0)
redis.call('HDEL', KEYS[1], 'record')
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local announce = '0'
if v[3] ~= '1' then
  redis.call('HSET', KEYS[1], 'announced', 1)
  announce = '1'
end
return {'confirmed', v[2] or '', announce, v[4] or '0'}
"#;

// The message will never be stored (its tombstone is in MongoDB). KEYS: record, schedule.
// ARGV: reason, ttl s.
const FAILED: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'gone' end
if state == 'p' or state == 'f' then return state end
redis.call('HSET', KEYS[1], 'state', 'f', 'reason', ARGV[1], 'lease', 0)
redis.call('HDEL', KEYS[1], 'record')
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 'failed'
"#;

// Claims up to ARGV[1] due records of the schedule (KEYS[1]).
// ARGV: limit, lease ms, attempts before failing/delaying, confirmation timeout ms,
// longest retry interval ms, ttl s.
const CLAIM: &str = r#"
local now = now_ms()
local limit, lease_ms, max_attempts = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local timeout, cap, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, key in ipairs(due) do
  local v = redis.call('HMGET', key, 'state', 'lease', 'attempts', 'record', 'delayed', 'seq')
  local state, lease, attempts = v[1], tonumber(v[2]) or 0, tonumber(v[3]) or 0
  if not state then
    redis.call('ZREM', KEYS[1], key)
    table.insert(out, {'lost', key, '', '0'})
  elseif state == 'p' or state == 'f' then
    redis.call('ZREM', KEYS[1], key)
  elseif lease > now then
    redis.call('ZADD', KEYS[1], lease, key)
  else
    attempts = attempts + 1
    redis.call('HSET', key, 'attempts', attempts, 'lease', now + lease_ms)
    redis.call('EXPIRE', key, ttl)
    local verdict
    if state == 's' then
      redis.call('ZADD', KEYS[1], now + lease_ms, key)
      if attempts > max_attempts then verdict = 'fail' else verdict = 'produce' end
    else
      local delay = timeout
      if attempts > max_attempts then
        delay = math.min(cap, timeout * 2 ^ math.min(attempts - max_attempts, 16))
      end
      redis.call('ZADD', KEYS[1], now + delay, key)
      verdict = 'reproduce'
      if attempts > max_attempts and v[5] ~= '1' then
        redis.call('HSET', key, 'delayed', 1)
        verdict = 'delayed'
      end
    end
    table.insert(out, {verdict, key, v[4] or '', v[6] or '0'})
  end
end
return out
"#;

/// Where a message stands, as a status query or a resend reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not yet acknowledged by the broker (a produce may be in flight).
    Sending,
    /// On the broker; the persister will store it.
    Accepted,
    /// Stored in MongoDB.
    Persisted,
    /// Will never be stored.
    Failed,
}

impl State {
    fn parse(code: &str) -> Option<Self> {
        match code {
            "s" => Some(State::Sending),
            "a" => Some(State::Accepted),
            "p" => Some(State::Persisted),
            "f" => Some(State::Failed),
            _ => None,
        }
    }

    /// The name clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Sending => "sending",
            State::Accepted => "accepted",
            State::Persisted => "persisted",
            State::Failed => "failed",
        }
    }
}

/// A record as a status query sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub message_id: String,
    pub seq: u64,
    pub state: State,
    /// Milliseconds left on the lease of an in-flight produce (0: none in flight).
    pub lease_left_ms: i64,
    /// Why it failed.
    pub reason: Option<String>,
}

/// Result of [`Ledger::allocate`].
#[derive(Debug, Clone, PartialEq)]
pub enum Allocation {
    /// A new message: the caller holds the production lease.
    New(ChatRecord),
    /// The idempotency key was used before.
    Existing(Status),
    /// The conversation's counter must be checked first (see `sequence`); the Redis
    /// server's current `run_id` is given.
    Verify { run_id: String },
}

/// Result of a successful produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The state after the produce (`Accepted`, or already `Persisted`, or `Failed` when
    /// the message was fenced off meanwhile).
    pub state: State,
    /// This caller is the first to know the message is durable: it broadcasts it.
    pub announce: bool,
}

/// Result of [`Ledger::take_over`].
#[derive(Debug, Clone, PartialEq)]
pub enum TakeOver {
    /// The caller now holds the lease and produces this record.
    Take(ChatRecord),
    /// Another produce is in flight for this many more milliseconds.
    Busy(i64),
    /// The message moved on.
    Moved(Option<State>),
}

/// Result of [`Ledger::persisted`].
#[derive(Debug, Clone, PartialEq)]
pub enum Confirmation {
    /// First confirmation: tell the sender; `announce` when nobody broadcast it yet.
    Confirmed { record: ChatRecord, announce: bool },
    /// Already persisted, or failed before (a redelivered event): nothing to do.
    Already(State),
    /// No record: another installation's message, or older than the idempotency TTL.
    Unknown,
}

/// What the sweeper must do with a claimed record.
#[derive(Debug, Clone, PartialEq)]
pub enum Due {
    /// Never acknowledged by the broker: produce it (again).
    Produce { key: String, record: ChatRecord },
    /// Accepted but not confirmed in time: produce a copy (same id).
    Reproduce { key: String, record: ChatRecord },
    /// As `Reproduce`, and the retries are used up: tell the sender it is delayed (once).
    Delayed { key: String, record: ChatRecord },
    /// Never acknowledged by the broker after every attempt: fence it off and fail it.
    Fail { key: String, record: ChatRecord },
    /// The record vanished from Redis before reaching an outcome.
    Lost { key: String },
}

/// Timing of the ledger.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Longest a produce may stay in flight (the producer's delivery timeout + margin).
    pub lease: Duration,
    /// Wait for a persistence confirmation before producing a copy.
    pub confirmation_timeout: Duration,
    /// Attempts (first produce + retries) before a message fails or is reported delayed.
    pub attempts: u32,
    /// Longest interval between copies of a delayed message.
    pub max_interval: Duration,
    /// How long a record (and so an idempotency key) is kept.
    pub ttl: Duration,
}

#[derive(Clone)]
pub struct Ledger {
    redis: ConnectionManager,
    timing: Timing,
    allocate: Script,
    accepted: Script,
    produce_failed: Script,
    take_over: Script,
    persisted: Script,
    failed: Script,
    claim: Script,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{body}"))
}

/// The stored record JSON with its sequence number, which is kept beside it.
fn record_from(json: &str, seq: &str) -> Result<ChatRecord> {
    let mut record: ChatRecord = serde_json::from_str(json)?;
    record.seq = parse_seq(seq)?;
    Ok(record)
}

impl Ledger {
    pub fn new(redis: ConnectionManager, timing: Timing) -> Self {
        Self {
            redis,
            timing,
            allocate: script(ALLOCATE),
            accepted: script(ACCEPTED),
            produce_failed: script(PRODUCE_FAILED),
            take_over: script(TAKE_OVER),
            persisted: script(PERSISTED),
            failed: script(FAILED),
            claim: script(CLAIM),
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    fn ttl_s(&self) -> u64 {
        self.timing.ttl.as_secs().max(1)
    }

    /// The record key of a message.
    pub fn key(record: &ChatRecord) -> String {
        keys::message(
            &record.tenant_id,
            &record.conversation_id,
            &record.sender_id,
            &record.client_message_id,
        )
    }

    /// Gives `template` (its `seq` is ignored) an id and the conversation's next number,
    /// unless its idempotency key was used before; the caller then holds the lease.
    pub async fn allocate(&self, template: &ChatRecord) -> Result<Allocation> {
        let mut conn = self.redis.clone();
        let (tenant, conversation) = (&template.tenant_id, &template.conversation_id);
        let reply: Vec<String> = self
            .allocate
            .key(Self::key(template))
            .key(keys::sequence(tenant, conversation))
            .key(keys::sequence_verified(tenant, conversation))
            .key(keys::DELIVERY_SCHEDULE)
            .arg(&template.message_id)
            .arg(serde_json::to_string(&ChatRecord {
                seq: 0,
                ..template.clone()
            })?)
            .arg(ms(self.timing.lease))
            .arg(self.ttl_s())
            .invoke_async(&mut conn)
            .await?;
        match reply.as_slice() {
            [verdict, id, seq] if verdict == "new" => Ok(Allocation::New(ChatRecord {
                message_id: id.clone(),
                seq: parse_seq(seq)?,
                ..template.clone()
            })),
            [verdict, id, seq, state, lease, reason] if verdict == "existing" => {
                Ok(Allocation::Existing(status(id, seq, state, lease, reason)?))
            }
            [verdict, run_id] if verdict == "verify" => Ok(Allocation::Verify {
                run_id: run_id.clone(),
            }),
            other => Err(unexpected("allocate", other)),
        }
    }

    /// Records that the broker acknowledged the message.
    pub async fn accepted(&self, key: &str) -> Result<Accepted> {
        let mut conn = self.redis.clone();
        let reply: Vec<String> = self
            .accepted
            .key(key)
            .key(keys::DELIVERY_SCHEDULE)
            .arg(ms(self.timing.confirmation_timeout))
            .invoke_async(&mut conn)
            .await?;
        match reply.as_slice() {
            [state, announce] => Ok(Accepted {
                // A record that vanished cannot be told apart from an accepted one here;
                // the message is on the broker, so it will be stored.
                state: State::parse(state).unwrap_or(State::Accepted),
                announce: announce == "1",
            }),
            other => Err(unexpected("accepted", other)),
        }
    }

    /// Records that a produce failed; another attempt is due after `retry_in`.
    pub async fn produce_failed(&self, key: &str, retry_in: Duration) -> Result<()> {
        let mut conn = self.redis.clone();
        let _: String = self
            .produce_failed
            .key(key)
            .key(keys::DELIVERY_SCHEDULE)
            .arg(ms(retry_in))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes over production of a `sending` message when no produce is in flight.
    pub async fn take_over(&self, key: &str) -> Result<TakeOver> {
        let mut conn = self.redis.clone();
        let reply: Vec<String> = self
            .take_over
            .key(key)
            .key(keys::DELIVERY_SCHEDULE)
            .arg(ms(self.timing.lease))
            .invoke_async(&mut conn)
            .await?;
        match reply.as_slice() {
            [verdict, record, seq] if verdict == "take" => {
                Ok(TakeOver::Take(record_from(record, seq)?))
            }
            [verdict, left] if verdict == "busy" => Ok(TakeOver::Busy(left.parse().unwrap_or(0))),
            [state] => Ok(TakeOver::Moved(State::parse(state))),
            other => Err(unexpected("take over", other)),
        }
    }

    /// Where a message stands, `None` when no record exists.
    pub async fn status(&self, key: &str) -> Result<Option<Status>> {
        let mut conn = self.redis.clone();
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(key)
            .arg(&["mid", "seq", "state", "lease", "reason"])
            .query_async(&mut conn)
            .await?;
        let [Some(id), Some(seq), Some(state), lease, reason] = v.as_slice() else {
            return Ok(None);
        };
        let lease_until: i64 = lease.as_deref().and_then(|l| l.parse().ok()).unwrap_or(0);
        let left = (lease_until - crate::protocol::now_ms()).to_string();
        status(id, seq, state, &left, reason.as_deref().unwrap_or("")).map(Some)
    }

    /// Records that the persister stored the message.
    pub async fn persisted(&self, key: &str) -> Result<Confirmation> {
        let mut conn = self.redis.clone();
        let reply: Vec<String> = self
            .persisted
            .key(key)
            .key(keys::DELIVERY_SCHEDULE)
            .arg(self.ttl_s())
            .invoke_async(&mut conn)
            .await?;
        match reply.as_slice() {
            [verdict, record, announce, seq] if verdict == "confirmed" => {
                Ok(Confirmation::Confirmed {
                    record: record_from(record, seq)?,
                    announce: announce == "1",
                })
            }
            [verdict] if verdict == "unknown" => Ok(Confirmation::Unknown),
            [state] => Ok(Confirmation::Already(
                State::parse(state).unwrap_or(State::Persisted),
            )),
            other => Err(unexpected("persisted", other)),
        }
    }

    /// Records that the message will never be stored; true when this call decided it.
    pub async fn failed(&self, key: &str, reason: &str) -> Result<bool> {
        let mut conn = self.redis.clone();
        let verdict: String = self
            .failed
            .key(key)
            .key(keys::DELIVERY_SCHEDULE)
            .arg(reason)
            .arg(self.ttl_s())
            .invoke_async(&mut conn)
            .await?;
        Ok(verdict == "failed")
    }

    /// Claims up to `limit` records that are due; each one gets a fresh lease, so no other
    /// gateway claims it while this one works on it.
    pub async fn claim_due(&self, limit: usize) -> Result<Vec<Due>> {
        let mut conn = self.redis.clone();
        let reply: Vec<Vec<String>> = self
            .claim
            .key(keys::DELIVERY_SCHEDULE)
            .arg(limit)
            .arg(ms(self.timing.lease))
            .arg(self.timing.attempts)
            .arg(ms(self.timing.confirmation_timeout))
            .arg(ms(self.timing.max_interval))
            .arg(self.ttl_s())
            .invoke_async(&mut conn)
            .await?;
        reply
            .into_iter()
            .map(|entry| match <[String; 4]>::try_from(entry) {
                Ok([verdict, key, _, _]) if verdict == "lost" => Ok(Due::Lost { key }),
                Ok([verdict, key, record, seq]) => {
                    let record = record_from(&record, &seq)?;
                    Ok(match verdict.as_str() {
                        "produce" => Due::Produce { key, record },
                        "reproduce" => Due::Reproduce { key, record },
                        "delayed" => Due::Delayed { key, record },
                        _ => Due::Fail { key, record },
                    })
                }
                Err(other) => Err(unexpected("claim", &other)),
            })
            .collect()
    }

    /// Unresolved messages (scheduled records).
    pub async fn unresolved(&self) -> Result<u64> {
        let mut conn = self.redis.clone();
        Ok(conn.zcard(keys::DELIVERY_SCHEDULE).await?)
    }
}

fn parse_seq(seq: &str) -> Result<u64> {
    seq.parse()
        .map_err(|_| corrupt(format!("malformed sequence number {seq:?}")))
}

fn status(id: &str, seq: &str, state: &str, lease_left: &str, reason: &str) -> Result<Status> {
    Ok(Status {
        message_id: id.to_owned(),
        seq: parse_seq(seq)?,
        state: State::parse(state).ok_or_else(|| corrupt(format!("unknown state {state:?}")))?,
        lease_left_ms: lease_left.parse::<i64>().unwrap_or(0).max(0),
        reason: Some(reason.to_owned()).filter(|r| !r.is_empty()),
    })
}

fn unexpected(what: &str, reply: &[String]) -> Error {
    corrupt(format!("unexpected reply to {what}: {reply:?}"))
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt {
        what: "ledger record",
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_client_names() {
        for (code, name) in [
            ("s", "sending"),
            ("a", "accepted"),
            ("p", "persisted"),
            ("f", "failed"),
        ] {
            assert_eq!(State::parse(code).unwrap().as_str(), name);
        }
        assert_eq!(State::parse("x"), None);
    }

    #[test]
    fn status_parsing_clamps_the_lease_and_keeps_the_reason() {
        let s = status("m", "7", "f", "-20", "broker down").unwrap();
        assert_eq!(s.seq, 7);
        assert_eq!(s.state, State::Failed);
        assert_eq!(s.lease_left_ms, 0);
        assert_eq!(s.reason.as_deref(), Some("broker down"));
        assert!(status("m", "x", "a", "0", "").is_err());
        assert_eq!(status("m", "1", "a", "5", "").unwrap().reason, None);
    }

    #[test]
    fn record_json_gets_its_sequence_number() {
        let r = ChatRecord {
            tenant_id: "t".into(),
            conversation_id: "c".into(),
            message_id: "m".into(),
            seq: 0,
            sender_id: "u".into(),
            client_message_id: "k".into(),
            content: crate::model::Content::Text { text: "x".into() },
            created_at_ms: 1,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(record_from(&json, "42").unwrap().seq, 42);
        assert!(record_from(&json, "").is_err());
        assert_eq!(Ledger::key(&r), "rt:t:msg:c:u:k");
    }
}
