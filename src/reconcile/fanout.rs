//! The JWKS copies in other namespaces: written to every consented target, removed from
//! namespaces no longer selected, and guarded by a finalizer so that deleting the set
//! removes them too (an ownerReference cannot reach across namespaces).

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;
use tracing::info;

use super::read::Objects;
use super::{Context, Error};
use crate::consent::{self, FanOut};
use crate::crd::SigningKeySet;
use crate::publish::{self, WriteError};

/// The finalizer a set with copies in other namespaces carries.
pub const FINALIZER: &str = "keyturn.dev/jwks-copies";

/// Copies written at once.
const PUBLISH_CONCURRENCY: usize = 16;

/// True when the set carries keyturn's finalizer.
pub fn has_finalizer(sks: &SigningKeySet) -> bool {
    sks.finalizers().iter().any(|f| f == FINALIZER)
}

/// Writes `bytes` as the JWKS in every target (concurrently), keeping `copies` current.
/// Returns the copies that could not be written, as `namespace: error`, or
/// [`Error::Stale`] when a copy's write failed its precondition because the cache it was
/// decided from lagged.
pub async fn publish(
    sks: &SigningKeySet,
    ctx: &Context,
    targets: &BTreeSet<String>,
    copies: &mut BTreeMap<String, ConfigMap>,
    bytes: &[u8],
) -> Result<Vec<String>, Error> {
    let current: &BTreeMap<String, ConfigMap> = copies;
    let results: Vec<(String, Result<Option<ConfigMap>, WriteError>)> =
        futures::stream::iter(targets.iter().cloned())
            .map(|t| {
                let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &t);
                async move {
                    let desired = publish::jwks_config_map(sks, &t, bytes);
                    let r = publish::write(
                        &api,
                        current.get(&t),
                        desired,
                        |m| publish::is_owned_copy(m, sks),
                        publish::same_config_map,
                    )
                    .await;
                    (t, r)
                }
            })
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .collect()
            .await;
    let mut failures = vec![];
    let mut stale = vec![];
    let mut wrote = 0;
    for (t, r) in results {
        match r {
            Ok(Some(o)) => {
                wrote += 1;
                ctx.echoes.wrote(&o);
                copies.insert(t, o);
            }
            Ok(None) => {}
            Err(e) if e.lagged().is_some() => stale.push(t),
            Err(e) => failures.push(format!("{t}: {e}")),
        }
    }
    failures.sort();
    if wrote > 0 {
        ctx.metrics.write("configmap");
        ctx.metrics.published();
    }
    if !stale.is_empty() {
        stale.sort();
        return Err(Error::Stale(format!(
            "the JWKS copy in {}",
            stale.join(", ")
        )));
    }
    Ok(failures)
}

/// Before any copy is written elsewhere, the set carries the finalizer that removes them.
pub async fn hold_copies(sks: &SigningKeySet, ctx: &Context) -> Result<(), Error> {
    if consent::requested(sks) && !ctx.namespace_only && !has_finalizer(sks) {
        set_finalizer(sks, ctx, true).await?;
    }
    Ok(())
}

/// Removes keyturn's copies from namespaces that are no longer targets (owned copies only),
/// and releases the finalizer once the set asks for no fan-out and has no copies left.
pub async fn release_copies(
    sks: &SigningKeySet,
    ctx: &Context,
    objects: &mut Objects,
    spread: &FanOut,
) -> Result<(), Error> {
    let ns = sks.namespace().unwrap_or_default();
    let stale: Vec<(String, String)> = objects
        .copies
        .iter()
        .filter(|(cns, c)| {
            !spread.targets.contains(*cns) && publish::is_owned_copy(&c.metadata, sks)
        })
        .map(|(cns, c)| (cns.clone(), c.name_any()))
        .collect();
    for (cns, name) in stale {
        delete_copy(ctx, &cns, &name).await?;
        info!(set = %sks.name_any(), namespace = %ns, from = %cns, "removed JWKS copy from a deselected namespace");
        objects.copies.remove(&cns);
    }
    if !consent::requested(sks) && has_finalizer(sks) && objects.copies.keys().all(|c| *c == ns) {
        set_finalizer(sks, ctx, false).await?;
    }
    Ok(())
}

/// Deletion: remove the JWKS copies in other namespaces, then release the finalizer.
/// Objects in the set's namespace go with the garbage collector (ownerReferences).
pub async fn finalize(sks: &SigningKeySet, ctx: &Context) -> Result<Action, Error> {
    if !has_finalizer(sks) {
        return Ok(Action::await_change());
    }
    let own = sks.namespace().unwrap_or_default();
    for c in ctx
        .copies_api()
        .list(&ListParams::default().labels(&publish::copies_selector(sks)))
        .await?
    {
        let cns = c.namespace().unwrap_or_default();
        if cns == own || !publish::is_owned_copy(&c.metadata, sks) {
            continue;
        }
        delete_copy(ctx, &cns, &c.name_any()).await?;
    }
    set_finalizer(sks, ctx, false).await?;
    info!(set = %sks.name_any(), namespace = %own, "removed JWKS copies; finalizer released");
    Ok(Action::await_change())
}

/// Deletes one of keyturn's copies (already gone is fine).
async fn delete_copy(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    match Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => ctx.metrics.write("configmap_delete"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Adds or removes keyturn's finalizer, other finalizers untouched (a compare-and-swap on
/// the set's resourceVersion).
async fn set_finalizer(sks: &SigningKeySet, ctx: &Context, present: bool) -> Result<(), Error> {
    let mut fins: Vec<String> = sks
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        fins.push(FINALIZER.into());
    }
    let api: Api<SigningKeySet> =
        Api::namespaced(ctx.client.clone(), &sks.namespace().unwrap_or_default());
    let patch =
        json!({"metadata": {"finalizers": fins, "resourceVersion": sks.resource_version()}});
    match api
        .patch(
            &sks.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {}
        // Releasing the finalizer of a set that is already gone: done.
        Err(kube::Error::Api(e)) if e.code == 404 && !present => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    crate::fault::wrote();
    ctx.metrics.write("finalizer");
    Ok(())
}
