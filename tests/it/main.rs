//! keyturn's integration tests: one binary (`cargo test --test it`), one module per scenario,
//! all against the real control plane of `hack/control-plane` (see `support`).
//!
//! `hack/test.sh it [FILTER]` runs them with the plane started; `node::` runs on the node's
//! plane (`hack/e2e-node`), `signer::` on a plane of its own (`hack/test.sh signer`).

mod support;

mod adoption;
mod alerts;
mod chart;
mod cli;
mod crash;
mod fanout;
mod faults;
mod gitops;
mod http;
mod interop;
mod node;
mod obstruction;
mod operator;
mod outage;
mod plugin;
mod production;
mod security;
mod signer;
mod smoke;
mod uninstall;
