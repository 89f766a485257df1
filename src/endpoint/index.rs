//! The endpoint's index: its own compact views of the sets and of their internal Secrets' public
//! state, kept from watches (metadata only for Secrets), and what counts as a set's state.

use super::*;

/// A set's internal state as the endpoint keeps it: public keys only.
pub(super) struct Published {
    /// uids in the Secret's ownerReferences: the state counts only for the set it names.
    pub(super) owners: Vec<String>,
    /// The public state, or why it could not be read.
    pub(super) state: Result<PublicState, String>,
}

/// What the routes need of a set, kept instead of the whole object: its uid, its spec as
/// the planner reads it (or the fact that it is invalid) and its issuer. At 10,000 sets a
/// cache of whole SigningKeySets (metadata, spec) held several KiB per set in every replica.
pub(super) struct SetView {
    /// The set's uid: its internal Secret counts only if owned by it.
    pub(super) uid: String,
    /// The validated spec; `None` when the spec is invalid (the routes answer 503).
    pub(super) settings: Option<plan::Settings>,
    /// `spec.issuer`, for discovery.
    pub(super) issuer: Option<String>,
}

impl SetView {
    pub(super) fn of(sks: &SigningKeySet) -> Self {
        SetView {
            uid: sks.meta().uid.clone().unwrap_or_default(),
            settings: plan::validate(&sks.spec, None).ok(),
            issuer: sks.spec.issuer.clone(),
        }
    }
}

/// A watch cache of one view per object, by (namespace, name).
pub(super) type Views<V> = Arc<RwLock<HashMap<(String, String), Arc<V>>>>;
pub(super) type States = Views<Published>;
pub(super) type Sets = Views<SetView>;

/// Keeps `views` equal to `view` of every object `events` reports that `key` names (an
/// object without a key, or whose view is `None`, is not kept); `synced` turns true after the
/// first full list; `applied` is told of each object changed after it (once its view is in).
/// Only the views are held, never the objects.
pub(super) async fn follow<K, V>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    views: Views<V>,
    synced: tokio::sync::watch::Sender<bool>,
    key: impl Fn(&K) -> Option<(String, String)>,
    view: impl Fn(&K) -> Option<V>,
    applied: impl Fn(&K),
    what: &'static str,
) where
    K: Clone + std::fmt::Debug + Send + 'static,
{
    let mut events = std::pin::pin!(events.default_backoff());
    let mut relist: Option<HashMap<(String, String), Arc<V>>> = None;
    let put = |map: &mut HashMap<_, _>, o: &K| {
        if let Some(k) = key(o) {
            match view(o) {
                Some(v) => map.insert(k, Arc::new(v)),
                None => map.remove(&k),
            };
        }
    };
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => relist = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(m) = relist.as_mut() {
                    put(m, &s);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(m) = relist.take() {
                    *views.write().unwrap_or_else(|e| e.into_inner()) = m;
                }
                let _ = synced.send(true);
            }
            Ok(watcher::Event::Apply(o)) => {
                put(&mut views.write().unwrap_or_else(|e| e.into_inner()), &o);
                applied(&o);
            }
            Ok(watcher::Event::Delete(o)) => {
                if let Some(k) = key(&o) {
                    views.write().unwrap_or_else(|e| e.into_inner()).remove(&k);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, what, "watching for the HTTP endpoint")
            }
        }
    }
}

/// Reads again, metadata only, the internal Secret of each set `missing` names (created or
/// recreated after its Secret's event went by) and keeps it when the set owns it, unless the
/// watch has meanwhile brought one.
pub(super) async fn read_missing(
    client: Client,
    mut missing: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    sets: Sets,
    states: States,
) {
    while let Some((ns, name)) = missing.recv().await {
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let meta = match api
            .get_metadata_opt(&crate::core::crd::internal_secret_name(&name))
            .await
        {
            Ok(Some(m)) => m,
            Ok(None) => continue, // not written yet: its watch event will come
            Err(e) => {
                tracing::warn!(error = %e, namespace = %ns, set = %name, "reading an internal Secret for the HTTP endpoint");
                continue;
            }
        };
        if state_key(&meta) != Some((ns.clone(), name.clone())) {
            continue;
        }
        let Some(p) = published(&meta, &sets) else {
            continue;
        };
        let mut m = states.write().unwrap_or_else(|e| e.into_inner());
        let held = m
            .get(&(ns.clone(), name.clone()))
            .is_some_and(|old| old.owners.iter().any(|o| p.owners.contains(o)));
        if !held {
            m.insert((ns, name), Arc::new(p));
        }
    }
}

/// (namespace, set) when `s` is the internal Secret of a set: keyturn's label naming the
/// set and the internal Secret's name for it.
pub(super) fn state_key(s: &PartialObjectMeta<Secret>) -> Option<(String, String)> {
    let labels = s.labels();
    let set = labels.get(SET_LABEL)?;
    (labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
        && s.name_any() == crate::core::crd::internal_secret_name(set))
    .then(|| (s.namespace().unwrap_or_default(), set.clone()))
}

/// The public part of an internal Secret (its public-state annotation) when a live set it
/// names owns it; `None` for any other Secret, and for one no live set owns (such an object
/// costs nothing however large its annotations, I11).
pub(super) fn published(s: &PartialObjectMeta<Secret>, sets: &Sets) -> Option<Published> {
    let key = state_key(s)?;
    let owners: Vec<String> = s.owner_references().iter().map(|o| o.uid.clone()).collect();
    let uid = sets
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .map(|v| v.uid.clone())?;
    if !owners.contains(&uid) {
        return None;
    }
    let state = s
        .annotations()
        .get(PUBLIC_STATE_ANNOTATION)
        .ok_or_else(|| "no public state".to_string())
        .and_then(|b| PublicState::from_bytes(b.as_bytes()).map_err(|e| e.to_string()));
    Some(Published { owners, state })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::sync::Mutex as StdMutex;

    fn cm(name: &str, v: Option<&str>) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "data": v.map(|v| serde_json::json!({"v": v}))
        }))
        .unwrap()
    }

    /// Runs `follow` over `events` (to their end) on `views`; returns the objects `applied`
    /// was told of and whether `synced` turned true.
    async fn run(
        views: &Views<String>,
        events: Vec<watcher::Event<ConfigMap>>,
    ) -> (Vec<String>, bool) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let told = StdMutex::new(vec![]);
        follow(
            futures::stream::iter(events.into_iter().map(Ok)),
            views.clone(),
            tx,
            |c: &ConfigMap| Some((c.namespace()?, c.name_any())),
            |c: &ConfigMap| c.data.as_ref()?.get("v").cloned(),
            |c: &ConfigMap| told.lock().unwrap().push(c.name_any()),
            "test objects",
        )
        .await;
        let synced = *rx.borrow();
        (told.into_inner().unwrap(), synced)
    }

    fn held(views: &Views<String>) -> Vec<(String, String)> {
        let mut v: Vec<_> = views
            .read()
            .unwrap()
            .iter()
            .map(|((_, n), v)| (n.clone(), (**v).clone()))
            .collect();
        v.sort();
        v
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// A list, changes, a deletion, a relist that has not finished, a relist that has (and
    /// drops what the watch missed), and an object whose view is gone.
    #[tokio::test]
    async fn follow_keeps_views_through_lists_changes_deletions_and_relists() {
        use watcher::Event::*;
        let views: Views<String> = Arc::default();
        let (told, synced) = run(
            &views,
            vec![
                Init,
                InitApply(cm("a", Some("1"))),
                InitApply(cm("b", Some("1"))),
                InitDone,
            ],
        )
        .await;
        assert!(synced, "synced after the first full list");
        assert!(told.is_empty(), "the list itself is not a change");
        assert_eq!(held(&views), pairs(&[("a", "1"), ("b", "1")]));

        let (told, _) = run(
            &views,
            vec![Apply(cm("a", Some("2"))), Delete(cm("b", Some("1")))],
        )
        .await;
        assert_eq!(told, ["a"]);
        assert_eq!(held(&views), pairs(&[("a", "2")]));

        // A relist under way changes nothing until it is complete.
        let (_, synced) = run(&views, vec![Init, InitApply(cm("c", Some("1")))]).await;
        assert!(!synced);
        assert_eq!(held(&views), pairs(&[("a", "2")]));
        // Complete, it replaces the views: `a`, deleted while the watch was down, goes.
        run(&views, vec![Init, InitApply(cm("c", Some("1"))), InitDone]).await;
        assert_eq!(held(&views), pairs(&[("c", "1")]));

        // An object whose view is `None` (for the endpoint: a Secret no live set owns) goes.
        run(&views, vec![Apply(cm("c", None))]).await;
        assert!(held(&views).is_empty());
    }
}
