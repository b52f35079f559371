//! The Redis-backed state (rate limiter, sequencer, pending confirmations) against the
//! real Redis and MongoDB of `scripts/stack.sh`. These tests need the stack: without
//! REDIS_URL / MONGODB_URI they fail with a message saying how to start it.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use realtime::delivery::{Expired, PendingStore};
use realtime::protocol::{ChatRecord, Content};
use realtime::rate_limit::{Decision, RateLimiter};
use realtime::sequence::Sequencer;
use realtime::store::Store;
use redis::aio::ConnectionManager;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `scripts/stack.sh up` and `eval \"$(scripts/stack.sh env)\"` (scripts/test.sh does both)")
    })
}

async fn redis() -> ConnectionManager {
    let client = redis::Client::open(env("REDIS_URL")).expect("REDIS_URL");
    ConnectionManager::new(client)
        .await
        .expect("Redis reachable at REDIS_URL")
}

async fn store() -> Store {
    let store = Store::connect(
        &env("MONGODB_URI"),
        &format!("it_{}", uuid::Uuid::new_v4().simple()),
    )
    .await
    .expect("MONGODB_URI");
    store
        .ping()
        .await
        .expect("MongoDB reachable at MONGODB_URI");
    store
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn record(message_id: &str) -> ChatRecord {
    ChatRecord {
        tenant_id: "t".into(),
        conversation_id: "c".into(),
        message_id: message_id.into(),
        seq: 1,
        sender_id: "u".into(),
        client_message_id: "k".into(),
        content: Content::Text { text: "hi".into() },
        created_at_ms: 1,
    }
}

#[tokio::test]
async fn token_bucket_allows_the_burst_then_limits_with_a_retry_hint() {
    let limiter = RateLimiter::new(redis().await, 2.0, 3);
    let tenant = unique("t");
    for _ in 0..3 {
        assert_eq!(
            limiter.check(&tenant, "u").await.unwrap(),
            Decision::Allowed
        );
    }
    match limiter.check(&tenant, "u").await.unwrap() {
        Decision::Limited { retry_after_ms } => {
            assert!((1..=500).contains(&retry_after_ms), "{retry_after_ms}")
        }
        Decision::Allowed => panic!("the fourth take must be limited"),
    }
    // Another user and another tenant have their own buckets.
    assert_eq!(
        limiter.check(&tenant, "v").await.unwrap(),
        Decision::Allowed
    );
    assert_eq!(
        limiter.check(&unique("t"), "u").await.unwrap(),
        Decision::Allowed
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        limiter.check(&tenant, "u").await.unwrap(),
        Decision::Allowed,
        "refilled at 2/s"
    );
}

#[tokio::test]
async fn sequence_numbers_are_dense_and_idempotent() {
    let store = store().await;
    let seq = Sequencer::new(redis().await, store.clone());
    let tenant = unique("t");
    let a = seq.allocate(&tenant, "c", "u", "k1").await.unwrap();
    let b = seq.allocate(&tenant, "c", "u", "k2").await.unwrap();
    let again = seq.allocate(&tenant, "c", "u", "k1").await.unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
    assert!(!a.duplicate && !b.duplicate);
    assert_eq!(again.message_id, a.message_id);
    assert_eq!(again.seq, 1);
    assert!(again.duplicate);
    // The same key from another user is a different message.
    let other = seq.allocate(&tenant, "c", "v", "k1").await.unwrap();
    assert_eq!(other.seq, 3);
    // A released key can be used again.
    seq.release(&tenant, "u", "k2").await.unwrap();
    assert_eq!(seq.allocate(&tenant, "c", "u", "k2").await.unwrap().seq, 4);
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn a_missing_counter_is_seeded_from_the_stored_maximum() {
    let store = store().await;
    let tenant = unique("t");
    let mut stored = record(&unique("m"));
    stored.tenant_id = tenant.clone();
    stored.seq = 41;
    assert_eq!(
        store
            .upsert_messages(std::slice::from_ref(&stored))
            .await
            .unwrap(),
        1
    );
    let seq = Sequencer::new(redis().await, store.clone());
    assert_eq!(seq.allocate(&tenant, "c", "u", "k").await.unwrap().seq, 42);
    // Upserting the same message again inserts nothing.
    assert_eq!(store.upsert_messages(&[stored]).await.unwrap(), 0);
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn pending_entries_are_confirmed_once_and_retried_then_failed() {
    let pending = PendingStore::new(redis().await, Duration::from_millis(100), 1);
    let confirmed = record(&unique("m"));
    pending.register(&confirmed).await.unwrap();
    assert_eq!(
        pending.confirm(&confirmed.message_id).await.unwrap(),
        Some(confirmed.clone())
    );
    assert_eq!(
        pending.confirm(&confirmed.message_id).await.unwrap(),
        None,
        "second confirmation is a no-op"
    );

    let late = record(&unique("m"));
    pending.register(&late).await.unwrap();
    let mine = |all: Vec<Expired>| {
        all.into_iter()
            .filter(|e| match e {
                Expired::Retry(r) | Expired::Fail(r) => r.message_id == late.message_id,
            })
            .collect::<Vec<_>>()
    };
    assert!(
        mine(pending.claim_expired(1000).await.unwrap()).is_empty(),
        "not due yet"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        mine(pending.claim_expired(1000).await.unwrap()),
        vec![Expired::Retry(late.clone())]
    );
    assert!(
        mine(pending.claim_expired(1000).await.unwrap()).is_empty(),
        "re-armed with a new deadline"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        mine(pending.claim_expired(1000).await.unwrap()),
        vec![Expired::Fail(late.clone())]
    );
    assert_eq!(
        pending.confirm(&late.message_id).await.unwrap(),
        None,
        "a failed entry is gone"
    );
}

#[tokio::test]
async fn redelivered_messages_are_stored_once_with_either_write_path() {
    let store = store().await;
    let batch: Vec<ChatRecord> = (0..5).map(|_| record(&unique("m"))).collect();
    // Without the unique index the persister must upsert.
    assert!(!store.message_id_is_unique().await.unwrap());
    assert_eq!(store.write_messages(&batch[..3], false).await.unwrap(), 3);
    assert_eq!(store.write_messages(&batch[..3], false).await.unwrap(), 0);
    store.ensure_indexes().await.unwrap();
    assert!(store.message_id_is_unique().await.unwrap());
    // With it, a plain insert whose duplicate-key refusals are the redeliveries.
    assert_eq!(store.write_messages(&batch, true).await.unwrap(), 2);
    assert_eq!(store.write_messages(&batch, true).await.unwrap(), 0);
    let stored = store
        .database()
        .collection::<mongodb::bson::Document>("messages")
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap();
    assert_eq!(stored, 5);
    store.database().drop().await.unwrap();
}
