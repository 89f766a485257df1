//! What the running parts (operator, endpoint, signer) share: Prometheus metrics, the
//! shutdown signal, and the namespace scope of their watches.

pub mod metrics;
pub mod shutdown;

use kube::{Api, Client};

/// An API for `K` in one namespace, or in every namespace.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}
