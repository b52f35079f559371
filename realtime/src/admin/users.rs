//! A user's records: `GET /v1/admin/users/{userId}/export` streams everything held about
//! them in the tenant; `DELETE /v1/admin/users/{userId}` erases it from MongoDB and Redis.
//!
//! Erasure, in order, each step idempotent and counted in the job (`user_erasures`) as
//! it completes, so a retry after a crash finishes the work and reports the totals:
//! 1. the job records the conversations to visit (from memberships and from the
//!    messages the user sent) before anything is changed — the messages stop naming the
//!    user in step 3, a retry still knows where to look;
//! 2. recordings they took part in: `recording.deleted`, then the tombstone;
//! 3. their messages redacted in batches (id, `seq` and time stay: nobody's history shifts);
//! 4. memberships, bans and mutes on them; their name on restrictions they imposed;
//! 5. the moderation log about them, and their name on entries by them;
//! 6. Redis: idempotency/delivery records, rate-limit buckets, membership cache, typing,
//!    call sockets and calls (keys of the tenant naming them); room presence, the cached
//!    conversation and their messages in recovery windows (per conversation);
//! 7. a second pass over the messages, for those that were in flight (accepted, not yet
//!    stored) during the first;
//! 8. `user.erased` on the recording topic, with the counts.
//!
//! Only the latest attempt of a user's erasure counts: an older one still running (its
//! client gave up and retried) has its session ended and stops at its next step.

use std::collections::BTreeSet;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde_json::json;

use super::records::{ErasureReport, ModerationView, UserExport, memberships_of};
use super::views::{Missing, RecordingView, Refused};
use super::{AdminState, ApiError, now_ms, publish, subject};
use crate::auth::Identity;
use crate::error::{Error, Result};
use crate::keys;
use crate::metrics::KindLabel;
use crate::model::{Content, Message};
use crate::protocol::validate_id;
use crate::store::erasure::{ErasureCounts, Step};

/// Bytes gathered before a chunk of the export is sent.
const CHUNK: usize = 64 * 1024;

fn user_id(id: &str) -> std::result::Result<(), ApiError> {
    validate_id("userId", id).map_err(ApiError::from)
}

/// Everything held about the user in the tenant, streamed (`messages` last).
#[utoipa::path(
    get, path = "/v1/admin/users/{userId}/export", tag = "users",
    params(("userId" = String, Path, pattern = "^[A-Za-z0-9._@+-]{1,128}$")),
    responses(
        (status = 200, description = "The user's records", body = UserExport),
        Missing,
        Refused,
    )
)]
pub async fn export(
    State(s): State<AdminState>,
    Extension(who): Extension<Identity>,
    Path(user): Path<String>,
) -> std::result::Result<Response, ApiError> {
    user_id(&user)?;
    let tenant = who.tenant_id;
    let conversations = s.store.user_conversations(&tenant, &user).await?;
    let (memberships, restrictions) = memberships_of(&conversations, &user);
    let moderation: Vec<ModerationView> = s
        .store
        .user_moderation(&tenant, &user)
        .await?
        .iter()
        .map(ModerationView::from_document)
        .collect();
    let recordings: Vec<RecordingView> = s
        .store
        .user_recordings(&tenant, &user)
        .await?
        .iter()
        .map(RecordingView::from_document)
        .collect();
    let mut cursor = s.store.user_messages(&tenant, &user).await?;
    let first = cursor.try_next().await.map_err(Error::from)?;
    if first.is_none()
        && memberships.is_empty()
        && restrictions.is_empty()
        && moderation.is_empty()
        && recordings.is_empty()
    {
        return Err(ApiError::not_found(&format!("user {user}")));
    }
    let head = UserExport {
        tenant_id: tenant,
        user_id: user,
        exported_at: now_ms(),
        memberships,
        restrictions,
        moderation,
        recordings,
        messages: Vec::new(),
    };
    // `{..., "messages":[]}` opened before its last `]}`, then the messages as they come.
    let mut head = serde_json::to_string(&head).map_err(Error::from)?;
    head.truncate(head.len().saturating_sub(2));
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let mut buf = head.into_bytes();
        let mut next = first;
        let mut written = 0_u64;
        let failure = loop {
            let Some(d) = next.take() else { break None };
            if written > 0 {
                buf.push(b',');
            }
            written += 1;
            match crate::store::message_from_document(&d)
                .and_then(|m| serde_json::to_writer(&mut buf, &m).map_err(Error::from))
            {
                Ok(()) => {}
                Err(e) => break Some(e),
            }
            if buf.len() >= CHUNK
                && tx
                    .send(Ok(Bytes::from(std::mem::take(&mut buf))))
                    .await
                    .is_err()
            {
                return; // the client went away
            }
            match cursor.try_next().await {
                Ok(d) => next = d,
                Err(e) => break Some(Error::from(e)),
            }
        };
        if let Some(e) = failure {
            // The body ends short of valid JSON: the client cannot take it for whole.
            tracing::warn!(error = %e, "a user's export broke off");
            let _ = tx
                .send(Err(std::io::Error::other("the export broke off")))
                .await;
            return;
        }
        buf.extend_from_slice(b"]}");
        let _ = tx.send(Ok(Bytes::from(buf))).await;
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// Erases the user from the tenant (see the module's notes); safe to repeat.
#[utoipa::path(
    delete, path = "/v1/admin/users/{userId}", tag = "users",
    params(("userId" = String, Path, pattern = "^[A-Za-z0-9._@+-]{1,128}$")),
    responses(
        (status = 200, description = "Erased; counts over every attempt", body = ErasureReport),
        Missing,
        Refused,
    )
)]
pub async fn erase(
    State(s): State<AdminState>,
    Extension(who): Extension<Identity>,
    Path(user): Path<String>,
) -> std::result::Result<Response, ApiError> {
    user_id(&user)?;
    let tenant = who.tenant_id;
    let subject = subject(&tenant, &user);
    let store = &s.store;
    let mut conversations: BTreeSet<String> = store
        .conversations_written_to(&tenant, &user)
        .await?
        .into_iter()
        .collect();
    conversations.extend(
        store
            .user_conversations(&tenant, &user)
            .await?
            .iter()
            .filter_map(|c| c.get_str("conversation_id").ok().map(str::to_owned)),
    );
    let recordings = store.recordings_of(&tenant, &user).await?;
    let known = store.erasure_started(&tenant, &subject).await?;
    if !known
        && conversations.is_empty()
        && recordings.is_empty()
        && store.user_moderation(&tenant, &user).await?.is_empty()
    {
        return Err(ApiError::not_found(&format!("user {user}")));
    }
    let conversations: Vec<String> = conversations.into_iter().collect();
    let mut job = store
        .begin_erasure(&tenant, &subject, &conversations)
        .await?;
    tracing::info!(%subject, attempt = job.attempts, conversations = job.conversations.len(), "erasing a user");
    for d in &recordings {
        super::recordings::erase(&s, &tenant, d, "user_erased", Some(&mut job)).await?;
    }
    store.redact_messages(&mut job, &user).await?;
    store.counted(&mut job, &Step::Memberships(&user)).await?;
    store.counted(&mut job, &Step::Moderation(&user)).await?;
    // Redis cannot join a MongoDB transaction: a crash between its erasure and the count
    // leaves those entries out of the totals (the retry finds them gone).
    let redis_entries = erase_from_redis(&s, &tenant, &user, &job.conversations).await?;
    let redis = ErasureCounts {
        redis_entries,
        ..Default::default()
    };
    store.counted(&mut job, &Step::Counted(redis)).await?;
    // Messages that were in flight (accepted, not yet stored) when the first pass ran.
    store.redact_messages(&mut job, &user).await?;
    let counts = store.finish_erasure(&job).await?;
    for (kind, n) in [
        ("messages", counts.messages),
        ("memberships", counts.memberships),
        ("restrictions", counts.restrictions),
        ("moderation_entries", counts.moderation_entries),
        ("recordings", counts.recordings),
        ("redis_entries", counts.redis_entries),
    ] {
        let erased = s.metrics.erased_records.get_or_create(&KindLabel { kind });
        erased.inc_by(n.saturating_sub(job.counts.field(kind)));
    }
    let at = now_ms();
    publish(
        &s,
        &format!("{tenant}:{user}"),
        &json!({"type": "user.erased", "tenantId": tenant, "userId": user, "at": at, "counts": counts}),
    )
    .await?;
    Ok(axum::Json(ErasureReport {
        user_id: user,
        counts,
        attempts: job.attempts,
        erased_at: at,
    })
    .into_response())
}

/// True when a key of `tenant` (past `rt:<tenant>:`) names `user`: an idempotency or
/// delivery record of theirs, their rate-limit buckets, a membership cache entry, a
/// typing throttle, their call sockets or calls.
fn names_user(rest: &str, user: &str) -> bool {
    let parts: Vec<&str> = rest.split(':').collect();
    match parts.as_slice() {
        ["msg", _conversation, sender, ..] => *sender == user,
        ["rl" | "rle" | "rtcsock" | "usercalls", who] => *who == user,
        ["authz" | "typing", _conversation, who] => *who == user,
        _ => false,
    }
}

/// Erases the user from Redis; the number of keys, fields and entries removed.
async fn erase_from_redis(
    s: &AdminState,
    tenant: &str,
    user: &str,
    conversations: &[String],
) -> Result<u64> {
    let mut conn = s.redis.clone();
    let prefix = format!("rt:{tenant}:");
    let mut erased = 0_u64;
    // Identifiers hold no glob characters (`validate_id`), so the prefix matches itself.
    let mut cursor = 0_u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        let doomed: Vec<&String> = batch
            .iter()
            .filter(|k| {
                k.strip_prefix(&prefix)
                    .is_some_and(|rest| names_user(rest, user))
            })
            .collect();
        if !doomed.is_empty() {
            let mut pipe = redis::pipe();
            for k in &doomed {
                pipe.del(*k).ignore();
                if k.strip_prefix(&prefix)
                    .is_some_and(|r| r.starts_with("msg:"))
                {
                    pipe.zrem(keys::DELIVERY_SCHEDULE, *k).ignore();
                }
            }
            let () = pipe.query_async(&mut conn).await?;
            erased += doomed.len() as u64;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    for conversation in conversations {
        // Presence: the user's sockets in the room.
        let sockets = keys::room_sockets(tenant, conversation);
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(&sockets)
            .query_async(&mut conn)
            .await?;
        let theirs: Vec<&String> = fields
            .iter()
            .filter(|f| f.split_once('|').is_some_and(|(u, _)| u == user))
            .collect();
        if !theirs.is_empty() {
            let removed: u64 = redis::cmd("HDEL")
                .arg(&sockets)
                .arg(&theirs)
                .query_async(&mut conn)
                .await?;
            erased += removed;
        }
        // The cached conversation lists its participants: read again from MongoDB.
        let removed: u64 = redis::cmd("DEL")
            .arg(keys::conversation_cache(tenant, conversation))
            .query_async(&mut conn)
            .await?;
        erased += removed;
        erased += redact_recent(&mut conn, tenant, conversation, user).await?;
    }
    Ok(erased)
}

/// Swaps recovery-window entries for their erased form, each only if it is still there
/// (a trim or the key's expiry in between must not bring an entry back, nor make a key
/// without expiry).
const SWAP_ENTRIES: &str = r"
local n = 0
for i = 1, #ARGV, 3 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i + 1])
    n = n + 1
  end
end
return n
";

/// Replaces the user's messages in a conversation's recovery window by their erased
/// form (same `seq`, so recovery stays gap-free).
async fn redact_recent(
    conn: &mut redis::aio::ConnectionManager,
    tenant: &str,
    conversation: &str,
    user: &str,
) -> Result<u64> {
    let key = keys::recent(tenant, conversation);
    let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    let script = redis::Script::new(SWAP_ENTRIES);
    let mut swap = script.key(&key);
    let mut any = false;
    for (raw, score) in entries {
        let Ok(mut m) = serde_json::from_str::<Message>(&raw) else {
            continue;
        };
        if m.sender_id != user {
            continue;
        }
        m.sender_id = String::new();
        m.client_message_id = String::new();
        m.content = Content::Erased;
        swap.arg(raw).arg(serde_json::to_string(&m)?).arg(score);
        any = true;
    }
    if !any {
        return Ok(0);
    }
    Ok(swap.invoke_async(conn).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_naming_the_user_and_only_them() {
        for k in [
            "msg:c1:alice:k1",
            "rl:alice",
            "rle:alice",
            "rtcsock:alice",
            "usercalls:alice",
            "authz:c1:alice",
            "typing:c1:alice",
        ] {
            assert!(names_user(k, "alice"), "{k}");
        }
        for k in [
            "msg:alice:bob:k1",
            "rl:alice2",
            "authz:alice:bob",
            "conv:alice",
            "seq:alice",
            "recent:alice",
            "room:alice:sockets",
            "call:alice",
        ] {
            assert!(!names_user(k, "alice"), "{k}");
        }
    }
}
