//! Stage 1, read: the objects a set's reconcile decides from, fetched once.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, GetParams};

use super::{ClusterCaches, Context, Error};
use crate::core::consent;
use crate::core::crd::{SetRef, SigningKeySet, SigningKeySetGrant};
use crate::core::objects;

/// What exists now for one set. The applier keeps it current as it writes.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// The internal Secret (`<name>-keyturn-keys`): the source of truth.
    pub internal: Option<Secret>,
    /// The signing Secret issuers mount.
    pub signing: Option<Secret>,
    /// The JWKS ConfigMap in the set's namespace.
    pub jwks: Option<ConfigMap>,
    /// Every JWKS ConfigMap by namespace: the set's own and the copies elsewhere (with the
    /// set's copy name and labels; ownership, the owner uid, is checked where it matters). An
    /// object of another name that merely carries the labels is never one of them (I11).
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
pub async fn read(set: &SetRef, sks: &SigningKeySet, ctx: &Context) -> Result<Objects, Error> {
    let ns = &set.namespace;
    let (secrets, cms, names) = own(set, sks, ctx);
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
    let cluster = ctx.scope.cluster();
    if fan_out && let Some(c) = cluster {
        o.namespaces = c
            .namespaces
            .complete()
            .await?
            .iter()
            .map(|n| Namespace {
                metadata: n.metadata.clone(),
                ..Default::default()
            })
            .collect();
        o.grants = c
            .grants
            .complete()
            .await?
            .iter()
            .map(|g| (**g).clone())
            .collect();
    }
    // In namespace-only mode there are no copies elsewhere to read (nor to write or remove).
    if (fan_out || crate::core::crd::has_finalizer(sks))
        && let Some(ClusterCaches { copies, .. }) = cluster
    {
        let name = sks.config_map_name();
        let mut owned = vec![];
        for c in copies.complete().await? {
            if let Some(cns) = c.namespace()
                && cns != *ns
                && c.metadata.name.as_ref() == Some(&name)
                && objects::is_labelled_copy(&c.metadata, sks)
            {
                if objects::is_owned_copy(&c.metadata, sks) {
                    owned.push((cns, c.metadata.clone()));
                } else {
                    // In the way, not the set's: its metadata is all that is needed to leave it
                    // alone (and to say so).
                    let cm = ConfigMap {
                        metadata: c.metadata.clone(),
                        ..Default::default()
                    };
                    o.copies.insert(cns, cm);
                }
            }
        }
        o.copies.extend(copy_data(ctx, sks, owned).await?);
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
        .and_then(|s| s.data.as_ref()?.get(crate::core::state::STATE_KEY))
        .and_then(|b| crate::core::state::verification_generation(&b.0));
    if !sks.spec.verification_keys.is_empty() && recorded != sks.metadata.generation {
        let mut texts = vec![];
        let mut read = Sources::default();
        for src in &sks.spec.verification_keys {
            texts.push(source_text(&secrets, &cms, set, src, &mut read).await?);
        }
        o.verification_sources = Some(texts);
    }
    Ok(o)
}

/// The largest text keyturn takes from one verification source (a JWKS of a few dozen keys
/// fits several times over).
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;

/// The verification sources one reconcile read, by (kind, name): each object is read once
/// however many entries name it.
type Sources =
    std::collections::HashMap<(&'static str, String), Result<BTreeMap<String, Vec<u8>>, String>>;

/// The set's own copies in other namespaces, data included: from [`super::CopyData`] when it
/// holds the version the watch reports, otherwise one GET each (sent together, from the API
/// server's watch cache), remembered for the next reconcile. A copy gone meanwhile is left out.
async fn copy_data(
    ctx: &Context,
    sks: &SigningKeySet,
    owned: Vec<(String, ObjectMeta)>,
) -> Result<Vec<(String, ConfigMap)>, Error> {
    let fetched: Vec<Result<Option<(String, ConfigMap)>, kube::Error>> =
        futures::stream::iter(owned)
            .map(|(cns, meta)| async move {
                if let Some(c) = ctx.memory.copy_data.get(&meta) {
                    return Ok(Some((cns, c)));
                }
                let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &cns);
                let got = cached(&api, meta.name.as_deref().unwrap_or_default()).await?;
                Ok(got.map(|c| {
                    // Kept only when it is still the set's own copy (another object may have
                    // taken the name since the watch reported it): anything else is in the
                    // way, with its metadata only (I11).
                    if objects::is_owned_copy(&c.metadata, sks) {
                        ctx.memory.copy_data.put(&c);
                        (cns, c)
                    } else {
                        let metadata = c.metadata;
                        (
                            cns,
                            ConfigMap {
                                metadata,
                                ..Default::default()
                            },
                        )
                    }
                }))
            })
            .buffer_unordered(COPY_READS)
            .collect()
            .await;
    let mut out = vec![];
    for f in fetched {
        out.extend(f?);
    }
    Ok(out)
}

/// Copies read at once.
const COPY_READS: usize = 16;

/// The text under `src.key` in the ConfigMap or Secret `src` names, or why it is not taken.
/// The object's metadata is read first: one that does not consent (no
/// `keyturn.dev/verification-for` naming the set) is never read further, and a missing one is
/// refused in the same words (a set's author learns nothing of objects it was not given).
async fn source_text(
    secrets: &Api<Secret>,
    cms: &Api<ConfigMap>,
    set: &SetRef,
    src: &crate::core::crd::VerificationKeySource,
    read: &mut Sources,
) -> Result<Result<String, String>, Error> {
    let (kind, name) = match (&src.config_map_name, &src.secret_name) {
        (Some(name), _) => ("ConfigMap", name),
        (None, Some(name)) => ("Secret", name),
        (None, None) => return Ok(Err("neither configMapName nor secretName is set".into())),
    };
    let ns = &set.namespace;
    let key = (kind, name.clone());
    if !read.contains_key(&key) {
        let data = match kind {
            "ConfigMap" => consented(cms, name, &set.name).await?.map(|c: ConfigMap| {
                c.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect()
            }),
            _ => consented(secrets, name, &set.name).await?.map(|s: Secret| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            }),
        };
        read.insert(
            key.clone(),
            data.ok_or_else(|| {
                format!(
                    "{kind} {ns}/{name} does not exist or does not consent: keyturn reads a verification source only when it carries the annotation {}: {} (added by someone who may write it)",
                    crate::core::crd::VERIFICATION_ANNOTATION,
                    set.name
                )
            }),
        );
    }
    let data = match &read[&key] {
        Ok(d) => d,
        Err(why) => return Ok(Err(why.clone())),
    };
    Ok(match data.get(&src.key) {
        None => Err(format!("{kind} {ns}/{name} has no data key {:?}", src.key)),
        Some(b) if b.len() > MAX_SOURCE_BYTES => Err(format!(
            "{kind} {ns}/{name} holds more than {MAX_SOURCE_BYTES} bytes under {:?}",
            src.key
        )),
        Some(b) => Ok(String::from_utf8_lossy(b).into_owned()),
    })
}

/// The object `name` when it exists and consents to the set named `set` (its
/// `keyturn.dev/verification-for` annotation names it); its data is read only then.
async fn consented<K>(api: &Api<K>, name: &str, set: &str) -> Result<Option<K>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(meta) = api.get_metadata_opt(name).await? else {
        return Ok(None);
    };
    if !consents(&meta.metadata, set) {
        return Ok(None);
    }
    Ok(cached(api, name).await?.filter(|o| consents(o.meta(), set)))
}

/// True when `meta`'s `keyturn.dev/verification-for` names `set` (comma-separated names).
pub fn consents(meta: &ObjectMeta, set: &str) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(crate::core::crd::VERIFICATION_ANNOTATION))
        .is_some_and(|v| v.split(',').any(|n| n.trim() == set))
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
    set: &SetRef,
    sks: &SigningKeySet,
    ctx: &Context,
) -> (Api<Secret>, Api<ConfigMap>, (String, String, String)) {
    (
        Api::namespaced(ctx.client.clone(), &set.namespace),
        Api::namespaced(ctx.client.clone(), &set.namespace),
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
pub async fn still_current(
    set: &SetRef,
    sks: &SigningKeySet,
    ctx: &Context,
    o: &Objects,
) -> Result<(), Error> {
    let (secrets, cms, names) = own(set, sks, ctx);
    let changed = tokio::try_join!(
        changed_since(&secrets, &names.0, o.internal.as_ref()),
        changed_since(&secrets, &names.1, o.signing.as_ref()),
        changed_since(&cms, &names.2, o.copies.get(&set.namespace)),
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
