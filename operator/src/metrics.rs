//! Prometheus metrics of the operator, labelled by kind and error category only (never
//! by object name, so cardinality stays bounded).

use std::sync::Arc;

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
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
