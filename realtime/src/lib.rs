//! Realtime data plane.
//!
//! Layout, from the edge inwards:
//! - [`app`] assembles a process for a [`config::Role`]: connect the dependencies → start
//!   the roles → serve → drain (`app::run` takes a bound listener and a shutdown future);
//! - [`gateway`] is the Socket.IO transport of `/chat` and `/webrtc` (handshake, admission,
//!   socket rooms, acks, performing emits) and its background confirmations and sweeper;
//! - [`http`] serves `/healthz`, `/readyz`, `/metrics` and `/v1/ice-servers`; [`admin`]
//!   the admin REST API (recordings, a user's export and erasure, OpenAPI);
//! - [`chat`] is the chat service: every use case (send, history, status, recover, join,
//!   leave, presence, typing, moderation) on an identity and a typed request, returning a
//!   typed answer and the emits — no Socket.IO in it;
//! - [`calls`] is the call service of `/webrtc` (signalling, ringing, presence, recording
//!   with consent): state in Redis changed by compare-and-set, deadlines any gateway
//!   enforces, recording metadata in MongoDB and on the broker;
//! - [`persister`] moves `chat.messages` into MongoDB and announces what it stored;
//! - [`model`] is the domain (messages, roles, standing, permissions), depending on nothing;
//! - [`auth`], [`protocol`], [`error`] are the client contract (tokens, payloads, codes);
//! - [`store`] (MongoDB), [`kafka`], [`rooms`] (cached standing, presence, recovery
//!   window) and the Redis-backed [`rate_limit`], [`sequence`] and [`delivery`] (the
//!   ledger of every message's state) hold the state; [`keys`] names every Redis key and
//!   room; [`ice`] follows a TurnPool (or static servers) for ICE configurations.

pub mod admin;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod calls;
pub mod chat;
pub mod config;
pub mod delivery;
pub mod error;
pub mod gateway;
pub mod http;
pub mod ice;
pub mod jwks;
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
