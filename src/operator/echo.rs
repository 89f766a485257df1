//! keyturn's own writes, remembered until their watch events arrive, so that an event that
//! only reports what a reconcile itself wrote does not start another reconcile. That
//! reconcile planned until idle with the object as the API server returned it; its echo
//! carries nothing new. Any other version of the object (someone else's write, a deletion, a
//! relist after a lost watch) still triggers.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::{Resource, ResourceExt};

/// The resourceVersion of keyturn's last write to each object, until its watch event is seen.
/// At most one entry per object: a later write replaces it; a deletion drops it.
#[derive(Default)]
pub struct Echoes(Mutex<HashMap<(String, String, String), String>>);

fn key<K: Resource<DynamicType = ()>>(o: &K) -> (String, String, String) {
    (
        K::kind(&()).into_owned(),
        o.namespace().unwrap_or_default(),
        o.name_any(),
    )
}

impl Echoes {
    /// Records `o` as the API server returned it from one of keyturn's writes.
    pub fn wrote<K: Resource<DynamicType = ()>>(&self, o: &K) {
        if let Some(rv) = o.meta().resource_version.clone() {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key(o), rv);
        }
    }

    /// True when `o` (a watch event's object) is exactly the version keyturn wrote last; the
    /// record is consumed.
    pub fn is_echo<K: Resource<DynamicType = ()>>(&self, o: &K) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(o);
        match (m.get(&k), o.meta().resource_version.as_ref()) {
            (Some(ours), Some(rv)) if ours == rv => {
                m.remove(&k);
                true
            }
            _ => false,
        }
    }

    /// Forgets an object that is gone (its deletion always triggers).
    pub fn forget<K: Resource<DynamicType = ()>>(&self, o: &K) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(o));
    }

    /// How many writes await their echo.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no write awaits its echo.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::core::PartialObjectMeta;

    fn obj<K: Resource<DynamicType = ()> + Default>(name: &str, rv: &str) -> K {
        let mut o = K::default();
        o.meta_mut().name = Some(name.into());
        o.meta_mut().namespace = Some("identity".into());
        o.meta_mut().resource_version = Some(rv.into());
        o
    }

    #[test]
    fn only_the_version_keyturn_wrote_is_an_echo_and_only_once() {
        let e = Echoes::default();
        e.wrote(&obj::<Secret>("auth-keyturn-keys", "10"));
        // Another version (older in flight, or someone else's write) still triggers.
        assert!(!e.is_echo(&obj::<Secret>("auth-keyturn-keys", "9")));
        // Same name, another kind: not an echo.
        assert!(!e.is_echo(&obj::<ConfigMap>("auth-keyturn-keys", "10")));
        // The metadata-only watch's object for our version is the echo, once.
        let meta: PartialObjectMeta<Secret> = obj("auth-keyturn-keys", "10");
        assert!(e.is_echo(&meta));
        assert!(
            !e.is_echo(&meta),
            "a relist of the same version triggers again"
        );
        assert!(e.is_empty());
    }

    #[test]
    fn a_later_write_replaces_the_record_and_a_deleted_object_is_forgotten() {
        let e = Echoes::default();
        e.wrote(&obj::<Secret>("s", "10"));
        e.wrote(&obj::<Secret>("s", "12"));
        assert_eq!(e.len(), 1);
        assert!(!e.is_echo(&obj::<Secret>("s", "10")));
        e.forget(&obj::<PartialObjectMeta<Secret>>("s", "13"));
        assert!(e.is_empty());
        assert!(!e.is_echo(&obj::<Secret>("s", "12")));
    }
}
