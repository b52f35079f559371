//! Delivery confirmation state: which accepted messages still wait for the persister.
//!
//! Pending entries live in Redis (a hash per message and one sorted set of deadlines), so
//! they survive a gateway restart and any gateway can finish them. Lua scripts make
//! "confirm" and "claim an expired entry" atomic, so exactly one gateway emits exactly one
//! `message:persisted` or `message:failed` per message.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::error::{Error, Result};
use crate::keys;
use crate::protocol::ChatRecord;

const REGISTER: &str = r#"
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'attempts', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[4])
return 1
"#;

const CONFIRM: &str = r#"
local record = redis.call('HGET', KEYS[1], 'record')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if record then return record end
return false
"#;

// Claims up to ARGV[1] expired entries. Each one is either re-armed for another attempt
// (returned as {'retry', record}) or, past the retry limit, removed ({'fail', record}).
const CLAIM: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[5] .. id
  local record = redis.call('HGET', key, 'record')
  if not record then
    redis.call('ZREM', KEYS[1], id)
  else
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    if attempts > tonumber(ARGV[3]) then
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], id)
      table.insert(out, 'fail')
    else
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
      redis.call('PEXPIRE', key, ARGV[4])
      table.insert(out, 'retry')
    end
    table.insert(out, record)
  end
end
return out
"#;

/// What to do with an entry whose confirmation did not come in time.
#[derive(Debug, Clone, PartialEq)]
pub enum Expired {
    Retry(ChatRecord),
    Fail(ChatRecord),
}

#[derive(Clone)]
pub struct PendingStore {
    redis: ConnectionManager,
    timeout: Duration,
    retries: u32,
    register: Script,
    confirm: Script,
    claim: Script,
}

impl PendingStore {
    pub fn new(redis: ConnectionManager, timeout: Duration, retries: u32) -> Self {
        Self {
            redis,
            timeout,
            retries,
            register: Script::new(REGISTER),
            confirm: Script::new(CONFIRM),
            claim: Script::new(CLAIM),
        }
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// An entry outlives all its attempts by a margin, then Redis drops it.
    fn entry_ttl_ms(&self) -> u64 {
        self.timeout_ms()
            .saturating_mul(u64::from(self.retries) + 3)
    }

    /// Records that `record` waits for confirmation; call before producing it.
    pub async fn register(&self, record: &ChatRecord) -> Result<()> {
        let mut conn = self.redis.clone();
        let _: i64 = self
            .register
            .key(keys::pending(&record.message_id))
            .key(keys::PENDING_DEADLINES)
            .arg(serde_json::to_string(record)?)
            .arg(self.timeout_ms())
            .arg(self.entry_ttl_ms())
            .arg(&record.message_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes the entry; returns it when this call was the one that removed it.
    pub async fn confirm(&self, message_id: &str) -> Result<Option<ChatRecord>> {
        let mut conn = self.redis.clone();
        let record: Option<String> = self
            .confirm
            .key(keys::pending(message_id))
            .key(keys::PENDING_DEADLINES)
            .arg(message_id)
            .invoke_async(&mut conn)
            .await?;
        record
            .map(|r| serde_json::from_str(&r).map_err(Error::from))
            .transpose()
    }

    /// Drops an entry without a confirmation (the message was never accepted).
    pub async fn forget(&self, message_id: &str) -> Result<()> {
        self.confirm(message_id).await.map(|_| ())
    }

    /// Claims entries whose deadline passed (at most `limit`).
    pub async fn claim_expired(&self, limit: usize) -> Result<Vec<Expired>> {
        let mut conn = self.redis.clone();
        let flat: Vec<String> = self
            .claim
            .key(keys::PENDING_DEADLINES)
            .arg(limit)
            .arg(self.timeout_ms())
            .arg(self.retries)
            .arg(self.entry_ttl_ms())
            .arg(keys::pending(""))
            .invoke_async(&mut conn)
            .await?;
        flat.chunks(2)
            .filter_map(|pair| match pair {
                [verdict, record] => Some((verdict.clone(), record.clone())),
                _ => None,
            })
            .map(|(verdict, record)| {
                let record: ChatRecord = serde_json::from_str(&record)?;
                Ok(if verdict == "fail" {
                    Expired::Fail(record)
                } else {
                    Expired::Retry(record)
                })
            })
            .collect()
    }
}
