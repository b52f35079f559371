//! Assembles the process from its configuration: connects the dependencies, prepares
//! topics and indexes, starts the roles, serves HTTP and shuts down in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use socketioxide::SocketIo;
use socketioxide::handler::ConnectHandler;
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr};
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::chat::delivery::Delivery;
use crate::chat::{self, Chat};
use crate::config::Config;
use crate::delivery::{Ledger, Timing};
use crate::gateway::{self, Gateway};
use crate::http::{self, Probes};
use crate::metrics::Metrics;
use crate::persister::Persister;
use crate::rate_limit::RateLimiter;
use crate::rooms::access::AccessCache;
use crate::rooms::recent::RecentMessages;
use crate::rooms::state::RoomState;
use crate::sequence::Sequencer;
use crate::store::Store;
use crate::{kafka, shutdown};

/// Runs until SIGTERM or ctrl-c, then drains and returns.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(Metrics::default());

    let redis_client =
        redis::Client::open(cfg.redis_url_resp3()).context("REDIS_URL is not a valid Redis URL")?;
    let redis = redis::aio::ConnectionManager::new(redis_client.clone())
        .await
        .context("cannot reach Redis at REDIS_URL")?;
    let store = Store::connect(
        &cfg.mongodb.uri,
        &cfg.mongodb.database,
        &cfg.mongodb.write_concern,
        cfg.mongodb.write_timeout_ms,
    )
    .await
    .context("MONGODB_URI is not a valid MongoDB connection string")?;
    store
        .ping()
        .await
        .context("cannot reach MongoDB at MONGODB_URI")?;
    if cfg.mongodb.create_indexes {
        store
            .ensure_indexes()
            .await
            .context("creating MongoDB indexes failed")?;
    }
    if cfg.kafka.create_topics {
        kafka::ensure_topics(
            &cfg.kafka,
            &[
                &cfg.kafka.message_topic,
                &cfg.kafka.persistence_topic,
                &cfg.kafka.dead_letter_topic(),
            ],
        )
        .await
        .context("cannot create Kafka topics at KAFKA_BROKERS")?;
    }
    let producer = Arc::new(kafka::Producer::new(&cfg.kafka, &cfg.kafka.group_prefix)?);

    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    // The consumer groups this process joins, registered before `/readyz` answers.
    let membership = kafka::Membership::default();
    if cfg.role.runs_gateway() {
        membership.flag(&cfg.kafka.group(gateway::CONFIRMATIONS_GROUP));
    }
    if cfg.role.runs_persister() {
        membership.flag(&cfg.kafka.group(crate::persister::GROUP));
    }
    let mut app = http::router(Probes {
        redis: redis.clone(),
        store: store.clone(),
        producer: producer.clone(),
        metrics: metrics.clone(),
        membership: membership.clone(),
    });

    let mut io_handle = None;
    if cfg.role.runs_gateway() {
        let verifier =
            Verifier::from_config(&cfg.auth).context("JWT_SECRET is required for the gateway")?;
        let sequencer = Sequencer::new(
            redis.clone(),
            store.clone(),
            cfg.delivery.sequence_repair_gap,
        );
        let recent = RecentMessages::new(
            redis.clone(),
            cfg.rooms.recovery_window,
            cfg.room_state_ttl(),
        );
        let delivery = Delivery {
            ledger: Ledger::new(redis.clone(), delivery_timing(&cfg)),
            sequencer,
            producer: producer.clone(),
            store: store.clone(),
            recent: recent.clone(),
            metrics: metrics.clone(),
            topic: cfg.kafka.message_topic.clone(),
        };
        let chat = Chat {
            settings: chat::Settings::from_config(&cfg),
            store: store.clone(),
            rate: RateLimiter::new(redis.clone(), cfg.limits.rate_per_second, cfg.limits.burst),
            delivery,
            access: AccessCache::new(redis.clone(), store.clone(), cfg.room_authz_cache_ttl),
            rooms: RoomState::new(
                redis.clone(),
                uuid::Uuid::now_v7().to_string(),
                cfg.room_state_ttl(),
                Duration::from_millis(cfg.rooms.presence_heartbeat_ms),
            ),
            metrics: metrics.clone(),
        };
        let gw = Arc::new(Gateway {
            verifier,
            chat,
            metrics: metrics.clone(),
            ice: crate::ice::IceProvider::start(&cfg.turn, cancel.clone()).await?,
            cfg: cfg.clone(),
        });
        gw.chat
            .rooms
            .beat()
            .await
            .context("cannot write the gateway heartbeat to Redis")?;
        tasks.spawn({
            let (rooms, cancel) = (gw.chat.rooms.clone(), cancel.clone());
            async move {
                rooms.run_heartbeat(cancel).await;
                Ok(())
            }
        });
        let adapter = RedisAdapterCtr::new_with_redis(&redis_client)
            .await
            .context("the Socket.IO Redis adapter needs Redis >= 7 with RESP3")?;
        let (layer, io) = SocketIo::builder()
            .with_state(gw.clone())
            .max_buffer_size(cfg.socket_max_buffer)
            .max_payload(
                u64::try_from(cfg.limits.max_message_bytes)
                    .unwrap_or(u64::MAX)
                    .saturating_mul(2)
                    .saturating_add(64 * 1024),
            )
            .with_adapter::<RedisAdapter<_>>(adapter)
            .build_layer();
        // Registering subscribes the adapter on Redis with a short reply timeout of its
        // own; a busy Redis (or machine) can miss it once, so it is retried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let registered = async {
                io.ns(
                    gateway::CHAT_NAMESPACE,
                    gateway::on_connect.with(gateway::authenticate),
                )
                .await
                .context("registering the /chat namespace")?;
                io.ns(
                    gateway::WEBRTC_NAMESPACE,
                    gateway::on_connect.with(gateway::authenticate_webrtc),
                )
                .await
                .context("registering the /webrtc namespace")
            }
            .await;
            match registered {
                Ok(()) => break,
                Err(e) if attempt < 5 => {
                    tracing::warn!(error = %format!("{e:#}"), attempt, "retrying the Socket.IO namespace registration");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
        app = app.merge(http::ice_router(gw.clone()));
        tasks.spawn(gateway::run_confirmations(
            gw.clone(),
            io.clone(),
            membership.clone(),
            cancel.clone(),
        ));
        tasks.spawn({
            let (gw, io, cancel) = (gw.clone(), io.clone(), cancel.clone());
            async move {
                gateway::run_sweeper(gw, io, cancel).await;
                Ok(())
            }
        });
        app = app.layer(layer);
        io_handle = Some(io);
    }
    if cfg.role.runs_persister() {
        let persister = Persister {
            cfg: cfg.clone(),
            store: store.clone(),
            redis: redis.clone(),
            producer: producer.clone(),
            metrics: metrics.clone(),
            membership: membership.clone(),
        };
        tasks.spawn(persister.run(cancel.clone()));
    }

    let listener = tokio::net::TcpListener::bind(cfg.listen_addr)
        .await
        .with_context(|| format!("cannot listen on LISTEN_ADDR {}", cfg.listen_addr))?
        // Small Socket.IO frames (acks) must not wait for Nagle's algorithm.
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
    tracing::info!(addr = %cfg.listen_addr, role = ?cfg.role, "listening");

    let stop = CancellationToken::new();
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    let server = tokio::spawn(async move { server.await });

    tokio::select! {
        () = shutdown::signal() => tracing::info!("shutdown requested"),
        Some(res) = tasks.join_next() => {
            tracing::error!(result = ?res, "a worker stopped unexpectedly; shutting down");
        }
    }
    // One deadline for the whole drain, so the sum of the steps stays within the grace
    // period (Kubernetes kills the pod after its own, 30 s by default).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.shutdown_grace_seconds);
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    // Workers first: the persister finishes and commits its batch, the confirmation
    // consumer and the sweeper finish what they hold and emit it while the sockets are
    // still open.
    cancel.cancel();
    let drain = async {
        while let Some(res) = tasks.join_next().await {
            if let Ok(Err(e)) = res {
                tracing::warn!(error = %e, "worker ended with an error");
            }
        }
    };
    if tokio::time::timeout(left(), drain).await.is_err() {
        tracing::warn!("workers did not stop within the grace period");
    }
    if let Some(io) = io_handle {
        // Disconnecting sockets lets clients reconnect to another gateway at once.
        if tokio::time::timeout(left(), io.close()).await.is_err() {
            tracing::warn!("closing sockets took longer than the grace period");
        }
    }
    stop.cancel();
    let flush_for = left();
    let flushed = tokio::task::spawn_blocking(move || producer.flush(flush_for));
    if !matches!(
        tokio::time::timeout(left() + Duration::from_millis(100), flushed).await,
        Ok(Ok(true))
    ) {
        tracing::warn!("the producer could not flush every message before exit");
    }
    if tokio::time::timeout(left(), server).await.is_err() {
        tracing::warn!("HTTP server did not stop within the grace period");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Ledger timing from the configuration: a produce's lease outlasts the producer's
/// delivery timeout, so no second produce starts while the first may still succeed.
fn delivery_timing(cfg: &Config) -> Timing {
    Timing {
        lease: Duration::from_millis(u64::from(cfg.kafka.message_timeout_ms) + 1000),
        confirmation_timeout: cfg.confirmation_timeout(),
        attempts: cfg.delivery.retries.saturating_add(1),
        max_interval: Duration::from_millis(cfg.delivery.max_retry_interval_ms),
        ttl: Duration::from_secs(cfg.delivery.idempotency_ttl_seconds),
    }
}
