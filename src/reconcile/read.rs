//! Stage 1, read: the objects a set's reconcile decides from, fetched once.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

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
    /// Every namespace, when the set asks for fan-out (cluster-wide mode).
    pub namespaces: Vec<Namespace>,
    /// Every SigningKeySetGrant, when the set asks for fan-out (cluster-wide mode).
    pub grants: Vec<SigningKeySetGrant>,
}

/// Reads the set's objects. Namespaces, grants and copies elsewhere are listed only when the
/// set asks for fan-out (or still has copies to remove).
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
        o.namespaces = Api::<Namespace>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        o.grants = Api::<SigningKeySetGrant>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
    }
    if fan_out || fanout::has_finalizer(sks) {
        for c in ctx
            .copies_api()
            .list(&ListParams::default().labels(&publish::copies_selector(sks)))
            .await?
        {
            if let Some(cns) = c.namespace()
                && cns != ns
            {
                o.copies.insert(cns, c);
            }
        }
    }
    if let Some(c) = o.jwks.clone() {
        o.copies.insert(ns, c);
    }
    Ok(o)
}
