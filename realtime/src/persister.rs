//! The persistence worker: `chat.messages` → MongoDB `messages` → `chat.persistence.events`.
//!
//! Order per batch: bulk insert the messages, move `conversations.last_message_at`,
//! refresh the Redis conversation cache, publish one persistence event per message, and
//! only then commit the offsets. A crash anywhere before the commit replays the batch;
//! writes keyed by message id make the replay change nothing.
//!
//! A batch that fails as a whole (database unreachable, write concern not met) is retried
//! until it succeeds. A message the database refuses for good (a validator, another
//! unique index) cannot hold up the partition: it goes to the dead-letter topic with the
//! reason, counts in `realtime_dead_lettered_messages_total`, is logged as an error, and
//! its sender is told it failed. Records of another installation sharing the topic are
//! skipped (see `kafka::foreign`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use redis::Script;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::Result;
use crate::kafka;
use crate::keys;
use crate::metrics::{CategoryLabel, Metrics};
use crate::protocol::{ChatRecord, PersistOutcome, PersistenceEvent};
use crate::store::Store;

pub struct Persister {
    pub cfg: Config,
    pub store: Store,
    pub redis: ConnectionManager,
    pub producer: Arc<kafka::Producer>,
    pub metrics: Arc<Metrics>,
    pub membership: kafka::Membership,
}

/// The persisters' consumer group (after `KAFKA_GROUP_PREFIX`).
pub const GROUP: &str = "persister";

/// Header of a dead-lettered record saying why the database refused it.
pub const REFUSED_HEADER: &str = "realtime-refused-reason";

// Moves conversation caches forward only (batches of one conversation may race).
// KEYS: caches. ARGV: ttl s, then (seq, last_message_at) per key.
const CACHE: &str = r#"
for i, key in ipairs(KEYS) do
  local seq, at = ARGV[2 * i], ARGV[2 * i + 1]
  local c = tonumber(redis.call('HGET', key, 'last_seq')) or 0
  if tonumber(seq) > c then
    redis.call('HSET', key, 'last_seq', seq, 'last_message_at', at)
  end
  redis.call('EXPIRE', key, ARGV[1])
end
return 1
"#;

impl Persister {
    /// Consumes until `cancel` fires; the batch in hand is finished and committed first.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let group = self.cfg.kafka.group(GROUP);
        let consumer = kafka::consumer(&self.cfg.kafka, &group, false, &self.membership)?;
        consumer.subscribe(&[self.cfg.kafka.message_topic.as_str()])?;
        let unique_index = self.store.message_id_is_unique().await?;
        if !unique_index {
            tracing::warn!(
                "messages has no unique index on message_id: writing with upserts, which is slower; \
                 create it (MONGODB_CREATE_INDEXES=true or a MongoIndex resource) and restart"
            );
        }
        tracing::info!(topic = %self.cfg.kafka.message_topic, %group, "persister started");
        let mut backoff = Backoff::default();
        while let Some(batch) = self.next_batch(&consumer, &cancel, &mut backoff).await {
            let started = Instant::now();
            // A failed batch is retried as a whole until it succeeds or we are told to stop;
            // its offsets are not committed, so a stop replays it on the next start.
            loop {
                match self.persist(&batch, unique_index).await {
                    Ok(()) => break,
                    Err(e) => {
                        self.metrics
                            .persist_errors
                            .get_or_create(&CategoryLabel {
                                category: e.category(),
                            })
                            .inc();
                        tracing::warn!(error = %e, size = batch.len(), "batch not persisted; retrying");
                        backoff.wait(&cancel).await;
                        if cancel.is_cancelled() {
                            return Ok(());
                        }
                    }
                }
            }
            backoff.reset();
            // Asynchronous: a synchronous commit would block a runtime worker for a
            // broker round trip. A commit lost to a crash replays a batch that is stored,
            // which changes nothing.
            if let Err(e) = consumer.commit(&offsets_after(&batch), CommitMode::Async) {
                tracing::warn!(error = %e, "offset commit failed");
            }
            self.metrics.persist_batches.inc();
            self.metrics
                .persist_batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        kafka::leave_when_settled(
            &consumer,
            Duration::from_millis(self.cfg.kafka.session_timeout_ms.into()),
        )
        .await;
        // The last commits must reach the broker before the process exits.
        let flushed = tokio::task::spawn_blocking(move || {
            consumer
                .commit_consumer_state(CommitMode::Sync)
                .map_err(|e| e.to_string())
        })
        .await;
        if !matches!(flushed, Ok(Ok(()) | Err(_))) {
            tracing::debug!("no offsets to commit at shutdown");
        }
        tracing::info!("persister stopped");
        Ok(())
    }

    /// Waits for the first record, then collects up to `batch_size` or until `linger`.
    async fn next_batch(
        &self,
        consumer: &kafka::GroupConsumer,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Option<Vec<OwnedMessage>> {
        let max = self.cfg.persister.batch_size as usize;
        let mut batch = Vec::with_capacity(max);
        loop {
            let first = tokio::select! {
                () = cancel.cancelled() => return None,
                m = consumer.recv() => m,
            };
            match first {
                Ok(m) => {
                    batch.push(m.detach());
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    backoff.wait(cancel).await;
                }
            }
        }
        let deadline = tokio::time::Instant::now() + self.cfg.persister.linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        Some(batch)
    }

    async fn persist(&self, batch: &[OwnedMessage], unique_index: bool) -> Result<()> {
        let installation = &self.cfg.kafka.group_prefix;
        let mut records = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        for m in batch {
            if kafka::foreign(m, installation) {
                self.foreign_record(m);
                continue;
            }
            match m.payload().map(serde_json::from_slice::<ChatRecord>) {
                Some(Ok(r)) => records.push(r),
                _ => poison.push(m),
            }
        }
        for m in poison {
            self.metrics.poison_records.inc();
            tracing::error!(
                partition = m.partition(),
                offset = m.offset(),
                "undecodable record moved to the dead-letter topic"
            );
            self.dead_letter(
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                m.payload().unwrap_or_default(),
                "not a chat record",
            )
            .await?;
        }
        if records.is_empty() {
            return Ok(());
        }
        let outcome = self.store.write_messages(&records, unique_index).await?;
        self.metrics.persisted_messages.inc_by(outcome.inserted);
        let refused: HashMap<usize, String> = outcome.refused.into_iter().collect();
        let mut stored = Vec::with_capacity(records.len());
        let mut events = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let mut event = PersistenceEvent::from(r);
            match refused.get(&i) {
                Some(reason) => {
                    self.metrics.dead_lettered.inc();
                    tracing::error!(
                        message_id = %r.message_id,
                        tenant = %r.tenant_id,
                        %reason,
                        "the database refused a message; moved to the dead-letter topic"
                    );
                    self.dead_letter(Some(r.key()), &serde_json::to_vec(r)?, reason)
                        .await?;
                    event.outcome = PersistOutcome::Refused;
                    event.reason = Some(format!("the database refused it ({reason})"));
                }
                None => stored.push(r.clone()),
            }
            events.push((r.key(), event));
        }
        self.store.touch_conversations(&stored).await?;
        self.refresh_cache(&stored).await?;
        let sends = events.iter().map(|(key, event)| async move {
            let bytes = serde_json::to_vec(event)?;
            self.producer
                .send(&self.cfg.kafka.persistence_topic, key, &bytes)
                .await
        });
        try_join_all(sends).await?;
        Ok(())
    }

    fn foreign_record(&self, m: &OwnedMessage) {
        self.metrics.foreign_records.inc();
        let seen = self.metrics.foreign_records.get();
        // Loud, but not once per record.
        if seen == 1 || seen.is_multiple_of(1000) {
            tracing::error!(
                topic = m.topic(),
                seen,
                "records of another installation are on this installation's topic: two \
                 installations share topics on one broker; they are skipped, but give each \
                 installation its own topics"
            );
        }
    }

    async fn dead_letter(&self, key: Option<String>, payload: &[u8], reason: &str) -> Result<()> {
        self.producer
            .send_with(
                &self.cfg.kafka.dead_letter_topic(),
                key.as_deref(),
                payload,
                &[(REFUSED_HEADER, reason)],
            )
            .await
    }

    /// Keeps `rt:{tenant}:conv:{id}` = {last_seq, last_message_at} for readers that must
    /// not hit MongoDB; it expires with the room state TTL.
    async fn refresh_cache(&self, records: &[ChatRecord]) -> Result<()> {
        let mut newest: HashMap<String, &ChatRecord> = HashMap::new();
        for r in records {
            let key = keys::conversation_cache(&r.tenant_id, &r.conversation_id);
            let entry = newest.entry(key).or_insert(r);
            if r.seq > entry.seq {
                *entry = r;
            }
        }
        if newest.is_empty() {
            return Ok(());
        }
        let script = Script::new(CACHE);
        let mut call = script.prepare_invoke();
        call.arg(self.cfg.rooms.state_ttl.as_secs().max(1));
        for (key, r) in &newest {
            call.key(key).arg(r.seq).arg(r.created_at_ms);
        }
        let mut conn = self.redis.clone();
        let _: i64 = call.invoke_async(&mut conn).await?;
        Ok(())
    }
}

/// The offsets to commit after `batch`: one past the highest offset seen per partition.
fn offsets_after(batch: &[OwnedMessage]) -> TopicPartitionList {
    let mut highest: HashMap<(String, i32), i64> = HashMap::new();
    for m in batch {
        let e = highest
            .entry((m.topic().to_owned(), m.partition()))
            .or_insert(m.offset());
        *e = (*e).max(m.offset());
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in highest {
        if let Err(e) = list.add_partition_offset(&topic, partition, Offset::Offset(offset + 1)) {
            tracing::warn!(error = %e, "building commit list failed");
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn msg(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "chat.messages".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn commits_one_past_the_highest_offset_per_partition() {
        let list = offsets_after(&[msg(0, 5), msg(1, 2), msg(0, 7), msg(0, 6)]);
        let map = list.to_topic_map();
        assert_eq!(map[&("chat.messages".to_string(), 0)], Offset::Offset(8));
        assert_eq!(map[&("chat.messages".to_string(), 1)], Offset::Offset(3));
        assert_eq!(map.len(), 2);
    }
}
