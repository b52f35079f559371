//! The admin REST API (role `admin`, SPEC.md §3): recordings, a user's export and erasure,
//! and the OpenAPI document of it all, under `/v1/admin`.
//!
//! Every route but `openapi.json` passes [`guard`]: a Bearer JWT (HS256 secret or JWKS
//! keys, as for `/chat`) → 401; without `admin` in its `roles` → 403; the tenant is the
//! token's, so another tenant's object is a 404 like a missing one. Each authenticated
//! call is written to `admin_audit` (who, what, which object, when, the status) and
//! counted in `realtime_admin_requests_total{action,status}`; a user's id is audited as a
//! digest, so an erased user is not named there either.

mod recordings;
mod records;
mod users;
pub mod views;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mongodb::bson::{DateTime, doc};
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use utoipa::OpenApi;

use crate::auth::{Identity, Verifier};
use crate::error::{ClientError, ErrorCode};
use crate::kafka::Producer;
use crate::metrics::{ActionLabel, AdminLabel, Metrics};
use crate::store::Store;

/// The role a token must carry.
pub const ADMIN_ROLE: &str = "admin";

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub verifier: Verifier,
    pub store: Store,
    pub redis: ConnectionManager,
    pub producer: Arc<Producer>,
    pub metrics: Arc<Metrics>,
    /// `KAFKA_RECORDING_TOPIC`: `recording.updated`, `recording.deleted`, `user.erased`.
    pub recording_topic: String,
}

/// The admin routes, to merge into the process's router.
pub fn router(state: AdminState) -> Router {
    let guarded = Router::new()
        .route("/v1/admin/recordings", get(recordings::list))
        .route(
            "/v1/admin/recordings/{recordingId}",
            get(recordings::read)
                .patch(recordings::update)
                .delete(recordings::delete),
        )
        .route("/v1/admin/users/{userId}/export", get(users::export))
        .route(
            "/v1/admin/users/{userId}",
            axum::routing::delete(users::erase),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .route("/v1/admin/openapi.json", get(openapi))
        .merge(guarded)
        .with_state(state)
}

/// An error answered as `{error: {code, message}}` with its HTTP status.
#[derive(Debug)]
pub struct ApiError(pub ClientError);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(ClientError::new(code, message))
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} does not exist"))
    }

    fn status(&self) -> StatusCode {
        match self.0.code {
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        Self(e)
    }
}

/// A dependency failed: logged with its detail, answered without it.
impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        tracing::warn!(error = %e, "admin request failed on a dependency");
        Self(ClientError::unavailable("MongoDB, Redis or the broker"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(serde_json::json!({"error": self.0})),
        )
            .into_response()
    }
}

/// The action of a route, for metrics and the audit log.
fn action_of(method: &Method, route: &str) -> &'static str {
    match (method.as_str(), route) {
        ("GET", "/v1/admin/recordings") => "recordings.list",
        ("GET", "/v1/admin/recordings/{recordingId}") => "recordings.read",
        ("PATCH", "/v1/admin/recordings/{recordingId}") => "recordings.update",
        ("DELETE", "/v1/admin/recordings/{recordingId}") => "recordings.delete",
        ("GET", "/v1/admin/users/{userId}/export") => "users.export",
        ("DELETE", "/v1/admin/users/{userId}") => "users.erase",
        _ => "other",
    }
}

/// A digest naming a user of a tenant without their id (audit log, erasure jobs).
pub fn subject(tenant: &str, user: &str) -> String {
    let digest = Sha256::digest(format!("{tenant}\u{0}{user}").as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The object a request is about, as audited: a recording's id, a user's digest.
fn target_of(tenant: &str, path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/admin/")?;
    let mut parts = rest.split('/');
    match (parts.next(), parts.next().map(percent_decoded)) {
        (Some("recordings"), Some(id)) => Some(format!("recording:{id}")),
        (Some("users"), Some(id)) => Some(format!("user:{}", subject(tenant, &id))),
        _ => None,
    }
}

/// A path segment as the handlers see it (`a%40b` is the user `a@b`).
fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Authenticates and authorizes every guarded route, then audits and counts the call.
async fn guard(State(s): State<AdminState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let action = action_of(req.method(), &route);
    let identity = match crate::auth::token_from_headers(req.headers()) {
        None => Err(ClientError::new(
            ErrorCode::Unauthorized,
            "send an admin's JWT as Authorization: Bearer <token>",
        )),
        Some(token) => s.verifier.authenticate(token).await,
    };
    let identity = match identity {
        Ok(id) => id,
        Err(e) => {
            // Nobody to audit: counted, not written (an unauthenticated flood must not
            // fill the database).
            let response = ApiError(e).into_response();
            count(&s, action, response.status(), started);
            return response;
        }
    };
    let method = req.method().clone();
    let target = target_of(&identity.tenant_id, req.uri().path());
    let response = if identity.roles.iter().any(|r| r == ADMIN_ROLE) {
        req.extensions_mut().insert(identity.clone());
        next.run(req).await
    } else {
        ApiError::new(
            ErrorCode::Forbidden,
            "the token's roles do not include \"admin\"",
        )
        .into_response()
    };
    let status = response.status();
    count(&s, action, status, started);
    audit(&s, &identity, action, &method, target, status, started).await;
    response
}

fn count(s: &AdminState, action: &'static str, status: StatusCode, started: Instant) {
    s.metrics
        .admin_requests
        .get_or_create(&AdminLabel {
            action,
            status: status.as_u16(),
        })
        .inc();
    s.metrics
        .admin_request_seconds
        .get_or_create(&ActionLabel { action })
        .observe(started.elapsed().as_secs_f64());
}

/// Writes the audit entry before the answer leaves; a failed write is logged (the
/// answer still goes out: the change it reports has happened).
async fn audit(
    s: &AdminState,
    who: &Identity,
    action: &str,
    method: &Method,
    target: Option<String>,
    status: StatusCode,
    started: Instant,
) {
    let outcome = match status.as_u16() {
        200..=299 => "ok",
        400..=499 => "refused",
        _ => "failed",
    };
    let entry = doc! {
        "tenant_id": &who.tenant_id,
        "actor": &who.user_id,
        "action": action,
        "method": method.as_str(),
        "target": target,
        "status": i32::from(status.as_u16()),
        "outcome": outcome,
        "at": DateTime::now(),
        "duration_ms": i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
    };
    if let Err(e) = s.store.audit(entry).await {
        tracing::error!(error = %e, action, "the admin audit entry could not be written");
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Publishes an event on the recording topic, keyed `tenantId:<id>`.
async fn publish(s: &AdminState, key: &str, event: &serde_json::Value) -> Result<(), ApiError> {
    s.producer
        .send(&s.recording_topic, key, event.to_string().as_bytes())
        .await
        .map_err(ApiError::from)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Realtime admin API",
        description = "Recordings, GDPR export and erasure of a tenant's users. Every call needs a Bearer JWT whose `roles` include `admin`; the tenant is the token's `tenant_id`.",
        version = "1"
    ),
    paths(
        recordings::list,
        recordings::read,
        recordings::update,
        recordings::delete,
        users::export,
        users::erase
    ),
    components(schemas(views::RecordingStatus)),
    modifiers(&BearerAuth),
    security(("bearerAuth" = [])),
    tags((name = "recordings"), (name = "users"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as served: the derived one, plus what utoipa cannot express —
/// `links` between operations (a listed recording can be read, patched and deleted; the
/// user who asked for it exported and erased: API testers such as schemathesis' stateful
/// phase follow them to real objects) and `minProperties` of the `PATCH` body.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let link = |operation: &str, parameter: &str, from: &str| serde_json::json!({"operationId": operation, "parameters": {parameter: from}});
    let first = "$response.body#/items/0/recordingId";
    doc["paths"]["/v1/admin/recordings"]["get"]["responses"]["200"]["links"] = serde_json::json!({
        "ReadRecording": link("read", "recordingId", first),
        "UpdateRecording": link("update", "recordingId", first),
        "DeleteRecording": link("delete", "recordingId", first),
    });
    let by = "$response.body#/requestedBy";
    doc["paths"]["/v1/admin/recordings/{recordingId}"]["get"]["responses"]["200"]["links"] = serde_json::json!({
        "ExportRequester": link("export", "userId", by),
        "EraseRequester": link("erase", "userId", by),
    });
    doc["components"]["schemas"]["RecordingPatch"]["minProperties"] = 1.into();
    doc
}

/// `GET /v1/admin/openapi.json`: the OpenAPI 3.1 document (no token needed: it holds
/// no tenant's data).
async fn openapi() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        axum::Json(document()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_recordings_and_digest_users() {
        assert_eq!(
            target_of("t", "/v1/admin/recordings/r1").as_deref(),
            Some("recording:r1")
        );
        let user = target_of("t", "/v1/admin/users/alice/export").unwrap_or_default();
        assert!(user.starts_with("user:sha256:"), "{user}");
        assert!(!user.contains("alice"));
        assert_eq!(
            target_of("t", "/v1/admin/users/alice"),
            Some(user),
            "export and erasure name the same subject"
        );
        assert_ne!(subject("t1", "alice"), subject("t2", "alice"));
        assert_eq!(
            target_of("t", "/v1/admin/users/a%40b/export"),
            target_of("t", "/v1/admin/users/a@b"),
            "audited as the handler reads the id"
        );
        assert_eq!(percent_decoded("x%2"), "x%2");
        assert_eq!(target_of("t", "/v1/admin/recordings"), None);
    }

    #[test]
    fn every_route_has_an_action() {
        for (m, r) in [
            (Method::GET, "/v1/admin/recordings"),
            (Method::GET, "/v1/admin/recordings/{recordingId}"),
            (Method::PATCH, "/v1/admin/recordings/{recordingId}"),
            (Method::DELETE, "/v1/admin/recordings/{recordingId}"),
            (Method::GET, "/v1/admin/users/{userId}/export"),
            (Method::DELETE, "/v1/admin/users/{userId}"),
        ] {
            assert_ne!(action_of(&m, r), "other", "{m} {r}");
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_path_and_bearer_auth() {
        let doc = document();
        assert_eq!(
            doc["components"]["schemas"]["RecordingPatch"]["minProperties"],
            1
        );
        assert_eq!(
            doc["paths"]["/v1/admin/recordings"]["get"]["responses"]["200"]["links"]["ReadRecording"]
                ["operationId"],
            "read"
        );
        assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3.1"));
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        for p in [
            "/v1/admin/recordings",
            "/v1/admin/recordings/{recordingId}",
            "/v1/admin/users/{userId}/export",
            "/v1/admin/users/{userId}",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
            "bearer"
        );
    }
}
