//! The objects keyturn writes (signing Secret, internal Secret, JWKS ConfigMap), built
//! deterministically from the set and its state, and the rules that tell keyturn's objects
//! from anyone else's. Pure: `operator::write` does the guarded write.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::core::crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, SET_LABEL, SetRef, SigningKeySet};
use crate::core::keys::KeyPair;
use crate::core::state::{KeyRecord, STATE_KEY, SetState};

/// Label on JWKS copies naming the SigningKeySet's namespace.
pub const SOURCE_NAMESPACE_LABEL: &str = "keyturn.dev/source-namespace";
/// Annotation on JWKS copies naming the SigningKeySet's uid (copies in other namespaces
/// cannot carry an ownerReference).
pub const OWNER_UID_ANNOTATION: &str = "keyturn.dev/owner-uid";

/// Label selector that finds every JWKS copy of the set at `set`, in any namespace.
pub fn copies_selector(set: &SetRef) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{SET_LABEL}={},{SOURCE_NAMESPACE_LABEL}={}",
        set.name, set.namespace
    )
}

/// True when `meta` carries the labels of a JWKS copy of `sks` (any namespace); ownership is
/// [`is_owned_copy`].
pub fn is_labelled_copy(meta: &ObjectMeta, sks: &SigningKeySet) -> bool {
    meta.labels.as_ref().is_some_and(|l| {
        l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
            && l.get(SET_LABEL) == Some(&sks.name_any())
            && l.get(SOURCE_NAMESPACE_LABEL) == sks.namespace().as_ref()
    })
}

/// True when `meta` is labelled as a JWKS copy in a namespace other than its set's.
pub fn is_copy_elsewhere(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(SOURCE_NAMESPACE_LABEL))
        .is_some_and(|src| meta.namespace.as_ref() != Some(src))
}

/// True when `meta` is a JWKS copy of `sks`: keyturn's labels plus the owner-uid annotation
/// (in the set's own namespace the ownerReference counts too).
pub fn is_owned_copy(meta: &ObjectMeta, sks: &SigningKeySet) -> bool {
    if meta.namespace == sks.namespace() {
        return is_owned(meta, sks);
    }
    let labels_ok = is_labelled_copy(meta, sks);
    let uid_ok = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(OWNER_UID_ANNOTATION))
        .is_some_and(|u| Some(u) == sks.uid().as_ref());
    labels_ok && uid_ok
}

/// Labels on every object keyturn creates for `sks`.
pub fn labels(sks: &SigningKeySet) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (SET_LABEL.to_string(), sks.name_any()),
    ])
}

/// The controller ownerReference to `sks` (same namespace only). A set without a uid (not
/// read from the API server; `reconcile` refuses those first) gets an empty one.
pub fn owner_ref(sks: &SigningKeySet) -> OwnerReference {
    sks.controller_owner_ref(&()).unwrap_or_default()
}

/// True when `meta` carries keyturn's labels for `sks` and an ownerReference to its uid.
pub fn is_owned(meta: &ObjectMeta, sks: &SigningKeySet) -> bool {
    let labels_ok = meta.labels.as_ref().is_some_and(|l| {
        l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
            && l.get(SET_LABEL) == Some(&sks.name_any())
    });
    let uid = sks.uid();
    let owner_ok = meta
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| Some(&r.uid) == uid.as_ref()));
    labels_ok && owner_ok
}

fn meta(sks: &SigningKeySet, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: sks.namespace(),
        labels: Some(labels(sks)),
        owner_references: Some(vec![owner_ref(sks)]),
        ..Default::default()
    }
}

/// Data of the signing Secret for one key: `private.pem`, `private.jwk.json`, `kid`, `alg`.
pub fn signing_data(rec: &KeyRecord) -> Option<BTreeMap<String, ByteString>> {
    let pem = rec.private_pem.as_ref()?;
    let kp = KeyPair::from_pkcs8_pem(rec.alg, pem.expose()).ok()?;
    Some(BTreeMap::from([
        (
            "alg".to_string(),
            ByteString(rec.alg.as_str().as_bytes().to_vec()),
        ),
        ("kid".to_string(), ByteString(rec.kid.as_bytes().to_vec())),
        (
            "private.jwk.json".to_string(),
            ByteString(kp.private_jwk_json().as_bytes().to_vec()),
        ),
        // Re-encoded, not copied from the record: keys stored by an older keyturn in the
        // PKCS#8 v2 form are written in the v1 form every stack loads (same key, same kid).
        (
            "private.pem".to_string(),
            ByteString(kp.to_pkcs8_pem().as_bytes().to_vec()),
        ),
    ]))
}

/// The signing Secret object for `rec`.
pub fn signing_secret(sks: &SigningKeySet, rec: &KeyRecord) -> Option<Secret> {
    Some(Secret {
        metadata: meta(sks, sks.secret_name()),
        type_: Some("Opaque".into()),
        data: Some(signing_data(rec)?),
        ..Default::default()
    })
}

/// The annotation of the signing Secret listing the kids keyturn took out of it for a
/// revocation (comma-separated, the latest [`MAX_REVOKED_REMEMBERED`]): none of them is put
/// back, whatever the spec says later.
pub const REVOKED_ANNOTATION: &str = "keyturn.dev/revoked-kids";

/// How many revoked kids the signing Secret remembers (the spec holds at most 64).
pub const MAX_REVOKED_REMEMBERED: usize = 64;

/// The kids `meta`'s [`REVOKED_ANNOTATION`] lists.
pub fn revoked_from(meta: &ObjectMeta) -> impl Iterator<Item = &str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVOKED_ANNOTATION))
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter(|k| !k.is_empty())
}

/// The signing Secret with no key: what it holds once its key is revoked, until a
/// replacement signs (issuers fail closed instead of signing with a revoked key). It
/// remembers `revoked` (the latest [`MAX_REVOKED_REMEMBERED`], duplicates dropped).
pub fn unsigned_secret(sks: &SigningKeySet, mut revoked: Vec<String>) -> Secret {
    let mut seen = std::collections::BTreeSet::new();
    revoked.reverse();
    revoked.retain(|k| seen.insert(k.clone()));
    revoked.truncate(MAX_REVOKED_REMEMBERED);
    revoked.reverse();
    let mut metadata = meta(sks, sks.secret_name());
    metadata.annotations = Some(BTreeMap::from([(
        REVOKED_ANNOTATION.to_string(),
        revoked.join(","),
    )]));
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::new()),
        ..Default::default()
    }
}

/// The annotation of the internal Secret that carries its state without private keys
/// ([`SetState::public_bytes`]): the HTTP endpoint reads it through a metadata-only watch and
/// never receives a private key (I3).
pub const PUBLIC_STATE_ANNOTATION: &str = "keyturn.dev/public-state";

/// The largest public state kept in that annotation (the API server takes 256 KiB of
/// annotations per object): a state whose public part would not fit is refused like one that
/// would not fit the Secret.
pub const MAX_PUBLIC_STATE_BYTES: usize = 192 * 1024;

/// The internal Secret object holding `state`.
pub fn internal_secret(sks: &SigningKeySet, state: &SetState) -> Secret {
    let mut metadata = meta(sks, sks.internal_secret_name());
    metadata.annotations = Some(BTreeMap::from([(
        PUBLIC_STATE_ANNOTATION.to_string(),
        String::from_utf8(state.public_bytes()).expect("JSON is UTF-8"),
    )]));
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            STATE_KEY.to_string(),
            ByteString(state.to_bytes()),
        )])),
        ..Default::default()
    }
}

/// JWKS bytes for these kids, in order, from the state's public JWKs. `None` when a kid has
/// no record (never publish what is not stored).
pub fn jwks_bytes(state: &SetState, kids: &[String]) -> Option<Vec<u8>> {
    let keys: Option<Vec<_>> = kids
        .iter()
        .map(|k| {
            state
                .keys
                .iter()
                .find(|r| &r.kid == k)
                .map(|r| r.public_jwk.clone())
        })
        .collect();
    Some(crate::core::jwks::to_bytes(&keys?))
}

/// The JWKS ConfigMap object of `sks` (at `set`) in `namespace`: the set's own, or a copy
/// elsewhere.
pub fn jwks_config_map(
    set: &SetRef,
    sks: &SigningKeySet,
    namespace: &str,
    bytes: &[u8],
) -> ConfigMap {
    let mut m = meta(sks, sks.config_map_name());
    m.labels
        .get_or_insert_default()
        .insert(SOURCE_NAMESPACE_LABEL.into(), set.namespace.clone());
    m.annotations = Some(BTreeMap::from([(
        OWNER_UID_ANNOTATION.into(),
        sks.uid().unwrap_or_default(),
    )]));
    if namespace != set.namespace {
        // ownerReferences cannot cross namespaces; copies are removed by the finalizer.
        m.owner_references = None;
        m.namespace = Some(namespace.to_string());
    }
    ConfigMap {
        metadata: m,
        data: Some(BTreeMap::from([(
            sks.jwks_key(),
            String::from_utf8_lossy(bytes).into_owned(),
        )])),
        ..Default::default()
    }
}

/// Secrets compare by type and data (no data and empty data are the same: the API server
/// stores an empty map as none).
pub fn same_secret(a: &Secret, b: &Secret) -> bool {
    let data = |s: &Secret| s.data.clone().filter(|d| !d.is_empty());
    data(a) == data(b)
        && a.type_.as_deref().unwrap_or("Opaque") == b.type_.as_deref().unwrap_or("Opaque")
}

/// ConfigMaps compare by data.
pub fn same_config_map(a: &ConfigMap, b: &ConfigMap) -> bool {
    a.data == b.data && a.binary_data.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_signing_secret_remembers_the_kids_it_was_emptied_of() {
        let sks: SigningKeySet = serde_json::from_value(serde_json::json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
            "metadata": {"name": "auth", "namespace": "identity", "uid": "u-1"}, "spec": {}
        }))
        .unwrap();
        let mut many: Vec<String> = (0..70).map(|i| format!("k{i}")).collect();
        many.push("k3".into()); // revoked again: kept once, as the latest
        let s = unsigned_secret(&sks, many);
        let kept: Vec<&str> = revoked_from(&s.metadata).collect();
        assert_eq!(kept.len(), MAX_REVOKED_REMEMBERED);
        assert_eq!(kept.last(), Some(&"k3"));
        assert!(!kept.contains(&"k0"), "the oldest are dropped first");
        assert!(s.data.as_ref().unwrap().is_empty(), "no key at all");
        assert_eq!(revoked_from(&ObjectMeta::default()).count(), 0);
    }

    #[test]
    fn an_ed25519_key_stored_in_the_v2_form_is_written_in_the_v1_form() {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let kp = KeyPair::generate(crate::core::crd::Algorithm::EdDSA, None).unwrap();
        // What keyturn stored before: ed25519-dalek's own encoding, PKCS#8 v2.
        let seed = crate::core::keys::tests_support::ed25519_seed(&kp);
        let v2 = ed25519_dalek::SigningKey::from_bytes(&seed)
            .to_pkcs8_pem(pkcs8::LineEnding::LF)
            .unwrap();
        assert_ne!(
            v2.as_str(),
            kp.to_pkcs8_pem().as_str(),
            "the two forms differ"
        );
        let rec = KeyRecord {
            kid: kp.kid().into(),
            alg: kp.alg(),
            public_jwk: kp.public_jwk(),
            private_pem: Some(crate::core::state::Sensitive::new(v2)),
            created_at: chrono::Utc::now(),
            published_at: None,
            activated_at: None,
            retired_at: None,
            manual: false,
            verify_until: None,
        };
        let data = signing_data(&rec).unwrap();
        assert_eq!(data["private.pem"].0, kp.to_pkcs8_pem().as_bytes());
        assert_eq!(data["kid"].0, kp.kid().as_bytes());
    }
}
