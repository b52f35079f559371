//! Realtime data plane.
//!
//! Layout, from the edge inwards:
//! - [`app`] assembles a process for a [`config::Role`] and owns start-up and shutdown;
//! - [`gateway`] is the Socket.IO `/chat` namespace (handshake, events, confirmations);
//! - [`persister`] moves `chat.messages` into MongoDB and announces what it stored;
//! - [`http`] serves `/healthz`, `/readyz` and `/metrics`;
//! - [`chat`] holds the use cases apart from Socket.IO (sending and confirming messages);
//! - [`auth`], [`protocol`], [`error`] are the client contract (tokens, payloads, codes);
//! - [`store`] (MongoDB), [`kafka`], and the Redis-backed [`rate_limit`], [`sequence`]
//!   and [`delivery`] (the ledger of every message's state) hold the state; [`keys`]
//!   names every Redis key and room.

pub mod app;
pub mod auth;
pub mod backoff;
pub mod chat;
pub mod config;
pub mod delivery;
pub mod error;
pub mod gateway;
pub mod http;
pub mod ice;
pub mod kafka;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod persister;
pub mod protocol;
pub mod rate_limit;
pub mod rooms;
pub mod sequence;
pub mod shutdown;
pub mod store;
