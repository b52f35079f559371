//! A participant's standing in a conversation ([`Access`]: role, ban, mute), read from
//! MongoDB `conversations` and cached in Redis for `ROOM_AUTHZ_CACHE_TTL` seconds.
//!
//! The cache lives in Redis, not in the process, so one `DEL` after a role change or a
//! moderation action invalidates it for every gateway at once. Restrictions carry their
//! expiry and are compared with the clock at each use: a temporary mute or ban ends by
//! itself, with no sweeper and no stale cache.

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::error::Result;
use crate::keys;
use crate::model::Access;
use crate::store::Store;

/// Read-through cache of [`Access`] in Redis (none when the TTL is 0).
#[derive(Clone)]
pub struct AccessCache {
    redis: ConnectionManager,
    store: Store,
    ttl: std::time::Duration,
}

/// Where an answer came from, for the cache metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Database,
}

impl AccessCache {
    pub fn new(redis: ConnectionManager, store: Store, ttl: std::time::Duration) -> Self {
        Self { redis, store, ttl }
    }

    /// The user's standing, or `None` when they are not a participant (of this tenant's
    /// conversation: another tenant's is indistinguishable from a missing one).
    pub async fn get(
        &self,
        tenant: &str,
        conversation: &str,
        user: &str,
    ) -> Result<(Option<Access>, Source)> {
        if self.ttl.is_zero() {
            // ROOM_AUTHZ_CACHE_TTL=0: no cache, every check reads MongoDB.
            let access = self.store.access(tenant, conversation, user).await?;
            return Ok((access, Source::Database));
        }
        let key = keys::membership(tenant, conversation, user);
        let mut conn = self.redis.clone();
        let cached: Option<String> = conn.get(&key).await?;
        if let Some(access) = cached.and_then(|v| serde_json::from_str::<Access>(&v).ok()) {
            return Ok((Some(access), Source::Cache));
        }
        let access = self.store.access(tenant, conversation, user).await?;
        if let Some(access) = &access {
            let _: () = conn
                .set_ex(
                    &key,
                    serde_json::to_string(access)?,
                    self.ttl.as_secs().max(1),
                )
                .await?;
        }
        Ok((access, Source::Database))
    }

    /// Forgets the cached standing so that the next check reads MongoDB.
    pub async fn invalidate(&self, tenant: &str, conversation: &str, user: &str) -> Result<()> {
        let mut conn = self.redis.clone();
        let _: i64 = conn
            .del(keys::membership(tenant, conversation, user))
            .await?;
        Ok(())
    }
}
