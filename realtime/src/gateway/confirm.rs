//! Background work of every gateway: turning persistence events into `message:persisted`
//! (or `message:failed`), and the sweeper that retries, delays or fails messages whose
//! outcome is overdue. The decisions are `chat::delivery`'s; this module runs them and
//! performs the emits.
//!
//! Gateways share one consumer group on the persistence topic, so each event is handled
//! once; the emit goes through the Socket.IO adapter to the sender's user room on
//! whichever gateway the sender is connected to now. An emit to a sender who is offline
//! is lost, but the outcome is not: it stays in the ledger, where `message:status` and a
//! resend find it.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::emit::from_server as perform;
use crate::backoff::Backoff;
use crate::error::Result;
use crate::kafka;
use crate::protocol::PersistenceEvent;

/// Confirmations handled at once by one gateway.
const MAX_INFLIGHT: u32 = 256;
/// Overdue records one gateway works on at once (each may be a produce in flight).
const SWEEP_INFLIGHT: u32 = 512;

/// The group (after `KAFKA_GROUP_PREFIX`) the gateways share for persistence events.
pub const CONFIRMATIONS_GROUP: &str = "gateway-confirmations";

/// Consumes `chat.persistence.events` until `cancel` fires.
pub async fn run_confirmations<A: Adapter>(
    gw: Shared,
    io: SocketIo<A>,
    membership: kafka::Membership,
    cancel: CancellationToken,
) -> Result<()> {
    let consumer = kafka::consumer(
        &gw.cfg.kafka,
        &gw.cfg.kafka.group(CONFIRMATIONS_GROUP),
        true,
        &membership,
    )?;
    consumer.subscribe(&[gw.cfg.kafka.persistence_topic.as_str()])?;
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT as usize));
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
        if kafka::foreign(&msg, &gw.cfg.kafka.group_prefix) {
            gw.metrics.foreign_records.inc();
        } else {
            match msg
                .payload()
                .and_then(|p| serde_json::from_slice::<PersistenceEvent>(p).ok())
            {
                Some(event) => {
                    // Confirmations are independent: handle them concurrently (bounded). A
                    // failure, or a crash before one finishes, leaves the record unresolved
                    // in the ledger; the sweeper then produces the message again and the
                    // persister's next event confirms it. So the offset can be stored at once.
                    let Ok(permit) = inflight.clone().acquire_owned().await else {
                        break;
                    };
                    let (gw, io) = (gw.clone(), io.clone());
                    tokio::spawn(async move {
                        match gw.chat.delivery.on_persistence_event(&event).await {
                            Ok(emits) => perform(&io, emits).await,
                            Err(e) => {
                                tracing::warn!(error = %e, message_id = %event.message_id, "confirmation failed");
                            }
                        }
                        drop(permit);
                    });
                }
                None => tracing::warn!(
                    offset = msg.offset(),
                    "undecodable persistence event skipped"
                ),
            }
        }
        if let Err(e) = consumer.store_offset_from_message(&msg) {
            tracing::warn!(error = %e, "storing consumer offset failed");
        }
    }
    // Let the confirmations in flight finish (they emit before the sockets close), then
    // commit without blocking a runtime worker.
    if inflight.acquire_many(MAX_INFLIGHT).await.is_err() {
        tracing::warn!("confirmation semaphore closed before shutdown");
    }
    kafka::leave_when_settled(
        &consumer,
        std::time::Duration::from_millis(gw.cfg.kafka.session_timeout_ms.into()),
    )
    .await;
    let committed = tokio::task::spawn_blocking(move || {
        consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
    })
    .await;
    if let Ok(Err(e)) = committed {
        tracing::debug!(error = %e, "final commit of persistence event offsets");
    }
    Ok(())
}

/// Claims overdue records and works on them concurrently (bounded), until `cancel` fires.
/// A claim gives each record a lease, so a slow broker delays only the records in hand,
/// and no other gateway takes them meanwhile; nothing leaves the schedule unnoticed.
pub async fn run_sweeper<A: Adapter>(gw: Shared, io: SocketIo<A>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(gw.confirmation_poll_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let slots = Arc::new(Semaphore::new(SWEEP_INFLIGHT as usize));
    let mut sampled = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if sampled.elapsed() >= Duration::from_secs(1) {
            sampled = tokio::time::Instant::now();
            if let Ok(n) = gw.chat.delivery.ledger.unresolved().await {
                gw.metrics
                    .delivery_unresolved
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let free = slots.available_permits();
        if free == 0 {
            continue;
        }
        let claimed = match gw.chat.delivery.ledger.claim_due(free.min(256)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "claiming overdue messages failed");
                continue;
            }
        };
        for due in claimed {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (gw, io) = (gw.clone(), io.clone());
            tokio::spawn(async move {
                match gw.chat.delivery.on_due(due).await {
                    Ok(emits) => perform(&io, emits).await,
                    // The record keeps its place in the schedule; the next claim retries.
                    Err(e) => {
                        tracing::warn!(error = %e, "overdue message not handled; retried later")
                    }
                }
                drop(permit);
            });
        }
    }
    // Work in hand finishes (bounded by the producer's delivery timeout).
    if slots.acquire_many(SWEEP_INFLIGHT).await.is_err() {
        tracing::warn!("sweeper semaphore closed before shutdown");
    }
}
