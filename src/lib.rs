//! keyturn: a Kubernetes operator that owns the lifecycle of JWT signing keys.
//!
//! The reconcile is a pipeline: read the operator's own objects ([`reconcile`]), validate
//! the spec and plan the next write with a pure function of (spec, observed, now)
//! ([`plan`]), apply it with server-side apply, and derive the status.

pub mod crd;
pub mod duration;
pub mod jwks;
pub mod keys;
pub mod plan;
pub mod state;
