//! Realtime Operator control plane.
//!
//! - [`crd`]: the custom resource types of `realtime.dev/v1alpha1` and their CRDs.

pub mod crd;
