//! `/v1/admin/recordings`: list (filters, newest first, cursor), read, `PATCH` of
//! `storage`/`quality` (published as `recording.updated`) and `DELETE` — an erasure: the
//! document becomes a tombstone that keeps only the id, its queued call changes are
//! dropped, and `recording.deleted` is published (before the erasure, so a crash between
//! the two publishes again on retry rather than never).

use std::collections::HashMap;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mongodb::bson::Document;
use serde_json::json;

use super::views::{
    Missing, RecordingPage, RecordingPatch, RecordingStatus, RecordingView, Refused,
};
use super::{AdminState, ApiError, now_ms, publish};
use crate::auth::Identity;
use crate::error::ErrorCode;
use crate::keys;
use crate::protocol::validate_id;
use crate::store::admin::RecordingQuery;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidPayload, message)
}

/// Reads the list's query: unknown parameters are refused, so a typo is not a silent
/// "no filter".
fn query(params: &HashMap<String, String>) -> Result<RecordingQuery, ApiError> {
    if let Some(unknown) = params
        .keys()
        .find(|k| !["conversationId", "status", "limit", "cursor"].contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "unknown query parameter {unknown:?}; use conversationId, status, limit, cursor"
        )));
    }
    let conversation = params.get("conversationId").cloned();
    if let Some(c) = &conversation {
        validate_id("conversationId", c)?;
    }
    let status = match params.get("status") {
        None => None,
        Some(s) if RecordingStatus::parse(s).is_some() => Some(s.clone()),
        Some(s) => {
            return Err(invalid(format!(
                "status {s:?} is not one of pending_consent, recording, cancelled, stopped"
            )));
        }
    };
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(invalid(format!(
                    "limit must be an integer from 1 to {MAX_LIMIT}"
                )));
            }
        },
    };
    let before = params.get("cursor").cloned();
    if let Some(c) = &before {
        validate_id("cursor", c)?;
    }
    Ok(RecordingQuery {
        conversation,
        status,
        before,
        limit,
    })
}

/// Lists the tenant's recordings, newest first.
#[utoipa::path(
    get, path = "/v1/admin/recordings", tag = "recordings",
    params(
        ("conversationId" = Option<String>, Query, pattern = "^[A-Za-z0-9._@+-]{1,128}$", description = "Only this conversation's recordings"),
        ("status" = Option<RecordingStatus>, Query, description = "Only recordings in this status"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, pattern = "^[A-Za-z0-9._@+-]{1,128}$", description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page, newest first", body = RecordingPage),
        Refused,
    )
)]
pub async fn list(
    State(s): State<AdminState>,
    Extension(who): Extension<Identity>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| invalid(format!("the query string: {e}")))?;
    let q = query(&params)?;
    let mut docs = s.store.list_recordings(&who.tenant_id, &q).await?;
    let next_cursor = if docs.len() > q.limit {
        docs.truncate(q.limit);
        docs.last()
            .and_then(|d| d.get_str("recording_id").ok())
            .map(str::to_owned)
    } else {
        None
    };
    let page = RecordingPage {
        items: docs.iter().map(RecordingView::from_document).collect(),
        next_cursor,
    };
    Ok(axum::Json(page).into_response())
}

fn recording_id(id: &str) -> Result<(), ApiError> {
    validate_id("recordingId", id).map_err(ApiError::from)
}

async fn found(s: &AdminState, tenant: &str, id: &str) -> Result<Document, ApiError> {
    recording_id(id)?;
    s.store
        .live_recording(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("recording {id}")))
}

/// Reads one recording.
#[utoipa::path(
    get, path = "/v1/admin/recordings/{recordingId}", tag = "recordings",
    params(("recordingId" = String, Path, pattern = "^[A-Za-z0-9._@+-]{1,128}$")),
    responses(
        (status = 200, description = "The recording", body = RecordingView),
        Missing,
        Refused,
    )
)]
pub async fn read(
    State(s): State<AdminState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let d = found(&s, &who.tenant_id, &id).await?;
    Ok(axum::Json(RecordingView::from_document(&d)).into_response())
}

/// Sets where the recording is stored and how good it is (`null` clears one).
#[utoipa::path(
    patch, path = "/v1/admin/recordings/{recordingId}", tag = "recordings",
    params(("recordingId" = String, Path, pattern = "^[A-Za-z0-9._@+-]{1,128}$")),
    request_body(content = RecordingPatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The recording after the change", body = RecordingView),
        Missing,
        Refused,
    )
)]
pub async fn update(
    State(s): State<AdminState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    recording_id(&id)?;
    let set = RecordingPatch::parse(&body)?;
    let d = s
        .store
        .patch_recording(&who.tenant_id, &id, set)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("recording {id}")))?;
    let view = RecordingView::from_document(&d);
    publish(
        &s,
        &format!("{}:{id}", who.tenant_id),
        &json!({
            "type": "recording.updated",
            "tenantId": who.tenant_id,
            "recordingId": id,
            "callId": view.call_id,
            "conversationId": view.conversation_id,
            "at": now_ms(),
            "storage": view.storage,
            "quality": view.quality,
        }),
    )
    .await?;
    Ok(axum::Json(view).into_response())
}

/// Erases one recording (see the module's notes).
#[utoipa::path(
    delete, path = "/v1/admin/recordings/{recordingId}", tag = "recordings",
    params(("recordingId" = String, Path, pattern = "^[A-Za-z0-9._@+-]{1,128}$")),
    responses(
        (status = 204, description = "Erased"),
        Missing,
        Refused,
    )
)]
pub async fn delete(
    State(s): State<AdminState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let d = found(&s, &who.tenant_id, &id).await?;
    erase(&s, &who.tenant_id, &d, "admin", None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Publishes `recording.deleted`, leaves the recording's tombstone and drops its queued
/// changes. `cause`: `admin` (a `DELETE` of it) or `user_erased`, when the erasure `job`
/// counts it (in the same transaction as the tombstone).
pub async fn erase(
    s: &AdminState,
    tenant: &str,
    d: &Document,
    cause: &str,
    job: Option<&mut crate::store::erasure::ErasureJob>,
) -> Result<(), ApiError> {
    let id = d.get_str("recording_id").unwrap_or_default();
    publish(
        s,
        &format!("{tenant}:{id}"),
        &json!({
            "type": "recording.deleted",
            "tenantId": tenant,
            "recordingId": id,
            "callId": d.get_str("call_id").unwrap_or_default(),
            "conversationId": d.get_str("conversation_id").unwrap_or_default(),
            "at": now_ms(),
            "cause": cause,
        }),
    )
    .await?;
    match job {
        None => {
            s.store.erase_recording(tenant, id).await?;
        }
        Some(job) => {
            let step = crate::store::erasure::Step::Recording(id);
            s.store.counted(job, &step).await?;
        }
    }
    let mut conn = s.redis.clone();
    let _: () = redis::pipe()
        .del(keys::recording_outbox(tenant, id))
        .ignore()
        .zrem(keys::RECORDING_OUTBOX, format!("{tenant}|{id}"))
        .ignore()
        .query_async(&mut conn)
        .await
        .map_err(crate::error::Error::from)?;
    Ok(())
}
