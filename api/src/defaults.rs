//! The topics and indexes the data plane relies on (SPEC.md §3 "Defaults carried over",
//! plus the ones its queries need). One list for both sides: the operator makes each a
//! KafkaTopic or MongoIndex owned by the RealtimeCluster, and the data plane, run alone
//! (`MONGODB_CREATE_INDEXES=true`), creates the same indexes itself.

/// An index of the data plane's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultIndex {
    /// Suffix of the MongoIndex's name (`<cluster>-<id>`).
    pub id: &'static str,
    pub collection: &'static str,
    /// Fields and orders, in order. The index keeps MongoDB's default name for them
    /// (`field_order_…`), so an index the data plane made earlier is adopted as it is.
    pub keys: &'static [(&'static str, i32)],
    pub unique: bool,
    pub sparse: bool,
}

const fn index(
    id: &'static str,
    collection: &'static str,
    keys: &'static [(&'static str, i32)],
) -> DefaultIndex {
    DefaultIndex {
        id,
        collection,
        keys,
        unique: false,
        sparse: false,
    }
}

/// Every default index.
pub const DEFAULT_INDEXES: &[DefaultIndex] = &[
    // Redelivered messages are refused by the database (the persister's idempotency).
    DefaultIndex {
        unique: true,
        sparse: true,
        ..index("messages-id", "messages", &[("message_id", 1)])
    },
    // History pages, newest first.
    index(
        "messages-history",
        "messages",
        &[("tenant_id", 1), ("conversation_id", 1), ("seq", -1)],
    ),
    index(
        "conversations-members",
        "conversations",
        &[("tenant_id", 1), ("participants.user_id", 1)],
    ),
    index(
        "conversations-id",
        "conversations",
        &[("tenant_id", 1), ("conversation_id", 1)],
    ),
    index(
        "moderation-log",
        "moderation_log",
        &[("tenant_id", 1), ("conversation_id", 1), ("created_at", -1)],
    ),
    index(
        "recordings-call",
        "call_recordings",
        &[("call_id", 1), ("tenant_id", 1)],
    ),
    index(
        "recordings-conversation",
        "call_recordings",
        &[("conversation_id", 1), ("tenant_id", 1)],
    ),
    DefaultIndex {
        unique: true,
        ..index("recordings-id", "call_recordings", &[("recording_id", 1)])
    },
];

/// A default topic of a RealtimeCluster: the suffix of its KafkaTopic's name
/// (`<cluster>-<id>`) and the topic name the spec gives it.
pub fn default_topics(topics: &crate::TopicNames) -> [(&'static str, String); 4] {
    [
        ("messages", topics.messages.clone()),
        ("persistence-events", topics.persistence_events.clone()),
        ("recording-events", topics.recording_events.clone()),
        // Messages the persister could not store (the data plane's `.dlq` convention).
        ("dead-letters", format!("{}.dlq", topics.messages)),
    ]
}
