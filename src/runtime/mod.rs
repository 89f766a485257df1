//! What the running parts (operator, endpoint, signer) share: Prometheus metrics.

pub mod metrics;
