//! Shared by the data plane's integration tests: the stack's addresses (they fail
//! loudly when `scripts/stack.sh` is not up), a configuration on a database of its own,
//! tokens and conversations.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mongodb::bson::doc;
use realtime::config::Config;
use realtime::store::Store;

pub const SECRET: &str = "in-process-test-secret";

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `scripts/stack.sh up` and `eval \"$(scripts/stack.sh env)\"` (scripts/test.sh does both)")
    })
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A configuration for the stack (REDIS_URL, MONGODB_URI, KAFKA_BROKERS from the
/// environment) on a MongoDB database and consumer-group prefix of its own; `extra` are
/// more flags.
pub fn config(extra: &[&str]) -> Config {
    for name in ["REDIS_URL", "MONGODB_URI", "KAFKA_BROKERS"] {
        env(name);
    }
    let database = unique("it");
    let prefix = unique("inproc");
    let mut args = vec![
        "realtime",
        "--jwt-secret",
        SECRET,
        "--mongodb-database",
        &database,
        "--kafka-group-prefix",
        &prefix,
    ];
    args.extend_from_slice(extra);
    <Config as clap::Parser>::try_parse_from(args).expect("test configuration")
}

/// The configuration's MongoDB database, reachable.
pub async fn store(cfg: &Config) -> Store {
    connect_store(&cfg.mongodb.uri, &cfg.mongodb.database, "majority").await
}

/// `database` at `uri` with `write_concern` (a 2 s bound), reachable.
pub async fn connect_store(uri: &str, database: &str, write_concern: &str) -> Store {
    let store = Store::connect(
        uri,
        database,
        write_concern,
        std::time::Duration::from_secs(2),
    )
    .await
    .expect("MONGODB_URI");
    store
        .ping()
        .await
        .expect("MongoDB reachable at MONGODB_URI");
    store
}

/// An HS256 token of `user` in `tenant`, valid for an hour.
pub fn token(tenant: &str, user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": user, "tenant_id": tenant, "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Inserts a conversation whose first user is its owner; `roles` overrides the rest.
pub async fn conversation(
    store: &Store,
    tenant: &str,
    conversation: &str,
    users: &[&str],
    roles: &[(&str, &str)],
) {
    let participants: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let role = roles
                .iter()
                .find(|(who, _)| who == u)
                .map(|(_, r)| *r)
                .unwrap_or(if i == 0 { "owner" } else { "member" });
            doc! {"user_id": *u, "role": role}
        })
        .collect();
    store
        .database()
        .collection::<mongodb::bson::Document>("conversations")
        .insert_one(doc! {
            "tenant_id": tenant,
            "conversation_id": conversation,
            "participants": participants,
        })
        .await
        .expect("conversation inserted");
}
