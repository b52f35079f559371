//! The connection of the Socket.IO Redis adapter (broadcasts between gateways, emits to a
//! user's room wherever the user is connected).
//!
//! socketioxide-redis' own driver holds one multiplexed connection that never reconnects:
//! after a Redis restart every broadcast between gateways, and every `message:persisted`,
//! failed until the gateway was restarted (found by the chaos test). This driver is the
//! same publish/subscribe over a [`ConnectionManager`], which reconnects and subscribes
//! again to every channel.
//!
//! Channels are named after the installation (`KAFKA_GROUP_PREFIX`) and the Redis
//! database: pub/sub ignores database numbers, so installations sharing a Redis server
//! would otherwise hear each other's broadcasts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, PushInfo, PushKind};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

/// Redis publish/subscribe for the adapter, surviving Redis restarts.
#[derive(Clone)]
pub struct PubSub {
    conn: ConnectionManager,
    handlers: Handlers,
}

impl PubSub {
    pub async fn connect(client: &redis::Client) -> redis::RedisResult<Self> {
        let handlers: Handlers = Arc::default();
        let route = handlers.clone();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(move |message: PushInfo| {
                deliver(&route, message);
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription();
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(Self { conn, handlers })
    }
}

/// The adapter's channel prefix for this installation and database.
pub fn channel_prefix(installation: &str, client: &redis::Client) -> String {
    let db = client.get_connection_info().redis_settings().db();
    format!("socket.io#{installation}#{db}")
}

/// Hands a published message to the subscriber of its channel.
fn deliver(handlers: &Handlers, message: PushInfo) {
    if !matches!(message.kind, PushKind::Message | PushKind::SMessage) {
        return; // (un)subscribe confirmations, invalidations
    }
    let mut data = message.data.into_iter();
    let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
        return;
    };
    let (Ok(channel), Ok(payload)) = (
        String::from_redis_value(channel),
        Vec::<u8>::from_redis_value(payload),
    ) else {
        tracing::warn!("unreadable message on a Socket.IO adapter channel");
        return;
    };
    let handlers = handlers.read().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = handlers.get(&channel)
        && let Err(e) = tx.try_send((channel, payload))
    {
        tracing::warn!(error = %e, "Socket.IO adapter channel full: a broadcast from another gateway was dropped");
    }
}

impl Driver for PubSub {
    type Error = redis::RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let mut conn = self.conn.clone();
        redis::cmd("PUBLISH")
            .arg(chan)
            .arg(val)
            .exec_async(&mut conn)
            .await
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        // Registered first: a message published right after SUBSCRIBE is not lost.
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chan.clone(), tx);
        let mut conn = self.conn.clone();
        if let Err(e) = conn.subscribe(&chan).await {
            self.handlers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&chan);
            return Err(e);
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chan);
        self.conn.clone().unsubscribe(&chan).await
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let mut conn = self.conn.clone();
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut conn)
            .await?;
        Ok(count)
    }
}
