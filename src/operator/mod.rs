//! The operator: the controller's watches and caches, the reconcile pipeline, leader election,
//! and keyturn's guarded writes. Only the Lease holder writes.

pub mod controller;
pub mod echo;
pub mod fault;
pub mod leader;
pub mod reconcile;
pub mod write;
