//! The guarded write: an object keyturn does not own is never touched, a write is made only
//! when the object differs, and every write carries keyturn's field manager and the observed
//! `resourceVersion`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::core::crd::FIELD_MANAGER;

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The object exists and is not keyturn's; it was left untouched.
    #[error(
        "{kind} {namespace}/{name} exists and is not managed by this SigningKeySet; keyturn leaves it untouched"
    )]
    Foreign {
        /// Object kind.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The API server refused or failed the write. Its message is shown only when it cannot
    /// quote key material ([`crate::core::keys::redact_encoded`]).
    #[error("writing {kind} {name}: {}", api_message(.source))]
    Api {
        /// Object kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// The client error (carries no object data).
        #[source]
        source: kube::Error,
    },
}

impl WriteError {
    /// The write was refused because the object is not as keyturn read it: changed since
    /// (409 Conflict on the resourceVersion), already created (409 AlreadyExists, keyturn's
    /// own: someone else's is [`WriteError::Foreign`]) or gone (404). keyturn reads from
    /// caches, so this means "read again", not a failure. Names the object (`Secret x`).
    pub fn lagged(&self) -> Option<String> {
        match self {
            WriteError::Api {
                kind,
                name,
                source: kube::Error::Api(s),
            } if s.code == 409 || s.code == 404 => Some(format!("{kind} {name}")),
            _ => None,
        }
    }
}

/// The API server's own words for a failed request (its message, code and reason, without
/// the client's debug dump), redacted when it could quote key material.
pub fn api_message(e: &kube::Error) -> String {
    let text = match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    };
    crate::core::keys::redact_encoded(&text).into_owned()
}

/// Writes `desired` if it differs from `existing`.
///
/// - absent: created with a POST, so that a concurrent creator makes it fail instead of
///   being taken over;
/// - present and owned: one JSON merge patch with field manager `keyturn` and the observed
///   `resourceVersion` as a precondition;
/// - present and not owned (per `owned`): [`WriteError::Foreign`], nothing written.
///
/// Returns the object as stored, or `None` when nothing needed writing.
pub async fn write<K>(
    api: &Api<K>,
    existing: Option<&K>,
    desired: K,
    owned: impl Fn(&ObjectMeta) -> bool,
    same: impl Fn(&K, &K) -> bool,
) -> Result<Option<K>, WriteError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let kind = match K::kind(&()).as_ref() {
        "Secret" => "Secret",
        "ConfigMap" => "ConfigMap",
        _ => "object",
    };
    let name = desired.name_any();
    let api_err = |source| WriteError::Api {
        kind,
        name: name.clone(),
        source,
    };
    match existing {
        None => {
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match api.create(&pp, &desired).await {
                Ok(o) => {
                    crate::operator::fault::wrote();
                    Ok(Some(o))
                }
                // Created meanwhile: by another keyturn replica (a race to retry) or by
                // someone else (never touched).
                Err(kube::Error::Api(e)) if e.code == 409 && e.reason == "AlreadyExists" => {
                    match api.get_opt(&name).await {
                        Ok(Some(o)) if owned(o.meta()) => Err(api_err(kube::Error::Api(e))),
                        _ => Err(WriteError::Foreign {
                            kind,
                            namespace: desired.namespace().unwrap_or_default(),
                            name: name.clone(),
                        }),
                    }
                }
                Err(e) => Err(api_err(e)),
            }
        }
        Some(cur) => {
            if !owned(cur.meta()) {
                return Err(WriteError::Foreign {
                    kind,
                    namespace: cur.namespace().unwrap_or_default(),
                    name: cur.name_any(),
                });
            }
            if same(cur, &desired) && labels_and_owner_match(cur.meta(), desired.meta()) {
                return Ok(None);
            }
            // One JSON merge patch under the observed resourceVersion: keyturn's labels,
            // annotations and ownerReference, and the data with every key keyturn no longer
            // writes deleted (a `spec.jwks.key` renamed: a workload reading the old file name
            // fails visibly instead of reading a frozen JWKS). Measured cheaper for the API
            // server than a server-side apply of the same change (docs/benchmarks.md).
            let patch =
                merge_patch(cur, &desired).map_err(|e| api_err(kube::Error::SerdeError(e)))?;
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            let o = api
                .patch(&name, &pp, &Patch::Merge(&patch))
                .await
                .map_err(api_err)?;
            crate::operator::fault::wrote();
            Ok(Some(o))
        }
    }
}

/// The merge patch that makes `cur` hold `desired`'s labels, annotations, ownerReferences
/// and data (data keys only `cur` has set to null, other owners' references kept), with
/// `cur`'s resourceVersion as precondition.
fn merge_patch<K: Resource<DynamicType = ()> + Serialize>(
    cur: &K,
    desired: &K,
) -> Result<serde_json::Value, serde_json::Error> {
    let (cur_v, want) = (serde_json::to_value(cur)?, serde_json::to_value(desired)?);
    let want_data = want.get("data").and_then(|d| d.as_object());
    let mut data = want_data.cloned().unwrap_or_default();
    for key in cur_v
        .get("data")
        .and_then(|d| d.as_object())
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        if !want_data.is_some_and(|w| w.contains_key(key)) {
            data.insert(key.clone(), serde_json::Value::Null);
        }
    }
    let (cm, dm) = (cur.meta(), desired.meta());
    let mut metadata = serde_json::json!({
        "resourceVersion": cm.resource_version,
        "labels": dm.labels,
        "annotations": dm.annotations,
    });
    let missing: Vec<&OwnerReference> = dm
        .owner_references
        .iter()
        .flatten()
        .filter(|w| !cm.owner_references.iter().flatten().any(|c| c.uid == w.uid))
        .collect();
    if !missing.is_empty() {
        // A merge patch replaces the whole list: keep the references already there.
        let all: Vec<&OwnerReference> = cm
            .owner_references
            .iter()
            .flatten()
            .chain(missing)
            .collect();
        metadata["ownerReferences"] = serde_json::to_value(all)?;
    }
    if dm.annotations.is_none() {
        metadata.as_object_mut().map(|m| m.remove("annotations"));
    }
    Ok(serde_json::json!({"metadata": metadata, "data": data}))
}

fn labels_and_owner_match(cur: &ObjectMeta, want: &ObjectMeta) -> bool {
    let labels_ok = want
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| cur.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let annotations_ok = want
        .annotations
        .iter()
        .flatten()
        .all(|(k, v)| cur.annotations.as_ref().and_then(|a| a.get(k)) == Some(v));
    let owners_ok = want.owner_references.iter().flatten().all(|w| {
        cur.owner_references
            .iter()
            .flatten()
            .any(|c| c.uid == w.uid)
    });
    labels_ok && annotations_ok && owners_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(rv: &str, data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("auth-jwks".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_renamed_data_key_is_deleted_under_the_observed_version() {
        let cur = cm("41", &[("jwks.json", "{old}")]);
        let want = cm("", &[("keys.json", "{new}")]);
        let patch = merge_patch(&cur, &want).unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "41");
        assert_eq!(
            patch["data"],
            serde_json::json!({"jwks.json": null, "keys.json": "{new}"})
        );
    }

    #[test]
    fn other_owners_references_and_keys_are_kept() {
        let other = OwnerReference {
            uid: "someone-else".into(),
            ..Default::default()
        };
        let ours = OwnerReference {
            uid: "keyturn-set".into(),
            ..Default::default()
        };
        let mut cur = cm("41", &[("jwks.json", "{old}")]);
        cur.metadata.owner_references = Some(vec![other.clone()]);
        let mut want = cm("", &[("jwks.json", "{new}")]);
        want.metadata.owner_references = Some(vec![ours.clone()]);
        let patch = merge_patch(&cur, &want).unwrap();
        assert_eq!(patch["data"], serde_json::json!({"jwks.json": "{new}"}));
        assert_eq!(
            patch["metadata"]["ownerReferences"],
            serde_json::to_value(vec![other.clone(), ours.clone()]).unwrap(),
            "a merge patch replaces the list: the other owner is written back"
        );
        cur.metadata.owner_references = Some(vec![other, ours]);
        let patch = merge_patch(&cur, &want).unwrap();
        assert!(
            patch["metadata"].get("ownerReferences").is_none(),
            "present already: the list is left alone"
        );
    }
}
