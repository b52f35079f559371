//! Background work of every gateway: turning persistence events into `message:persisted`,
//! and retrying or failing messages whose confirmation is late.
//!
//! Gateways share one consumer group on the persistence topic, so each event is handled
//! once; the emit goes through the Socket.IO adapter to the sender's user room on
//! whichever gateway the sender is connected to now.

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use tokio_util::sync::CancellationToken;

use super::{CHAT_NAMESPACE, Shared};
use crate::backoff::Backoff;
use crate::delivery::Expired;
use crate::error::Result;
use crate::kafka;
use crate::keys;
use crate::protocol::{Failed, Persisted, PersistenceEvent, now_ms};

/// Confirmations handled at once by one gateway.
const MAX_INFLIGHT: u32 = 256;

/// Consumes `chat.persistence.events` until `cancel` fires.
pub async fn run_confirmations<A: Adapter>(
    gw: Shared,
    io: SocketIo<A>,
    cancel: CancellationToken,
) -> Result<()> {
    let consumer: StreamConsumer = kafka::consumer(
        &gw.cfg.kafka,
        &gw.cfg.kafka.group("gateway-confirmations"),
        true,
    )?;
    consumer.subscribe(&[gw.cfg.kafka.persistence_topic.as_str()])?;
    let inflight = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT as usize));
    let mut backoff = Backoff::default();
    loop {
        let msg = tokio::select! {
            () = cancel.cancelled() => break,
            msg = consumer.recv() => msg,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "persistence event consumer error");
                backoff.wait(&cancel).await;
                continue;
            }
        };
        backoff.reset();
        let event: Option<PersistenceEvent> =
            msg.payload().and_then(|p| serde_json::from_slice(p).ok());
        match event {
            Some(event) => {
                // Confirmations are independent: handle them concurrently (bounded). A
                // failure, or a crash before one finishes, leaves the pending entry in
                // Redis; the sweeper then produces the message again and the persister's
                // next event confirms it. So the offset can be stored at once.
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break;
                };
                let (gw, io) = (gw.clone(), io.clone());
                tokio::spawn(async move {
                    if let Err(e) = confirm(&gw, &io, &event).await {
                        tracing::warn!(error = %e, message_id = %event.message_id, "confirmation failed");
                    }
                    drop(permit);
                });
            }
            None => tracing::warn!(
                offset = msg.offset(),
                "undecodable persistence event skipped"
            ),
        }
        if let Err(e) = consumer.store_offset_from_message(&msg) {
            tracing::warn!(error = %e, "storing consumer offset failed");
        }
    }
    // Let the confirmations in flight finish before the final commit.
    if inflight.acquire_many(MAX_INFLIGHT).await.is_err() {
        tracing::warn!("confirmation semaphore closed before shutdown");
    }
    consumer
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .ok();
    Ok(())
}

async fn confirm<A: Adapter>(
    gw: &Shared,
    io: &SocketIo<A>,
    event: &PersistenceEvent,
) -> Result<()> {
    let Some(record) = gw.pending.confirm(&event.message_id).await? else {
        // Already confirmed (a redelivered event or a retried message): say it once only.
        return Ok(());
    };
    let latency_ms = now_ms().saturating_sub(record.created_at_ms).max(0);
    gw.metrics
        .confirmation_latency
        .observe(latency_ms as f64 / 1000.0);
    gw.metrics.confirmations.inc();
    let payload = Persisted {
        message_id: &record.message_id,
        conversation_id: &record.conversation_id,
        seq: record.seq,
    };
    emit_to_user(
        io,
        &record.tenant_id,
        &record.sender_id,
        "message:persisted",
        &payload,
    )
    .await;
    Ok(())
}

async fn emit_to_user<A: Adapter, T: serde::Serialize + ?Sized>(
    io: &SocketIo<A>,
    tenant: &str,
    user: &str,
    event: &str,
    payload: &T,
) {
    let Some(ns) = io.of(CHAT_NAMESPACE) else {
        return;
    };
    if let Err(e) = ns
        .to(keys::user_room(tenant, user))
        .emit(event, payload)
        .await
    {
        tracing::warn!(error = %e, event, "emit to sender failed");
    }
}

/// Retries or fails messages whose confirmation is overdue, until `cancel` fires.
pub async fn run_sweeper<A: Adapter>(gw: Shared, io: SocketIo<A>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(gw.confirmation_poll_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let expired = match gw.pending.claim_expired(256).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "claiming overdue confirmations failed");
                continue;
            }
        };
        for entry in expired {
            match entry {
                Expired::Retry(record) => {
                    gw.metrics.delivery_retries.inc();
                    tracing::info!(message_id = %record.message_id, "no persistence confirmation in time; producing again");
                    let sent = match serde_json::to_vec(&record) {
                        Ok(bytes) => {
                            kafka::send(
                                &gw.producer,
                                &gw.cfg.kafka.message_topic,
                                &record.key(),
                                &bytes,
                            )
                            .await
                        }
                        Err(e) => Err(e.into()),
                    };
                    if let Err(e) = sent {
                        // The entry stays armed: the next deadline tries again.
                        tracing::warn!(error = %e, message_id = %record.message_id, "retry not produced");
                    }
                }
                Expired::Fail(record) => {
                    gw.metrics.delivery_failures.inc();
                    let reason = format!(
                        "not persisted after {} retries of {} ms each; send it again with a new clientMessageId",
                        gw.cfg.delivery.retries, gw.cfg.delivery.timeout_ms
                    );
                    tracing::warn!(message_id = %record.message_id, "message failed: {reason}");
                    let payload = Failed {
                        message_id: &record.message_id,
                        conversation_id: &record.conversation_id,
                        reason: &reason,
                    };
                    emit_to_user(
                        &io,
                        &record.tenant_id,
                        &record.sender_id,
                        "message:failed",
                        &payload,
                    )
                    .await;
                }
            }
        }
    }
}
