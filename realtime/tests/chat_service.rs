//! The chat service's decisions without sockets: `chat::Chat` against the real Redis and
//! MongoDB of `scripts/stack.sh` (and a producer on its broker, which these tests never
//! reach: every send they make is refused before it). Each test has a tenant of its own
//! and a MongoDB database of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use mongodb::bson::{Document, doc};
use realtime::auth::Identity;
use realtime::chat::{Chat, Emit};
use realtime::error::ErrorCode;
use realtime::metrics::Metrics;
use realtime::model::{Action, Content};
use realtime::protocol::{
    ChatRecord, HistoryRequest, ModerationRequest, RoomRequest, SendRequest, StatusRequest,
};
use realtime::store::Store;
use serde_json::json;

struct Fixture {
    chat: Chat,
    store: Store,
    tenant: String,
}

async fn fixture(extra: &[&str]) -> Fixture {
    let cfg = common::config(extra);
    let redis =
        redis::aio::ConnectionManager::new(redis::Client::open(cfg.redis_url.as_str()).unwrap())
            .await
            .expect("Redis reachable at REDIS_URL");
    let store = common::store(&cfg).await;
    let producer =
        Arc::new(realtime::kafka::Producer::new(&cfg.kafka, &cfg.kafka.group_prefix).unwrap());
    let chat = Chat::new(&cfg, &redis, &store, producer, Arc::new(Metrics::default()));
    // Presence counts the sockets of gateways whose heartbeat is live, as a process does.
    chat.rooms.beat().await.unwrap();
    Fixture {
        chat,
        store,
        tenant: common::unique("t"),
    }
}

impl Fixture {
    fn who(&self, user: &str) -> Identity {
        Identity {
            tenant_id: self.tenant.clone(),
            user_id: user.to_owned(),
            roles: Vec::new(),
        }
    }

    async fn log(&self) -> Vec<Document> {
        use futures::TryStreamExt;
        self.store
            .database()
            .collection::<Document>("moderation_log")
            .find(doc! {"tenant_id": &self.tenant})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }
}

fn moderation(event: &str, body: serde_json::Value) -> ModerationRequest {
    ModerationRequest::parse(
        event,
        Some(&body),
        event.ends_with("ban") || event.ends_with("mute"),
    )
    .unwrap()
}

fn room(conversation: &str) -> RoomRequest {
    RoomRequest::parse("room:join", Some(&json!({"conversationId": conversation}))).unwrap()
}

#[tokio::test]
async fn a_ban_is_stored_logged_takes_effect_at_once_and_returns_what_to_emit() {
    let f = fixture(&[]).await;
    common::conversation(
        &f.store,
        &f.tenant,
        "c",
        &["alice", "bob", "carol"],
        &[("bob", "moderator")],
    )
    .await;
    let carol = f.who("carol");
    let access = f.chat.member(&carol, "c").await.unwrap();
    let entered = f
        .chat
        .enter(&carol, "c", "sock-carol", &access)
        .await
        .unwrap();
    assert_eq!(entered.reply.online, vec!["carol".to_owned()]);
    assert_eq!(
        entered.emits,
        vec![Emit::ToConversation {
            tenant: f.tenant.clone(),
            conversation: "c".into(),
            event: "presence",
            payload: json!({"conversationId": "c", "online": ["carol"]}),
            include_caller: true,
        }]
    );

    let req = moderation(
        "moderation:ban",
        json!({"conversationId": "c", "userId": "carol", "durationSeconds": 60, "reason": "spam"}),
    );
    let answer = f
        .chat
        .moderate(&f.who("bob"), Action::Ban, req)
        .await
        .unwrap();
    let expires = answer
        .reply
        .expires_at
        .flatten()
        .expect("a timed ban has an end");
    let now = realtime::protocol::now_ms();
    assert!(
        (now + 55_000..=now + 60_000).contains(&expires),
        "{expires} vs {now}"
    );
    // The transport removes carol's sockets, tells her, updates presence, announces.
    assert_eq!(answer.emits.len(), 4, "{:?}", answer.emits);
    assert_eq!(
        answer.emits[0],
        Emit::RemoveFromConversation {
            tenant: f.tenant.clone(),
            conversation: "c".into(),
            user: "carol".into(),
        }
    );
    assert!(
        matches!(&answer.emits[1], Emit::ToUser { user, event: "room:removed", payload, .. }
        if user == "carol" && payload["reason"] == "banned" && payload["by"] == "bob" && payload["note"] == "spam")
    );
    assert!(
        matches!(&answer.emits[2], Emit::ToConversation { event: "presence", payload, .. }
        if payload["online"] == json!([]))
    );
    assert!(
        matches!(&answer.emits[3], Emit::ToConversation { event: "moderation:action", payload, include_caller: true, .. }
        if payload["action"] == "ban" && payload["userId"] == "carol")
    );

    // Stored and logged…
    let log = f.log().await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].get_str("action").unwrap(), "ban");
    assert_eq!(log[0].get_str("user_id").unwrap(), "carol");
    assert_eq!(log[0].get_str("by").unwrap(), "bob");
    // …and in force at once (the cached standing was dropped), with when it ends.
    let refused = f.chat.member(&carol, "c").await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::Banned);
    assert!(matches!(refused.retry_after_ms, Some(ms) if ms > 0 && ms <= 60_000));
    let history = HistoryRequest::parse(Some(&json!({"conversationId": "c"}))).unwrap();
    assert_eq!(
        f.chat.history(&carol, history).await.unwrap_err().code,
        ErrorCode::Banned
    );
}

#[tokio::test]
async fn a_refused_action_writes_nothing() {
    let f = fixture(&[]).await;
    common::conversation(
        &f.store,
        &f.tenant,
        "c",
        &["alice", "bob", "carol"],
        &[("bob", "moderator")],
    )
    .await;
    let kick = |user: &str| {
        moderation(
            "moderation:kick",
            json!({"conversationId": "c", "userId": user}),
        )
    };
    // A member above their rank, a moderator against the owner, anyone against themselves.
    for (actor, target, says) in [
        ("carol", "bob", "may not"),
        ("bob", "alice", "may not"),
        ("bob", "bob", "yourself"),
    ] {
        let refused = f
            .chat
            .moderate(&f.who(actor), Action::Kick, kick(target))
            .await
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden, "{actor} → {target}");
        assert!(
            refused.message.contains(says),
            "{actor} → {target}: {}",
            refused.message
        );
    }
    assert!(f.log().await.is_empty());
}

#[tokio::test]
async fn another_tenants_conversation_is_indistinguishable_from_a_missing_one() {
    let f = fixture(&[]).await;
    common::conversation(&f.store, &f.tenant, "c", &["alice"], &[]).await;
    let other_tenant = Identity {
        tenant_id: common::unique("other"),
        user_id: "alice".into(),
        roles: Vec::new(),
    };
    let outsider = f.who("mallory");
    let history = || HistoryRequest::parse(Some(&json!({"conversationId": "c"}))).unwrap();
    let a = f.chat.history(&other_tenant, history()).await.unwrap_err();
    let b = f.chat.history(&outsider, history()).await.unwrap_err();
    assert_eq!(a, b);
    assert_eq!(a.code, ErrorCode::Forbidden);
    assert_eq!(
        f.chat.presence(&other_tenant, room("c")).await.unwrap_err(),
        b
    );
}

#[tokio::test]
async fn typing_is_throttled_per_user_and_conversation_and_skips_the_caller() {
    let f = fixture(&["--typing-throttle-ms", "60000", "--typing-ttl-ms", "4000"]).await;
    let alice = f.who("alice");
    let first = f.chat.typing(&alice, room("c")).await.unwrap();
    assert_eq!(
        first.emits,
        vec![Emit::ToConversation {
            tenant: f.tenant.clone(),
            conversation: "c".into(),
            event: "typing",
            payload: json!({"conversationId": "c", "userId": "alice", "ttlMs": 4000}),
            include_caller: false,
        }]
    );
    let second = f.chat.typing(&alice, room("c")).await.unwrap_err();
    assert_eq!(second.code, ErrorCode::RateLimited);
    assert!(
        matches!(second.retry_after_ms, Some(ms) if ms > 50_000 && ms <= 60_000),
        "{second:?}"
    );
    // Another user, or another conversation, has a throttle of its own.
    f.chat.typing(&f.who("bob"), room("c")).await.unwrap();
    f.chat.typing(&alice, room("d")).await.unwrap();
}

#[tokio::test]
async fn a_muted_sender_is_refused_before_anything_is_recorded() {
    let f = fixture(&[]).await;
    common::conversation(&f.store, &f.tenant, "c", &["alice", "carol"], &[]).await;
    let mute = moderation(
        "moderation:mute",
        json!({"conversationId": "c", "userId": "carol", "durationSeconds": 30}),
    );
    f.chat
        .moderate(&f.who("alice"), Action::Mute, mute)
        .await
        .unwrap();
    let carol = f.who("carol");
    let send = SendRequest::parse(
        Some(&json!({"conversationId": "c", "clientMessageId": "k1", "content": {"type": "text", "text": "hi"}})),
        1024,
    )
    .unwrap();
    let refused = f.chat.send(&carol, send).await.unwrap_err();
    assert_eq!(refused.error.code, ErrorCode::Muted);
    assert!(refused.message.is_none());
    assert!(matches!(refused.error.retry_after_ms, Some(ms) if ms > 0 && ms <= 30_000));
    // No id was drawn for the key: the ledger does not know the message.
    let status = StatusRequest::parse(Some(
        &json!({"conversationId": "c", "clientMessageIds": ["k1"]}),
    ))
    .unwrap();
    let statuses = f.chat.statuses(&carol, status).await.unwrap();
    assert_eq!(statuses.messages[0].status, "unknown");
}

#[tokio::test]
async fn history_pages_newest_first_and_says_whether_more_exist() {
    let f = fixture(&[]).await;
    common::conversation(&f.store, &f.tenant, "c", &["alice"], &[]).await;
    let records: Vec<ChatRecord> = (1..=3)
        .map(|seq| ChatRecord {
            tenant_id: f.tenant.clone(),
            conversation_id: "c".into(),
            message_id: common::unique("m"),
            seq,
            sender_id: "alice".into(),
            client_message_id: format!("k{seq}"),
            content: Content::Text {
                text: format!("m{seq}"),
            },
            created_at_ms: 1,
        })
        .collect();
    f.store.write_messages(&records, false).await.unwrap();
    let alice = f.who("alice");
    let page = |body| HistoryRequest::parse(Some(&body)).unwrap();
    let first = f
        .chat
        .history(&alice, page(json!({"conversationId": "c", "limit": 2})))
        .await
        .unwrap();
    assert_eq!(
        first.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 2]
    );
    assert!(first.has_more);
    let rest = f
        .chat
        .history(
            &alice,
            page(json!({"conversationId": "c", "limit": 2, "beforeSeq": 2})),
        )
        .await
        .unwrap();
    assert_eq!(
        rest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1]
    );
    assert!(!rest.has_more);
}
