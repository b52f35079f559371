//! Prometheus metrics of the operator, labelled by kind and error category only (never
//! by object name, so cardinality stays bounded). Per-object reconcile counts are kept in
//! process only ([`Metrics::reconciled`]), for tests and debugging, never exported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub kind: &'static str,
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub reconciliations: Family<KindLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub duration: Family<KindLabel, Histogram>,
    pub turn_probes: Family<ResultLabel, Counter>,
    pub turn_rotations: Counter,
    /// Completed reconciles per object (`kind`, `namespace/name`): how many, and the
    /// `resourceVersion` the last one saw. Not exported (unbounded labels); one small
    /// entry per object seen since the process started.
    objects: Arc<Mutex<HashMap<(&'static str, String), Reconciled>>>,
}

/// What the reconciles of one object have done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Reconciles that finished (successfully or not).
    pub count: u64,
    /// `metadata.resourceVersion` of the object the last finished reconcile worked on.
    pub resource_version: Option<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("realtime_operator");
        let reconciliations = Family::<KindLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.005, 2.0, 12))) as fn() -> Histogram,
        );
        registry.register(
            "reconciliations",
            "Reconciliations run",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by error category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconciliation takes",
            duration.clone(),
        );
        let turn_probes = Family::<ResultLabel, Counter>::default();
        let turn_rotations = Counter::default();
        registry.register(
            "turn_probes",
            "TURN server health probes, by result (healthy or failed)",
            turn_probes.clone(),
        );
        registry.register(
            "turn_rotations",
            "TURN shared-secret rotations",
            turn_rotations.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciliations,
            errors,
            duration,
            turn_probes,
            turn_rotations,
            objects: Arc::default(),
        }
    }
}

impl Metrics {
    /// Records a finished reconcile of `key` (`namespace/name`) at `resource_version`.
    pub fn finished(&self, kind: &'static str, key: &str, resource_version: Option<String>) {
        let mut map = self
            .objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = map.entry((kind, key.to_owned())).or_default();
        entry.count = entry.count.saturating_add(1);
        entry.resource_version = resource_version;
    }

    /// The finished reconciles of one object so far (zero when none).
    pub fn reconciled(&self, kind: &'static str, key: &str) -> Reconciled {
        self.objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(kind, key.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
