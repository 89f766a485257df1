//! The JWKS copies in other namespaces: written to every consented target, removed from
//! namespaces no longer selected, and guarded by a finalizer so that deleting the set
//! removes them too (an ownerReference cannot reach across namespaces).

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use serde_json::json;
use tracing::info;

use super::read::Objects;
use super::{Context, Error};
use crate::core::consent::{self, FanOut};
use crate::core::crd::{FINALIZER, SetRef, SigningKeySet, has_finalizer};
use crate::core::objects;
use crate::operator::write::{self, WriteError};

/// The data of keyturn's own JWKS copies in other namespaces, by (namespace, name), with the
/// resourceVersion it was seen at: the copies' watch holds metadata only (an object that
/// merely carries keyturn's labels costs no more), and a copy's data is read (one GET) only
/// when it is a live set's own copy whose version this map does not hold. keyturn's own
/// writes keep it current, so a steady set reads nothing.
#[derive(Default)]
pub struct CopyData(std::sync::Mutex<std::collections::HashMap<(String, String), ConfigMap>>);

impl CopyData {
    /// The copy at `meta`'s version, when known.
    pub fn get(&self, meta: &ObjectMeta) -> Option<ConfigMap> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let c = m.get(&CopyData::key(meta))?;
        (c.metadata.resource_version == meta.resource_version && c.metadata.uid == meta.uid)
            .then(|| c.clone())
    }

    /// Remembers `copy` as the API server returned it (without its managedFields).
    pub fn put(&self, copy: &ConfigMap) {
        let mut c = copy.clone();
        c.metadata.managed_fields = None;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(CopyData::key(&c.metadata), c);
    }

    /// Forgets the copy at `meta`'s place (deleted).
    pub fn forget(&self, meta: &ObjectMeta) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&CopyData::key(meta));
    }

    fn key(meta: &ObjectMeta) -> (String, String) {
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

/// Copies written at once.
const PUBLISH_CONCURRENCY: usize = 16;

/// Writes `bytes` as the JWKS in every target (concurrently), keeping `copies` current.
/// Returns the copies that could not be written, as `namespace: error`, or
/// [`Error::Stale`] when a copy's write failed its precondition because the cache it was
/// decided from lagged. With `revoking` (a revoked key's replacement waits for this write), a
/// copy in another namespace that changed under the write is one more failure instead: its
/// writers cannot hold the revocation back by rewriting it.
pub async fn publish(
    set: &SetRef,
    sks: &SigningKeySet,
    ctx: &Context,
    targets: &BTreeSet<String>,
    copies: &mut BTreeMap<String, ConfigMap>,
    bytes: &[u8],
    revoking: bool,
) -> Result<Vec<String>, Error> {
    let own = &set.namespace;
    let current: &BTreeMap<String, ConfigMap> = copies;
    let results: Vec<(String, Result<Option<ConfigMap>, WriteError>)> =
        futures::stream::iter(targets.iter().cloned())
            .map(|t| {
                let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &t);
                async move {
                    let desired = objects::jwks_config_map(set, sks, &t, bytes);
                    let r = write::write(
                        &api,
                        current.get(&t),
                        desired,
                        |m| objects::is_owned_copy(m, sks),
                        objects::same_config_map,
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
                ctx.memory.echoes.wrote(&o);
                if t != *own {
                    ctx.memory.copy_data.put(&o);
                }
                copies.insert(t, o);
            }
            Ok(None) => {}
            Err(e) if e.lagged().is_some() && revoking && t != *own => failures.push(format!(
                "{t}: changed by someone else while keyturn wrote it"
            )),
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
pub async fn hold_copies(set: &SetRef, sks: &SigningKeySet, ctx: &Context) -> Result<(), Error> {
    if consent::requested(sks) && !ctx.scope.namespace_only() && !has_finalizer(sks) {
        set_finalizer(set, sks, ctx, true).await?;
    }
    Ok(())
}

/// Removes keyturn's copies from namespaces that are no longer targets (owned copies only),
/// and releases the finalizer once the set asks for no fan-out and has no copies left.
pub async fn release_copies(
    set: &SetRef,
    sks: &SigningKeySet,
    ctx: &Context,
    objects: &mut Objects,
    spread: &FanOut,
) -> Result<(), Error> {
    remove_copies(set, sks, ctx, objects, |cns| !spread.targets.contains(cns)).await?;
    if !consent::requested(sks)
        && has_finalizer(sks)
        && objects.copies.keys().all(|c| *c == set.namespace)
    {
        set_finalizer(set, sks, ctx, false).await?;
    }
    Ok(())
}

/// Removes keyturn's copies from namespaces where no grant names the set any more, whatever
/// the set's state (a set refused before any plan still loses the copies consent no longer
/// covers, I8). Decided from the grants alone: a spec keyturn cannot act on does not stop it.
pub async fn release_withdrawn(
    set: &SetRef,
    sks: &SigningKeySet,
    ctx: &Context,
    objects: &mut Objects,
) -> Result<(), Error> {
    if ctx.scope.namespace_only() || !consent::requested(sks) {
        // Without fan-out asked for, the copies left go on the next full reconcile (or by the
        // finalizer); grants were not read.
        return Ok(());
    }
    let consenting = consent::consenting(set, sks, &objects.grants);
    remove_copies(set, sks, ctx, objects, |cns| {
        cns != set.namespace && !consenting.contains(cns)
    })
    .await
}

/// Deletes the set's own copies in the namespaces `gone` names (never the set's namespace,
/// never an object keyturn did not make).
async fn remove_copies(
    set: &SetRef,
    sks: &SigningKeySet,
    ctx: &Context,
    objects: &mut Objects,
    gone: impl Fn(&str) -> bool,
) -> Result<(), Error> {
    let stale: Vec<(String, ConfigMap)> = objects
        .copies
        .iter()
        .filter(|(cns, c)| {
            **cns != set.namespace && gone(cns.as_str()) && objects::is_owned_copy(&c.metadata, sks)
        })
        .map(|(cns, c)| (cns.clone(), c.clone()))
        .collect();
    for (cns, c) in stale {
        delete_copy(ctx, &cns, &c.metadata).await?;
        info!(from = %cns, "removed JWKS copy from a namespace that is no longer a target");
        objects.copies.remove(&cns);
    }
    Ok(())
}

/// Deletion: remove the JWKS copies in other namespaces, then release the finalizer.
/// Objects in the set's namespace go with the garbage collector (ownerReferences).
pub async fn finalize(set: &SetRef, sks: &SigningKeySet, ctx: &Context) -> Result<Action, Error> {
    if !has_finalizer(sks) {
        return Ok(Action::await_change());
    }
    // Metadata only: labelled objects that are not the set's copies cost nothing to skip.
    for c in ctx
        .copies_api()
        .list_metadata(&ListParams::default().labels(&objects::copies_selector(set)))
        .await?
    {
        let cns = c.namespace().unwrap_or_default();
        // The set's copies under its copy name only: the owner annotation alone proves
        // nothing (anyone who can read a copy can copy it onto an object of their own, I4).
        if cns == set.namespace
            || c.metadata.name.as_deref() != Some(sks.config_map_name().as_str())
            || !objects::is_owned_copy(&c.metadata, sks)
        {
            continue;
        }
        delete_copy(ctx, &cns, &c.metadata).await?;
    }
    set_finalizer(set, sks, ctx, false).await?;
    info!("removed JWKS copies; finalizer released");
    Ok(Action::await_change())
}

/// Deletes one of keyturn's copies, the very object `copy` describes (uid and
/// resourceVersion preconditions: an object recreated or changed under that name since is
/// not deleted, and the reconcile runs again, [`Error::Stale`]); already gone is fine.
async fn delete_copy(ctx: &Context, namespace: &str, copy: &ObjectMeta) -> Result<(), Error> {
    let name = copy.name.clone().unwrap_or_default();
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: copy.uid.clone(),
            resource_version: copy.resource_version.clone(),
        }),
        ..Default::default()
    };
    ctx.memory.copy_data.forget(copy);
    match Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
        .delete(&name, &dp)
        .await
    {
        Ok(_) => ctx.metrics.write("configmap_delete"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            return Err(Error::Stale(format!("the JWKS copy in {namespace}")));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Adds or removes keyturn's finalizer, other finalizers untouched (a compare-and-swap on
/// the set's resourceVersion).
async fn set_finalizer(
    set: &SetRef,
    sks: &SigningKeySet,
    ctx: &Context,
    present: bool,
) -> Result<(), Error> {
    let mut fins: Vec<String> = sks
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        fins.push(FINALIZER.into());
    }
    let api: Api<SigningKeySet> = Api::namespaced(ctx.client.clone(), &set.namespace);
    let patch =
        json!({"metadata": {"finalizers": fins, "resourceVersion": sks.resource_version()}});
    match api
        .patch(&set.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        // Releasing the finalizer of a set that is already gone: done.
        Err(kube::Error::Api(e)) if e.code == 404 && !present => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    crate::operator::fault::wrote();
    ctx.metrics.write("finalizer");
    Ok(())
}
