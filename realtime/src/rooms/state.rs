//! Room state in Redis, shared by every gateway: which sockets of which users are in a
//! conversation (presence) and the last activity. Roles are not kept here: they are part
//! of a participant's cached standing (`rooms::access`). Every key expires after `ROOM_STATE_TTL_HOURS` without activity.
//!
//! Each socket entry names the gateway that holds it. A gateway keeps a liveness key
//! alive with a heartbeat; entries of a gateway whose key expired (it crashed) are
//! dropped the next time the room's presence is computed, so a restart leaves no ghosts,
//! and sockets that reconnect elsewhere re-join and are counted again.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::error::Result;
use crate::keys;

const ROOM: &str = r#"
local op, user = ARGV[1], ARGV[2]
if op == 'add' then
  redis.call('HSET', KEYS[1], user .. '|' .. ARGV[3], ARGV[4])
elseif op == 'del' then
  redis.call('HDEL', KEYS[1], user .. '|' .. ARGV[3])
elseif op == 'remove_user' then
  local prefix = user .. '|'
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], f) end
  end
end
if op ~= 'list' then
  redis.call('SET', KEYS[2], ARGV[6])
  for i = 1, 2 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
end
local alive, seen, online = {}, {}, {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field, gw = all[i], all[i + 1]
  local ok = alive[gw]
  if ok == nil then
    ok = redis.call('EXISTS', ARGV[7] .. gw) == 1
    alive[gw] = ok
  end
  if ok then
    local u = string.match(field, '^(.*)|')
    if u and not seen[u] then
      seen[u] = true
      table.insert(online, u)
    end
  else
    redis.call('HDEL', KEYS[1], field)
  end
end
table.sort(online)
return online
"#;

/// What a room operation changes before presence is read.
enum Op<'a> {
    Add { socket: &'a str },
    Remove { socket: &'a str },
    RemoveUser,
    List,
}

#[derive(Clone)]
pub struct RoomState {
    redis: ConnectionManager,
    gateway_id: String,
    ttl: Duration,
    heartbeat: Duration,
    script: Script,
}

impl RoomState {
    pub fn new(
        redis: ConnectionManager,
        gateway_id: String,
        ttl: Duration,
        heartbeat: Duration,
    ) -> Self {
        Self {
            redis,
            gateway_id,
            ttl,
            heartbeat,
            script: Script::new(ROOM),
        }
    }

    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// Adds a socket to the room and returns who is online.
    pub async fn join(
        &self,
        tenant: &str,
        conversation: &str,
        user: &str,
        socket: &str,
    ) -> Result<Vec<String>> {
        self.run(tenant, conversation, user, Op::Add { socket })
            .await
    }

    /// Removes a socket from the room and returns who is still online.
    pub async fn leave(
        &self,
        tenant: &str,
        conversation: &str,
        user: &str,
        socket: &str,
    ) -> Result<Vec<String>> {
        self.run(tenant, conversation, user, Op::Remove { socket })
            .await
    }

    /// Removes every socket of a user and the membership (kick, ban).
    pub async fn remove_user(
        &self,
        tenant: &str,
        conversation: &str,
        user: &str,
    ) -> Result<Vec<String>> {
        self.run(tenant, conversation, user, Op::RemoveUser).await
    }

    /// Users with at least one socket in the room on a live gateway, sorted.
    pub async fn online(&self, tenant: &str, conversation: &str) -> Result<Vec<String>> {
        self.run(tenant, conversation, "", Op::List).await
    }

    async fn run(
        &self,
        tenant: &str,
        conversation: &str,
        user: &str,
        op: Op<'_>,
    ) -> Result<Vec<String>> {
        let (name, socket) = match op {
            Op::Add { socket } => ("add", socket),
            Op::Remove { socket } => ("del", socket),
            Op::RemoveUser => ("remove_user", ""),
            Op::List => ("list", ""),
        };
        let mut conn = self.redis.clone();
        let online: Vec<String> = self
            .script
            .key(keys::room_sockets(tenant, conversation))
            .key(keys::room_activity(tenant, conversation))
            .arg(name)
            .arg(user)
            .arg(socket)
            .arg(&self.gateway_id)
            .arg(self.ttl.as_millis().max(1) as u64)
            .arg(crate::protocol::now_ms())
            .arg(keys::GATEWAY_ALIVE_PREFIX)
            .invoke_async(&mut conn)
            .await?;
        Ok(online)
    }

    /// Marks this gateway alive for three heartbeats.
    pub async fn beat(&self) -> Result<()> {
        let mut conn = self.redis.clone();
        let _: () = redis::cmd("SET")
            .arg(format!("{}{}", keys::GATEWAY_ALIVE_PREFIX, self.gateway_id))
            .arg(crate::protocol::now_ms())
            .arg("PX")
            .arg(self.heartbeat.as_millis().max(1) as u64 * 3)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Declares this gateway gone: its sockets stop counting as online at once.
    pub async fn retire(&self) -> Result<()> {
        let mut conn = self.redis.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{}{}", keys::GATEWAY_ALIVE_PREFIX, self.gateway_id))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Keeps the liveness key fresh until cancelled, then retires the gateway.
    pub async fn run_heartbeat(self, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.beat().await {
                        tracing::warn!(error = %e, "gateway heartbeat failed");
                    }
                }
            }
        }
        if let Err(e) = self.retire().await {
            tracing::debug!(error = %e, "retiring the gateway's liveness key failed");
        }
    }
}
