//! The domain: what a message, a role and a participant's standing are, and who may do
//! what. Depends on nothing else in the crate; storage, the wire protocol, the Redis
//! state and the chat service all speak these types.

mod message;
pub mod permissions;
mod standing;

pub use message::{Content, Message};
pub use permissions::{Action, Role};
pub use standing::{Access, Restriction};
