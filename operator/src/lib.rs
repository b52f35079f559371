//! Realtime Operator control plane.
//!
//! - [`crd`]: the custom resource types of `realtime.dev/v1alpha1`, their CRDs and
//!   well-known names (the `realtime-api` crate, shared with the data plane);
//! - [`render`]: pure rendering of the children of a RealtimeCluster and a TurnPool;
//! - [`rotation`]: the TurnPool secret rotation policy (pure);
//! - [`controller`]: reconcilers, their context, errors and back-off;
//! - [`run`]: wiring of the controllers to the API server;
//! - [`leader`]: leader election on a Lease, and prompt termination;
//! - [`metrics`]: Prometheus metrics.

pub mod controller;
pub use realtime_api as crd;
pub mod leader;
pub mod metrics;
pub mod render;
pub mod rotation;
pub mod run;
