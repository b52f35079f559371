//! Redis keys and Socket.IO room names. Every per-tenant name starts with the tenant, so
//! no key or room of one tenant can be addressed through another tenant's identifiers
//! (identifiers cannot contain `:`; see `protocol::validate_id`). The few keys that belong
//! to no tenant (gateway liveness, the delivery schedule) live under `rt:#:`, a segment no
//! tenant id can take (`#` is not allowed in identifiers).

pub fn sequence(tenant: &str, conversation: &str) -> String {
    format!("rt:{tenant}:seq:{conversation}")
}

/// Verification mark of a sequence counter: the Redis `run_id` under which the counter
/// was last checked against MongoDB and the recovery window (see `sequence`).
pub fn sequence_verified(tenant: &str, conversation: &str) -> String {
    format!("rt:{tenant}:seqv:{conversation}")
}

/// A message's delivery record, which is also its idempotency key: one per tenant,
/// conversation, sender and `clientMessageId` (see `delivery`).
pub fn message(tenant: &str, conversation: &str, sender: &str, client_message_id: &str) -> String {
    format!("rt:{tenant}:msg:{conversation}:{sender}:{client_message_id}")
}

pub fn rate_limit(tenant: &str, user: &str) -> String {
    format!("rt:{tenant}:rl:{user}")
}

/// The user's bucket for events other than `message:send`.
pub fn event_rate_limit(tenant: &str, user: &str) -> String {
    format!("rt:{tenant}:rle:{user}")
}

pub fn membership(tenant: &str, conversation: &str, user: &str) -> String {
    format!("rt:{tenant}:authz:{conversation}:{user}")
}

pub fn conversation_cache(tenant: &str, conversation: &str) -> String {
    format!("rt:{tenant}:conv:{conversation}")
}

/// Sockets in a conversation: field `<user>|<socket id>`, value the gateway id.
pub fn room_sockets(tenant: &str, conversation: &str) -> String {
    format!("rt:{tenant}:room:{conversation}:sockets")
}

/// Last activity (ms since the epoch) in a conversation.
pub fn room_activity(tenant: &str, conversation: &str) -> String {
    format!("rt:{tenant}:room:{conversation}:activity")
}

/// Throttle of a user's typing indicator in a conversation.
pub fn typing(tenant: &str, conversation: &str, user: &str) -> String {
    format!("rt:{tenant}:typing:{conversation}:{user}")
}

/// Recent messages of a conversation for recovery (sorted set scored by seq).
pub fn recent(tenant: &str, conversation: &str) -> String {
    format!("rt:{tenant}:recent:{conversation}")
}

/// A call's state (JSON of `calls::state::Call`).
pub fn call(tenant: &str, call: &str) -> String {
    format!("rt:{tenant}:call:{call}")
}

/// The call going on in a conversation (its id).
pub fn conversation_call(tenant: &str, conversation: &str) -> String {
    format!("rt:{tenant}:convcall:{conversation}")
}

/// The call a recording belongs to (its id).
pub fn recording_call(tenant: &str, recording: &str) -> String {
    format!("rt:{tenant}:reccall:{recording}")
}

/// A user's `/webrtc` sockets: field socket id, value the gateway id.
pub fn call_sockets(tenant: &str, user: &str) -> String {
    format!("rt:{tenant}:rtcsock:{user}")
}

/// Members of a call whose sockets are all gone: field user, value since when (ms).
pub fn call_absent(tenant: &str, call: &str) -> String {
    format!("rt:{tenant}:callabsent:{call}")
}

/// A recording's changes waiting to be written and published, oldest first (list of
/// JSON entries; see `calls::outbox`).
pub fn recording_outbox(tenant: &str, recording: &str) -> String {
    format!("rt:{tenant}:recoutbox:{recording}")
}

/// The calls a user is in (set of call ids).
pub fn user_calls(tenant: &str, user: &str) -> String {
    format!("rt:{tenant}:usercalls:{user}")
}

/// Deadlines of calls (ring timeouts, consent deadlines, member presence checks): sorted
/// set of `kind|tenant|call[|user]` scored by ms since the epoch.
pub const CALL_DEADLINES: &str = "rt:#:calls:due";

/// Calls going on, every tenant: sorted set of `tenant|call` scored by when the call was
/// last seen alive (a change or a member's presence check), for the `calls_active` gauge.
pub const ACTIVE_CALLS: &str = "rt:#:calls:active";

/// Recordings with changes waiting in their queue (`tenant|recording`), scored by when
/// a gateway may take them (now, or when the lease of the gateway at it runs out).
pub const RECORDING_OUTBOX: &str = "rt:#:recordings:outbox";

/// Prefix of gateway liveness keys (`rt:#:gw:<gateway id>`), refreshed by a heartbeat.
pub const GATEWAY_ALIVE_PREFIX: &str = "rt:#:gw:";

/// When each unresolved message is next due for attention (sorted set of message keys
/// scored by ms since the epoch).
pub const DELIVERY_SCHEDULE: &str = "rt:#:delivery";

/// Room of a conversation's members.
pub fn conversation_room(tenant: &str, conversation: &str) -> String {
    format!("c:{tenant}:{conversation}")
}

/// Room of all sockets of one user, on every gateway.
pub fn user_room(tenant: &str, user: &str) -> String {
    format!("u:{tenant}:{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_leads_every_scoped_name() {
        for name in [
            sequence("t", "c"),
            sequence_verified("t", "c"),
            message("t", "c", "u", "k"),
            rate_limit("t", "u"),
            event_rate_limit("t", "u"),
            membership("t", "c", "u"),
            conversation_cache("t", "c"),
            room_sockets("t", "c"),
            room_activity("t", "c"),
            typing("t", "c", "u"),
            recent("t", "c"),
            call("t", "c"),
            conversation_call("t", "c"),
            recording_call("t", "r"),
            call_sockets("t", "u"),
            user_calls("t", "u"),
            call_absent("t", "c"),
            recording_outbox("t", "r"),
        ] {
            assert!(name.starts_with("rt:t:"), "{name}");
        }
        assert_ne!(
            message("t", "c1", "u", "k"),
            message("t", "c2", "u", "k"),
            "a clientMessageId reused in another conversation is another message"
        );
        for global in [
            GATEWAY_ALIVE_PREFIX,
            DELIVERY_SCHEDULE,
            CALL_DEADLINES,
            ACTIVE_CALLS,
            RECORDING_OUTBOX,
        ] {
            assert!(global.starts_with("rt:#:"), "{global}");
        }
        assert_eq!(conversation_room("t", "c"), "c:t:c");
        assert_eq!(user_room("t", "u"), "u:t:u");
    }
}
