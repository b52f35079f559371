//! Assembles the process from its configuration: connect the dependencies
//! ([`Dependencies`], which also prepares topics and indexes) → start the roles
//! (`start_gateway`, the persister) → serve → drain, in order, within the grace period.
//! [`run`] takes a bound listener and a shutdown future, so tests run a whole process
//! in-process on port 0; [`run_until_signal`] is the binary's entry.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use redis::aio::ConnectionManager;
use socketioxide::handler::ConnectHandler;
use socketioxide::{SocketIo, layer::SocketIoLayer};
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::chat::Chat;
use crate::config::Config;
use crate::gateway::{self, Gateway};
use crate::http::{self, Probes};
use crate::metrics::Metrics;
use crate::persister::Persister;
use crate::store::Store;
use crate::{kafka, shutdown};

/// The Socket.IO server of a gateway (its adapter: Redis pub/sub).
type Adapter = CustomRedisAdapter<socketioxide::adapter::Emitter, gateway::pubsub::PubSub>;
type Io = SocketIo<Adapter>;

/// The process's connections to what it depends on.
pub struct Dependencies {
    pub redis_client: redis::Client,
    pub redis: ConnectionManager,
    pub store: Store,
    pub producer: Arc<kafka::Producer>,
    pub metrics: Arc<Metrics>,
}

impl Dependencies {
    /// Connects Redis, MongoDB and the producer, and prepares indexes and topics when
    /// asked to (`MONGODB_CREATE_INDEXES`, `KAFKA_CREATE_TOPICS`).
    pub async fn connect(cfg: &Config) -> anyhow::Result<Self> {
        let redis_client = redis::Client::open(cfg.redis_url_resp3())
            .context("REDIS_URL is not a valid Redis URL")?;
        let redis = ConnectionManager::new(redis_client.clone())
            .await
            .context("cannot reach Redis at REDIS_URL")?;
        let store = Store::connect(
            &cfg.mongodb.uri,
            &cfg.mongodb.database,
            &cfg.mongodb.write_concern,
            cfg.mongodb.write_timeout,
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
                    &cfg.kafka.recording_topic,
                ],
            )
            .await
            .context("cannot create Kafka topics at KAFKA_BROKERS")?;
        }
        let producer = Arc::new(kafka::Producer::new(&cfg.kafka, &cfg.kafka.group_prefix)?);
        Ok(Self {
            redis_client,
            redis,
            store,
            producer,
            metrics: Arc::new(Metrics::default()),
        })
    }
}

/// Binds `LISTEN_ADDR` and runs until SIGTERM or ctrl-c, then drains and returns.
pub async fn run_until_signal(cfg: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen_addr)
        .await
        .with_context(|| format!("cannot listen on LISTEN_ADDR {}", cfg.listen_addr))?;
    run(cfg, listener, shutdown::signal()).await
}

/// Runs the roles of `cfg` on `listener` until `shutdown` completes (or a worker stops),
/// then drains within `SHUTDOWN_GRACE_SECONDS` and returns. Tests run a whole gateway
/// in-process this way, on a listener bound to port 0.
pub async fn run(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    cfg.validate()?;
    let deps = Dependencies::connect(&cfg).await?;
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
        redis: deps.redis.clone(),
        store: deps.store.clone(),
        producer: deps.producer.clone(),
        metrics: deps.metrics.clone(),
        membership: membership.clone(),
    });
    // One verifier (and one JWKS cache) for every role of the process.
    let verifier = (cfg.role.runs_gateway() || cfg.role.runs_admin())
        .then(|| Verifier::from_config(&cfg.auth))
        .transpose()?;
    // Before the gateway's Socket.IO layer, which must wrap the fallback it serves from.
    if let (true, Some(verifier)) = (cfg.role.runs_admin(), &verifier) {
        if let Err(e) = deps.store.ensure_erasure_index().await {
            tracing::warn!(error = %e, "the unique index of user_erasures could not be created; concurrent first erasures of one user may split their counts");
        }
        app = app.merge(crate::admin::router(crate::admin::AdminState {
            verifier: verifier.clone(),
            store: deps.store.clone(),
            redis: deps.redis.clone(),
            producer: deps.producer.clone(),
            metrics: deps.metrics.clone(),
            recording_topic: cfg.kafka.recording_topic.clone(),
        }));
    }
    let mut io = None;
    if cfg.role.runs_gateway() {
        let (routes, layer, socket_io) =
            start_gateway(&cfg, &deps, verifier, &membership, &cancel, &mut tasks).await?;
        app = app.merge(routes).layer(layer);
        io = Some(socket_io);
    }
    if cfg.role.runs_persister() {
        let persister = Persister {
            cfg: cfg.clone(),
            store: deps.store.clone(),
            redis: deps.redis.clone(),
            producer: deps.producer.clone(),
            metrics: deps.metrics.clone(),
            membership: membership.clone(),
        };
        tasks.spawn(persister.run(cancel.clone()));
    }
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, role = ?cfg.role, "listening");
    // Small Socket.IO frames (acks) must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let stop = CancellationToken::new();
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    let server = tokio::spawn(async move { server.await });

    tokio::select! {
        () = shutdown => tracing::info!("shutdown requested"),
        Some(res) = tasks.join_next() => {
            tracing::error!(result = ?res, "a worker stopped unexpectedly; shutting down");
        }
    }
    drain(&cfg, cancel, tasks, io, stop, server, deps.producer).await;
    Ok(())
}

/// The gateway role: the chat service, the Socket.IO namespaces (as a layer of the
/// returned routes, which also serve `/v1/ice-servers`), the presence heartbeat, the
/// confirmation consumer and the sweeper.
async fn start_gateway(
    cfg: &Config,
    deps: &Dependencies,
    verifier: Option<Verifier>,
    membership: &kafka::Membership,
    cancel: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<crate::error::Result<()>>,
) -> anyhow::Result<(axum::Router, SocketIoLayer<Adapter>, Io)> {
    let Dependencies {
        redis_client,
        redis,
        store,
        producer,
        metrics,
    } = deps;
    let verifier = match verifier {
        Some(v) => v,
        None => Verifier::from_config(&cfg.auth)?,
    };
    let chat = Chat::new(cfg, redis, store, producer.clone(), metrics.clone());
    let calls = Arc::new(crate::calls::Calls::new(
        crate::calls::CallSettings::from_config(cfg),
        redis.clone(),
        store.clone(),
        producer.clone(),
        metrics.clone(),
        chat.rooms.gateway_id().to_owned(),
    ));
    let gw = Arc::new(Gateway {
        verifier,
        chat,
        calls,
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
    let pubsub = gateway::pubsub::PubSub::connect(redis_client)
        .await
        .context("the Socket.IO Redis adapter needs Redis >= 7 with RESP3")?;
    let adapter = RedisAdapterCtr::new_with_driver(
        pubsub,
        RedisAdapterConfig::default().with_prefix(gateway::pubsub::channel_prefix(
            &cfg.kafka.group_prefix,
            redis_client,
        )),
    );
    let (layer, io) = SocketIo::builder()
        .with_state(gw.clone())
        .max_buffer_size(cfg.socket_max_buffer)
        .max_payload(
            // A message or a signal of the largest allowed size (escaped, in a frame)
            // reaches the handler, which refuses a larger one with `too_large`.
            u64::try_from(cfg.limits.max_message_bytes.max(cfg.calls.max_signal_bytes))
                .unwrap_or(u64::MAX)
                .saturating_mul(2)
                .saturating_add(64 * 1024),
        )
        .with_adapter::<Adapter>(adapter)
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
    let routes = http::ice_router(gw.clone());
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
    tasks.spawn({
        let (gw, io, cancel) = (gw.clone(), io.clone(), cancel.clone());
        async move {
            gateway::run_call_sweeper(gw, io, cancel).await;
            Ok(())
        }
    });
    Ok((routes, layer, io))
}

/// One deadline for the whole drain, so the sum of the steps stays within the grace
/// period (Kubernetes kills the pod after its own, 30 s by default).
async fn drain(
    cfg: &Config,
    cancel: CancellationToken,
    mut tasks: tokio::task::JoinSet<crate::error::Result<()>>,
    io: Option<Io>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    producer: Arc<kafka::Producer>,
) {
    let deadline = tokio::time::Instant::now() + cfg.shutdown_grace;
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
    if let Some(io) = io {
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
}
