//! Command-line and environment configuration of the data plane.
//!
//! Every flag also reads an environment variable; the names and defaults are a contract
//! (SPEC.md §3) that the operator renders into a ConfigMap, so rename nothing here.
//! Durations are parsed once into `Duration`s (the variable names keep their unit).
//!
//! Longer than most files on purpose: it is the one list of every setting, each with the
//! documentation `--help` prints.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

/// Which parts of the data plane this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Socket.IO gateway: accepts clients, produces messages, confirms delivery.
    Gateway,
    /// Kafka consumer that writes messages to MongoDB and publishes persistence events.
    Persister,
    /// The admin REST API (`/v1/admin`): recordings, user export and erasure.
    Admin,
    /// Every role in one process, for a single machine.
    All,
}

impl Role {
    pub fn runs_gateway(self) -> bool {
        matches!(self, Role::Gateway | Role::All)
    }
    pub fn runs_persister(self) -> bool {
        matches!(self, Role::Persister | Role::All)
    }
    pub fn runs_admin(self) -> bool {
        matches!(self, Role::Admin | Role::All)
    }
}

/// Realtime data plane: Socket.IO gateway, persistence worker and health endpoints.
#[derive(Debug, Clone, Parser)]
#[command(name = "realtime", version, about)]
pub struct Config {
    /// Role of this process.
    #[arg(long, env = "ROLE", value_enum, default_value = "all")]
    pub role: Role,

    /// Address of the Socket.IO and HTTP listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:3000")]
    pub listen_addr: SocketAddr,

    #[command(flatten)]
    pub kafka: KafkaConfig,

    #[command(flatten)]
    pub mongodb: MongoConfig,

    /// Redis URL (room state, rate limits, sequence numbers, pending confirmations and the
    /// Socket.IO adapter). RESP3 is required by the adapter and is added when missing.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub limits: LimitsConfig,

    #[command(flatten)]
    pub delivery: DeliveryConfig,

    #[command(flatten)]
    pub rooms: RoomsConfig,

    #[command(flatten)]
    pub turn: TurnConfig,

    #[command(flatten)]
    pub persister: PersisterConfig,

    #[command(flatten)]
    pub calls: CallsConfig,

    /// Packets queued per socket before further emits to it are dropped (slow client).
    #[arg(long, env = "SOCKET_MAX_BUFFER", default_value_t = 4096)]
    pub socket_max_buffer: usize,

    /// Seconds given to open connections and in-flight work to finish on shutdown.
    #[arg(long = "shutdown-grace-seconds", env = "SHUTDOWN_GRACE_SECONDS", default_value = "10", value_parser = seconds)]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, comma-separated `host:port`.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,

    /// Topic that carries accepted chat messages, keyed by conversation.
    #[arg(
        long = "kafka-message-topic",
        env = "KAFKA_MESSAGE_TOPIC",
        default_value = "chat.messages"
    )]
    pub message_topic: String,

    /// Topic on which the persister announces stored messages.
    #[arg(
        long = "kafka-persistence-topic",
        env = "KAFKA_PERSISTENCE_TOPIC",
        default_value = "chat.persistence.events"
    )]
    pub persistence_topic: String,

    /// Create the topics at start-up when they are missing (the operator's KafkaTopic
    /// resources do this in Kubernetes; this is for running outside it).
    #[arg(long = "kafka-create-topics", env = "KAFKA_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_topics: bool,

    /// Prefix of consumer group names (`<prefix>-persister`,
    /// `<prefix>-gateway-confirmations`), and the installation's id: every record this
    /// installation produces carries it (header `realtime-installation`), and its persister
    /// and gateways ignore records of other installations that share the topics.
    #[arg(
        long = "kafka-group-prefix",
        env = "KAFKA_GROUP_PREFIX",
        default_value = "realtime"
    )]
    pub group_prefix: String,

    /// Partitions of topics created at start-up.
    #[arg(
        long = "kafka-topic-partitions",
        env = "KAFKA_TOPIC_PARTITIONS",
        default_value_t = 3
    )]
    pub topic_partitions: i32,

    /// Replication factor of topics created at start-up (`-1`: the broker's
    /// `default.replication.factor`). With `acks=all`, a message is acknowledged once this
    /// many replicas (at least the topic's `min.insync.replicas`) hold it.
    #[arg(
        long = "kafka-replication-factor",
        env = "KAFKA_REPLICATION_FACTOR",
        default_value_t = -1,
        allow_negative_numbers = true
    )]
    pub replication_factor: i32,

    /// Consumer group session timeout; a group join takes about half of it on some brokers.
    #[arg(
        long = "kafka-session-timeout-ms",
        env = "KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub session_timeout_ms: u32,

    /// Longest time a fetch waits for data; low values lower confirmation latency.
    #[arg(
        long = "kafka-fetch-wait-max-ms",
        env = "KAFKA_FETCH_WAIT_MAX_MS",
        default_value_t = 20
    )]
    pub fetch_wait_max_ms: u32,

    /// Topic that receives messages the database refuses for good (they are not stored;
    /// their senders get `message:failed`); default `<KAFKA_MESSAGE_TOPIC>.dlq`. Created
    /// at start-up with the others.
    #[arg(long = "kafka-dead-letter-topic", env = "KAFKA_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Topic on which every recording change and consent is published (JSON, keyed
    /// `tenantId:recordingId`).
    #[arg(
        long = "kafka-recording-topic",
        env = "KAFKA_RECORDING_TOPIC",
        default_value = "webrtc.recording.events"
    )]
    pub recording_topic: String,

    /// How long the producer keeps trying to deliver a message before giving up.
    #[arg(
        long = "kafka-message-timeout-ms",
        env = "KAFKA_MESSAGE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub message_timeout_ms: u32,

    /// librdkafka debug contexts (e.g. `cgrp,fetch`), logged under the `rdkafka` target
    /// (`RUST_LOG=info,rdkafka=debug`); empty for none.
    #[arg(long = "kafka-debug", env = "KAFKA_DEBUG", default_value = "")]
    pub debug: String,
}

#[derive(Debug, Clone, Args)]
pub struct MongoConfig {
    /// MongoDB connection string.
    #[arg(
        long = "mongodb-uri",
        env = "MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017/"
    )]
    pub uri: String,

    /// Database holding `conversations` and `messages`.
    #[arg(
        long = "mongodb-database",
        env = "MONGODB_DATABASE",
        default_value = "realtime"
    )]
    pub database: String,

    /// Create the default indexes at start-up when missing (MongoIndex resources do this
    /// in Kubernetes).
    #[arg(long = "mongodb-create-indexes", env = "MONGODB_CREATE_INDEXES", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_indexes: bool,

    /// Write concern `w` of message writes: `majority`, a number of nodes, or a tag set.
    /// A write the server cannot confirm at this level counts as failed and is retried.
    #[arg(
        long = "mongodb-write-concern",
        env = "MONGODB_WRITE_CONCERN",
        default_value = "majority"
    )]
    pub write_concern: String,

    /// Longest wait for the write concern, in milliseconds (0: no bound).
    #[arg(
        long = "mongodb-write-timeout-ms",
        env = "MONGODB_WRITE_TIMEOUT_MS",
        default_value = "10000",
        value_parser = millis
    )]
    pub write_timeout: Duration,
}

/// How the persister batches messages into MongoDB.
#[derive(Debug, Clone, Args)]
pub struct PersisterConfig {
    /// Messages written to MongoDB in one bulk upsert.
    #[arg(long = "message-persistence-batch-size", env = "MESSAGE_PERSISTENCE_BATCH_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// Longest wait for a batch to fill before it is written, in milliseconds.
    #[arg(
        long = "message-persistence-linger-ms",
        env = "MESSAGE_PERSISTENCE_LINGER_MS",
        default_value = "20",
        value_parser = millis
    )]
    pub linger: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// HS256 secret that signs client tokens. Required by the gateway.
    #[arg(long = "jwt-secret", env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Expected `iss` claim; when set, tokens from another issuer are refused.
    #[arg(long = "jwt-issuer", env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Expected `aud` claim; when set, tokens for another audience are refused.
    #[arg(long = "jwt-audience", env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// JWKS endpoint of an identity provider: RS256/ES256 tokens are verified against its
    /// keys (with or without `JWT_SECRET`, which keeps HS256 working).
    #[arg(long = "jwt-jwks-url", env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// The JWKS keys are fetched again when older than this (a withdrawn key stops being
    /// accepted), in seconds.
    #[arg(long = "jwt-jwks-refresh-seconds", env = "JWT_JWKS_REFRESH_SECONDS", default_value = "300", value_parser = seconds)]
    pub jwks_refresh: Duration,

    /// A token naming an unknown key fetches the keys again at most this often, in
    /// seconds (forged key ids cannot flood the provider).
    #[arg(long = "jwt-jwks-min-refresh-seconds", env = "JWT_JWKS_MIN_REFRESH_SECONDS", default_value = "10", value_parser = seconds)]
    pub jwks_min_refresh: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Largest message text accepted, in bytes (UTF-8).
    #[arg(long = "max-message-bytes", env = "MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_message_bytes: usize,

    /// Messages a user may send per second, sustained (token bucket refill rate).
    #[arg(
        long = "rate-limit-per-second",
        env = "RATE_LIMIT_PER_SECOND",
        default_value_t = 10.0
    )]
    pub rate_per_second: f64,

    /// Messages a user may send in a burst (token bucket size).
    #[arg(
        long = "rate-limit-burst",
        env = "RATE_LIMIT_BURST",
        default_value_t = 20
    )]
    pub burst: u32,

    /// Budgets of one connection for events other than `message:send`, per class:
    /// `read` (history, recover, presence, status), `join` (join, leave), `other`
    /// (typing, moderation, roles, ICE servers), each `RATE/BURST` (per second / at once).
    #[arg(
        long = "connection-event-limits",
        env = "CONNECTION_EVENT_LIMITS",
        default_value = "read:20/200,join:50/500,other:20/100,signal:50/200"
    )]
    pub connection_events: crate::rate_limit::EventLimits,

    /// Budget of one user (all connections, all gateways) for events other than
    /// `message:send`, `RATE/BURST`.
    #[arg(
        long = "user-event-limit",
        env = "USER_EVENT_LIMIT",
        default_value = "100/1000"
    )]
    pub user_events: crate::rate_limit::Rate,

    /// Conversations one socket may have joined at once.
    #[arg(
        long = "max-rooms-per-socket",
        env = "MAX_ROOMS_PER_SOCKET",
        default_value_t = 500,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_rooms_per_socket: u32,
}

#[derive(Debug, Clone, Args)]
pub struct DeliveryConfig {
    /// Time to wait for a persistence confirmation before retrying.
    #[arg(
        long = "persistence-confirmation-timeout-ms",
        env = "PERSISTENCE_CONFIRMATION_TIMEOUT_MS",
        default_value = "5000",
        value_parser = millis
    )]
    pub timeout: Duration,

    /// Retries (same message id) before the sender hears more: `message:failed` for a
    /// message the broker never took (it will not be stored), `message:delayed` for one
    /// the broker has (it will be; retries go on, further apart).
    #[arg(
        long = "persistence-confirmation-retries",
        env = "PERSISTENCE_CONFIRMATION_RETRIES",
        default_value_t = 3
    )]
    pub retries: u32,

    /// Longest interval between retries of a delayed message, in milliseconds.
    #[arg(
        long = "persistence-max-retry-interval-ms",
        env = "PERSISTENCE_MAX_RETRY_INTERVAL_MS",
        default_value = "60000",
        value_parser = millis
    )]
    pub max_retry_interval: Duration,

    /// Seconds a message's delivery record — and so its `clientMessageId` as an
    /// idempotency key and the answer to `message:status` — is kept after its last change.
    #[arg(
        long = "idempotency-ttl-seconds",
        env = "IDEMPOTENCY_TTL_SECONDS",
        default_value = "86400",
        value_parser = idempotency_ttl
    )]
    pub idempotency_ttl: Duration,

    /// Numbers skipped when a conversation's sequence counter is repaired after Redis lost
    /// writes (restart, restore, failover): covers messages accepted but not yet stored
    /// at the moment of the loss.
    #[arg(
        long = "sequence-repair-gap",
        env = "SEQUENCE_REPAIR_GAP",
        default_value_t = 1000
    )]
    pub sequence_repair_gap: u64,
}

#[derive(Debug, Clone, Args)]
pub struct RoomsConfig {
    /// Messages per conversation kept in Redis for `messages:recover`; a client further
    /// behind is told `too_far_behind` and pages history instead.
    #[arg(long = "recovery-window", env = "RECOVERY_WINDOW", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub recovery_window: u32,

    /// Shortest interval between two typing indicators of one user in one conversation.
    #[arg(
        long = "typing-throttle-ms",
        env = "TYPING_THROTTLE_MS",
        default_value = "1000",
        value_parser = millis
    )]
    pub typing_throttle: Duration,

    /// How long clients should show a typing indicator (sent with each `typing` event).
    #[arg(long = "typing-ttl-ms", env = "TYPING_TTL_MS", default_value = "3000", value_parser = millis)]
    pub typing_ttl: Duration,

    /// Gateway liveness heartbeat; sockets of a gateway silent for three heartbeats stop
    /// counting as online.
    #[arg(
        long = "presence-heartbeat-ms",
        env = "PRESENCE_HEARTBEAT_MS",
        default_value = "5000",
        value_parser = millis
    )]
    pub presence_heartbeat: Duration,

    /// Hours a conversation's cached state lives in Redis without activity.
    #[arg(long = "room-state-ttl-hours", env = "ROOM_STATE_TTL_HOURS", default_value = "24", value_parser = hours)]
    pub state_ttl: Duration,

    /// Seconds a participant's standing (membership, role, ban, mute) is cached in Redis;
    /// 0 turns the cache off (every check reads MongoDB).
    #[arg(long = "room-authz-cache-ttl", env = "ROOM_AUTHZ_CACHE_TTL", default_value = "300", value_parser = seconds)]
    pub authz_cache_ttl: Duration,
}

/// Calls and recordings on `/webrtc`.
#[derive(Debug, Clone, Args)]
pub struct CallsConfig {
    /// Seconds a call rings before the members who did not answer miss it (and a call
    /// nobody answered ends with `no_answer`).
    #[arg(long = "call-ring-timeout-seconds", env = "CALL_RING_TIMEOUT_SECONDS", default_value = "30", value_parser = positive_seconds)]
    pub ring_timeout: Duration,

    /// Seconds every member has to consent before a recording is cancelled (or, for a
    /// member who joins during a recording, before it stops). The RealtimeCluster's
    /// `recordingConsentTimeoutSeconds`.
    #[arg(long = "recording-consent-timeout-seconds", env = "RECORDING_CONSENT_TIMEOUT_SECONDS", default_value = "30", value_parser = positive_seconds)]
    pub recording_consent_timeout: Duration,

    /// Seconds a call member whose `/webrtc` sockets are all gone stays in the call (a
    /// reconnect within it, to any gateway, keeps them in).
    #[arg(long = "call-leave-grace-seconds", env = "CALL_LEAVE_GRACE_SECONDS", default_value = "20", value_parser = positive_seconds)]
    pub leave_grace: Duration,

    /// Members of one call at most, joined and ringing: `call:start` in a larger
    /// conversation, and an accept past it, are refused with `too_large`.
    #[arg(long = "call-max-members", env = "CALL_MAX_MEMBERS", default_value = "50", value_parser = max_call_members)]
    pub max_members: usize,

    /// Largest `call:signal` signal object (SDP or candidate), in bytes of JSON; a larger
    /// one is refused with `too_large`.
    #[arg(long = "max-signal-bytes", env = "MAX_SIGNAL_BYTES", default_value = "32768", value_parser = signal_bytes)]
    pub max_signal_bytes: usize,
}

/// `CALL_MAX_MEMBERS`: 2 to 1000.
fn max_call_members(s: &str) -> Result<usize, String> {
    let n = whole(s, "members")?;
    if !(2..=1000).contains(&n) {
        return Err(format!("{n} is not between 2 and 1000 members"));
    }
    usize::try_from(n).map_err(|e| e.to_string())
}

/// `MAX_SIGNAL_BYTES`: 1 KiB to 1 MiB.
fn signal_bytes(s: &str) -> Result<usize, String> {
    let n = whole(s, "bytes")?;
    if !(1024..=1_048_576).contains(&n) {
        return Err(format!("{n} is not between 1024 and 1048576 bytes"));
    }
    usize::try_from(n).map_err(|e| e.to_string())
}

/// At least one whole second.
fn positive_seconds(s: &str) -> Result<Duration, String> {
    match whole(s, "seconds")? {
        0 => Err("must be at least 1 second".into()),
        n => Ok(Duration::from_secs(n)),
    }
}

/// A duration given in whole milliseconds.
fn millis(s: &str) -> Result<Duration, String> {
    whole(s, "milliseconds").map(Duration::from_millis)
}

/// A duration given in whole seconds.
fn seconds(s: &str) -> Result<Duration, String> {
    whole(s, "seconds").map(Duration::from_secs)
}

/// A duration given in whole hours.
fn hours(s: &str) -> Result<Duration, String> {
    whole(s, "hours").map(|h| Duration::from_secs(h.saturating_mul(3600)))
}

/// `IDEMPOTENCY_TTL_SECONDS`: at least a minute.
fn idempotency_ttl(s: &str) -> Result<Duration, String> {
    let secs = whole(s, "seconds")?;
    if secs < 60 {
        return Err(format!("{secs} is less than 60 seconds"));
    }
    Ok(Duration::from_secs(secs))
}

fn whole(s: &str, unit: &str) -> Result<u64, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of {unit}"))
}

/// Where ICE servers for calls come from: a TurnPool (in Kubernetes: its healthy servers
/// and its Secret, watched through the API) or a static list with a shared secret.
#[derive(Debug, Clone, Args)]
pub struct TurnConfig {
    /// Static TURN/STUN servers, comma-separated `turn:`/`turns:`/`stun:` URIs (outside
    /// Kubernetes). Every listed server is handed out.
    #[arg(long = "turn-urls", env = "TURN_URLS", value_delimiter = ',')]
    pub urls: Vec<String>,

    /// Shared secret of the static servers (`use-auth-secret` in coturn).
    #[arg(long = "turn-secret", env = "TURN_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// File holding the shared secret (read at each request, so a rotated mount is seen).
    #[arg(long = "turn-secret-file", env = "TURN_SECRET_FILE")]
    pub secret_file: Option<std::path::PathBuf>,

    /// Lifetime of issued TURN credentials in seconds, 60 to 604800 (static servers; a
    /// TurnPool has its own).
    #[arg(
        long = "turn-credential-ttl",
        env = "TURN_CREDENTIAL_TTL",
        default_value_t = 86_400
    )]
    pub credential_ttl: u64,

    /// Name of a TurnPool to follow through the Kubernetes API: its healthy servers (by
    /// round-trip time) and the current secret of `<pool>-turn-secret`.
    #[arg(long = "turn-pool", env = "TURN_POOL")]
    pub pool: Option<String>,

    /// Namespace of the TurnPool (default: the kubeconfig's or the pod's namespace).
    #[arg(long = "turn-pool-namespace", env = "TURN_POOL_NAMESPACE")]
    pub pool_namespace: Option<String>,
}

/// Shortest TURN credential lifetime: a call must be able to set up before it expires.
pub const MIN_TURN_TTL: u64 = 60;
/// Longest TURN credential lifetime (a week): a leaked credential must not live forever.
pub const MAX_TURN_TTL: u64 = 7 * 24 * 3600;

impl KafkaConfig {
    pub fn group(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.group_prefix)
    }

    /// The dead-letter topic: as configured, or the message topic's name + `.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.message_topic))
    }
}

impl Config {
    /// The Redis URL with RESP3 selected, which the Socket.IO adapter needs.
    pub fn redis_url_resp3(&self) -> String {
        if self.redis_url.contains("protocol=") {
            self.redis_url.clone()
        } else if self.redis_url.contains('?') {
            format!("{}&protocol=resp3", self.redis_url)
        } else {
            format!("{}?protocol=resp3", self.redis_url)
        }
    }

    /// Checks that flags make sense together; the message says what to change.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if (self.role.runs_gateway() || self.role.runs_admin())
            && self.auth.jwt_secret.as_deref().unwrap_or("").is_empty()
            && self.auth.jwt_jwks_url.as_deref().unwrap_or("").is_empty()
        {
            return Err(InvalidConfig::new(
                "JWT_SECRET",
                "JWT_SECRET (--jwt-secret) or JWT_JWKS_URL (--jwt-jwks-url) is required for the gateway and admin roles",
            ));
        }
        if !self.limits.rate_per_second.is_finite() || self.limits.rate_per_second <= 0.0 {
            return Err(InvalidConfig::new(
                "RATE_LIMIT_PER_SECOND",
                "RATE_LIMIT_PER_SECOND must be greater than 0",
            ));
        }
        if self.limits.burst == 0 {
            return Err(InvalidConfig::new(
                "RATE_LIMIT_BURST",
                "RATE_LIMIT_BURST must be at least 1",
            ));
        }
        if self.limits.max_message_bytes == 0 {
            return Err(InvalidConfig::new(
                "MAX_MESSAGE_BYTES",
                "MAX_MESSAGE_BYTES must be at least 1",
            ));
        }
        if self.delivery.timeout.is_zero() {
            return Err(InvalidConfig::new(
                "PERSISTENCE_CONFIRMATION_TIMEOUT_MS",
                "PERSISTENCE_CONFIRMATION_TIMEOUT_MS must be at least 1",
            ));
        }
        if self.rooms.typing_throttle.is_zero() {
            return Err(InvalidConfig::new(
                "TYPING_THROTTLE_MS",
                "TYPING_THROTTLE_MS must be at least 1",
            ));
        }
        if self.rooms.presence_heartbeat < Duration::from_millis(100) {
            return Err(InvalidConfig::new(
                "PRESENCE_HEARTBEAT_MS",
                "PRESENCE_HEARTBEAT_MS must be at least 100",
            ));
        }
        if self.turn.pool.is_some() && !self.turn.urls.is_empty() {
            return Err(InvalidConfig::new(
                "TURN_POOL",
                "set TURN_POOL or TURN_URLS, not both",
            ));
        }
        if !self.turn.urls.is_empty()
            && self.turn.secret.is_none()
            && self.turn.secret_file.is_none()
        {
            return Err(InvalidConfig::new(
                "TURN_URLS",
                "TURN_URLS needs TURN_SECRET or TURN_SECRET_FILE",
            ));
        }
        if !(MIN_TURN_TTL..=MAX_TURN_TTL).contains(&self.turn.credential_ttl) {
            return Err(InvalidConfig::new(
                "TURN_CREDENTIAL_TTL",
                format!(
                    "TURN_CREDENTIAL_TTL must be between {MIN_TURN_TTL} and {MAX_TURN_TTL} seconds, got {}",
                    self.turn.credential_ttl
                ),
            ));
        }
        for url in &self.turn.urls {
            realtime_turn::ice::parse_url(url)
                .map_err(|e| InvalidConfig::new("TURN_URLS", format!("TURN_URLS: {e}")))?;
        }
        if self.rooms.state_ttl.is_zero() {
            return Err(InvalidConfig::new(
                "ROOM_STATE_TTL_HOURS",
                "ROOM_STATE_TTL_HOURS must be at least 1",
            ));
        }
        if self.kafka.topic_partitions < 1 {
            return Err(InvalidConfig::new(
                "KAFKA_TOPIC_PARTITIONS",
                "KAFKA_TOPIC_PARTITIONS must be at least 1",
            ));
        }
        if self.kafka.replication_factor == 0 || self.kafka.replication_factor < -1 {
            return Err(InvalidConfig::new(
                "KAFKA_REPLICATION_FACTOR",
                format!(
                    "KAFKA_REPLICATION_FACTOR must be at least 1, or -1 for the broker's default; got {}",
                    self.kafka.replication_factor
                ),
            ));
        }
        Ok(())
    }
}

/// A setting the process cannot start with: the variable, and a message that names it
/// and says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidConfig {
    pub variable: &'static str,
    pub message: String,
}

impl InvalidConfig {
    fn new(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut full = vec!["realtime"];
        full.extend_from_slice(args);
        Config::try_parse_from(full).unwrap()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = parse(&["--jwt-secret", "s"]);
        assert_eq!(c.role, Role::All);
        assert_eq!(c.kafka.message_topic, "chat.messages");
        assert_eq!(c.kafka.persistence_topic, "chat.persistence.events");
        assert_eq!(c.kafka.dead_letter_topic(), "chat.messages.dlq");
        assert_eq!(c.persister.batch_size, 100);
        assert_eq!(c.persister.linger, Duration::from_millis(20));
        assert_eq!(c.delivery.timeout, Duration::from_secs(5));
        assert_eq!(c.delivery.retries, 3);
        assert_eq!(c.rooms.state_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.rooms.authz_cache_ttl, Duration::from_secs(300));
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.limits.max_message_bytes, 16384);
        assert_eq!(c.rooms.recovery_window, 1000);
        assert_eq!(c.rooms.typing_throttle, Duration::from_secs(1));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn gateway_without_secret_is_refused_with_the_variable_name() {
        let c = parse(&["--role", "gateway"]);
        let err = c.validate().unwrap_err();
        assert_eq!(err.variable, "JWT_SECRET", "{err}");
        assert!(err.message.contains("--jwt-secret"), "{err}");
        let persister = parse(&["--role", "persister"]);
        assert!(persister.validate().is_ok());
    }

    #[test]
    fn resp3_is_added_once() {
        let mut c = parse(&["--jwt-secret", "s"]);
        c.redis_url = "redis://h:1/".into();
        assert_eq!(c.redis_url_resp3(), "redis://h:1/?protocol=resp3");
        c.redis_url = "redis://h:1/?db=2".into();
        assert_eq!(c.redis_url_resp3(), "redis://h:1/?db=2&protocol=resp3");
        c.redis_url = "redis://h:1/?protocol=resp3".into();
        assert_eq!(c.redis_url_resp3(), "redis://h:1/?protocol=resp3");
    }

    #[test]
    fn out_of_range_turn_ttl_is_refused_not_changed() {
        for ttl in ["0", "59", "604801"] {
            let c = parse(&["--jwt-secret", "s", "--turn-credential-ttl", ttl]);
            let err = c.validate().unwrap_err();
            assert_eq!(err.variable, "TURN_CREDENTIAL_TTL", "{ttl}: {err}");
        }
        for ttl in ["60", "604800"] {
            assert!(
                parse(&["--jwt-secret", "s", "--turn-credential-ttl", ttl])
                    .validate()
                    .is_ok()
            );
        }
    }

    #[test]
    fn replication_factor_is_at_least_one_or_the_brokers_default() {
        assert_eq!(parse(&["--jwt-secret", "s"]).kafka.replication_factor, -1);
        for rf in ["0", "-2"] {
            let err = parse(&["--jwt-secret", "s", "--kafka-replication-factor", rf])
                .validate()
                .unwrap_err();
            assert_eq!(err.variable, "KAFKA_REPLICATION_FACTOR", "{err}");
        }
    }

    #[test]
    fn durations_are_parsed_once_with_the_unit_in_the_error() {
        let c = parse(&[
            "--typing-throttle-ms",
            "250",
            "--idempotency-ttl-seconds",
            "60",
        ]);
        assert_eq!(c.rooms.typing_throttle, Duration::from_millis(250));
        assert_eq!(c.delivery.idempotency_ttl, Duration::from_secs(60));
        let err = Config::try_parse_from(["realtime", "--typing-throttle-ms", "1.5"]).unwrap_err();
        assert!(
            err.to_string().contains("whole number of milliseconds"),
            "{err}"
        );
        let err =
            Config::try_parse_from(["realtime", "--idempotency-ttl-seconds", "59"]).unwrap_err();
        assert!(err.to_string().contains("less than 60 seconds"), "{err}");
    }

    #[test]
    fn zero_batch_size_is_refused() {
        assert!(
            Config::try_parse_from(["realtime", "--message-persistence-batch-size", "0"]).is_err()
        );
    }
}
