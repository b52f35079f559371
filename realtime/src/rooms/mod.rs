//! Rooms: a participant's cached standing (access), who is here (state/presence) and
//! what a reconnecting client missed (recent). Who may do what is `model::permissions`.

pub mod access;
pub mod recent;
pub mod state;
