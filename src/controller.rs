//! Wiring: the kube-runtime controller over SigningKeySets and the objects keyturn owns.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use tracing::{debug, info, warn};

use crate::crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, SigningKeySet};
use crate::metrics::Metrics;
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

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(
    client: Client,
    opts: Options,
    clock: Clock,
    metrics: Arc<Metrics>,
) -> Result<(), StartError> {
    let sets: Api<SigningKeySet> = match &opts.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    sets.list(&ListParams::default().limit(1))
        .await
        .map_err(StartError::NoCrd)?;
    let (secrets, cms): (Api<Secret>, Api<ConfigMap>) = match &opts.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // Only keyturn's own objects are watched: never every Secret of the cluster.
    let owned =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let reporter = Reporter {
        controller: "keyturn".into(),
        instance: Some(opts.instance.clone()),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        clock,
        metrics,
    });
    info!(namespace = ?opts.namespace, "keyturn controller starting");
    Controller::new(sets, watcher::Config::default())
        .owns(secrets, owned.clone())
        .owns(cms, owned)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(set = %obj.name, namespace = ?obj.namespace, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile error"),
            }
        })
        .await;
    info!("keyturn controller stopped");
    Ok(())
}
