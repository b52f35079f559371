//! The persistence worker: `chat.messages` → MongoDB `messages` → `chat.persistence.events`.
//!
//! Order per batch: bulk upsert the messages, move `conversations.last_message_at`,
//! refresh the Redis conversation cache, publish one persistence event per message, and
//! only then commit the offsets. A crash anywhere before the commit replays the batch;
//! upserts keyed by message id make the replay change nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::Result;
use crate::kafka;
use crate::keys;
use crate::metrics::{CategoryLabel, Metrics};
use crate::protocol::{ChatRecord, PersistenceEvent};
use crate::store::Store;

pub struct Persister {
    pub cfg: Config,
    pub store: Store,
    pub redis: ConnectionManager,
    pub producer: FutureProducer,
    pub metrics: Arc<Metrics>,
}

impl Persister {
    /// Consumes until `cancel` fires; the batch in hand is finished and committed first.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let group = self.cfg.kafka.group("persister");
        let consumer: StreamConsumer = kafka::consumer(&self.cfg.kafka, &group, false)?;
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
            if let Err(e) = consumer.commit(&offsets_after(&batch), CommitMode::Sync) {
                // Not fatal: the batch is stored; a replay of it changes nothing.
                tracing::warn!(error = %e, "offset commit failed");
            }
            self.metrics.persist_batches.inc();
            self.metrics
                .persist_batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        tracing::info!("persister stopped");
        Ok(())
    }

    /// Waits for the first record, then collects up to `batch_size` or until `linger`.
    async fn next_batch(
        &self,
        consumer: &StreamConsumer,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Option<Vec<OwnedMessage>> {
        let max = self.cfg.mongodb.batch_size as usize;
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
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.cfg.mongodb.linger_ms);
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
        let records: Vec<ChatRecord> = batch
            .iter()
            .filter_map(|m| {
                let decoded = m.payload().map(serde_json::from_slice::<ChatRecord>);
                match decoded {
                    Some(Ok(r)) => Some(r),
                    _ => {
                        self.metrics.poison_records.inc();
                        tracing::error!(
                            partition = m.partition(),
                            offset = m.offset(),
                            "undecodable record skipped"
                        );
                        None
                    }
                }
            })
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        let inserted = self.store.write_messages(&records, unique_index).await?;
        self.metrics.persisted_messages.inc_by(inserted);
        self.store.touch_conversations(&records).await?;
        self.refresh_cache(&records).await?;
        let events = records.iter().map(|r| {
            let event = PersistenceEvent::from(r);
            async move {
                let bytes = serde_json::to_vec(&event)?;
                kafka::send(
                    &self.producer,
                    &self.cfg.kafka.persistence_topic,
                    &r.key(),
                    &bytes,
                )
                .await
            }
        });
        try_join_all(events).await?;
        Ok(())
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
        let ttl = self.cfg.room_state_ttl().as_secs().max(1);
        let mut pipe = redis::pipe();
        for (key, r) in &newest {
            // Only ever move forward, even when batches of one conversation race.
            pipe.cmd("EVAL")
                .arg("local c = tonumber(redis.call('HGET', KEYS[1], 'last_seq')) or 0 \
                      if tonumber(ARGV[1]) > c then redis.call('HSET', KEYS[1], 'last_seq', ARGV[1], 'last_message_at', ARGV[2]) end \
                      return 1")
                .arg(1)
                .arg(key)
                .arg(r.seq)
                .arg(r.created_at_ms)
                .ignore();
            pipe.cmd("EXPIRE").arg(key).arg(ttl).ignore();
        }
        let mut conn = self.redis.clone();
        let () = pipe.query_async(&mut conn).await?;
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
