//! Rate limits. Per user, token buckets kept in Redis, so that every gateway enforces one
//! shared limit: one for `message:send`, one for every other event. Per connection,
//! in-process buckets per [`EventClass`] (Centrifugo's per-connection budgets are the
//! model), so one connection cannot flood a gateway with reads.
//!
//! Beside them, [`RateLimiter::throttle`]: at most one event per interval per key (the
//! typing indicator's "one per conversation per `TYPING_THROTTLE_MS`").
//!
//! The Redis buckets are refilled lazily by a Lua script using the Redis server's clock,
//! which keeps gateways with skewed clocks consistent.

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

/// One event per window: the first sets the key for the window, later ones learn how long
/// it has left.
const THROTTLE: &str = r#"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return -1 end
return redis.call('PTTL', KEYS[1])
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
    throttle: Script,
    rate_per_second: f64,
    burst: u32,
}

impl RateLimiter {
    pub fn new(redis: ConnectionManager, rate_per_second: f64, burst: u32) -> Self {
        Self {
            redis,
            script: Script::new(BUCKET),
            throttle: Script::new(THROTTLE),
            rate_per_second,
            burst,
        }
    }

    /// Takes one token from the user's message bucket.
    pub async fn check(&self, tenant: &str, user: &str) -> Result<Decision> {
        self.take(
            keys::rate_limit(tenant, user),
            self.rate_per_second,
            self.burst,
        )
        .await
    }

    /// Takes one token from the user's bucket of other events (all connections, all
    /// gateways).
    pub async fn check_events(&self, tenant: &str, user: &str, rate: Rate) -> Result<Decision> {
        self.take(
            keys::event_rate_limit(tenant, user),
            rate.per_second,
            rate.burst,
        )
        .await
    }

    /// Allows one event per `window` for `key` (on every gateway).
    pub async fn throttle(&self, key: String, window: std::time::Duration) -> Result<Decision> {
        let mut conn = self.redis.clone();
        let left: i64 = self
            .throttle
            .key(key)
            .arg(u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(if left < 0 {
            Decision::Allowed
        } else {
            Decision::Limited {
                retry_after_ms: u64::try_from(left).unwrap_or(0),
            }
        })
    }

    async fn take(&self, key: String, rate_per_second: f64, burst: u32) -> Result<Decision> {
        let mut conn = self.redis.clone();
        let (allowed, retry): (i64, i64) = self
            .script
            .key(key)
            .arg(rate_per_second)
            .arg(burst)
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

/// Events other than `message:send`, by the cost they put on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClass {
    /// Database or Redis reads: `messages:history`, `messages:recover`, `presence:get`,
    /// `message:status`.
    Read,
    /// `room:join`, `room:leave`.
    Join,
    /// Everything else: `typing`, moderation, `room:role`, `call:ice-servers`, call and
    /// recording events other than `call:signal`.
    Other,
    /// `call:signal` (an offer, an answer, or one of the many trickled candidates).
    Signal,
}

/// The `signal` budget when `CONNECTION_EVENT_LIMITS` names none.
const DEFAULT_SIGNAL: Rate = Rate {
    per_second: 50.0,
    burst: 200,
};

impl EventClass {
    pub const ALL: [EventClass; 4] = [
        EventClass::Read,
        EventClass::Join,
        EventClass::Other,
        EventClass::Signal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventClass::Read => "read",
            EventClass::Join => "join",
            EventClass::Other => "other",
            EventClass::Signal => "signal",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl std::str::FromStr for Rate {
    type Err = String;
    /// `rate/burst`, e.g. `20/100`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (rate, burst) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not RATE/BURST (e.g. 20/100)"))?;
        let per_second: f64 = rate
            .trim()
            .parse()
            .map_err(|_| format!("rate {rate:?} is not a number"))?;
        let burst: u32 = burst
            .trim()
            .parse()
            .map_err(|_| format!("burst {burst:?} is not a whole number"))?;
        if !per_second.is_finite() || per_second <= 0.0 || burst == 0 {
            return Err(format!("{s:?}: rate and burst must be greater than 0"));
        }
        Ok(Self { per_second, burst })
    }
}

/// Per-connection budgets, one per [`EventClass`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventLimits([Rate; 4]);

impl EventLimits {
    pub fn of(&self, class: EventClass) -> Rate {
        self.0[class.index()]
    }
}

impl std::str::FromStr for EventLimits {
    type Err = String;
    /// `read:20/100,join:50/500,other:20/60[,signal:50/200]`: every class, each once
    /// (`signal` may be left out).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut found: [Option<Rate>; 4] = [None; 4];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, rate) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not CLASS:RATE/BURST"))?;
            let class = EventClass::ALL
                .into_iter()
                .find(|c| c.as_str() == name.trim())
                .ok_or_else(|| {
                    format!("unknown event class {name:?}; use read, join, other, signal")
                })?;
            if found[class.index()].replace(rate.parse()?).is_some() {
                return Err(format!("event class {name} is given twice"));
            }
        }
        match found {
            [Some(r), Some(j), Some(o), signal] => {
                Ok(Self([r, j, o, signal.unwrap_or(DEFAULT_SIGNAL)]))
            }
            _ => Err("give a limit for each of read, join and other".into()),
        }
    }
}

/// In-process token buckets of one connection (no Redis round trip: a connection lives
/// on one gateway).
#[derive(Debug)]
pub struct ConnectionBudget {
    limits: EventLimits,
    buckets: std::sync::Mutex<[(f64, std::time::Instant); 4]>,
}

impl ConnectionBudget {
    pub fn new(limits: EventLimits) -> Self {
        let now = std::time::Instant::now();
        Self {
            limits,
            buckets: std::sync::Mutex::new(
                EventClass::ALL.map(|c| (f64::from(limits.of(c).burst), now)),
            ),
        }
    }

    /// Takes one event of `class`; `Limited` says when one is available again.
    pub fn take(&self, class: EventClass) -> Decision {
        self.take_at(class, std::time::Instant::now())
    }

    fn take_at(&self, class: EventClass, now: std::time::Instant) -> Decision {
        let rate = self.limits.of(class);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, at) = &mut buckets[class.index()];
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Decision::Allowed
        } else {
            Decision::Limited {
                retry_after_ms: ((1.0 - *tokens) * 1000.0 / rate.per_second).ceil() as u64,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_refuse_nonsense_with_a_reason() {
        let l: EventLimits = "read:20/100, join:50/500,other:2.5/6".parse().unwrap();
        assert_eq!(
            l.of(EventClass::Read),
            Rate {
                per_second: 20.0,
                burst: 100
            }
        );
        assert_eq!(
            l.of(EventClass::Other),
            Rate {
                per_second: 2.5,
                burst: 6
            }
        );
        assert_eq!(
            l.of(EventClass::Signal),
            DEFAULT_SIGNAL,
            "signal may be left out"
        );
        let l: EventLimits = "read:1/1,join:1/1,other:1/1,signal:7/9".parse().unwrap();
        assert_eq!(
            l.of(EventClass::Signal),
            Rate {
                per_second: 7.0,
                burst: 9
            }
        );
        for (bad, why) in [
            ("read:20/100,join:50/500", "each of"),
            ("read:20/100,join:50/500,other:1/1,read:1/1", "twice"),
            ("read:20/100,join:50/500,write:1/1", "unknown event class"),
            ("read:0/100,join:50/500,other:1/1", "greater than 0"),
            ("read:20,join:50/500,other:1/1", "RATE/BURST"),
        ] {
            let err = bad.parse::<EventLimits>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_connection_gets_its_burst_then_the_rate() {
        let budget = ConnectionBudget::new("read:10/3,join:1/1,other:1/1".parse().unwrap());
        let t0 = std::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(budget.take_at(EventClass::Read, t0), Decision::Allowed);
        }
        assert_eq!(
            budget.take_at(EventClass::Read, t0),
            Decision::Limited {
                retry_after_ms: 100
            }
        );
        assert_eq!(
            budget.take_at(EventClass::Join, t0),
            Decision::Allowed,
            "classes are apart"
        );
        let later = t0 + std::time::Duration::from_millis(100);
        assert_eq!(budget.take_at(EventClass::Read, later), Decision::Allowed);
    }
}
