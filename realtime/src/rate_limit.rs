//! Per-user token bucket kept in Redis, so that every gateway enforces one shared limit.
//!
//! The bucket is refilled lazily by a Lua script using the Redis server's clock, which
//! keeps gateways with skewed clocks consistent.

use redis::Script;
use redis::aio::ConnectionManager;

use crate::error::Result;
use crate::keys;

const BUCKET: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) end
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, retry}
"#;

/// Outcome of one take from the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused; a token is available again after this many milliseconds.
    Limited {
        retry_after_ms: u64,
    },
}

#[derive(Clone)]
pub struct RateLimiter {
    redis: ConnectionManager,
    script: Script,
    rate_per_second: f64,
    burst: u32,
}

impl RateLimiter {
    pub fn new(redis: ConnectionManager, rate_per_second: f64, burst: u32) -> Self {
        Self {
            redis,
            script: Script::new(BUCKET),
            rate_per_second,
            burst,
        }
    }

    /// Takes one token from the user's bucket.
    pub async fn check(&self, tenant: &str, user: &str) -> Result<Decision> {
        let mut conn = self.redis.clone();
        let (allowed, retry): (i64, i64) = self
            .script
            .key(keys::rate_limit(tenant, user))
            .arg(self.rate_per_second)
            .arg(self.burst)
            .invoke_async(&mut conn)
            .await?;
        Ok(if allowed == 1 {
            Decision::Allowed
        } else {
            Decision::Limited {
                retry_after_ms: u64::try_from(retry).unwrap_or(0),
            }
        })
    }
}
