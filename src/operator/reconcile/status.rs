//! Stage 4, status (pure): the SigningKeySet's status from the stored state, the settings and
//! `now`; conditions keep their transition time while their status holds, so a steady state
//! derives the same status and writes nothing.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::Refusal;
use crate::core::consent::{self, FanOut};
use crate::core::crd::{KeyStatus, SetRef, SigningKeySet, SigningKeySetStatus};
use crate::core::issuer::Issuers;
use crate::core::objects;
use crate::core::plan::{self, Settings};
use crate::core::state::{KeyState, SetState};

/// Condition type saying whether every namespace the spec asks for consented.
pub const FAN_OUT_CONDITION: &str = "FanOut";
/// Condition type: whether the endpoint serves the set's discovery document (sets with
/// `spec.issuer` only).
pub const DISCOVERY_CONDITION: &str = "Discovery";
/// `Ready=False` before any key signs.
const NO_ACTIVE_KEY: &str = "NoActiveKey";
/// kstatus: keyturn is still working toward the spec (present only while true).
pub const RECONCILING_CONDITION: &str = "Reconciling";
/// kstatus: keyturn cannot make progress without a change from outside (present only while
/// true).
pub const STALLED_CONDITION: &str = "Stalled";

/// The kstatus condition that goes with a `Ready` of `status` and `reason` ("abnormal-true":
/// present only when true, so a Ready set carries neither): `Stalled` for every refusal (each
/// needs someone to act: a spec edit, a foreign object removed, a policy or quota changed;
/// keyturn keeps retrying meanwhile), `Reconciling` while keyturn itself will get there (no
/// key signs yet: the first is being made). With
/// `observedGeneration` on every condition, `kubectl wait --for=condition=Ready`, Flux and
/// Argo CD read a set's health without custom rules.
fn progress_condition(
    sks: &SigningKeySet,
    status: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Option<Condition> {
    if status == "True" {
        return None;
    }
    let type_ = if reason == NO_ACTIVE_KEY {
        RECONCILING_CONDITION
    } else {
        STALLED_CONDITION
    };
    Some(condition(sks, type_, "True", reason, message, now))
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The status derived from the operator's state: the keys in JWKS order with their times,
/// `Ready` (`not_ready` when given), `Revoked` when keys are listed for revocation, and the
/// namespaces whose copy holds the current JWKS.
pub fn derive_status(
    sks: &SigningKeySet,
    s: &Settings,
    state: &SetState,
    now: DateTime<Utc>,
    not_ready: Option<&Refusal>,
    published_namespaces: Vec<String>,
) -> SigningKeySetStatus {
    let published = plan::published_order(state, s, now);
    let keys: Vec<KeyStatus> = published
        .iter()
        .map(|r| KeyStatus {
            kid: r.kid.clone(),
            algorithm: r.alg.as_str().into(),
            state: r.state().as_str().into(),
            published_at: r.published_at.map(ts),
            activated_at: r.activated_at.map(ts),
            retired_at: r.retired_at.map(ts),
            remove_at: plan::remove_at(r, s).map(ts),
        })
        .collect();
    let active = state
        .keys
        .iter()
        .find(|r| r.state() == KeyState::Active && !s.revoked.contains(&r.kid));
    let (status, reason, message) = match not_ready {
        Some(r) => ("False", r.reason.as_str().to_string(), r.message.clone()),
        None => match active {
            Some(a) => (
                "True",
                "KeysPublished".to_string(),
                format!("key {} signs; {} key(s) published", a.kid, keys.len()),
            ),
            None => (
                "False",
                NO_ACTIVE_KEY.to_string(),
                "no key is signing yet".to_string(),
            ),
        },
    };
    let mut conditions = vec![condition(sks, "Ready", status, &reason, &message, now)];
    conditions.extend(progress_condition(sks, status, &reason, &message, now));
    if !s.revoked.is_empty() {
        conditions.push(condition(
            sks,
            "Revoked",
            "True",
            "KeysRevoked",
            &format!(
                "spec.revokedKeyIds lists {} key id(s); they are excluded from every JWKS and their private keys destroyed",
                s.revoked.len()
            ),
            now,
        ));
    }
    SigningKeySetStatus {
        observed_generation: sks.metadata.generation,
        active_key_id: active.map(|a| a.kid.clone()),
        next_rotation_time: plan::next_rotation(state, s).map(ts),
        key_count: Some(keys.len() as i32),
        keys,
        published_namespaces,
        conditions,
    }
}

/// The status of a set keyturn will not act on: `Ready=False` with the refusal first, the
/// keys as stored when `at` gives the state, otherwise the last status kept; the last
/// `FanOut` condition kept (a refusal does not re-evaluate consent).
pub fn refused_status(
    set: &SetRef,
    sks: &SigningKeySet,
    refusal: &Refusal,
    at: Option<(&SetState, &Settings)>,
    now: DateTime<Utc>,
) -> SigningKeySetStatus {
    let mut status = match at {
        Some((state, s)) => derive_status(
            sks,
            s,
            state,
            now,
            Some(refusal),
            vec![set.namespace.clone()],
        ),
        None => sks.status.clone().unwrap_or_default(),
    };
    status.observed_generation = sks.metadata.generation;
    let reason = refusal.reason.as_str();
    let mut conds: Vec<Condition> = vec![condition(
        sks,
        "Ready",
        "False",
        reason,
        &refusal.message,
        now,
    )];
    conds.extend(progress_condition(
        sks,
        "False",
        reason,
        &refusal.message,
        now,
    ));
    conds.extend(status.conditions.into_iter().filter(|c| {
        !["Ready", RECONCILING_CONDITION, STALLED_CONDITION].contains(&c.type_.as_str())
    }));
    // The last FanOut and Discovery conditions stand through a refusal (nothing re-derived
    // them); each goes once the spec no longer asks for it.
    for (kept, wanted) in [
        (FAN_OUT_CONDITION, consent::requested(sks)),
        (DISCOVERY_CONDITION, sks.spec.issuer.is_some()),
    ] {
        if wanted
            && let Some(c) = sks
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == kept))
            && !conds.iter().any(|c| c.type_ == kept)
        {
            conds.push(c.clone());
        }
    }
    status.conditions = conds;
    status
}

/// The `FanOut` condition ([`consent::condition`] decides its words).
pub fn fan_out_condition(
    set: &SetRef,
    sks: &SigningKeySet,
    spread: &FanOut,
    now: DateTime<Utc>,
) -> Condition {
    let (st, reason, message) = consent::condition(set, sks, spread);
    condition(sks, FAN_OUT_CONDITION, st, reason, &message, now)
}

/// The `Discovery` condition of a set with `spec.issuer` ([`Issuers::check`] decides).
pub fn discovery_condition(
    set: &SetRef,
    sks: &SigningKeySet,
    issuers: &Issuers,
    now: DateTime<Utc>,
) -> Option<Condition> {
    let issuer = sks.spec.issuer.as_deref()?;
    let (ns, name) = (&set.namespace, &set.name);
    let (st, reason, message) = match issuers.check(ns, name, issuer) {
        Ok(()) => (
            "True",
            "Served",
            format!(
                "the discovery document of {issuer} is served (the endpoint's /{ns}/{name}/.well-known/openid-configuration)"
            ),
        ),
        Err(r) => ("False", r.reason(), r.message(issuer)),
    };
    Some(condition(
        sks,
        DISCOVERY_CONDITION,
        st,
        reason,
        &message,
        now,
    ))
}

/// Targets whose copy holds exactly the JWKS of `published`, in namespace order.
pub fn published_namespaces(
    sks: &SigningKeySet,
    state: &SetState,
    published: Option<&[String]>,
    copies: &BTreeMap<String, ConfigMap>,
    targets: &BTreeSet<String>,
) -> Vec<String> {
    let current = published.and_then(|k| objects::jwks_bytes(state, k));
    targets
        .iter()
        .filter(|t| {
            copies
                .get(*t)
                .and_then(|c| c.data.as_ref())
                .and_then(|d| d.get(&sks.jwks_key()))
                .map(|s| s.as_bytes())
                == current.as_deref()
        })
        .cloned()
        .collect()
}

/// A condition; its transition time is kept while its status does not change (steady state
/// writes nothing), otherwise it is `now`.
pub fn condition(
    sks: &SigningKeySet,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Condition {
    let previous = sks
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: sks.metadata.generation,
        last_transition_time: previous.unwrap_or_else(|| {
            Time(
                k8s_openapi::jiff::Timestamp::from_second(now.timestamp())
                    .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::operator::reconcile::fixtures::{active_state, at, set, t0};
    use crate::operator::reconcile::{Reason, Refusal};

    fn settings() -> Settings {
        plan::validate(&set(json!({})).spec, None).unwrap()
    }

    #[test]
    fn an_active_key_is_ready_and_the_transition_time_is_now_when_it_changed() {
        let sks = set(json!({}));
        let st = active_state();
        let s = derive_status(&sks, &settings(), &st, t0(), None, vec!["identity".into()]);
        let ready = &s.conditions[0];
        assert_eq!(
            (
                ready.type_.as_str(),
                ready.status.as_str(),
                ready.reason.as_str()
            ),
            ("Ready", "True", "KeysPublished")
        );
        assert_eq!(ready.last_transition_time.0.as_second(), t0().timestamp());
        assert_eq!(s.active_key_id.as_deref(), Some(st.keys[0].kid.as_str()));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.published_namespaces, vec!["identity".to_string()]);
    }

    fn types(s: &SigningKeySetStatus) -> Vec<(String, String, String, Option<i64>)> {
        s.conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.observed_generation,
                )
            })
            .collect()
    }

    #[test]
    fn kstatus_a_ready_set_is_neither_reconciling_nor_stalled() {
        let sks = set(json!({}));
        let s = derive_status(&sks, &settings(), &active_state(), t0(), None, vec![]);
        assert_eq!(
            types(&s),
            vec![(
                "Ready".into(),
                "True".into(),
                "KeysPublished".into(),
                Some(3)
            )]
        );
    }

    #[test]
    fn kstatus_a_refusal_that_needs_someone_to_act_is_stalled() {
        let sks = set(json!({}));
        for reason in [
            Reason::InvalidSpec,
            Reason::ForeignObject,
            Reason::PublishFailed,
            Reason::InternalStateMissing,
            Reason::InternalStateCorrupt,
            Reason::TooManyKeys,
            Reason::JwksTooLarge,
            Reason::WriteRejected,
            Reason::InternalError,
        ] {
            let r = Refusal::new(reason, "why");
            let s = refused_status(&at(&sks), &sks, &r, None, t0());
            let want = reason.as_str().to_string();
            assert_eq!(
                types(&s),
                vec![
                    ("Ready".into(), "False".into(), want.clone(), Some(3)),
                    (STALLED_CONDITION.into(), "True".into(), want, Some(3)),
                ],
                "{reason:?}"
            );
        }
    }

    #[test]
    fn kstatus_the_first_key_is_reconciling_and_a_fixed_stall_ends() {
        let mut sks = set(json!({}));
        // No key signs yet: keyturn is making one.
        let empty = SetState::default();
        let s = derive_status(&sks, &settings(), &empty, t0(), None, vec![]);
        assert_eq!(
            types(&s)[1],
            (
                RECONCILING_CONDITION.into(),
                "True".into(),
                "NoActiveKey".into(),
                Some(3)
            )
        );
        let r = Refusal::new(Reason::PublishFailed, "ConfigMap payments/auth-jwks: quota");
        sks.status = Some(refused_status(
            &at(&sks),
            &sks,
            &r,
            Some((&active_state(), &settings())),
            t0(),
        ));
        // The next reconcile succeeds: Ready, and Stalled is gone (not left "True").
        let s = derive_status(&sks, &settings(), &active_state(), t0(), None, vec![]);
        assert_eq!(types(&s).len(), 1);
    }

    #[test]
    fn a_steady_state_derives_the_same_status() {
        let mut sks = set(json!({}));
        let st = active_state();
        let first = derive_status(&sks, &settings(), &st, t0(), None, vec!["identity".into()]);
        sks.status = Some(first.clone());
        let later = t0() + chrono::Duration::hours(1);
        assert_eq!(
            derive_status(&sks, &settings(), &st, later, None, vec!["identity".into()]),
            first
        );
    }

    #[test]
    fn a_refusal_puts_ready_false_first_and_keeps_the_last_fan_out_condition() {
        let mut sks = set(json!({"jwks": {"namespaces": ["payments"]}}));
        let fan = condition(
            &sks,
            FAN_OUT_CONDITION,
            "False",
            "ConsentMissing",
            "no grant",
            t0(),
        );
        sks.status = Some(SigningKeySetStatus {
            conditions: vec![fan.clone()],
            ..Default::default()
        });
        let r = Refusal::new(Reason::ForeignObject, "ConfigMap identity/auth-jwks exists");
        let s = refused_status(&at(&sks), &sks, &r, None, t0());
        assert_eq!(s.conditions[0].reason, "ForeignObject");
        assert_eq!(s.conditions[0].status, "False");
        assert_eq!(s.conditions[1].type_, STALLED_CONDITION);
        assert_eq!(s.conditions[2], fan);
        // With the state, the keys are shown too.
        let st = active_state();
        let s = refused_status(&at(&sks), &sks, &r, Some((&st, &settings())), t0());
        assert_eq!(s.keys.len(), 1);
        assert_eq!(s.conditions[0].reason, "ForeignObject");
    }
}
