//! Message ids and per-conversation sequence numbers, with client idempotency keys.
//!
//! One Lua script checks the idempotency key and increments the conversation's counter
//! atomically, so a resent `message:send` gets the same id and number and no gap is made.
//! When the counter is missing (a fresh or flushed Redis) it is seeded from the highest
//! stored sequence in MongoDB before any number is handed out.

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::error::{Error, Result};
use crate::keys;
use crate::store::Store;

const ALLOCATE: &str = r#"
local existing = redis.call('GET', KEYS[1])
if existing then return {0, existing} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {2, ''} end
local seq = redis.call('INCR', KEYS[2])
local value = ARGV[1] .. ' ' .. seq
redis.call('SET', KEYS[1], value, 'EX', ARGV[2])
return {1, value}
"#;

/// How long a client idempotency key is remembered.
const IDEMPOTENCY_TTL_SECONDS: u64 = 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub message_id: String,
    pub seq: u64,
    /// The idempotency key was seen before: this is the earlier message's id and number.
    pub duplicate: bool,
}

#[derive(Clone)]
pub struct Sequencer {
    redis: ConnectionManager,
    store: Store,
    script: Script,
}

impl Sequencer {
    pub fn new(redis: ConnectionManager, store: Store) -> Self {
        Self {
            redis,
            store,
            script: Script::new(ALLOCATE),
        }
    }

    pub async fn allocate(
        &self,
        tenant: &str,
        conversation: &str,
        user: &str,
        client_message_id: &str,
    ) -> Result<Allocation> {
        let idem = keys::idempotency(tenant, user, client_message_id);
        let seq_key = keys::sequence(tenant, conversation);
        let mut conn = self.redis.clone();
        for _ in 0..2 {
            let message_id = uuid::Uuid::now_v7().to_string();
            let (status, value): (i64, String) = self
                .script
                .key(&idem)
                .key(&seq_key)
                .arg(&message_id)
                .arg(IDEMPOTENCY_TTL_SECONDS)
                .invoke_async(&mut conn)
                .await?;
            match status {
                0 | 1 => return parse_allocation(&value, status == 0),
                _ => {
                    let floor = self.store.max_seq(tenant, conversation).await?;
                    let _: bool = redis::cmd("SET")
                        .arg(&seq_key)
                        .arg(floor)
                        .arg("NX")
                        .query_async::<Option<String>>(&mut conn)
                        .await
                        .map(|r| r.is_some())?;
                }
            }
        }
        Err(Error::Other(format!(
            "sequence counter {seq_key} could not be seeded"
        )))
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

    /// Forgets an idempotency key whose message was not accepted, so the client can retry.
    pub async fn release(&self, tenant: &str, user: &str, client_message_id: &str) -> Result<()> {
        let mut conn = self.redis.clone();
        let _: i64 = conn
            .del(keys::idempotency(tenant, user, client_message_id))
            .await?;
        Ok(())
    }
}

fn parse_allocation(value: &str, duplicate: bool) -> Result<Allocation> {
    let (id, seq) = value
        .split_once(' ')
        .ok_or_else(|| Error::Other(format!("malformed idempotency record {value:?}")))?;
    let seq = seq
        .parse()
        .map_err(|_| Error::Other(format!("malformed sequence in {value:?}")))?;
    Ok(Allocation {
        message_id: id.to_owned(),
        seq,
        duplicate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_record_parses() {
        let a = parse_allocation("0190-ab 42", true).unwrap();
        assert_eq!(
            a,
            Allocation {
                message_id: "0190-ab".into(),
                seq: 42,
                duplicate: true
            }
        );
        assert!(parse_allocation("nospace", false).is_err());
        assert!(parse_allocation("id x", false).is_err());
    }
}
