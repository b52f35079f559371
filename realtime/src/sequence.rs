//! Per-conversation sequence numbers: a Redis counter, checked before use against what
//! MongoDB and the recovery window know.
//!
//! The counter is incremented by the delivery ledger's allocation script (`delivery`),
//! atomically with the idempotency record, so a resend gets the same number. Redis may
//! lose the newest writes: a restart without persistence, a restore from an older
//! snapshot, an AOF written once a second, a failover to a lagging replica. Then the
//! counter is missing or *behind* and would hand out numbers again. Each counter carries
//! the `run_id` of the Redis server that last verified it; every restart or failover
//! changes the `run_id`, so the first allocation afterwards finds the mark stale and the
//! counter is repaired before any number is drawn:
//!
//! next = max(counter, highest stored seq in MongoDB, highest seq in the recovery window)
//!        + `SEQUENCE_REPAIR_GAP` when anything was lost or may have been
//!
//! The gap covers messages that were accepted but not yet stored or windowed when Redis
//! lost them. Numbers can therefore skip (never a problem for clients, which order by
//! `seq`), and can repeat only if more than the gap of one conversation's messages sat
//! unpersisted at the moment of the loss, or a brand-new conversation's very first
//! messages were all unpersisted then.

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::error::Result;
use crate::keys;
use crate::store::Store;

// KEYS: counter, verification mark, recovery window. ARGV: run_id, MongoDB floor, gap.
const REPAIR: &str = r#"
if redis.call('GET', KEYS[2]) == ARGV[1] then return -1 end
local counter = tonumber(redis.call('GET', KEYS[1]))
local marked = redis.call('EXISTS', KEYS[2]) == 1
local floor = tonumber(ARGV[2])
local top = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if top[2] then floor = math.max(floor, tonumber(top[2])) end
local next = math.max(floor, counter or 0)
-- A mark from another server means Redis restarted or failed over: the counter may be
-- behind. A missing counter with stored messages means it was lost. A counter without a
-- mark predates verification and was never lost.
if marked or (counter == nil and floor > 0) then next = next + tonumber(ARGV[3]) end
redis.call('SET', KEYS[1], next)
redis.call('SET', KEYS[2], ARGV[1])
return next
"#;

#[derive(Clone)]
pub struct Sequencer {
    redis: ConnectionManager,
    store: Store,
    gap: u64,
    repair: Script,
}

impl Sequencer {
    pub fn new(redis: ConnectionManager, store: Store, gap: u64) -> Self {
        Self {
            redis,
            store,
            gap,
            repair: Script::new(REPAIR),
        }
    }

    /// Brings the counter of a conversation up to date for the Redis server `run_id`.
    /// Returns the counter's new value when this call repaired it (`None` when another
    /// gateway did so first).
    pub async fn repair(
        &self,
        tenant: &str,
        conversation: &str,
        run_id: &str,
    ) -> Result<Option<u64>> {
        let floor = self.store.max_seq(tenant, conversation).await?;
        let mut conn = self.redis.clone();
        let next: i64 = self
            .repair
            .key(keys::sequence(tenant, conversation))
            .key(keys::sequence_verified(tenant, conversation))
            .key(keys::recent(tenant, conversation))
            .arg(run_id)
            .arg(floor)
            .arg(self.gap)
            .invoke_async(&mut conn)
            .await?;
        Ok(u64::try_from(next).ok())
    }

    /// The newest sequence number handed out in a conversation (0 when none), from the
    /// counter or, when Redis lost it, from MongoDB.
    pub async fn current(&self, tenant: &str, conversation: &str) -> Result<u64> {
        let mut conn = self.redis.clone();
        let counter: Option<u64> = conn.get(keys::sequence(tenant, conversation)).await?;
        match counter {
            Some(seq) => Ok(seq),
            None => self.store.max_seq(tenant, conversation).await,
        }
    }
}
