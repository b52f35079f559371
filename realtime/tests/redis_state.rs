//! The Redis-backed state (rate limiter, the delivery ledger with its sequence numbers)
//! and the MongoDB writes against the real Redis and MongoDB of `scripts/stack.sh`. These tests need the stack: without
//! REDIS_URL / MONGODB_URI they fail with a message saying how to start it.
// Test helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use realtime::delivery::{
    Accepted, Allocation, Confirmation, Due, Ledger, State, TakeOver, Timing,
};
use realtime::protocol::{ChatRecord, Content};
use realtime::rate_limit::{Decision, RateLimiter};
use realtime::sequence::Sequencer;
use realtime::store::{Fence, Store};
use redis::aio::ConnectionManager;

mod common;
use common::{env, unique};

async fn redis() -> ConnectionManager {
    redis_db(0).await
}

/// Redis database `db` of the stack: tests that sweep the delivery schedule (one per
/// database) get their own, so they do not claim each other's records (40–49 are this
/// file's; the end-to-end suites use lower ones).
async fn redis_db(db: u32) -> ConnectionManager {
    let url = env("REDIS_URL");
    let (base, query) = url.split_once('?').unwrap_or((&url, ""));
    let url = format!("{}/{db}?{query}", base.trim_end_matches('/'));
    let client = redis::Client::open(url).expect("REDIS_URL");
    ConnectionManager::new(client)
        .await
        .expect("Redis reachable at REDIS_URL")
}

async fn store_with(write_concern: &str) -> Store {
    common::connect_store(
        &env("MONGODB_URI"),
        &format!("it_{}", uuid::Uuid::new_v4().simple()),
        write_concern,
    )
    .await
}

async fn store() -> Store {
    store_with("majority").await
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

fn timing(lease_ms: u64, timeout_ms: u64, attempts: u32) -> Timing {
    Timing {
        lease: Duration::from_millis(lease_ms),
        confirmation_timeout: Duration::from_millis(timeout_ms),
        attempts,
        max_interval: Duration::from_millis(4 * timeout_ms),
        ttl: Duration::from_secs(600),
    }
}

fn template(tenant: &str, conversation: &str, user: &str, key: &str) -> ChatRecord {
    ChatRecord {
        tenant_id: tenant.into(),
        conversation_id: conversation.into(),
        message_id: unique("m"),
        seq: 0,
        sender_id: user.into(),
        client_message_id: key.into(),
        content: Content::Text { text: "hi".into() },
        created_at_ms: 1,
    }
}

/// A ledger and sequencer on the real Redis, with a fresh MongoDB database.
async fn ledger_with(timing: Timing, gap: u64, db: u32) -> (Store, Sequencer, Ledger) {
    let store = store().await;
    // Records of an earlier run would be due in this run's sweeps.
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut redis_db(db).await)
        .await
        .unwrap();
    let seq = Sequencer::new(redis_db(db).await, store.clone(), gap);
    (store, seq, Ledger::new(redis_db(db).await, timing))
}

/// Allocates like the gateway does: verifies the counter first when the ledger asks.
async fn allocate(ledger: &Ledger, seq: &Sequencer, t: &ChatRecord) -> Allocation {
    loop {
        match ledger.allocate(t).await.unwrap() {
            Allocation::Verify { run_id } => {
                seq.repair(&t.tenant_id, &t.conversation_id, &run_id)
                    .await
                    .unwrap();
            }
            other => return other,
        }
    }
}

fn new_seq(a: &Allocation) -> u64 {
    match a {
        Allocation::New(r) => r.seq,
        other => panic!("expected a new message, got {other:?}"),
    }
}

#[tokio::test]
async fn sequence_numbers_are_dense_and_keys_are_scoped_by_conversation() {
    let (store, seq, ledger) = ledger_with(timing(5_000, 1_000, 2), 1000, 41).await;
    let tenant = unique("t");
    let a = allocate(&ledger, &seq, &template(&tenant, "c", "u", "k1")).await;
    let b = allocate(&ledger, &seq, &template(&tenant, "c", "u", "k2")).await;
    assert_eq!(
        (new_seq(&a), new_seq(&b)),
        (1, 2),
        "a new conversation starts at 1"
    );
    let Allocation::Existing(again) =
        allocate(&ledger, &seq, &template(&tenant, "c", "u", "k1")).await
    else {
        panic!("a resend finds the first send");
    };
    let Allocation::New(first) = &a else {
        unreachable!()
    };
    assert_eq!(
        (again.message_id.as_str(), again.seq),
        (first.message_id.as_str(), 1)
    );
    assert_eq!(again.state, State::Sending);
    // The same key from another user, or in another conversation, is another message.
    assert_eq!(
        new_seq(&allocate(&ledger, &seq, &template(&tenant, "c", "v", "k1")).await),
        3
    );
    assert_eq!(
        new_seq(&allocate(&ledger, &seq, &template(&tenant, "other", "u", "k1")).await),
        1,
        "a clientMessageId reused in another conversation is a new message there"
    );
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn a_lost_counter_is_repaired_past_everything_stored_with_a_gap() {
    let store = store().await;
    let tenant = unique("t");
    let mut stored = template(&tenant, "c", "u", "old");
    stored.seq = 41;
    store.ensure_indexes().await.unwrap();
    assert_eq!(
        store
            .write_messages(std::slice::from_ref(&stored), true)
            .await
            .unwrap()
            .inserted,
        1
    );
    let seq = Sequencer::new(redis().await, store.clone(), 100);
    let ledger = Ledger::new(redis().await, timing(5_000, 1_000, 2));
    // No counter, but MongoDB holds messages: Redis lost it, and maybe unpersisted ones.
    assert_eq!(
        new_seq(&allocate(&ledger, &seq, &template(&tenant, "c", "u", "k")).await),
        142
    );
    // A counter verified under another Redis server (a restart, a failover) may be behind.
    let mut conn = redis().await;
    let _: () = redis::cmd("SET")
        .arg(format!("rt:{tenant}:seqv:c"))
        .arg("a-previous-server")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        new_seq(&allocate(&ledger, &seq, &template(&tenant, "c", "u", "k2")).await),
        243
    );
    assert_eq!(
        new_seq(&allocate(&ledger, &seq, &template(&tenant, "c", "u", "k3")).await),
        244
    );
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn a_message_moves_from_sending_to_persisted_once_and_keeps_its_answer() {
    let (store, seq, ledger) = ledger_with(timing(5_000, 1_000, 2), 1000, 42).await;
    let t = template(&unique("t"), "c", "u", "k");
    let Allocation::New(record) = allocate(&ledger, &seq, &t).await else {
        panic!("new")
    };
    let key = Ledger::key(&record);
    assert!(
        matches!(ledger.take_over(&key).await.unwrap(), TakeOver::Busy(ms) if ms > 4_000),
        "the first send holds the lease"
    );
    assert_eq!(
        ledger.accepted(&key).await.unwrap(),
        Accepted {
            state: State::Accepted,
            announce: true
        }
    );
    assert_eq!(
        ledger.accepted(&key).await.unwrap(),
        Accepted {
            state: State::Accepted,
            announce: false
        },
        "announced once"
    );
    match ledger.persisted(&key).await.unwrap() {
        Confirmation::Confirmed {
            record: r,
            announce,
        } => {
            assert_eq!(r, record);
            assert!(!announce, "already announced when accepted");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ledger.persisted(&key).await.unwrap(),
        Confirmation::Already(State::Persisted),
        "a redelivered event confirms nothing"
    );
    let status = ledger.status(&key).await.unwrap().unwrap();
    assert_eq!((status.state, status.seq), (State::Persisted, record.seq));
    assert_eq!(
        ledger.persisted("rt:nobody:msg:c:u:k").await.unwrap(),
        Confirmation::Unknown
    );
    store.database().drop().await.unwrap();
}

/// Claims until `key` shows up in the schedule (other tests share it).
async fn claim(ledger: &Ledger, key: &str) -> Option<Due> {
    for due in ledger.claim_due(10_000).await.unwrap() {
        let k = match &due {
            Due::Produce { key, .. }
            | Due::Reproduce { key, .. }
            | Due::Delayed { key, .. }
            | Due::Fail { key, .. }
            | Due::Lost { key } => key.clone(),
        };
        if k == key {
            return Some(due);
        }
    }
    None
}

#[tokio::test]
async fn the_sweeper_produces_an_unacknowledged_message_until_it_fails_and_delays_an_accepted_one()
{
    let (store, seq, ledger) = ledger_with(timing(200, 100, 2), 1000, 43).await;
    let tenant = unique("t");
    let Allocation::New(never) = allocate(&ledger, &seq, &template(&tenant, "c", "u", "a")).await
    else {
        panic!()
    };
    let never_key = Ledger::key(&never);
    assert_eq!(
        claim(&ledger, &never_key).await,
        None,
        "leased to the first send"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        claim(&ledger, &never_key).await,
        Some(Due::Produce { .. })
    ));
    assert_eq!(
        claim(&ledger, &never_key).await,
        None,
        "leased to the sweeper now"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        matches!(claim(&ledger, &never_key).await, Some(Due::Fail { record, .. }) if record == never),
        "after every attempt, a message the broker never took is failed"
    );
    assert!(ledger.failed(&never_key, "broker down").await.unwrap());
    assert!(
        !ledger.failed(&never_key, "broker down").await.unwrap(),
        "failed once"
    );
    let status = ledger.status(&never_key).await.unwrap().unwrap();
    assert_eq!(status.state, State::Failed);
    assert_eq!(status.reason.as_deref(), Some("broker down"));

    let Allocation::New(late) = allocate(&ledger, &seq, &template(&tenant, "c", "u", "b")).await
    else {
        panic!()
    };
    let late_key = Ledger::key(&late);
    ledger.accepted(&late_key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        claim(&ledger, &late_key).await,
        Some(Due::Reproduce { .. })
    ));
    ledger.accepted(&late_key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        matches!(claim(&ledger, &late_key).await, Some(Due::Delayed { .. })),
        "an accepted message is never failed, only reported delayed (once)"
    );
    ledger.accepted(&late_key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        claim(&ledger, &late_key).await,
        Some(Due::Reproduce { .. })
    ));
    assert!(matches!(
        ledger.persisted(&late_key).await.unwrap(),
        Confirmation::Confirmed { .. }
    ));
    assert_eq!(
        ledger.status(&late_key).await.unwrap().unwrap().state,
        State::Persisted
    );
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn a_record_that_vanished_is_reported_not_dropped() {
    let (store, seq, ledger) = ledger_with(timing(100, 100, 2), 1000, 44).await;
    let Allocation::New(r) = allocate(&ledger, &seq, &template(&unique("t"), "c", "u", "k")).await
    else {
        panic!()
    };
    let key = Ledger::key(&r);
    let mut conn = redis_db(44).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        claim(&ledger, &key).await,
        Some(Due::Lost { key: key.clone() })
    );
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn a_fenced_message_can_never_be_stored_and_a_stored_one_cannot_be_fenced() {
    let store = store().await;
    store.ensure_indexes().await.unwrap();
    let tenant = unique("t");
    let mut fenced = template(&tenant, "c", "u", "a");
    fenced.seq = 1;
    assert_eq!(store.fence_message(&fenced).await.unwrap(), Fence::Fenced);
    assert_eq!(
        store.fence_message(&fenced).await.unwrap(),
        Fence::Fenced,
        "idempotent"
    );
    let late_copy = store
        .write_messages(std::slice::from_ref(&fenced), true)
        .await
        .unwrap();
    assert_eq!((late_copy.inserted, late_copy.redelivered), (0, 1));
    let mut stored = template(&tenant, "c", "u", "b");
    stored.seq = 2;
    store
        .write_messages(std::slice::from_ref(&stored), true)
        .await
        .unwrap();
    assert_eq!(store.fence_message(&stored).await.unwrap(), Fence::Stored);
    let page = store.history(&tenant, "c", None, 10).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [2],
        "history skips tombstones"
    );
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn a_write_concern_the_server_cannot_meet_fails_the_write() {
    // One node cannot acknowledge w: 5; before, the concern was not sent at all.
    let store = store_with("5").await;
    let err = store
        .write_messages(&[record(&unique("m"))], false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("write concern"), "{err}");
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn redelivered_messages_are_stored_once_with_either_write_path() {
    let store = store().await;
    let batch: Vec<ChatRecord> = (0..5).map(|_| record(&unique("m"))).collect();
    // Without the unique index the persister must upsert.
    assert!(!store.message_id_is_unique().await.unwrap());
    assert_eq!(
        store
            .write_messages(&batch[..3], false)
            .await
            .unwrap()
            .inserted,
        3
    );
    assert_eq!(
        store
            .write_messages(&batch[..3], false)
            .await
            .unwrap()
            .inserted,
        0
    );
    store.ensure_indexes().await.unwrap();
    assert!(store.message_id_is_unique().await.unwrap());
    // With it, a plain insert whose duplicate-key refusals are the redeliveries.
    assert_eq!(
        store.write_messages(&batch, true).await.unwrap().inserted,
        2
    );
    let again = store.write_messages(&batch, true).await.unwrap();
    assert_eq!((again.inserted, again.redelivered), (0, 5));
    let stored = store
        .database()
        .collection::<mongodb::bson::Document>("messages")
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap();
    assert_eq!(stored, 5);
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn a_document_the_database_refuses_is_reported_not_retried() {
    let store = store().await;
    store.ensure_indexes().await.unwrap();
    // Another unique index a deployment added: its duplicates are not redeliveries.
    store
        .database()
        .collection::<mongodb::bson::Document>("messages")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(mongodb::bson::doc! {"client_message_id": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    let mut a = record(&unique("m"));
    a.client_message_id = "same".into();
    let mut b = record(&unique("m"));
    b.client_message_id = "same".into();
    let out = store.write_messages(&[a, b], true).await.unwrap();
    assert_eq!(out.inserted, 1);
    assert_eq!(out.redelivered, 0);
    assert_eq!(out.refused.len(), 1);
    assert_eq!(out.refused[0].0, 1);
    assert!(out.refused[0].1.contains("11000"), "{:?}", out.refused);
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn an_authorization_cache_ttl_of_zero_means_no_cache() {
    use realtime::rooms::access::{AccessCache, Source};
    let store = store().await;
    let tenant = unique("t");
    store
        .database()
        .collection::<mongodb::bson::Document>("conversations")
        .insert_one(mongodb::bson::doc! {
            "tenant_id": &tenant, "conversation_id": "c",
            "participants": [{"user_id": "u", "role": "member"}],
        })
        .await
        .unwrap();
    let uncached = AccessCache::new(redis().await, store.clone(), Duration::ZERO);
    for _ in 0..2 {
        let (access, source) = uncached.get(&tenant, "c", "u").await.unwrap();
        assert!(access.is_some());
        assert_eq!(source, Source::Database, "every check reads MongoDB");
    }
    let cached = AccessCache::new(redis().await, store.clone(), Duration::from_secs(60));
    assert_eq!(
        cached.get(&tenant, "c", "u").await.unwrap().1,
        Source::Database
    );
    assert_eq!(
        cached.get(&tenant, "c", "u").await.unwrap().1,
        Source::Cache
    );
    store.database().drop().await.unwrap();
}
