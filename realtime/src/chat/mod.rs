//! Chat use cases, apart from the transport: an operation takes typed input and returns
//! a typed result plus the events the transport must emit ([`delivery::Emit`]). The
//! Socket.IO gateway keeps the handshake, acks, socket rooms and performing the emits.

pub mod delivery;
