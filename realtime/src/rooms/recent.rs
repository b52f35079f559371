//! The recovery window: the last `RECOVERY_WINDOW` accepted messages of each conversation
//! in a Redis sorted set scored by sequence number, written by the gateway as soon as the
//! broker has acknowledged a message (before it is stored in MongoDB). A reconnecting
//! client asks for everything after the last number it saw; what the window no longer
//! holds (a Redis restart, a gap) is read from MongoDB.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::error::Result;
use crate::keys;
use crate::model::Message;

#[derive(Clone)]
pub struct RecentMessages {
    redis: ConnectionManager,
    window: u32,
    ttl: Duration,
}

/// What a `messages:recover` request can be answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The client has everything.
    UpToDate,
    /// Messages after the client's number fit in the window.
    Recover,
    /// More than the window was missed: the client must page history.
    TooFarBehind { missed: u64 },
}

/// Decides how to answer a client that saw `after_seq` when the newest is `latest`.
pub fn plan(after_seq: u64, latest: u64, window: u32) -> Plan {
    let missed = latest.saturating_sub(after_seq);
    if missed == 0 {
        Plan::UpToDate
    } else if missed > u64::from(window) {
        Plan::TooFarBehind { missed }
    } else {
        Plan::Recover
    }
}

/// True when `buffered` (ascending) starts right after `after_seq`, so nothing before
/// it can be missing.
pub fn covers(buffered: &[Message], after_seq: u64) -> bool {
    buffered.first().is_some_and(|m| m.seq == after_seq + 1)
}

/// Merges two ascending lists by sequence number, each message once.
pub fn merge(mut a: Vec<Message>, b: Vec<Message>) -> Vec<Message> {
    a.extend(b);
    a.sort_by_key(|m| m.seq);
    a.dedup_by(|x, y| x.message_id == y.message_id);
    a
}

impl RecentMessages {
    pub fn new(redis: ConnectionManager, window: u32, ttl: Duration) -> Self {
        Self { redis, window, ttl }
    }

    pub fn window(&self) -> u32 {
        self.window
    }

    /// Adds an accepted message and trims the window, atomically. A message is activity:
    /// the room state's expiry is pushed back with it.
    pub async fn remember(&self, tenant: &str, message: &Message) -> Result<()> {
        let conversation = &message.conversation_id;
        let key = keys::recent(tenant, conversation);
        let ttl_ms = self.ttl.as_millis().max(1) as i64;
        let mut conn = self.redis.clone();
        let _: () = redis::pipe()
            .atomic()
            .zadd(&key, serde_json::to_string(message)?, message.seq)
            .ignore()
            .zremrangebyrank(&key, 0, -(self.window as isize) - 1)
            .ignore()
            .pexpire(&key, ttl_ms)
            .ignore()
            .pset_ex(
                keys::room_activity(tenant, conversation),
                message.created_at,
                ttl_ms as u64,
            )
            .ignore()
            .pexpire(keys::room_sockets(tenant, conversation), ttl_ms)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Buffered messages with `seq > after_seq`, ascending.
    pub async fn after(
        &self,
        tenant: &str,
        conversation: &str,
        after_seq: u64,
    ) -> Result<Vec<Message>> {
        let mut conn = self.redis.clone();
        let raw: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(keys::recent(tenant, conversation))
            .arg(format!("({after_seq}"))
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(self.window)
            .query_async(&mut conn)
            .await?;
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Content;

    fn msg(seq: u64) -> Message {
        Message {
            message_id: format!("m{seq}"),
            conversation_id: "c".into(),
            seq,
            sender_id: "u".into(),
            client_message_id: format!("k{seq}"),
            content: Content::Text { text: "t".into() },
            created_at: 0,
        }
    }

    #[test]
    fn plans() {
        assert_eq!(plan(10, 10, 5), Plan::UpToDate);
        assert_eq!(plan(12, 10, 5), Plan::UpToDate);
        assert_eq!(plan(5, 10, 5), Plan::Recover);
        assert_eq!(plan(4, 10, 5), Plan::TooFarBehind { missed: 6 });
        assert_eq!(plan(0, 1, 1), Plan::Recover);
    }

    #[test]
    fn coverage_and_merge() {
        assert!(covers(&[msg(4), msg(5)], 3));
        assert!(!covers(&[msg(5)], 3));
        assert!(!covers(&[], 3));
        let merged = merge(vec![msg(5), msg(6)], vec![msg(4), msg(5)]);
        let seqs: Vec<u64> = merged.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [4, 5, 6]);
    }
}
