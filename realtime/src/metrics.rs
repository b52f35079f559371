//! Prometheus metrics of the data plane. Labels carry categories (error code, outcome),
//! never tenant, user or conversation ids, so cardinality stays bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connected_sockets: Gauge,
    pub connections_refused: Counter,
    pub messages_accepted: Counter,
    pub messages_rejected: Family<CodeLabel, Counter>,
    pub ack_latency: Histogram,
    pub confirmations: Counter,
    pub confirmation_latency: Histogram,
    pub delivery_retries: Counter,
    pub delivery_failures: Counter,
    pub persisted_messages: Counter,
    pub persist_batches: Counter,
    pub persist_batch_seconds: Histogram,
    pub persist_errors: Family<CategoryLabel, Counter>,
    pub poison_records: Counter,
    pub authz_lookups: Family<SourceLabel, Counter>,
    pub moderation_actions: Family<ActionLabel, Counter>,
    pub presence_broadcasts: Counter,
    pub recoveries: Family<OutcomeLabel, Counter>,
    pub delivery_delayed: Counter,
    pub delivery_lost: Counter,
    pub delivery_unresolved: Gauge,
    pub dead_lettered: Counter,
    pub foreign_records: Counter,
    pub sequence_repairs: Counter,
    pub rate_limited: Family<ClassLabel, Counter>,
    pub room_joins: Family<OutcomeLabel, Counter>,
    pub resend_waits: Counter,
    pub calls_active: Gauge,
    pub calls_started: Counter,
    pub calls_ended: Family<ReasonLabel, Counter>,
    pub call_setup: Histogram,
    pub signals_relayed: Family<KindLabel, Counter>,
    pub recording_changes: Family<KindLabel, Counter>,
    pub recording_write_errors: Counter,
    pub recording_outbox: Gauge,
    pub admin_requests: Family<AdminLabel, Counter>,
    pub admin_request_seconds: Family<ActionLabel, Histogram>,
    pub erased_records: Family<KindLabel, Counter>,
}

/// An admin API call: what it did and the HTTP status it answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminLabel {
    pub action: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("realtime");
        let m = Metrics {
            registry: Registry::default(),
            connected_sockets: Gauge::default(),
            connections_refused: Counter::default(),
            messages_accepted: Counter::default(),
            messages_rejected: Family::default(),
            ack_latency: latency_histogram(),
            confirmations: Counter::default(),
            confirmation_latency: latency_histogram(),
            delivery_retries: Counter::default(),
            delivery_failures: Counter::default(),
            persisted_messages: Counter::default(),
            persist_batches: Counter::default(),
            persist_batch_seconds: latency_histogram(),
            persist_errors: Family::default(),
            poison_records: Counter::default(),
            authz_lookups: Family::default(),
            moderation_actions: Family::default(),
            presence_broadcasts: Counter::default(),
            recoveries: Family::default(),
            delivery_delayed: Counter::default(),
            delivery_lost: Counter::default(),
            delivery_unresolved: Gauge::default(),
            dead_lettered: Counter::default(),
            foreign_records: Counter::default(),
            sequence_repairs: Counter::default(),
            rate_limited: Family::default(),
            room_joins: Family::default(),
            resend_waits: Counter::default(),
            calls_active: Gauge::default(),
            calls_started: Counter::default(),
            calls_ended: Family::default(),
            // 0.5 ms .. ~16 s, as the others: most of a setup is a person answering.
            call_setup: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            signals_relayed: Family::default(),
            recording_changes: Family::default(),
            recording_write_errors: Counter::default(),
            recording_outbox: Gauge::default(),
            admin_requests: Family::default(),
            admin_request_seconds: Family::new_with_constructor(latency_histogram),
            erased_records: Family::default(),
        };
        registry.register(
            "admin_requests",
            "Admin API calls by action and HTTP status (each also written to admin_audit)",
            m.admin_requests.clone(),
        );
        registry.register(
            "admin_request_seconds",
            "Admin API call duration by action, until the answer starts (an export streams on after)",
            m.admin_request_seconds.clone(),
        );
        registry.register(
            "erased_records",
            "Records erased or redacted by user erasures, by kind (messages, memberships, ...)",
            m.erased_records.clone(),
        );
        registry.register(
            "calls_active",
            "Calls going on, every tenant and gateway (sampled by each gateway's call sweeper)",
            m.calls_active.clone(),
        );
        registry.register(
            "calls_started",
            "call:start that created a call",
            m.calls_started.clone(),
        );
        registry.register(
            "calls_ended",
            "Calls ended, by reason (hangup, declined, no_answer, ended_by_owner)",
            m.calls_ended.clone(),
        );
        registry.register(
            "call_setup_seconds",
            "From call:start to the first member answering (call:accept)",
            m.call_setup.clone(),
        );
        registry.register(
            "call_signals_relayed",
            "call:signal relayed to the named member, by signal type",
            m.signals_relayed.clone(),
        );
        registry.register(
            "recording_changes",
            "Recording state changes and consents, by event type",
            m.recording_changes.clone(),
        );
        registry.register(
            "recording_write_errors",
            "Recording changes not yet written to MongoDB or published (each failed attempt; retried from the outbox)",
            m.recording_write_errors.clone(),
        );
        registry.register(
            "recording_outbox",
            "Recording changes waiting to be written and published, every gateway",
            m.recording_outbox.clone(),
        );
        registry.register(
            "connected_sockets",
            "Sockets connected to this gateway",
            m.connected_sockets.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at the handshake (bad or missing token)",
            m.connections_refused.clone(),
        );
        registry.register(
            "messages_accepted",
            "Messages acknowledged by the broker and acked to the sender",
            m.messages_accepted.clone(),
        );
        registry.register(
            "messages_rejected",
            "message:send refused, by error code",
            m.messages_rejected.clone(),
        );
        registry.register(
            "ack_latency_seconds",
            "From message:send received to ack sent",
            m.ack_latency.clone(),
        );
        registry.register(
            "delivery_confirmations",
            "message:persisted sent to senders",
            m.confirmations.clone(),
        );
        registry.register(
            "delivery_confirmation_latency_seconds",
            "From message creation to message:persisted",
            m.confirmation_latency.clone(),
        );
        registry.register(
            "delivery_retries",
            "Copies of unconfirmed messages produced again by the sweeper (same id)",
            m.delivery_retries.clone(),
        );
        registry.register(
            "delivery_failures",
            "message:failed sent: messages that will never be stored",
            m.delivery_failures.clone(),
        );
        registry.register(
            "persisted_messages",
            "Messages written to MongoDB by the persister (new documents)",
            m.persisted_messages.clone(),
        );
        registry.register(
            "persist_batches",
            "Batches written by the persister",
            m.persist_batches.clone(),
        );
        registry.register(
            "persist_batch_seconds",
            "Time to write a batch, publish its events and commit",
            m.persist_batch_seconds.clone(),
        );
        registry.register(
            "persist_errors",
            "Persister failures by dependency category (the batch is retried)",
            m.persist_errors.clone(),
        );
        registry.register(
            "poison_records",
            "Undecodable records moved to the dead-letter topic by the persister",
            m.poison_records.clone(),
        );
        registry.register(
            "authz_lookups",
            "Participant standing lookups, by source (cache or database)",
            m.authz_lookups.clone(),
        );
        registry.register(
            "moderation_actions",
            "Moderation actions applied, by action",
            m.moderation_actions.clone(),
        );
        registry.register(
            "presence_broadcasts",
            "presence events sent to rooms",
            m.presence_broadcasts.clone(),
        );
        registry.register(
            "recoveries",
            "messages:recover answers, by outcome",
            m.recoveries.clone(),
        );
        registry.register(
            "delivery_delayed",
            "message:delayed sent: accepted messages still unconfirmed after every retry",
            m.delivery_delayed.clone(),
        );
        registry.register(
            "delivery_lost",
            "Delivery records that vanished from Redis before an outcome (eviction, data loss)",
            m.delivery_lost.clone(),
        );
        registry.register(
            "delivery_unresolved",
            "Messages without a final outcome yet (sampled by the sweeper)",
            m.delivery_unresolved.clone(),
        );
        registry.register(
            "dead_lettered_messages",
            "Messages the database refused for good, moved to the dead-letter topic",
            m.dead_lettered.clone(),
        );
        registry.register(
            "foreign_records",
            "Records of another installation found on this installation's topics (skipped)",
            m.foreign_records.clone(),
        );
        registry.register(
            "sequence_repairs",
            "Sequence counters checked and moved forward after Redis restarted or failed over",
            m.sequence_repairs.clone(),
        );
        registry.register(
            "room_joins",
            "room:join outcomes after the membership check (joined; gone: the socket closed meanwhile)",
            m.room_joins.clone(),
        );
        registry.register(
            "resend_waits",
            "Resends that waited for the first send of the same message to finish",
            m.resend_waits.clone(),
        );
        registry.register(
            "rate_limited",
            "Client events refused by a rate limit, by event class",
            m.rate_limited.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn reject(&self, code: crate::error::ErrorCode) {
        self.messages_rejected
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    pub fn authz_lookup(&self, source: crate::rooms::access::Source) {
        let source = match source {
            crate::rooms::access::Source::Cache => "cache",
            crate::rooms::access::Source::Database => "database",
        };
        self.authz_lookups
            .get_or_create(&SourceLabel { source })
            .inc();
    }

    pub fn moderation(&self, action: &'static str) {
        self.moderation_actions
            .get_or_create(&ActionLabel { action })
            .inc();
    }

    pub fn room_join(&self, outcome: &'static str) {
        self.room_joins
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn recovery(&self, outcome: &'static str) {
        self.recoveries
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::default();
        m.messages_accepted.inc();
        m.reject(crate::error::ErrorCode::TooLarge);
        let text = m.render();
        assert!(
            text.contains("realtime_messages_accepted_total 1"),
            "{text}"
        );
        assert!(
            text.contains("realtime_messages_rejected_total{code=\"too_large\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("realtime_ack_latency_seconds_bucket"),
            "{text}"
        );
    }
}
