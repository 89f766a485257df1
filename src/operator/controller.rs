//! Wiring: the kube-runtime controller over SigningKeySets and the objects keyturn owns.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::core::crd::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, SET_LABEL, SetRef, SigningKeySet, SigningKeySetGrant,
};
use crate::core::objects::{SOURCE_NAMESPACE_LABEL, is_copy_elsewhere};
use crate::operator::echo::Echoes;
use crate::operator::reconcile::{
    Cache, Clock, ClusterCaches, Context, Memory, Policy, Scope, error_policy, reconcile,
};
use crate::runtime::metrics::Metrics;
use crate::runtime::scoped;

/// Options for [`run`].
pub struct Options {
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// Name reported on Events.
    pub instance: String,
    /// Namespace-only mode (needs `namespace`): no fan-out, no watch or read outside it.
    pub namespace_only: bool,
    /// The cluster admin's floors under every schedule and quota of sets per namespace.
    pub floors: crate::operator::reconcile::Floors,
    /// The issuer URL each set may claim (`--public-url`, `--issuer`): its `Discovery` condition.
    pub issuers: Arc<crate::core::issuer::Issuers>,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The CRD is not installed or the API server is unreachable.
    #[error(
        "cannot list SigningKeySets ({0}); is the CRD installed? `keyturn crd | kubectl apply -f -`"
    )]
    NoCrd(#[source] kube::Error),
    /// A watch the process needs cannot start (RBAC, a missing CRD, an unreachable server).
    #[error(
        "cannot list {what} ({source}); keyturn needs to watch them: check its RBAC (deploy/) and CRDs (crds/)"
    )]
    CannotWatch {
        /// What could not be listed, e.g. `Secrets in namespace identity`.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Lists once everything the process will watch, so that a missing CRD or RBAC rule fails
/// the start with a message naming it instead of a replica that looks healthy and does
/// nothing. Each list is tried [`PREFLIGHT_ATTEMPTS`] times, a second apart. Called once at
/// start-up, before any replica competes for leadership.
pub async fn preflight(
    client: &Client,
    namespace: Option<&str>,
    namespace_only: bool,
) -> Result<(), StartError> {
    let lp = ListParams::default().limit(1);
    let owned = ListParams::default()
        .limit(1)
        .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let scope = namespace.map_or("every namespace".to_string(), |n| format!("namespace {n}"));
    retry(scoped::<SigningKeySet>(client, namespace), &lp)
        .await
        .map_err(StartError::NoCrd)?;
    let cannot = |what: String| move |source| StartError::CannotWatch { what, source };
    retry(scoped::<Secret>(client, namespace), &owned)
        .await
        .map_err(cannot(format!("Secrets in {scope}")))?;
    if namespace_only {
        retry(scoped::<ConfigMap>(client, namespace), &owned)
            .await
            .map_err(cannot(format!("ConfigMaps in {scope}")))?;
        return Ok(());
    }
    retry(Api::<ConfigMap>::all(client.clone()), &owned)
        .await
        .map_err(cannot("ConfigMaps in every namespace (JWKS copies)".into()))?;
    retry(Api::<Namespace>::all(client.clone()), &lp)
        .await
        .map_err(cannot("Namespaces".into()))?;
    retry(Api::<SigningKeySetGrant>::all(client.clone()), &lp)
        .await
        .map_err(cannot("SigningKeySetGrants in every namespace".into()))?;
    Ok(())
}

/// Attempts of each start-up list.
pub const PREFLIGHT_ATTEMPTS: u32 = 3;

async fn retry<K>(api: Api<K>, lp: &ListParams) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut attempt = 1;
    loop {
        match api.list(lp).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < PREFLIGHT_ATTEMPTS => {
                warn!(error = %e, attempt, "start-up check failed; retrying");
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The controller's backoff over all its watches together: none, because each watch backs
/// off on its own (`default_backoff`, client-go's 0.8 s to 30 s). kube-runtime's default
/// here paused *every* watch whenever any one of them failed, and after an API server
/// restart each watch's 410 (its resourceVersion expired) surfaced in turn, doubling the
/// pause: a spec change went unseen for 126 s (tests/it/outage.rs now asserts it is seen).
struct EachWatchBacksOff;

impl Iterator for EachWatchBacksOff {
    type Item = std::time::Duration;
    fn next(&mut self) -> Option<std::time::Duration> {
        Some(std::time::Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for EachWatchBacksOff {
    fn reset(&mut self) {}
}

/// Sets reconciled at once. Unbounded, 1,000 new sets meant 1,000 reconciles holding their
/// reads and writes in memory together and queueing at the API server (124 MiB, 43 s); 16
/// gave 54 MiB, 34 s; 48 about 48 MiB, 20-22 s (docs/benchmarks.md).
pub const RECONCILE_CONCURRENCY: u16 = 48;

/// Runs the controller until `stop` resolves; in-flight reconciles finish first.
pub async fn run(
    client: Client,
    opts: Options,
    clock: Clock,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let sets: Api<SigningKeySet> = scoped(&client, opts.namespace.as_deref());
    let secrets: Api<PartialObjectMeta<Secret>> = scoped(&client, opts.namespace.as_deref());
    // Only keyturn's own objects are watched: never every Secret of the cluster.
    let owned =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let reporter = Reporter {
        controller: "keyturn".into(),
        instance: Some(opts.instance.clone()),
    };
    let client_for_watch = client.clone();
    // Namespaces (cluster-wide mode), metadata only, one watch for two uses: the cache tells a
    // namespace being deleted (its sets go quietly), the events trigger the sets whose JWKS
    // targets may change (below).
    // Grants (cluster-wide mode), likewise: the cache is what fan-out reads consent from, the
    // events trigger the sets a grant names.
    let (namespaces, namespace_events, grants, grant_events) = if opts.namespace_only {
        (None, None, None, None)
    } else {
        let (namespaces, events) = cached(
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
            )
            .modify(|n| n.metadata.managed_fields = None),
            |_| true,
        );
        let (grants, grant_events) = cached(
            watcher(
                Api::<SigningKeySetGrant>::all(client.clone()),
                watcher::Config::default(),
            )
            .modify(|g| g.metadata.managed_fields = None),
            |_| true,
        );
        let (events, grant_events) = (events.touched_objects(), grant_events.touched_objects());
        (
            Some(namespaces),
            Some(events),
            Some(grants),
            Some(grant_events),
        )
    };
    // keyturn's ConfigMaps in every namespace (cluster-wide mode): JWKS copies live in many
    // namespaces and cannot carry ownerReferences, so any change maps back to its set by
    // label. Metadata only, and only what keyturn reads of it (an object that merely carries
    // keyturn's labels costs a few hundred bytes, whatever it holds, I11); the copies outside
    // their set's namespace are kept for fan-out to read instead of a LIST per reconcile, their
    // data read only for a live set's own copies ([`crate::operator::reconcile::CopyData`]); a set's own
    // JWKS ConfigMap is read with a GET and not kept.
    let ctx_echoes: Arc<Echoes> = Default::default();
    let copy_data: Arc<crate::operator::reconcile::CopyData> = Default::default();
    let (copies, copy_events) = if opts.namespace_only {
        (None, None)
    } else {
        let (cache, events) = cached(
            watcher(
                Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
                owned.clone(),
            )
            .modify(slim_copy),
            |c: &PartialObjectMeta<ConfigMap>| is_copy_elsewhere(&c.metadata),
        );
        let echoes = ctx_echoes.clone();
        let data = copy_data.clone();
        let events = events.try_filter_map(move |ev| {
            if let watcher::Event::Delete(c) = &ev {
                data.forget(&c.metadata);
            }
            futures::future::ready(Ok(touched(ev, &echoes)))
        });
        (Some(cache), Some(events))
    };
    // The sets' cache is filled from every event; only events that are not the echo of
    // keyturn's own status patch trigger a reconcile.
    let (store, writer) = kube::runtime::reflector::store();
    let ctx = Arc::new(Context {
        reporter,
        client,
        clock,
        metrics,
        scope: match (namespaces, grants, copies) {
            (Some(namespaces), Some(grants), Some(copies)) => Scope::Cluster(ClusterCaches {
                namespaces,
                grants,
                copies,
            }),
            _ => Scope::NamespaceOnly(opts.namespace.clone().unwrap_or_default()),
        },
        sets: Some(store.clone()),
        policy: Policy {
            floors: opts.floors.clone(),
            issuers: opts.issuers.clone(),
        },
        memory: Memory {
            copy_data,
            echoes: ctx_echoes,
            ..Default::default()
        },
    });
    info!(namespace = ?opts.namespace, "keyturn controller starting");
    {
        // Said once every cluster-wide cache has its first full list: from then on, a change to
        // a namespace, a grant or a labelled ConfigMap wakes the sets it concerns (before it, a
        // change is seen only by a set's own reads and retries).
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let filled = async {
                if let Some(c) = ctx.scope.cluster() {
                    c.namespaces.complete().await?;
                    c.grants.complete().await?;
                    c.copies.complete().await?;
                }
                Ok::<_, crate::operator::reconcile::Error>(())
            };
            if filled.await.is_ok() {
                info!("watch caches filled");
            }
        });
    }
    let ctx_for_gone = ctx.clone();
    let mut set_events_seen = SetEvents {
        ctx: ctx.clone(),
        listed: None,
    };
    let set_events = kube::runtime::reflector(
        writer,
        watcher(sets, watcher::Config::default()).modify(slim),
    )
    .default_backoff()
    .try_filter_map(move |ev| futures::future::ready(Ok(set_events_seen.applied(ev))));
    let controller = Controller::for_stream(set_events, store.clone())
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        )
        .trigger_backoff(EachWatchBacksOff);
    let scope = opts.namespace.clone();
    // keyturn's own objects, metadata only (the reconcile reads what it needs), minus echoes.
    let mut controller = controller.owns_stream(owned_events(
        secrets,
        owned.clone(),
        ctx.memory.echoes.clone(),
    ));
    if opts.namespace_only {
        // Everything keyturn writes lives in the watched namespace. Mapped by label, as in
        // cluster-wide mode, not by ownerReference: a ConfigMap with keyturn's labels that is
        // in the way of a set's JWKS (refused as foreign: no ownerReference to the set)
        // triggers the set when it is deleted or changed. One without them is not watched;
        // the refusal's retry finds it gone.
        controller = controller.watches_stream(
            owned_events(
                scoped::<PartialObjectMeta<ConfigMap>>(&client_for_watch, scope.as_deref()),
                owned.clone(),
                ctx.memory.echoes.clone(),
            ),
            move |cm| set_of_configmap(&cm, scope.as_deref()),
        );
    } else if let (Some(namespace_events), Some(grant_events), Some(copy_events)) =
        (namespace_events, grant_events, copy_events)
    {
        let (store_ns, store_grants) = (store.clone(), store.clone());
        controller = controller
            .watches_stream(copy_events, move |cm| {
                set_of_configmap(&cm, scope.as_deref())
            })
            // A namespace created, labelled or deleted may change where a set's JWKS belongs.
            .watches_stream(namespace_events, move |ns| {
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
            })
            // A grant given or withdrawn changes where the sets it names may publish.
            .watches_stream(grant_events, move |g| {
                store_grants
                    .state()
                    .into_iter()
                    .filter(|s| {
                        crate::core::consent::requested(s)
                            && g.spec.from.iter().any(|f| {
                                s.namespace().as_ref() == Some(&f.namespace)
                                    && f.name.as_ref().is_none_or(|n| *n == s.name_any())
                            })
                    })
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            });
    }
    controller
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            let ctx = ctx_for_gone.clone();
            async move {
                match res {
                    Ok((obj, _)) => {
                        debug!(set = %obj.name, namespace = ?obj.namespace, "reconciled")
                    }
                    // A trigger (its objects being garbage-collected) for a set that is gone:
                    // normal after a deletion, and the last word on its metric series (any
                    // reconcile that was in flight has finished by now).
                    Err(kube::runtime::controller::Error::ObjectNotFound(r)) => {
                        debug!(set = %r.name, namespace = ?r.namespace, "set is gone");
                        if let Some(namespace) = r.namespace.clone() {
                            let name = r.name.clone();
                            forget_set(&ctx, &SetRef { namespace, name });
                        }
                    }
                    // error_policy has already logged it (or kept a teardown quiet).
                    Err(kube::runtime::controller::Error::ReconcilerFailed(e, r)) => {
                        debug!(set = %r.name, namespace = ?r.namespace, error = %e, "reconcile failed")
                    }
                    Err(e) => warn!(error = %e, "reconcile error"),
                }
            }
        })
        .await;
    info!("keyturn controller stopped");
}

/// A watch cache filled from `events` with the objects `keep` accepts (an object it no longer
/// accepts leaves the cache), complete once its first full list is in; and the events, passed
/// on after the cache holds them.
fn cached<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    keep: impl Fn(&K) -> bool + Send + 'static,
) -> (
    Cache<K>,
    impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + std::fmt::Debug + 'static,
{
    use watcher::Event;
    let (store, mut writer) = kube::runtime::reflector::store();
    let (ready, ready_rx) = tokio::sync::watch::channel(false);
    let stream = events.default_backoff().inspect_ok(move |ev| {
        match ev {
            Event::Apply(o) | Event::InitApply(o) if !keep(o) => {
                writer.apply_watcher_event(&Event::Delete(o.clone()))
            }
            ev => writer.apply_watcher_event(ev),
        }
        if matches!(ev, Event::InitDone) {
            ready.send_replace(true);
        }
    });
    (Cache::new(store, ready_rx), stream)
}

/// What keyturn keeps of a labelled ConfigMap's metadata: its identity, version, keyturn's
/// own labels and the owner-uid annotation; nothing else, whatever size it came with.
pub fn slim_copy(c: &mut PartialObjectMeta<ConfigMap>) {
    let m = &mut c.metadata;
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    if let Some(l) = m.labels.as_mut() {
        l.retain(|k, _| k == MANAGED_BY_LABEL || k == SET_LABEL || k == SOURCE_NAMESPACE_LABEL);
    }
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k == crate::core::objects::OWNER_UID_ANNOTATION);
    }
}

/// What a cached SigningKeySet does not need (no reconcile or route reads it): its
/// managedFields and kubectl's copy of the whole applied object. About half of a set's size.
pub fn slim(sks: &mut SigningKeySet) {
    sks.metadata.managed_fields = None;
    if let Some(a) = sks.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// What the controller does with each event of its one watch of the sets, beyond the
/// reflector storing it.
struct SetEvents {
    ctx: Arc<Context>,
    /// The sets of a relist in progress.
    listed: Option<std::collections::BTreeSet<SetRef>>,
}

impl SetEvents {
    /// The object of a created or changed set, unless that change is keyturn's own status
    /// patch coming back (the cache has it; a reconcile would find nothing to do). The
    /// reflector has stored the event before it gets here, so the status keyturn wrote is no
    /// longer needed in place of the cache's. A deleted set's per-set state and metric series
    /// are dropped, and after each relist those of every set that no longer exists (a
    /// deletion the watch missed).
    fn applied(&mut self, ev: watcher::Event<SigningKeySet>) -> Option<SigningKeySet> {
        let ctx = &self.ctx;
        match &ev {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                if let Some(k) = SetRef::of(s) {
                    ctx.memory.written.forget(&k);
                    if matches!(ev, watcher::Event::InitApply(_))
                        && let Some(l) = self.listed.as_mut()
                    {
                        l.insert(k);
                    }
                }
            }
            watcher::Event::Init => self.listed = Some(Default::default()),
            watcher::Event::InitDone => {
                if let Some(l) = self.listed.take() {
                    for (namespace, name) in ctx.metrics.sets() {
                        let set = SetRef { namespace, name };
                        if !l.contains(&set) {
                            forget_set(ctx, &set);
                        }
                    }
                }
            }
            watcher::Event::Delete(s) => {
                if let Some(set) = SetRef::of(s) {
                    debug!(set = %set.name, namespace = %set.namespace, "set deleted; dropping its metric series");
                    forget_set(ctx, &set);
                }
            }
        }
        match ev {
            watcher::Event::Delete(s) => {
                ctx.memory.echoes.forget(&s);
                None
            }
            ev => touched(ev, &ctx.memory.echoes),
        }
    }
}

/// The set a keyturn-labelled ConfigMap (a JWKS, its copy elsewhere, or something in the way
/// of one) belongs to, by its labels; none for a set outside this controller's `scope`
/// (another operator's business).
fn set_of_configmap(
    cm: &impl kube::Resource,
    scope: Option<&str>,
) -> Option<ObjectRef<SigningKeySet>> {
    let labels = cm.meta().labels.as_ref()?;
    match (labels.get(SET_LABEL), labels.get(SOURCE_NAMESPACE_LABEL)) {
        (Some(_), Some(ns)) if scope.is_some_and(|s| s != ns) => None,
        (Some(set), Some(ns)) => Some(ObjectRef::new(set).within(ns)),
        _ => None,
    }
}

/// Events of keyturn's own objects (by label), metadata only, minus the echoes of its writes.
fn owned_events<K>(
    api: Api<PartialObjectMeta<K>>,
    owned: watcher::Config,
    echoes: std::sync::Arc<Echoes>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + std::fmt::Debug + 'static,
{
    watcher(api, owned)
        .default_backoff()
        .try_filter_map(move |ev| futures::future::ready(Ok(touched(ev, &echoes))))
}

/// The object of any change to one of keyturn's objects (a deletion included), unless the
/// change is keyturn's own write coming back.
fn touched<K>(ev: watcher::Event<K>, echoes: &Echoes) -> Option<K>
where
    K: kube::Resource<DynamicType = ()>,
{
    match ev {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) if !echoes.is_echo(&o) => Some(o),
        watcher::Event::Delete(o) => {
            echoes.forget(&o);
            Some(o)
        }
        _ => None,
    }
}

/// A set is gone: its metric series and its error streak go too.
fn forget_set(ctx: &Context, set: &SetRef) {
    ctx.metrics.forget_set(&set.namespace, &set.name);
    ctx.memory.backoff.forget(set);
    ctx.memory.written.forget(set);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(labels: &[(&str, &str)]) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some("auth-jwks".into());
        c.metadata.namespace = Some("identity".into());
        c.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        c
    }

    fn named(name: &str, keep: bool) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("ns".into());
        c.metadata.labels = Some([("keep".to_string(), keep.to_string())].into());
        c
    }

    fn names(c: &Cache<ConfigMap>) -> Vec<String> {
        let mut n: Vec<String> = c.store.state().iter().map(|o| o.name_any()).collect();
        n.sort();
        n
    }

    /// The cache a reconcile reads: complete only after the first full list (an empty cache
    /// never reads as "no object"); objects `keep` refuses never in it, and leaving it when
    /// they stop being kept; deletions and a relist (which drops what the watch missed)
    /// applied; every event passed on after the cache holds it.
    #[tokio::test]
    async fn cached_follows_lists_changes_deletions_and_relists() {
        use watcher::Event::*;
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (cache, events) = cached(rx, |c: &ConfigMap| {
            c.labels().get("keep").map(String::as_str) == Some("true")
        });
        let mut events = std::pin::pin!(events);
        let mut step = async |ev: watcher::Event<ConfigMap>| {
            tx.unbounded_send(Ok(ev)).unwrap();
            events.next().await.unwrap().unwrap()
        };
        step(Init).await;
        step(InitApply(named("a", true))).await;
        step(InitApply(named("foreign", false))).await;
        let pending = tokio::time::timeout(std::time::Duration::ZERO, cache.complete()).await;
        assert!(pending.is_err(), "complete before the list is");
        assert!(matches!(step(InitDone).await, InitDone));
        let all = cache.complete().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(names(&cache), ["a"]);

        // A change passed on once stored; an object no longer kept leaves.
        let ev = step(Apply(named("b", true))).await;
        assert!(matches!(ev, Apply(ref o) if o.name_any() == "b"));
        assert_eq!(names(&cache), ["a", "b"]);
        step(Apply(named("a", false))).await;
        assert_eq!(names(&cache), ["b"]);
        step(Delete(named("b", true))).await;
        assert!(names(&cache).is_empty());

        // A relist: `c` only; `d`, deleted while the watch was down, is not brought back.
        step(Apply(named("d", true))).await;
        step(Init).await;
        step(InitApply(named("c", true))).await;
        step(InitDone).await;
        assert_eq!(names(&cache), ["c"]);
    }

    #[test]
    fn a_configmap_maps_to_its_set_by_label_within_scope() {
        let labelled = cm(&[(SET_LABEL, "auth"), (SOURCE_NAMESPACE_LABEL, "identity")]);
        let want = ObjectRef::<SigningKeySet>::new("auth").within("identity");
        // No ownerReference needed: a foreign ConfigMap in the way triggers its set too.
        assert_eq!(set_of_configmap(&labelled, None), Some(want.clone()));
        assert_eq!(set_of_configmap(&labelled, Some("identity")), Some(want));
        assert_eq!(set_of_configmap(&labelled, Some("other")), None);
        assert_eq!(set_of_configmap(&cm(&[(SET_LABEL, "auth")]), None), None);
        assert_eq!(set_of_configmap(&ConfigMap::default(), None), None);
    }
}
