//! Rooms: who may do what (permissions), a participant's standing (access), who is here
//! (state/presence) and what a reconnecting client missed (recent).

pub mod access;
pub mod permissions;
pub mod recent;
pub mod state;
