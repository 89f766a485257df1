//! Stage 1, read: the objects a set's reconcile decides from, fetched once.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::ResourceExt;
use kube::api::Api;

use super::{Context, Error, fanout};
use crate::consent;
use crate::crd::{SigningKeySet, SigningKeySetGrant};
use crate::publish;

/// What exists now for one set. The applier keeps it current as it writes.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// The internal Secret (`<name>-keyturn-keys`): the source of truth.
    pub internal: Option<Secret>,
    /// The signing Secret issuers mount.
    pub signing: Option<Secret>,
    /// The JWKS ConfigMap in the set's namespace.
    pub jwks: Option<ConfigMap>,
    /// Every JWKS ConfigMap by namespace: the set's own and the copies elsewhere (labelled
    /// as the set's; ownership is checked where it matters).
    pub copies: BTreeMap<String, ConfigMap>,
    /// Every namespace (metadata only), when the set asks for fan-out (cluster-wide mode).
    pub namespaces: Vec<Namespace>,
    /// Every SigningKeySetGrant, when the set asks for fan-out (cluster-wide mode).
    pub grants: Vec<SigningKeySetGrant>,
}

/// Reads the set's objects: its own three with a GET each; namespaces, grants and its copies
/// in other namespaces from the controller's watch caches (complete before anything is
/// decided from them: an empty cache would read as "no target" and remove copies), only when
/// the set asks for fan-out (or, for copies, still has some to remove). A cache may lag the
/// API server; every write is guarded by the resourceVersion it was decided from, so a stale
/// read fails its write and the reconcile runs again ([`Error::Stale`]).
pub async fn read(sks: &SigningKeySet, ctx: &Context) -> Result<Objects, Error> {
    let ns = sks.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let mut o = Objects {
        internal: secrets.get_opt(&sks.internal_secret_name()).await?,
        signing: secrets.get_opt(&sks.secret_name()).await?,
        jwks: cms.get_opt(&sks.config_map_name()).await?,
        ..Default::default()
    };
    let fan_out = consent::requested(sks);
    if fan_out && !ctx.namespace_only {
        let (Some(namespaces), Some(grants)) = (&ctx.namespaces, &ctx.grants) else {
            return Err(Error::Invariant(
                "fan-out needs the namespace and grant watch caches".into(),
            ));
        };
        o.namespaces = namespaces
            .complete()
            .await?
            .iter()
            .map(|n| Namespace {
                metadata: n.metadata.clone(),
                ..Default::default()
            })
            .collect();
        o.grants = grants
            .complete()
            .await?
            .iter()
            .map(|g| (**g).clone())
            .collect();
    }
    // In namespace-only mode there are no copies elsewhere to read (nor to write or remove).
    if (fan_out || fanout::has_finalizer(sks)) && !ctx.namespace_only {
        let Some(copies) = &ctx.copies else {
            return Err(Error::Invariant(
                "fan-out needs the JWKS copies' watch cache".into(),
            ));
        };
        for c in copies.complete().await? {
            if let Some(cns) = c.namespace()
                && cns != ns
                && publish::is_labelled_copy(&c.metadata, sks)
            {
                o.copies.insert(cns, (*c).clone());
            }
        }
    }
    if let Some(c) = o.jwks.clone() {
        o.copies.insert(ns, c);
    }
    Ok(o)
}
