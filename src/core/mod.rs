//! The pure core: no I/O, no kube client, no clock of its own. Everything here is a function
//! of its arguments (the spec, the observed objects, `now`) and is unit-tested without a
//! cluster; the operator, the endpoint, the signer and the CLI all stand on it.

pub mod consent;
pub mod crd;
pub mod duration;
pub mod import;
pub mod issuer;
pub mod jwks;
pub mod keys;
pub mod objects;
pub mod plan;
pub mod state;
