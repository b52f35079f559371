//! The recording outbox. Each change of a recording is appended to the recording's queue
//! in Redis in the same script that stores it (`sync`), and the recording is marked due
//! in a sorted set shared by every gateway. A gateway that takes a recording (a lease,
//! renewed at each entry) drains its queue in order: the document is written to MongoDB
//! `call_recordings` (whole, versioned: an older write never overwrites a newer one), the
//! events are published on the recording topic, then the entry leaves the queue. The
//! gateway that made a change takes the recording right after telling the users; any
//! gateway's worker takes it when that one failed or died (its lease ran out).
//!
//! So a change is never lost between Redis and MongoDB or the broker, the events of one
//! recording are published in the order of its changes whichever gateways made them, and
//! neither a slow database nor a stalled broker holds up the call's own events. Delivery
//! is at least once: a queue retried after a partial success publishes an entry's events
//! again; `(recordingId, version, type)` identifies an event.

use redis::Script;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::Recording;
use super::{CLAIM_LEASE_MS, Calls};
use crate::error::Result;
use crate::keys;
use crate::metrics::KindLabel;
use crate::protocol::now_ms;
use crate::store::recordings::recording_fields;

/// How long a recording's queue lives in Redis without a change (undelivered entries
/// are retried until then).
pub(super) const OUTBOX_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// Takes the recording `ARGV[1]` if nobody holds it (its score is due by `ARGV[2]`),
/// leasing it until `ARGV[3]`.
const TAKE: &str = r"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
";

/// Drops the head of the queue `KEYS[2]` if it is `ARGV[2]`; when the queue is empty
/// then, the recording `ARGV[1]` is no longer due. Returns the entries left.
const DONE: &str = r"
if redis.call('LINDEX', KEYS[2], 0) == ARGV[2] then redis.call('LPOP', KEYS[2]) end
local left = redis.call('LLEN', KEYS[2])
if left == 0 then redis.call('ZREM', KEYS[1], ARGV[1]) end
return left
";

/// One stored change of a recording, waiting to be written and published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub tenant: String,
    pub call_id: String,
    pub conversation: String,
    /// When the change was made (ms since the epoch).
    pub at: i64,
    /// The recording after the change.
    pub recording: Recording,
    /// The events of `webrtc.recording.events`, in order.
    pub events: Vec<Value>,
}

pub(super) fn take_script() -> Script {
    Script::new(TAKE)
}

pub(super) fn done_script() -> Script {
    Script::new(DONE)
}

impl Calls {
    /// Takes the recording (`tenant|recording`) unless another gateway is at it, and
    /// drains its queue.
    pub async fn deliver(&self, member: &str) -> Result<()> {
        let now = now_ms();
        let taken: i32 = self
            .take
            .key(keys::RECORDING_OUTBOX)
            .arg(member)
            .arg(now)
            .arg(now + CLAIM_LEASE_MS)
            .invoke_async(&mut self.redis.clone())
            .await?;
        if taken == 1 {
            self.drain(member).await?;
        }
        Ok(())
    }

    /// Delivers in the background (the caller's events are out already).
    pub fn deliver_later(self: &std::sync::Arc<Self>, member: Option<String>) {
        if let Some(member) = member {
            let calls = self.clone();
            tokio::spawn(async move {
                if let Err(e) = calls.deliver(&member).await {
                    tracing::debug!(error = %e, "recording delivery left to the outbox worker");
                }
            });
        }
    }

    /// Writes and publishes the queue of a recording this gateway holds, in order. On
    /// failure the rest stays queued and the lease runs out: retried later.
    pub async fn drain(&self, member: &str) -> Result<()> {
        let Some((tenant, recording)) = member.split_once('|') else {
            return Ok(());
        };
        let queue = keys::recording_outbox(tenant, recording);
        loop {
            let head: Option<String> = redis::cmd("LINDEX")
                .arg(&queue)
                .arg(0)
                .query_async(&mut self.redis.clone())
                .await?;
            if let Some(entry) = &head
                && let Err(e) = self.deliver_entry(entry).await
            {
                self.metrics.recording_write_errors.inc();
                tracing::warn!(error = %e, %recording, "recording change not written or published yet; retried");
                return Err(e);
            }
            let left: i64 = self
                .done
                .key(keys::RECORDING_OUTBOX)
                .key(&queue)
                .arg(member)
                .arg(head.unwrap_or_default())
                .invoke_async(&mut self.redis.clone())
                .await?;
            if left == 0 {
                return Ok(());
            }
            // More to do: renew the lease first.
            redis::cmd("ZADD")
                .arg(keys::RECORDING_OUTBOX)
                .arg("XX")
                .arg(now_ms() + CLAIM_LEASE_MS)
                .arg(member)
                .query_async::<()>(&mut self.redis.clone())
                .await?;
        }
    }

    async fn deliver_entry(&self, json: &str) -> Result<()> {
        let entry: OutboxEntry = match serde_json::from_str(json) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "unreadable recording outbox entry dropped");
                return Ok(());
            }
        };
        let live = self
            .store
            .save_recording(recording_fields(
                &entry.tenant,
                &entry.call_id,
                &entry.conversation,
                &entry.recording,
                entry.at,
            ))
            .await?;
        if !live {
            // Erased through the admin API while its call went on: nothing of it is
            // written or published again.
            tracing::debug!("change of an erased recording dropped");
            return Ok(());
        }
        let key = format!("{}:{}", entry.tenant, entry.recording.id);
        for event in &entry.events {
            self.producer
                .send(
                    &self.settings.recording_topic,
                    &key,
                    event.to_string().as_bytes(),
                )
                .await?;
            let kind = event["type"].as_str().unwrap_or_default();
            let kind = super::state::RECORDING_EVENT_TYPES
                .into_iter()
                .find(|t| *t == kind)
                .unwrap_or("unknown");
            self.metrics
                .recording_changes
                .get_or_create(&KindLabel { kind })
                .inc();
        }
        Ok(())
    }

    /// Claims up to `limit` recordings that are due (their gateway failed or died),
    /// leasing them.
    pub async fn claim_outbox(&self, limit: usize) -> Result<Vec<String>> {
        let now = now_ms();
        Ok(self
            .claim
            .key(keys::RECORDING_OUTBOX)
            .arg(now)
            .arg(limit)
            .arg(now + CLAIM_LEASE_MS)
            .invoke_async(&mut self.redis.clone())
            .await?)
    }

    /// Recordings with changes waiting (every gateway).
    pub async fn outbox_len(&self) -> Result<u64> {
        Ok(redis::cmd("ZCARD")
            .arg(keys::RECORDING_OUTBOX)
            .query_async(&mut self.redis.clone())
            .await?)
    }
}
