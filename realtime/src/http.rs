//! HTTP endpoints next to Socket.IO: `/healthz` (the process can work: fails while the
//! idempotent producer is in a fatal state, until it is replaced), `/readyz` (that, and
//! Redis, the broker and MongoDB answer, and every consumer group of the process has
//! taken it in) and `/metrics` (Prometheus text format).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use redis::aio::ConnectionManager;
use serde_json::json;

use crate::metrics::Metrics;
use crate::store::Store;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Probes {
    pub redis: ConnectionManager,
    pub store: Store,
    pub producer: Arc<crate::kafka::Producer>,
    pub metrics: Arc<Metrics>,
    pub membership: crate::kafka::Membership,
}

pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/healthz", get(healthy))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(probes)
}

async fn healthy(State(p): State<Probes>) -> impl IntoResponse {
    match p.producer.fatal_error() {
        None => (StatusCode::OK, "ok".to_owned()),
        Some(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the Kafka producer failed for good ({e}); it is replaced at the next send"),
        ),
    }
}

async fn ready(State(p): State<Probes>) -> impl IntoResponse {
    let mut conn = p.redis.clone();
    let redis = async {
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    };
    let mongo = async { p.store.ping().await.is_ok() };
    let kafka = p.producer.reachable(CHECK_TIMEOUT);
    let (redis, mongodb, kafka) = tokio::join!(
        with_timeout(redis),
        with_timeout(mongo),
        with_timeout(kafka)
    );
    let producer = p.producer.fatal_error().is_none();
    let groups = p.membership.snapshot();
    let assigned = groups.iter().all(|(_, a)| *a);
    let status = if redis && mongodb && kafka && producer && assigned {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(
            json!({"redis": redis, "mongodb": mongodb, "kafka": kafka, "producer": producer,
                "consumerGroups": groups.into_iter().map(|(g, a)| (g, a.into())).collect::<serde_json::Map<_, _>>()}),
        ),
    )
}

/// `GET /v1/ice-servers` (`Authorization: Bearer <JWT>`): the ICE servers with a fresh
/// credential for the token's user, or `{error: {code, message}}` with 401/503.
pub fn ice_router(gw: crate::gateway::Shared) -> Router {
    Router::new()
        .route("/v1/ice-servers", get(ice_servers))
        .with_state(gw)
}

async fn ice_servers(
    State(gw): State<crate::gateway::Shared>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let identity = match crate::auth::token_from_headers(&headers) {
        None => Err(crate::error::ClientError::new(
            crate::error::ErrorCode::Unauthorized,
            "send the JWT as Authorization: Bearer <token>",
        )),
        Some(t) => gw.verifier.authenticate(t).await,
    };
    let result = identity.and_then(|id| gw.ice.configuration(&id.user_id));
    match result {
        Ok(body) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(body),
        ),
        Err(e) => {
            let status = match e.code {
                crate::error::ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (
                status,
                [(header::CACHE_CONTROL, "no-store")],
                axum::Json(json!({"error": e})),
            )
        }
    }
}

async fn with_timeout(check: impl Future<Output = bool>) -> bool {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or(false)
}

async fn metrics(State(p): State<Probes>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        p.metrics.render(),
    )
}
