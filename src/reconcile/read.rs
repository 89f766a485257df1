//! Stage 1, read: the objects a set's reconcile decides from, fetched once.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, GetParams};

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
    /// The Secret named by `spec.import`, read only while the set has no key (`Err` when it
    /// does not exist).
    pub import_source: Option<Result<Secret, String>>,
    /// The text of each `spec.verificationKeys` source, in order (`Err` saying what is
    /// missing), read only when the stored state has not recorded this generation's keys.
    pub verification_sources: Option<Vec<Result<String, String>>>,
}

/// Reads the set's objects: its own three with a GET each, sent together and answered from
/// the API server's watch cache (`resourceVersion=0`: no etcd read); namespaces, grants
/// and its copies in other namespaces from the controller's watch caches (complete before
/// anything is decided from them: an empty cache would read as "no target" and remove
/// copies), only when the set asks for fan-out (or, for copies, still has some to remove). A
/// cache may lag the API server; every write is guarded by the resourceVersion it was decided
/// from, so a stale read fails its write and the reconcile runs again ([`Error::Stale`]); the
/// signing Secret and the JWKS, which follow the internal Secret, are written only once the
/// internal Secret is known current ([`super::apply`]).
pub async fn read(sks: &SigningKeySet, ctx: &Context) -> Result<Objects, Error> {
    let ns = sks.namespace().unwrap_or_default();
    let (secrets, cms, names) = own(sks, ctx, &ns);
    let (internal, signing, jwks) = tokio::try_join!(
        cached(&secrets, &names.0),
        cached(&secrets, &names.1),
        cached(&cms, &names.2),
    )?;
    let mut o = Objects {
        internal,
        signing,
        jwks,
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
        o.copies.insert(ns.clone(), c);
    }
    if let Some(import) = &sks.spec.import
        && o.internal.is_none()
    {
        o.import_source = Some(
            secrets
                .get_opt(&import.secret_name)
                .await?
                .ok_or_else(|| format!("Secret {ns}/{} does not exist", import.secret_name)),
        );
    }
    let recorded = o
        .internal
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get(crate::state::STATE_KEY))
        .and_then(|b| crate::state::verification_generation(&b.0));
    if !sks.spec.verification_keys.is_empty() && recorded != sks.metadata.generation {
        let mut texts = vec![];
        for src in &sks.spec.verification_keys {
            texts.push(source_text(&secrets, &cms, &ns, src).await?);
        }
        o.verification_sources = Some(texts);
    }
    Ok(o)
}

/// The text under `src.key` in the ConfigMap or Secret `src` names, or what is missing.
async fn source_text(
    secrets: &Api<Secret>,
    cms: &Api<ConfigMap>,
    ns: &str,
    src: &crate::crd::VerificationKeySource,
) -> Result<Result<String, String>, Error> {
    let missing = |kind: &str, name: &str| format!("{kind} {ns}/{name} does not exist");
    let no_key =
        |kind: &str, name: &str| format!("{kind} {ns}/{name} has no data key {:?}", src.key);
    Ok(match (&src.config_map_name, &src.secret_name) {
        (Some(name), _) => match cms.get_opt(name).await? {
            None => Err(missing("ConfigMap", name)),
            Some(cm) => cm
                .data
                .and_then(|mut d| d.remove(&src.key))
                .ok_or_else(|| no_key("ConfigMap", name)),
        },
        (None, Some(name)) => match secrets.get_opt(name).await? {
            None => Err(missing("Secret", name)),
            Some(sec) => sec
                .data
                .and_then(|mut d| d.remove(&src.key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .ok_or_else(|| no_key("Secret", name)),
        },
        (None, None) => Err("neither configMapName nor secretName is set".into()),
    })
}

/// `name` as the API server's watch cache holds it (`resourceVersion=0`), `None` when absent.
/// The cache may lag etcd by a moment; see [`read`] for why that is safe.
pub async fn cached<K>(api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_with(name, &GetParams::any()).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where the set's own objects live and their names: (internal Secret, signing Secret, JWKS
/// ConfigMap).
fn own(
    sks: &SigningKeySet,
    ctx: &Context,
    ns: &str,
) -> (Api<Secret>, Api<ConfigMap>, (String, String, String)) {
    (
        Api::namespaced(ctx.client.clone(), ns),
        Api::namespaced(ctx.client.clone(), ns),
        (
            sks.internal_secret_name(),
            sks.secret_name(),
            sks.config_map_name(),
        ),
    )
}

/// A refusal is decided from the same cached copies, and no precondition guards it as one
/// guards a write: before it is reported, the set's three objects' metadata is read again
/// from etcd, and any that changed, appeared or went since `o` was read (or written) make the
/// reconcile [`Error::Stale`] instead (a ConfigMap in the way that its owner just deleted is
/// not reported as in the way for another minute).
pub async fn still_current(sks: &SigningKeySet, ctx: &Context, o: &Objects) -> Result<(), Error> {
    let ns = sks.namespace().unwrap_or_default();
    let (secrets, cms, names) = own(sks, ctx, &ns);
    let changed = tokio::try_join!(
        changed_since(&secrets, &names.0, o.internal.as_ref()),
        changed_since(&secrets, &names.1, o.signing.as_ref()),
        changed_since(&cms, &names.2, o.copies.get(&ns)),
    )?;
    let changed: Vec<&str> = [
        (changed.0, &names.0),
        (changed.1, &names.1),
        (changed.2, &names.2),
    ]
    .into_iter()
    .filter(|(c, _)| *c)
    .map(|(_, n)| n.as_str())
    .collect();
    if changed.is_empty() {
        Ok(())
    } else {
        Err(Error::Stale(changed.join(", ")))
    }
}

/// True when object `name`, as etcd holds it now (its metadata, one GET), is not `read`: it
/// changed since, appeared or went.
pub async fn changed_since<K>(
    api: &Api<K>,
    name: &str,
    read: Option<&K>,
) -> Result<bool, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let now = api.get_metadata_opt(name).await?;
    Ok(now
        .as_ref()
        .and_then(|m| m.metadata.resource_version.as_ref())
        != read.and_then(|o| o.meta().resource_version.as_ref()))
}
