//! Stage 2, check (pure): from the set and its objects, the settings to plan with, the
//! consented fan-out and what is observed now — or a [`Refusal`] saying why not.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;

use super::read::Objects;
use super::{Reason, Refusal};
use crate::core::consent::{self, FanOut};
use crate::core::crd::{IMPORT_ANNOTATION, SetRef, SigningKeySet};
use crate::core::keys::KeyPair;
use crate::core::objects;
use crate::core::plan::{self, Observed, Settings};
use crate::core::state::{KeyState, STATE_KEY, SetState};

/// A set keyturn can act on.
#[derive(Debug)]
pub struct Checked {
    /// The validated spec.
    pub settings: Settings,
    /// Where the JWKS goes (the set's namespace and the consenting ones) and who refused.
    pub spread: FanOut,
    /// The planner's view of the objects: the stored state, what is published everywhere,
    /// what signs.
    pub observed: Observed,
    /// The imported first key (`spec.import`), when the set has no key yet.
    pub import: Option<KeyPair>,
    /// Why the verification-only keys could not be read (a source missing, a key refused):
    /// the set's own keys go on, the set is not Ready until this clears.
    pub verification_refused: Option<Refusal>,
}

/// What the cluster admin allows every set (`keyturn run`'s flags): floors under the schedule
/// and a quota of sets per namespace. The default allows everything; fairness of key
/// generation does not depend on it ([`super::keygen`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Floors {
    /// Shortest `spec.rotation.interval` (`--min-interval`).
    pub min_interval: Option<chrono::Duration>,
    /// Shortest `spec.rotation.prePublish` (`--min-pre-publish`).
    pub min_pre_publish: Option<chrono::Duration>,
    /// Shortest `spec.rotation.overlap` (`--min-overlap`).
    pub min_overlap: Option<chrono::Duration>,
    /// Most SigningKeySets served per namespace (`--max-sets-per-namespace`): the oldest.
    pub max_sets_per_namespace: Option<usize>,
}

/// `InvalidSpec` naming the field when the schedule is below one of the cluster's floors.
pub fn within_floors(settings: &Settings, floors: &Floors) -> Result<(), Refusal> {
    for (field, flag, got, min) in [
        (
            "spec.rotation.interval",
            "--min-interval",
            settings.interval,
            floors.min_interval,
        ),
        (
            "spec.rotation.prePublish",
            "--min-pre-publish",
            settings.pre_publish,
            floors.min_pre_publish,
        ),
        (
            "spec.rotation.overlap",
            "--min-overlap",
            settings.overlap,
            floors.min_overlap,
        ),
    ] {
        if let Some(min) = min
            && got < min
        {
            return Err(Refusal::new(
                Reason::InvalidSpec,
                format!(
                    "{field}: {} is below this cluster's floor of {} (keyturn {flag}, set by the cluster admin); lengthen it",
                    crate::core::duration::format(got),
                    crate::core::duration::format(min)
                ),
            ));
        }
    }
    Ok(())
}

/// `QuotaExceeded` when `sks` (at `set`) is not among the oldest `max` sets of its namespace
/// (`sets`: every set the controller knows; those being deleted do not count).
pub fn within_quota<'a>(
    set: &SetRef,
    sks: &SigningKeySet,
    sets: impl IntoIterator<Item = &'a SigningKeySet>,
    max: Option<usize>,
) -> Result<(), Refusal> {
    let Some(max) = max else { return Ok(()) };
    let ns = &set.namespace;
    let order = |s: &SigningKeySet| (s.metadata.creation_timestamp.clone(), s.name_any());
    let mine = order(sks);
    let mut total = 0;
    let mut before = 0;
    for s in sets {
        if s.metadata.namespace.as_ref() != Some(ns) || s.metadata.deletion_timestamp.is_some() {
            continue;
        }
        total += 1;
        if order(s) < mine {
            before += 1;
        }
    }
    if before < max {
        return Ok(());
    }
    Err(Refusal::new(
        Reason::QuotaExceeded,
        format!(
            "namespace {ns} has {total} SigningKeySets and this cluster serves at most {max} per namespace (keyturn --max-sets-per-namespace, set by the cluster admin): the oldest {max} are served, this one is not. Delete one of them, or ask the cluster admin"
        ),
    ))
}

/// Checks, in order: the spec, the names keyturn reserves, objects keyturn does not own,
/// the fan-out selector, and the internal state (missing while derived objects exist, or
/// corrupt). `token` is the manual-rotation annotation's value.
pub fn check(
    set: &SetRef,
    sks: &SigningKeySet,
    objects: &Objects,
    token: Option<String>,
    namespace_only: bool,
) -> Result<Checked, Refusal> {
    let ns = &set.namespace;
    let settings = plan::validate(&sks.spec, token)
        .map_err(|e| Refusal::new(Reason::InvalidSpec, e.to_string()))?;
    if sks.secret_name() == sks.internal_secret_name() {
        return Err(Refusal::new(
            Reason::InvalidSpec,
            format!(
                "spec.secretName: {:?} is reserved for keyturn's internal Secret",
                sks.secret_name()
            ),
        ));
    }
    for (kind, name, meta) in [
        (
            "Secret",
            sks.internal_secret_name(),
            objects.internal.as_ref().map(|o| &o.metadata),
        ),
        (
            "Secret",
            sks.secret_name(),
            objects.signing.as_ref().map(|o| &o.metadata),
        ),
        (
            "ConfigMap",
            sks.config_map_name(),
            objects.jwks.as_ref().map(|o| &o.metadata),
        ),
    ] {
        if let Some(meta) = meta
            && !objects::is_owned(meta, sks)
        {
            return Err(Refusal::new(
                Reason::ForeignObject,
                format!(
                    "{kind} {ns}/{name} exists and is not managed by this SigningKeySet; keyturn leaves it untouched. Delete it or choose another name."
                ),
            ));
        }
    }
    let spread = if !consent::requested(sks) {
        FanOut {
            targets: BTreeSet::from([ns.clone()]),
            ..Default::default()
        }
    } else if namespace_only {
        consent::own_only(set, sks)
    } else {
        consent::fan_out(set, sks, &objects.namespaces, &objects.grants)
            .map_err(|why| Refusal::new(Reason::InvalidSpec, why))?
    };
    let derived_exist =
        objects.signing.is_some() || objects.jwks.as_ref().is_some_and(|c| c.data.is_some());
    let state = match objects.internal.as_ref() {
        // The source of truth is gone but what was derived from it is still there: starting
        // a fresh key set would drop keys that verifiers and issuers use. Say so instead.
        None if derived_exist => {
            return Err(Refusal::new(
                Reason::InternalStateMissing,
                format!(
                    "Secret {ns}/{} is missing while the signing Secret or JWKS ConfigMap still exist; keyturn will not replace published keys. Restore it from backup, or delete {ns}/{} and {ns}/{} to start a new key set.",
                    sks.internal_secret_name(),
                    sks.secret_name(),
                    sks.config_map_name()
                ),
            ));
        }
        None => None,
        Some(s) => Some(
            s.data
                .as_ref()
                .and_then(|d| d.get(STATE_KEY))
                .ok_or(crate::core::state::StateError::Missing)
                .and_then(|b| SetState::from_bytes(&b.0))
                .map_err(|e| {
                    Refusal::new(
                        Reason::InternalStateCorrupt,
                        format!(
                            "Secret {ns}/{}: {e}. keyturn changes nothing until it is repaired or restored from backup; the published JWKS is left as it is.",
                            sks.internal_secret_name()
                        ),
                    )
                })?,
        ),
    };
    let import = match state {
        None => import(set, sks, objects)?,
        Some(_) => None,
    };
    // The set's own keys: those stored, or the one being imported.
    let own: Vec<(String, serde_json::Value)> = match (&state, &import) {
        (Some(st), _) => st
            .keys
            .iter()
            .filter(|r| r.state() != KeyState::Verification)
            .map(|r| (r.kid.clone(), r.public_jwk.clone()))
            .collect(),
        (None, Some(kp)) => vec![(kp.kid().to_string(), kp.public_jwk())],
        (None, None) => vec![],
    };
    let (verification, verification_refused) =
        match verification(sks, state.as_ref(), &own, objects) {
            Ok(v) => (v, None),
            Err(r) => (None, Some(r)),
        };
    let mut observed = observe(set, sks, state, objects, &spread.targets);
    observed.verification = verification;
    Ok(Checked {
        settings,
        spread,
        observed,
        import,
        verification_refused,
    })
}

/// The first key from `spec.import`'s Secret, when the set has none: the Secret must consent
/// (annotation `keyturn.dev/import-into: <set>`) and hold one key that fits `spec.algorithm`
/// (and `spec.import.keyId`). Nothing is generated instead while it does not.
fn import(
    set: &SetRef,
    sks: &SigningKeySet,
    objects: &Objects,
) -> Result<Option<KeyPair>, Refusal> {
    let (Some(spec), Some(source)) = (&sks.spec.import, &objects.import_source) else {
        return Ok(None);
    };
    let refuse = |why: String| Refusal::new(Reason::ImportFailed, format!("spec.import: {why}"));
    let secret = source.as_ref().map_err(|why| refuse(why.clone()))?;
    let name = format!("Secret {}/{}", set.namespace, spec.secret_name);
    if secret.annotations().get(IMPORT_ANNOTATION) != Some(&set.name) {
        return Err(refuse(format!(
            "{name} does not consent: keyturn imports a key only from a Secret annotated {IMPORT_ANNOTATION}: {} (added by someone who may write it)",
            set.name
        )));
    }
    let key = spec.key.clone().unwrap_or_else(|| "private.pem".into());
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&key))
        .ok_or_else(|| refuse(format!("{name} has no data key {key:?}")))?;
    crate::core::import::private_key(sks.spec.algorithm, &bytes.0, spec.key_id.as_deref())
        .map(Some)
        .map_err(|e| refuse(format!("{name} {key}: {e}")))
}

/// A Kubernetes time as chrono's.
fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// The verification-only keys to record: read for this generation of the spec (or none, to
/// drop the recorded ones), every key loaded and checked by the JWKS rules, kids unique and
/// none of them one of the set's own keys with other material. `Ok(None)` when the state has
/// already recorded this generation (or nothing is asked).
fn verification(
    sks: &SigningKeySet,
    state: Option<&SetState>,
    own: &[(String, serde_json::Value)],
    objects: &Objects,
) -> Result<Option<plan::Verification>, Refusal> {
    let generation = sks.metadata.generation.unwrap_or_default();
    let recorded = state.and_then(|s| s.verification_generation);
    let has_records =
        state.is_some_and(|s| s.keys.iter().any(|r| r.state() == KeyState::Verification));
    if recorded == Some(generation) || (sks.spec.verification_keys.is_empty() && !has_records) {
        return Ok(None);
    }
    let refuse = |why: String| Refusal::new(Reason::VerificationKeysRefused, why);
    let Some(texts) = &objects.verification_sources else {
        if sks.spec.verification_keys.is_empty() {
            return Ok(Some(plan::Verification {
                generation,
                keys: vec![],
            }));
        }
        return Ok(None); // not read (cannot happen after `read`)
    };
    let mut keys: Vec<(
        crate::core::import::VerificationKey,
        chrono::DateTime<chrono::Utc>,
    )> = vec![];
    for (i, (src, text)) in sks.spec.verification_keys.iter().zip(texts).enumerate() {
        let field = format!("spec.verificationKeys[{i}]");
        let text = text
            .as_ref()
            .map_err(|why| refuse(format!("{field}: {why}")))?;
        let found = crate::core::import::public_keys(text.as_bytes(), src.algorithm)
            .map_err(|why| refuse(format!("{field} ({}): {why}", src.key)))?;
        for k in found {
            let mine = own.iter().find(|(kid, _)| *kid == k.kid);
            let twin = keys.iter().find(|(o, _)| o.kid == k.kid);
            match (mine, twin) {
                (Some((_, jwk)), _) if *jwk == k.jwk => continue,
                (Some(_), _) => {
                    return Err(refuse(format!(
                        "{field}: kid {:?} is one of the set's own keys, with other key material",
                        k.kid
                    )));
                }
                (None, Some((o, _))) if o.jwk == k.jwk => continue,
                (None, Some(_)) => {
                    return Err(refuse(format!(
                        "{field}: kid {:?} is given twice with different keys",
                        k.kid
                    )));
                }
                (None, None) => keys.push((k, time(&src.until))),
            }
        }
    }
    Ok(Some(plan::Verification { generation, keys }))
}

/// The planner's input: the stored state, the keys every target's copy holds exactly, the
/// Pending keys some copy lacks, and the key the signing Secret holds exactly.
fn observe(
    set: &SetRef,
    sks: &SigningKeySet,
    state: Option<SetState>,
    objects: &Objects,
    targets: &BTreeSet<String>,
) -> Observed {
    let signing_held = held_kid(objects.signing.as_ref());
    let Some(state) = state else {
        return Observed {
            signing_held,
            ..Default::default()
        };
    };
    Observed {
        published: published_everywhere(set, sks, &state, &objects.copies, targets),
        lagging: lagging_kids(sks, &state, &objects.copies, targets),
        signing: signing_kid(&state, objects.signing.as_ref()),
        signing_held,
        revoked_published: revoked_published(sks, &objects.copies),
        state: Some(state),
        verification: None,
    }
}

/// True when a copy of the set's own (its labels and owner) holds a kid of
/// `spec.revokedKeyIds`.
fn revoked_published(sks: &SigningKeySet, copies: &BTreeMap<String, ConfigMap>) -> bool {
    let revoked = &sks.spec.revoked_key_ids;
    !revoked.is_empty()
        && copies.values().any(|c| {
            objects::is_owned_copy(&c.metadata, sks)
                && c.data
                    .as_ref()
                    .and_then(|d| d.get(&sks.jwks_key()))
                    .and_then(|t| crate::core::jwks::kids(t.as_bytes()).ok())
                    .is_some_and(|kids| kids.iter().any(|k| revoked.contains(k)))
        })
}

/// The kid a signing Secret names (its `kid` data key), whatever else it holds.
fn held_kid(signing: Option<&Secret>) -> Option<String> {
    let kid = &signing?.data.as_ref()?.get("kid")?.0;
    Some(String::from_utf8_lossy(kid).into_owned())
}

/// True when the set's own signing Secret names a kid of `spec.revokedKeyIds`: it is emptied
/// whatever else stops the set (I10), even when the set is refused before any plan.
pub fn holds_revoked(sks: &SigningKeySet, objects: &Objects) -> bool {
    objects.signing.as_ref().is_some_and(|sec| {
        objects::is_owned(&sec.metadata, sks)
            && held_kid(Some(sec)).is_some_and(|k| sks.spec.revoked_key_ids.contains(&k))
    })
}

/// The kids of the set's own JWKS when it is exactly what the state gives for them and every
/// target's copy (keyturn's own) holds the same bytes: published means everywhere.
fn published_everywhere(
    set: &SetRef,
    sks: &SigningKeySet,
    state: &SetState,
    copies: &BTreeMap<String, ConfigMap>,
    targets: &BTreeSet<String>,
) -> Option<Vec<String>> {
    let own = copies.get(&set.namespace)?;
    let text = own.data.as_ref()?.get(&sks.jwks_key())?;
    let kids = crate::core::jwks::kids(text.as_bytes()).ok()?;
    if own.data.as_ref().is_none_or(|d| d.len() != 1)
        || objects::jwks_bytes(state, &kids).as_deref() != Some(text.as_bytes())
    {
        return None;
    }
    targets
        .iter()
        .all(|t| {
            copies
                .get(t)
                .is_some_and(|c| objects::is_owned_copy(&c.metadata, sks) && c.data == own.data)
        })
        .then_some(kids)
}

/// Pending keys recorded as published that some target's copy does not hold (a copy that
/// joined later: a grant given, a namespace labelled, a copy deleted).
fn lagging_kids(
    sks: &SigningKeySet,
    state: &SetState,
    copies: &BTreeMap<String, ConfigMap>,
    targets: &BTreeSet<String>,
) -> BTreeSet<String> {
    let held: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            copies
                .get(t)
                .and_then(|c| c.data.as_ref()?.get(&sks.jwks_key()).cloned())
                .and_then(|text| crate::core::jwks::kids(text.as_bytes()).ok())
                .unwrap_or_default()
        })
        .collect();
    state
        .keys
        .iter()
        .filter(|r| r.state() == KeyState::Pending && r.published_at.is_some())
        .filter(|r| held.iter().any(|kids| !kids.contains(&r.kid)))
        .map(|r| r.kid.clone())
        .collect()
}

/// The kid of the signing Secret when it holds exactly what keyturn writes for that key.
fn signing_kid(state: &SetState, signing: Option<&Secret>) -> Option<String> {
    let sec = signing?;
    let kid = String::from_utf8_lossy(&sec.data.as_ref()?.get("kid")?.0).to_string();
    let rec = state.keys.iter().find(|r| r.kid == kid)?;
    (objects::signing_data(rec).as_ref() == sec.data.as_ref()).then_some(kid)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use serde_json::json;

    use super::*;
    use crate::operator::reconcile::fixtures::{active_state, at, set, written};

    fn refused(sks: &SigningKeySet, o: &Objects) -> Refusal {
        check(&at(sks), sks, o, None, false).unwrap_err()
    }

    /// The cluster admin's floors refuse a schedule below them, naming the field and the
    /// flag; none set refuses nothing.
    #[test]
    fn floors_refuse_a_schedule_below_them_naming_the_field() {
        let sks =
            set(json!({"rotation": {"interval": "10m", "prePublish": "1m", "overlap": "5m"}}));
        let c = check(&at(&sks), &sks, &Objects::default(), None, false).unwrap();
        assert!(within_floors(&c.settings, &Floors::default()).is_ok());
        let d = |s: &str| Some(crate::core::duration::parse(s).unwrap());
        for (floors, field, flag) in [
            (
                Floors {
                    min_interval: d("1h"),
                    ..Default::default()
                },
                "spec.rotation.interval",
                "--min-interval",
            ),
            (
                Floors {
                    min_pre_publish: d("2m"),
                    ..Default::default()
                },
                "spec.rotation.prePublish",
                "--min-pre-publish",
            ),
            (
                Floors {
                    min_overlap: d("10m"),
                    ..Default::default()
                },
                "spec.rotation.overlap",
                "--min-overlap",
            ),
        ] {
            let r = within_floors(&c.settings, &floors).unwrap_err();
            assert_eq!(r.reason, Reason::InvalidSpec);
            assert!(
                r.message.starts_with(field) && r.message.contains(flag),
                "{}",
                r.message
            );
        }
        let equal = Floors {
            min_interval: d("10m"),
            min_pre_publish: d("1m"),
            min_overlap: d("5m"),
            ..Default::default()
        };
        assert!(
            within_floors(&c.settings, &equal).is_ok(),
            "a floor is a minimum, not a bound to exceed"
        );
    }

    /// The quota serves the oldest sets of a namespace; sets elsewhere and sets being deleted
    /// do not count.
    #[test]
    fn the_quota_serves_the_oldest_sets_of_a_namespace() {
        let made = |name: &str, ns: &str, secs: i64| {
            let mut s = set(json!({}));
            s.metadata.name = Some(name.into());
            s.metadata.namespace = Some(ns.into());
            s.metadata.creation_timestamp = Some(
                serde_json::from_value(json!(format!("2027-01-01T00:00:{secs:02}Z"))).unwrap(),
            );
            s
        };
        let (a, b, c) = (
            made("a", "identity", 1),
            made("b", "identity", 2),
            made("c", "identity", 3),
        );
        let elsewhere = made("z", "other", 0);
        let mut going = made("g", "identity", 0);
        going.metadata.deletion_timestamp = going.metadata.creation_timestamp.clone();
        let all = [&a, &b, &c, &elsewhere, &going];
        assert!(within_quota(&at(&c), &c, all, None).is_ok());
        assert!(within_quota(&at(&b), &b, all, Some(2)).is_ok());
        let r = within_quota(&at(&c), &c, all, Some(2)).unwrap_err();
        assert_eq!(r.reason, Reason::QuotaExceeded);
        assert!(
            r.message.contains("has 3 SigningKeySets") && r.message.contains("at most 2"),
            "{}",
            r.message
        );
    }

    #[test]
    fn a_new_set_checks_out_with_nothing_observed() {
        let sks = set(json!({}));
        let c = check(&at(&sks), &sks, &Objects::default(), None, false).unwrap();
        assert_eq!(c.spread.targets, BTreeSet::from(["identity".to_string()]));
        assert!(c.observed.state.is_none() && c.observed.published.is_none());
    }

    #[test]
    fn what_keyturn_wrote_is_observed_as_published_and_signing() {
        let sks = set(json!({}));
        let st = active_state();
        let c = check(&at(&sks), &sks, &written(&sks, &st), None, false).unwrap();
        assert_eq!(c.observed.published, Some(vec![st.keys[0].kid.clone()]));
        assert_eq!(c.observed.signing, Some(st.keys[0].kid.clone()));
        assert!(c.observed.lagging.is_empty());
    }

    #[test]
    fn an_edited_jwks_or_signing_secret_is_not_observed() {
        let sks = set(json!({}));
        let st = active_state();
        let mut o = written(&sks, &st);
        let cm = o.copies.get_mut("identity").unwrap();
        cm.data
            .as_mut()
            .unwrap()
            .insert("jwks.json".into(), "{\"keys\":[]}".into());
        o.signing
            .as_mut()
            .unwrap()
            .data
            .as_mut()
            .unwrap()
            .insert("alg".into(), ByteString(b"HS256".to_vec()));
        let c = check(&at(&sks), &sks, &o, None, false).unwrap();
        assert_eq!(c.observed.published, None);
        assert_eq!(c.observed.signing, None);
    }

    #[test]
    fn invalid_specs_and_reserved_names_are_refused_naming_the_field() {
        let r = refused(
            &set(json!({"rotation": {"interval": "1h", "prePublish": "2h"}})),
            &Objects::default(),
        );
        assert_eq!(r.reason, Reason::InvalidSpec);
        assert!(r.message.starts_with("spec.rotation"), "{}", r.message);
        let r = refused(
            &set(json!({"secretName": "auth-keyturn-keys"})),
            &Objects::default(),
        );
        assert_eq!(r.reason, Reason::InvalidSpec);
        assert!(r.message.starts_with("spec.secretName"), "{}", r.message);
        let r = refused(
            &set(json!({"jwks": {"namespaceSelector": {"matchLabels": {"team": "x".repeat(64)}}}})),
            &Objects::default(),
        );
        assert_eq!(r.reason, Reason::InvalidSpec);
        assert!(
            r.message.starts_with("spec.jwks.namespaceSelector"),
            "{}",
            r.message
        );
        assert_eq!(
            Reason::InvalidSpec.retry(),
            None,
            "only a spec edit fixes it"
        );
    }

    #[test]
    fn objects_keyturn_does_not_own_are_refused_by_name() {
        let sks = set(json!({}));
        let mut o = written(&sks, &active_state());
        o.signing.as_mut().unwrap().metadata.owner_references = None;
        let r = refused(&sks, &o);
        assert_eq!(r.reason, Reason::ForeignObject);
        assert!(
            r.message.contains("Secret identity/auth-signing-key"),
            "{}",
            r.message
        );
        assert!(
            r.reason.retry().is_some(),
            "it clears when the object is deleted"
        );
    }

    #[test]
    fn a_missing_or_corrupt_internal_state_is_refused_and_nothing_is_replaced() {
        let sks = set(json!({}));
        let mut o = written(&sks, &active_state());
        o.internal = None;
        assert_eq!(refused(&sks, &o).reason, Reason::InternalStateMissing);
        // A state whose layout version holds the private key: a parser error that quoted its
        // input would carry the key (checked below on serde's own message).
        let state = active_state();
        let pem = state.keys[0]
            .private_pem
            .as_ref()
            .unwrap()
            .expose()
            .to_string();
        let mut doc = serde_json::to_value(&state).unwrap();
        doc["version"] = json!(pem);
        let bytes = serde_json::to_vec(&doc).unwrap();
        let raw = serde_json::from_slice::<SetState>(&bytes)
            .unwrap_err()
            .to_string();
        assert!(
            raw.contains("PRIVATE"),
            "the input would leak unhandled: {raw}"
        );
        let mut o = written(&sks, &state);
        o.internal
            .as_mut()
            .unwrap()
            .data
            .as_mut()
            .unwrap()
            .insert(STATE_KEY.into(), ByteString(bytes));
        let r = refused(&sks, &o);
        assert_eq!(r.reason, Reason::InternalStateCorrupt);
        let body: String = pem.lines().nth(1).unwrap().chars().take(24).collect();
        assert!(
            !r.message.contains("PRIVATE") && !r.message.contains(&body),
            "{}",
            r.message
        );
    }

    #[test]
    fn fan_out_needs_consent_and_namespace_only_mode_disables_it() {
        let sks = set(json!({"jwks": {"namespaces": ["payments"]}}));
        let ns: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": "payments"}})).unwrap();
        let o = Objects {
            namespaces: vec![ns],
            ..Default::default()
        };
        let c = check(&at(&sks), &sks, &o, None, false).unwrap();
        assert_eq!(c.spread.denied, vec!["payments".to_string()]);
        assert_eq!(c.spread.targets.len(), 1);
        let c = check(&at(&sks), &sks, &o, None, true).unwrap();
        assert_eq!(c.spread.denial, consent::Denial::Disabled);
    }

    #[test]
    fn a_published_pending_key_that_a_copy_lacks_is_lagging() {
        let sks = set(json!({}));
        let mut st = active_state();
        let kp =
            crate::core::keys::KeyPair::generate(crate::core::crd::Algorithm::EdDSA, None).unwrap();
        st = plan::with_new_key(
            Some(&st),
            &kp,
            plan::GenerateReason::Scheduled,
            None,
            crate::operator::reconcile::fixtures::t0(),
        );
        st.keys[1].published_at = Some(crate::operator::reconcile::fixtures::t0());
        // The JWKS written holds only the active key.
        let one = SetState {
            keys: vec![st.keys[0].clone()],
            ..st.clone()
        };
        let mut o = written(&sks, &one);
        o.internal = Some(objects::internal_secret(&sks, &st));
        let c = check(&at(&sks), &sks, &o, None, false).unwrap();
        assert_eq!(c.observed.lagging, BTreeSet::from([kp.kid().to_string()]));
    }

    fn import_secret(annotation: Option<&str>, pem: &str) -> Secret {
        let mut sec: Secret = serde_json::from_value(json!({
            "metadata": {"name": "legacy", "namespace": "identity"},
        }))
        .unwrap();
        if let Some(a) = annotation {
            sec.metadata.annotations =
                Some([(IMPORT_ANNOTATION.to_string(), a.to_string())].into());
        }
        sec.data = Some(
            [(
                "private.pem".to_string(),
                ByteString(pem.as_bytes().to_vec()),
            )]
            .into(),
        );
        sec
    }

    #[test]
    fn a_new_set_imports_its_first_key_only_from_a_secret_that_consents() {
        let sks = set(json!({"algorithm": "EdDSA", "import": {"secretName": "legacy"}}));
        let kp =
            crate::core::keys::KeyPair::generate(crate::core::crd::Algorithm::EdDSA, None).unwrap();
        let pem = kp.to_pkcs8_pem();
        let with = |src: Result<Secret, String>| Objects {
            import_source: Some(src),
            ..Default::default()
        };
        let c = check(
            &at(&sks),
            &sks,
            &with(Ok(import_secret(Some("auth"), &pem))),
            None,
            false,
        )
        .unwrap();
        assert_eq!(c.import.as_ref().map(|k| k.kid()), Some(kp.kid()));
        for (src, want) in [
            (Ok(import_secret(None, &pem)), "does not consent"),
            (Ok(import_secret(Some("other"), &pem)), "does not consent"),
            (
                Err("Secret identity/legacy does not exist".into()),
                "does not exist",
            ),
            (
                Ok(import_secret(Some("auth"), "junk")),
                "private.pem: is neither",
            ),
        ] {
            let r = refused(&sks, &with(src));
            assert_eq!(r.reason, Reason::ImportFailed);
            assert!(r.message.starts_with("spec.import: "), "{}", r.message);
            assert!(r.message.contains(want), "{want}: {}", r.message);
            assert!(!r.message.contains("PRIVATE"), "{}", r.message);
        }
        // A set that has keys does not import (the Secret is not even read).
        let st = active_state();
        let c = check(&at(&sks), &sks, &written(&sks, &st), None, false).unwrap();
        assert!(c.import.is_none());
    }

    #[test]
    fn verification_keys_are_read_once_per_generation_and_refused_with_the_field() {
        let until = "2026-12-31T00:00:00Z";
        let sks = set(
            json!({"verificationKeys": [{"configMapName": "old", "key": "jwks.json", "until": until}]}),
        );
        let old =
            crate::core::keys::KeyPair::generate(crate::core::crd::Algorithm::ES256, None).unwrap();
        let jwks = json!({"keys": [old.public_jwk()]}).to_string();
        let st = active_state();
        let mut o = written(&sks, &st);
        o.verification_sources = Some(vec![Ok(jwks.clone())]);
        let c = check(&at(&sks), &sks, &o, None, false).unwrap();
        let v = c.observed.verification.expect("read for generation 3");
        assert_eq!(v.generation, 3);
        assert_eq!(v.keys[0].0.kid, old.kid());
        assert!(c.verification_refused.is_none());

        // Recorded for this generation: nothing new.
        let recorded = plan::with_verification(&st, &v, crate::operator::reconcile::fixtures::t0());
        let mut o2 = written(&sks, &recorded);
        o2.verification_sources = None;
        let c = check(&at(&sks), &sks, &o2, None, false).unwrap();
        assert!(c.observed.verification.is_none());
        // The spec drops them: an empty set of keys is recorded.
        let mut none = set(json!({}));
        none.metadata.generation = Some(4);
        let c = check(&at(&none), &none, &written(&none, &recorded), None, false).unwrap();
        assert_eq!(c.observed.verification.map(|v| v.keys.len()), Some(0));

        // A missing source or a refused key: the set goes on, with the reason and the field.
        let mut private: serde_json::Value = serde_json::from_str(&old.private_jwk_json()).unwrap();
        private["kid"] = json!("x");
        let own_kid_other_key = {
            let mut j = old.public_jwk();
            j["kid"] = json!(st.keys[0].kid);
            json!({"keys": [j]}).to_string()
        };
        for (src, want) in [
            (
                Err("ConfigMap identity/old does not exist".to_string()),
                "spec.verificationKeys[0]: ConfigMap identity/old does not exist",
            ),
            (
                Ok(private.to_string()),
                "spec.verificationKeys[0] (jwks.json): key 0: has the private member \"d\"",
            ),
            (Ok(own_kid_other_key), "is one of the set's own keys"),
        ] {
            o.verification_sources = Some(vec![src]);
            let c = check(&at(&sks), &sks, &o, None, false).unwrap();
            assert!(c.observed.verification.is_none());
            let r = c.verification_refused.expect("refused");
            assert_eq!(r.reason, Reason::VerificationKeysRefused);
            assert!(r.message.contains(want), "{want}: {}", r.message);
        }
    }
}
