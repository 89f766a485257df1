//! Wiring: the kube-runtime controller over SigningKeySets and the objects keyturn owns.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, SET_LABEL, SigningKeySet};
use crate::metrics::Metrics;
use crate::publish::SOURCE_NAMESPACE_LABEL;
use crate::reconcile::{Clock, Context, error_policy, reconcile};

/// Options for [`run`].
pub struct Options {
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// Name reported on Events.
    pub instance: String,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The CRD is not installed or the API server is unreachable.
    #[error(
        "cannot list SigningKeySets ({0}); is the CRD installed? `keyturn crd | kubectl apply -f -`"
    )]
    NoCrd(#[source] kube::Error),
}

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

/// Fails with a clear message when the CRD is not installed or the API is unreachable.
/// Called once at start-up, before any replica competes for leadership.
pub async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<(), StartError> {
    let sets: Api<SigningKeySet> = scoped(client, namespace);
    sets.list(&ListParams::default().limit(1))
        .await
        .map_err(StartError::NoCrd)?;
    Ok(())
}

/// Runs the controller until `stop` resolves; in-flight reconciles finish first.
pub async fn run(
    client: Client,
    opts: Options,
    clock: Clock,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let sets: Api<SigningKeySet> = scoped(&client, opts.namespace.as_deref());
    let secrets: Api<Secret> = scoped(&client, opts.namespace.as_deref());
    // Only keyturn's own objects are watched: never every Secret of the cluster.
    let owned =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let reporter = Reporter {
        controller: "keyturn".into(),
        instance: Some(opts.instance.clone()),
    };
    let client_for_watch = client.clone();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        clock,
        metrics,
    });
    info!(namespace = ?opts.namespace, "keyturn controller starting");
    let controller = Controller::new(sets, watcher::Config::default());
    let store = controller.store();
    // JWKS copies live in many namespaces and cannot carry ownerReferences: map them back by label.
    let copies: Api<ConfigMap> = Api::all(client_for_watch.clone());
    let store_ns = store.clone();
    let scope = opts.namespace.clone();
    controller
        .owns(secrets, owned.clone())
        .watches(copies, owned, move |cm| {
            let labels = cm.labels();
            match (labels.get(SET_LABEL), labels.get(SOURCE_NAMESPACE_LABEL)) {
                // Sets outside this controller's scope are another operator's business.
                (Some(_), Some(ns)) if scope.as_ref().is_some_and(|s| s != ns) => None,
                (Some(set), Some(ns)) => Some(ObjectRef::new(set).within(ns)),
                _ => None,
            }
        })
        // A namespace created, labelled or deleted may change where a set's JWKS belongs.
        .watches(
            Api::<Namespace>::all(client_for_watch),
            watcher::Config::default(),
            move |ns| {
                let name = ns.name_any();
                store_ns
                    .state()
                    .into_iter()
                    .filter(|s| {
                        s.spec.jwks.namespace_selector.is_some()
                            || s.spec.jwks.namespaces.contains(&name)
                    })
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(set = %obj.name, namespace = ?obj.namespace, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile error"),
            }
        })
        .await;
    info!("keyturn controller stopped");
}
