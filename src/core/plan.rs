//! The pure planner: given the spec, what the operator's own objects hold, and `now`, it
//! returns the single next write and, when nothing is due, when to wake up.
//!
//! One step at a time is what makes crashes harmless (I6): every step is one write, and
//! every state between two steps is a state the planner can continue from. The order of
//! steps keeps the invariants: store a private key → publish → record publication → sign →
//! record activation and retirement → drop removed keys. A key that signs at once (a set's
//! first key, a revocation's replacement) signs before its publication is recorded, and one
//! write records both.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};

use crate::core::crd::{Algorithm, SigningKeySetSpec};
use crate::core::duration;
use crate::core::state::{KeyRecord, KeyState, SetState};

/// The spec after validation, with defaults applied and durations parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Algorithm of new keys.
    pub algorithm: Algorithm,
    /// RSA size for new RSA keys.
    pub rsa_bits: Option<u32>,
    /// How long each key signs.
    pub interval: Duration,
    /// How long a key is published before it signs.
    pub pre_publish: Duration,
    /// How long a retired key stays published.
    pub overlap: Duration,
    /// Kids to revoke now.
    pub revoked: BTreeSet<String>,
    /// Current value of the `keyturn.dev/rotate` annotation.
    pub rotate_token: Option<String>,
    /// The longest token lifetime (`spec.maxTokenLifetime`), when given.
    pub max_token_lifetime: Option<Duration>,
}

/// A spec the operator cannot act on; becomes `Ready=False` with reason `InvalidSpec`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {why}")]
pub struct SpecError {
    /// The offending field, e.g. `spec.rotation.prePublish`.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: String,
}

/// Validates a spec (pure). The CRD schema catches most of this at `kubectl apply`; this is
/// the operator's own check, for objects stored under an older schema and for rules the
/// schema cannot express.
pub fn validate(
    spec: &SigningKeySetSpec,
    rotate_token: Option<String>,
) -> Result<Settings, SpecError> {
    let dur = |field: &'static str, s: &str| -> Result<Duration, SpecError> {
        let d = duration::parse(s).map_err(|e| SpecError {
            field,
            why: e.to_string(),
        })?;
        if d <= Duration::zero() {
            return Err(SpecError {
                field,
                why: format!("must be greater than 0, got {s:?}"),
            });
        }
        Ok(d)
    };
    let interval = dur("spec.rotation.interval", &spec.rotation.interval)?;
    let pre_publish = dur("spec.rotation.prePublish", &spec.rotation.pre_publish)?;
    let overlap = dur("spec.rotation.overlap", &spec.rotation.overlap)?;
    if pre_publish >= interval {
        return Err(SpecError {
            field: "spec.rotation.prePublish",
            why: format!(
                "must be shorter than spec.rotation.interval ({} >= {})",
                spec.rotation.pre_publish, spec.rotation.interval
            ),
        });
    }
    let max_token_lifetime = match &spec.max_token_lifetime {
        None => None,
        Some(t) => {
            let life = dur("spec.maxTokenLifetime", t)?;
            let margin = duration::parse(crate::core::crd::TOKEN_LIFETIME_MARGIN)
                .expect("the margin is a valid duration");
            if overlap < life + margin {
                return Err(SpecError {
                    field: "spec.rotation.overlap",
                    why: format!(
                        "must be at least spec.maxTokenLifetime plus {} ({} < {t} + {}): a token signed just before its key retires must verify until it expires",
                        crate::core::crd::TOKEN_LIFETIME_MARGIN,
                        spec.rotation.overlap,
                        crate::core::crd::TOKEN_LIFETIME_MARGIN
                    ),
                });
            }
            Some(life)
        }
    };
    if let Some(bits) = spec.rsa_key_size {
        if !spec.algorithm.is_rsa() {
            return Err(SpecError {
                field: "spec.rsaKeySize",
                why: format!("only applies to RSA algorithms, not {}", spec.algorithm),
            });
        }
        if !crate::core::crd::RSA_KEY_SIZES.contains(&bits) {
            return Err(SpecError {
                field: "spec.rsaKeySize",
                why: format!(
                    "must be {}, got {bits}",
                    crate::core::crd::rsa_key_sizes_text()
                ),
            });
        }
    }
    Ok(Settings {
        algorithm: spec.algorithm,
        rsa_bits: spec.rsa_key_size,
        interval,
        pre_publish,
        overlap,
        revoked: spec.revoked_key_ids.iter().cloned().collect(),
        rotate_token,
        max_token_lifetime,
    })
}

/// What the operator's own objects hold, as read at the start of a step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The internal Secret's state; `None` when the Secret does not exist.
    pub state: Option<SetState>,
    /// Kids of the published JWKS, in order, when its bytes are exactly what keyturn would
    /// write for them; `None` when the ConfigMap is missing or differs.
    pub published: Option<Vec<String>>,
    /// Kid in the signing Secret, when its content is exactly what keyturn writes for that
    /// key; `None` when missing or different.
    pub signing: Option<String>,
    /// Kid the signing Secret names (its `kid`), whatever else it holds: a revoked one is
    /// taken out before anything else happens (I10).
    pub signing_held: Option<String>,
    /// Some copy of the JWKS keyturn made still holds a revoked kid: the JWKS is written
    /// again before anything else (a replacement that cannot be generated yet must not keep
    /// the revoked key published, I10).
    pub revoked_published: bool,
    /// Pending keys recorded as published that some JWKS copy lacks (a namespace that joined
    /// or consented since, a copy deleted): their prePublish must start again.
    pub lagging: BTreeSet<String>,
    /// The verification-only keys as read from `spec.verificationKeys` for a generation the
    /// state has not recorded yet; `None` when there is nothing new to record.
    pub verification: Option<Verification>,
}

/// The verification-only keys of one generation of the spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    /// The set's `metadata.generation` they were read for.
    pub generation: i64,
    /// Each key with the time it leaves the JWKS; kids unique and none of the set's own.
    pub keys: Vec<(crate::core::import::VerificationKey, DateTime<Utc>)>,
}

/// Why a key is generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerateReason {
    /// The set's first key; Active at once.
    First,
    /// The schedule: `activatedAt(current) + interval − prePublish` has come.
    Scheduled,
    /// The `keyturn.dev/rotate` annotation changed.
    Manual,
    /// The Active key was revoked and no Pending key can replace it.
    Revocation,
}

/// A transition worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// A key was published in the JWKS.
    Published(String),
    /// A key started signing.
    Activated(String),
    /// A key stopped signing.
    Retired(String),
    /// A key left the JWKS and its record was dropped.
    Removed(String),
    /// A revoked key left the JWKS; `was_active` when it was signing.
    Revoked {
        /// The revoked kid.
        kid: String,
        /// True when it was the Active key.
        was_active: bool,
    },
}

/// The single next write.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Generate a key and store it (private key first, before anything publishes it).
    Generate {
        /// Its algorithm.
        alg: Algorithm,
        /// RSA size.
        rsa_bits: Option<u32>,
        /// Why.
        reason: GenerateReason,
        /// Annotation value to record with it (manual rotation and first key).
        rotate_token: Option<String>,
    },
    /// Write the JWKS ConfigMap with these keys, in this order.
    Publish(Vec<String>),
    /// Write the signing Secret with this key.
    Sign(String),
    /// Write the signing Secret with no key at all: it holds a revoked one and no
    /// replacement signs yet (issuers fail closed rather than sign with a revoked key).
    Unsign,
    /// Write the internal Secret with this state.
    Store(SetState, Vec<Transition>),
}

/// Result of planning: a step to take now, or nothing until `wake_at`.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Take this step, then plan again.
    Do(Step),
    /// Nothing is due; plan again at this instant (if any).
    Idle {
        /// The next transition time.
        wake_at: Option<DateTime<Utc>>,
    },
}

/// When a key is removed from the JWKS: `overlap` after it retired, or a verification-only
/// key's own time.
pub fn remove_at(r: &KeyRecord, s: &Settings) -> Option<DateTime<Utc>> {
    r.verify_until.or(r.retired_at.map(|t| t + s.overlap))
}

/// The live (non-revoked, not yet removed) keys in JWKS order: Active, then Pending
/// (oldest first), then Retired (most recently retired first), then verification-only; ties
/// by kid.
pub fn published_order<'a>(
    state: &'a SetState,
    s: &Settings,
    now: DateTime<Utc>,
) -> Vec<&'a KeyRecord> {
    let mut keys: Vec<&KeyRecord> = state
        .keys
        .iter()
        .filter(|r| !s.revoked.contains(&r.kid))
        .filter(|r| remove_at(r, s).is_none_or(|t| t > now))
        .collect();
    keys.sort_by(|a, b| {
        let rank = |r: &KeyRecord| match r.state() {
            KeyState::Active => 0,
            KeyState::Pending => 1,
            KeyState::Retired => 2,
            KeyState::Verification => 3,
        };
        rank(a)
            .cmp(&rank(b))
            .then_with(|| match a.state() {
                KeyState::Pending => a.created_at.cmp(&b.created_at),
                KeyState::Retired => b.retired_at.cmp(&a.retired_at),
                KeyState::Active | KeyState::Verification => std::cmp::Ordering::Equal,
            })
            .then_with(|| a.kid.cmp(&b.kid))
    });
    keys
}

fn active(state: &SetState, s: &Settings) -> Option<usize> {
    state
        .keys
        .iter()
        .position(|r| r.state() == KeyState::Active && !s.revoked.contains(&r.kid))
}

/// The Pending key that will activate next: the oldest live one.
fn candidate(state: &SetState, s: &Settings) -> Option<usize> {
    state
        .keys
        .iter()
        .enumerate()
        .filter(|(_, r)| r.state() == KeyState::Pending && !s.revoked.contains(&r.kid))
        .min_by_key(|(_, r)| (r.created_at, r.kid.clone()))
        .map(|(i, _)| i)
}

/// When the next key should be generated (scheduled path).
pub fn generate_at(state: &SetState, s: &Settings) -> Option<DateTime<Utc>> {
    let a = &state.keys[active(state, s)?];
    Some(a.activated_at? + s.interval - s.pre_publish)
}

/// When the Pending candidate may start signing, once it is published.
pub fn activate_at(state: &SetState, s: &Settings) -> Option<DateTime<Utc>> {
    let c = &state.keys[candidate(state, s)?];
    let published = c.published_at?;
    let earliest = published + s.pre_publish;
    match active(state, s) {
        // No signer (first key, or the signer was revoked): at once.
        None => Some(published),
        Some(_) if c.manual => Some(earliest),
        Some(a) => Some(earliest.max(state.keys[a].activated_at? + s.interval)),
    }
}

/// When the next rotation (activation of a new key) is expected, for the status: the
/// published candidate's activation instant, otherwise (no candidate, or one not yet
/// published) the schedule of the active key.
pub fn next_rotation(state: &SetState, s: &Settings) -> Option<DateTime<Utc>> {
    if let Some(t) = activate_at(state, s) {
        return Some(t);
    }
    let a = &state.keys[active(state, s)?];
    Some(a.activated_at? + s.interval)
}

/// Plans the next step (pure).
pub fn plan(s: &Settings, observed: &Observed, now: DateTime<Utc>) -> Plan {
    // 0. Revocation first, before anything that could fail or wait (a generation, a copy
    //    that cannot be written, a verification source): a signing Secret that holds a
    //    revoked key is emptied, then the revoked records go (a revoked Active record keeps
    //    its place until its replacement activates, which drops it: it says which key the
    //    replacement replaces, and it signs nowhere meanwhile).
    if observed
        .signing_held
        .as_ref()
        .is_some_and(|k| s.revoked.contains(k))
    {
        return Plan::Do(Step::Unsign);
    }
    if let Some(state) = &observed.state
        && let Some((next, events)) = without_revoked(state, s)
    {
        return Plan::Do(Step::Store(next, events));
    }
    if let Some(state) = &observed.state
        && observed.revoked_published
    {
        let desired = published_order(state, s, now)
            .iter()
            .map(|r| r.kid.clone())
            .collect();
        return Plan::Do(Step::Publish(desired));
    }
    let Some(state) = &observed.state else {
        return Plan::Do(Step::Generate {
            alg: s.algorithm,
            rsa_bits: s.rsa_bits,
            reason: GenerateReason::First,
            rotate_token: s.rotate_token.clone(),
        });
    };

    // 0. Record the verification-only keys read for a new generation of the spec (public
    //    keys only; published by step 2 like any other).
    if let Some(v) = &observed.verification
        && state.verification_generation != Some(v.generation)
    {
        return Plan::Do(Step::Store(with_verification(state, v, now), vec![]));
    }

    let active_i = active(state, s);
    let cand_i = candidate(state, s);

    // 1. Generation comes first, so that a revocation's replacement is published in the
    //    same write that removes the revoked key.
    let manual_requested = s.rotate_token.is_some() && s.rotate_token != state.rotate_token;
    if let Some(ci) = cand_i {
        if manual_requested {
            // A key is already pending: the manual rotation makes it activate after prePublish.
            let mut next = state.clone();
            next.keys[ci].manual = true;
            next.rotate_token = s.rotate_token.clone();
            return Plan::Do(Step::Store(next, vec![]));
        }
    } else {
        let reason = if active_i.is_none() {
            Some(if state.keys.is_empty() {
                GenerateReason::First
            } else {
                GenerateReason::Revocation
            })
        } else if manual_requested {
            Some(GenerateReason::Manual)
        } else if generate_at(state, s).is_some_and(|t| now >= t) {
            Some(GenerateReason::Scheduled)
        } else {
            None
        };
        if let Some(reason) = reason {
            let rotate_token = if manual_requested || reason == GenerateReason::First {
                s.rotate_token.clone()
            } else {
                state.rotate_token.clone()
            };
            return Plan::Do(Step::Generate {
                alg: s.algorithm,
                rsa_bits: s.rsa_bits,
                reason,
                rotate_token,
            });
        }
    }

    // 1b. A Pending key that some copy lacks has not been in *every* copy for prePublish:
    //     forget its publication first (crash-safe: it cannot activate on the old time), then
    //     publish it everywhere and record the publication anew (steps 2 and 3).
    let lagging = |r: &KeyRecord| {
        r.state() == KeyState::Pending
            && r.published_at.is_some()
            && observed.lagging.contains(&r.kid)
    };
    if state.keys.iter().any(lagging) {
        let mut next = state.clone();
        for r in next.keys.iter_mut().filter(|r| lagging(r)) {
            r.published_at = None;
        }
        return Plan::Do(Step::Store(next, vec![]));
    }

    // 2. Publish: the JWKS must hold exactly the live keys, in order.
    let desired: Vec<String> = published_order(state, s, now)
        .iter()
        .map(|r| r.kid.clone())
        .collect();
    if observed.published.as_ref() != Some(&desired) {
        return Plan::Do(Step::Publish(desired));
    }

    // 3. Record publication time of keys the JWKS now holds. A candidate with no signer
    //    before it (a set's first key, a revocation's replacement) activates the moment it
    //    is published (I1 exempts it): the signing Secret takes it first, then one write
    //    records its publication and its activation, each after the write it follows (I6).
    let unrecorded = |r: &KeyRecord| r.published_at.is_none() && desired.contains(&r.kid);
    if state.keys.iter().any(unrecorded) {
        let at_once = cand_i.filter(|&ci| active_i.is_none() && unrecorded(&state.keys[ci]));
        if let Some(ci) = at_once
            && observed.signing.as_deref() != Some(state.keys[ci].kid.as_str())
        {
            return Plan::Do(Step::Sign(state.keys[ci].kid.clone()));
        }
        let mut next = state.clone();
        let mut events = vec![];
        for r in next.keys.iter_mut().filter(|r| unrecorded(r)) {
            r.published_at = Some(now);
            events.push(Transition::Published(r.kid.clone()));
        }
        if let Some(ci) = at_once {
            activate(&mut next, ci, s, now, &mut events);
        }
        return Plan::Do(Step::Store(next, events));
    }

    // 4. Activation.
    if let (Some(ci), Some(due)) = (cand_i, activate_at(state, s))
        && now >= due
    {
        // The signing Secret switches first; the state records the activation (and drops
        // the old key's private PEM) after, so no crash leaves the Secret holding a key the
        // state has already destroyed.
        let kid = state.keys[ci].kid.clone();
        if observed.signing.as_deref() != Some(kid.as_str()) {
            return Plan::Do(Step::Sign(kid));
        }
        let mut next = state.clone();
        let mut events = vec![];
        activate(&mut next, ci, s, now, &mut events);
        return Plan::Do(Step::Store(next, events));
    }

    // 5. The signing Secret holds the Active key.
    if let Some(ai) = active_i {
        let kid = &state.keys[ai].kid;
        if observed.signing.as_deref() != Some(kid.as_str()) {
            return Plan::Do(Step::Sign(kid.clone()));
        }
    }

    // 6. Drop records of removed keys (the JWKS no longer holds them; revoked ones went at
    //    step 0, a revoked Active one goes when its replacement activates, above).
    let expired: Vec<String> = state
        .keys
        .iter()
        .filter(|r| {
            matches!(r.state(), KeyState::Retired | KeyState::Verification)
                && remove_at(r, s).is_some_and(|t| t <= now)
        })
        .map(|r| r.kid.clone())
        .collect();
    if !expired.is_empty() {
        let mut next = state.clone();
        let events: Vec<Transition> = expired
            .iter()
            .map(|k| Transition::Removed(k.clone()))
            .collect();
        next.keys.retain(|r| !expired.contains(&r.kid));
        return Plan::Do(Step::Store(next, events));
    }

    // 7. Idle until the next transition.
    Plan::Idle {
        wake_at: next_transition(state, s, now),
    }
}

/// The next instant after `now` at which the plan changes something: the next key's
/// generation and publication, an activation, or a retired key's removal. Every change of
/// the published JWKS happens at one of these instants (or on a spec change).
pub fn next_transition(
    state: &SetState,
    s: &Settings,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let mut wake: Vec<DateTime<Utc>> = vec![];
    if candidate(state, s).is_none() {
        wake.extend(generate_at(state, s));
    }
    wake.extend(activate_at(state, s));
    wake.extend(state.keys.iter().filter_map(|r| remove_at(r, s)));
    wake.into_iter().filter(|t| *t > now).min()
}

/// The earliest transition the plan has for `state`, due or not: after a reconcile that did
/// everything due this is [`next_transition`]; while something holds a step back (a copy that
/// cannot be written holds an activation) it is the instant that step was due, in the past.
/// `keyturn_next_transition_timestamp_seconds` exports it, so an overdue rotation shows.
pub fn due_transition(state: &SetState, s: &Settings) -> Option<DateTime<Utc>> {
    let mut due: Vec<DateTime<Utc>> = vec![];
    match candidate(state, s) {
        // The next key's generation and publication; a candidate that could not be published
        // yet (a copy refused it) was due to be published then too.
        None => due.extend(generate_at(state, s)),
        Some(c) if state.keys[c].published_at.is_none() => due.extend(generate_at(state, s)),
        Some(_) => {}
    }
    due.extend(activate_at(state, s));
    due.extend(state.keys.iter().filter_map(|r| remove_at(r, s)));
    due.into_iter().min()
}

/// Records the activation of `state.keys[ci]` (the signing Secret already holds it): the
/// Active key retires and loses its private key, a revoked Active record is dropped.
fn activate(
    state: &mut SetState,
    ci: usize,
    s: &Settings,
    now: DateTime<Utc>,
    events: &mut Vec<Transition>,
) {
    for r in state.keys.iter_mut() {
        if r.state() == KeyState::Active {
            if s.revoked.contains(&r.kid) {
                continue; // dropped below
            }
            r.retired_at = Some(now);
            r.private_pem = None; // a retired key never signs again
            events.push(Transition::Retired(r.kid.clone()));
        }
    }
    state.keys[ci].activated_at = Some(now);
    events.push(Transition::Activated(state.keys[ci].kid.clone()));
    drop_revoked(state, s, events, true);
}

/// The state without its revoked records but a revoked Active one (it stays until its
/// replacement activates: the record says which key the replacement replaces), with the
/// Events; `None` when there is nothing to drop. Dropping them first leaves room for the
/// replacement in a full state.
fn without_revoked(state: &SetState, s: &Settings) -> Option<(SetState, Vec<Transition>)> {
    let droppable = |r: &KeyRecord| s.revoked.contains(&r.kid) && r.state() != KeyState::Active;
    if !state.keys.iter().any(droppable) {
        return None;
    }
    let mut next = state.clone();
    let mut events = vec![];
    drop_revoked(&mut next, s, &mut events, false);
    Some((next, events))
}

/// True while a revoked Active key is being replaced: its replacement signs once every copy
/// keyturn can write holds it (a copy that cannot be written holds back a scheduled
/// activation, never a revocation's, I10).
pub fn replacing_revoked(state: &SetState, s: &Settings) -> bool {
    state
        .keys
        .iter()
        .any(|r| r.state() == KeyState::Active && s.revoked.contains(&r.kid))
}

/// Drops revoked records; a revoked Active record only when `with_active` (its
/// replacement activates in the same store).
fn drop_revoked(
    state: &mut SetState,
    s: &Settings,
    events: &mut Vec<Transition>,
    with_active: bool,
) {
    state.keys.retain(|r| {
        if !s.revoked.contains(&r.kid) {
            return true;
        }
        let was_active = r.state() == KeyState::Active;
        if was_active && !with_active {
            return true;
        }
        events.push(Transition::Revoked {
            kid: r.kid.clone(),
            was_active,
        });
        false
    });
}

/// The state with its verification-only records replaced by `v`'s keys not yet due to leave
/// (a key kept from before keeps its publication time), and `v`'s generation recorded.
pub fn with_verification(state: &SetState, v: &Verification, now: DateTime<Utc>) -> SetState {
    let mut next = state.clone();
    let before: Vec<KeyRecord> = next
        .keys
        .iter()
        .filter(|r| r.state() == KeyState::Verification)
        .cloned()
        .collect();
    next.keys.retain(|r| r.state() != KeyState::Verification);
    for (k, until) in v.keys.iter().filter(|(_, until)| *until > now) {
        let kept = before
            .iter()
            .find(|r| r.kid == k.kid && r.public_jwk == k.jwk);
        next.keys.push(KeyRecord {
            kid: k.kid.clone(),
            alg: k.alg,
            public_jwk: k.jwk.clone(),
            private_pem: None,
            created_at: kept.map_or(now, |r| r.created_at),
            published_at: kept.and_then(|r| r.published_at),
            activated_at: None,
            retired_at: None,
            manual: false,
            verify_until: Some(*until),
        });
    }
    next.verification_generation = Some(v.generation);
    next
}

/// The state after storing a freshly generated key (the `Generate` step's write).
pub fn with_new_key(
    state: Option<&SetState>,
    kp: &crate::core::keys::KeyPair,
    reason: GenerateReason,
    rotate_token: Option<String>,
    now: DateTime<Utc>,
) -> SetState {
    let mut next = state.cloned().unwrap_or_default();
    next.keys.push(KeyRecord {
        kid: kp.kid().to_string(),
        alg: kp.alg(),
        public_jwk: kp.public_jwk(),
        private_pem: Some(crate::core::state::Sensitive::new(kp.to_pkcs8_pem())),
        created_at: now,
        published_at: None,
        activated_at: None,
        retired_at: None,
        manual: reason == GenerateReason::Manual,
        verify_until: None,
    });
    next.rotate_token = rotate_token;
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys::KeyPair;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn t0() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_copy_that_joins_while_a_key_is_pending_restarts_its_pre_publication() {
        let s = settings("10m", "2m", "2m");
        let mut w = World::new();
        w.settle(&s);
        // The next key is published at 8m (activation due at 10m) ...
        w.now = t0() + Duration::minutes(8);
        w.settle(&s);
        // ... and at 9m50s a copy that lacks it joins.
        w.now = t0() + Duration::minutes(9) + Duration::seconds(50);
        w.settle(&s);
        let state = w.obs.state.clone().unwrap();
        let cand = state
            .keys
            .iter()
            .find(|r| r.state() == KeyState::Pending)
            .expect("a Pending key");
        assert!(cand.published_at.is_some());
        w.obs.lagging = BTreeSet::from([cand.kid.clone()]);
        match plan(&s, &w.obs, w.now) {
            Plan::Do(Step::Store(next, _)) => {
                let r = next.keys.iter().find(|r| r.kid == cand.kid).unwrap();
                assert_eq!(r.published_at, None, "its publication is forgotten first");
                w.obs.state = Some(next);
            }
            other => panic!("expected the publication to be forgotten, got {other:?}"),
        }
        w.obs.lagging.clear();
        w.obs.published = None; // the joined copy does not hold the current JWKS yet
        w.settle(&s);
        let republished = w.now;
        let r = w
            .obs
            .state
            .as_ref()
            .unwrap()
            .keys
            .iter()
            .find(|r| r.kid == cand.kid)
            .unwrap();
        assert_eq!(r.published_at, Some(republished), "recorded anew");
        assert_eq!(
            activate_at(w.obs.state.as_ref().unwrap(), &s),
            Some(republished + s.pre_publish),
            "it activates prePublish after every copy has it, not on the old schedule"
        );
    }

    /// The instant exported as the next transition stays where the held-back step was due,
    /// however late it is (never moved past `now` as the wake-up instant is), whether the next
    /// key could not be published or could not activate.
    #[test]
    fn a_held_back_step_stays_due_at_its_instant() {
        let s = settings("10m", "2m", "2m");
        let mut w = World::new();
        w.settle(&s);
        let state = w.obs.state.clone().unwrap();
        let due = t0() + Duration::minutes(8);
        assert_eq!(
            due_transition(&state, &s),
            Some(due),
            "the next key's publication"
        );
        assert_eq!(
            next_transition(&state, &s, t0() + Duration::minutes(9)),
            None
        );
        // The next key exists but no copy took it: still due at 8m.
        let kp = KeyPair::generate(Algorithm::ES256, None).unwrap();
        let pending = with_new_key(Some(&state), &kp, GenerateReason::Scheduled, None, due);
        assert!(pending.keys.iter().any(|r| r.published_at.is_none()));
        assert_eq!(due_transition(&pending, &s), Some(due));
        // Published at 8m: its activation is due at 10m, and stays so at 30m.
        w.now = due;
        w.settle(&s);
        let published = w.obs.state.clone().unwrap();
        assert_eq!(
            due_transition(&published, &s),
            Some(t0() + Duration::minutes(10))
        );
    }

    /// The default spec (ES256), as the API server stores `spec: {}`.
    fn spec() -> SigningKeySetSpec {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    fn settings(interval: &str, pre: &str, overlap: &str) -> Settings {
        let mut spec = spec();
        spec.rotation.interval = interval.into();
        spec.rotation.pre_publish = pre.into();
        spec.rotation.overlap = overlap.into();
        validate(&spec, None).unwrap()
    }

    /// A simulated cluster: the three objects the planner observes, plus a timeline of what
    /// was published and what signed, checked against I1 and I2 after every write.
    struct World {
        obs: Observed,
        now: DateTime<Utc>,
        /// kid → since when it has been continuously published.
        published_since: BTreeMap<String, DateTime<Utc>>,
        /// kid → when it stopped signing (for I2).
        stopped_signing: BTreeMap<String, DateTime<Utc>>,
        /// Kids that ever signed, in order.
        signers: Vec<(String, DateTime<Utc>)>,
        steps: usize,
        events: Vec<Transition>,
        /// Kids exempt from I1/I2 (revoked, or first key / revocation replacements).
        exempt_prepublish: BTreeSet<String>,
        revoked_ever: BTreeSet<String>,
        /// Verification-only kids ever recorded (they leave at their own time, not by I2).
        verification_kids: BTreeSet<String>,
        /// The signing Secret was emptied of a revoked key; the next key to sign replaces it.
        unsigned_for_revocation: bool,
    }

    impl World {
        fn new() -> Self {
            World {
                obs: Observed::default(),
                now: t0(),
                published_since: BTreeMap::new(),
                stopped_signing: BTreeMap::new(),
                signers: vec![],
                steps: 0,
                events: vec![],
                exempt_prepublish: BTreeSet::new(),
                revoked_ever: BTreeSet::new(),
                verification_kids: BTreeSet::new(),
                unsigned_for_revocation: false,
            }
        }

        fn apply(&mut self, step: Step, s: &Settings) {
            self.steps += 1;
            match step {
                Step::Generate {
                    alg,
                    rsa_bits,
                    reason,
                    rotate_token,
                } => {
                    let kp = KeyPair::generate(alg, rsa_bits).unwrap();
                    if matches!(reason, GenerateReason::First | GenerateReason::Revocation) {
                        self.exempt_prepublish.insert(kp.kid().to_string());
                    }
                    self.obs.state = Some(with_new_key(
                        self.obs.state.as_ref(),
                        &kp,
                        reason,
                        rotate_token,
                        self.now,
                    ));
                }
                Step::Publish(kids) => {
                    let state = self.obs.state.as_ref().expect("publish only after store");
                    for k in &kids {
                        assert!(
                            state
                                .keys
                                .iter()
                                .any(|r| &r.kid == k && r.public_jwk["kid"] == k.as_str()),
                            "I6: published {k} whose record is not stored"
                        );
                    }
                    // Removal check (I2) for every kid leaving the JWKS.
                    let old: Vec<String> = self.obs.published.clone().unwrap_or_default();
                    let verification_only = |k: &String| self.verification_kids.contains(k);
                    for k in old.iter().filter(|k| !kids.contains(k)) {
                        if !s.revoked.contains(k) && !verification_only(k) {
                            let stopped = self.stopped_signing.get(k).copied();
                            match stopped {
                                Some(t) => assert!(
                                    self.now >= t + s.overlap,
                                    "I2: {k} removed at {} but stopped signing at {t}",
                                    self.now
                                ),
                                None => panic!(
                                    "I2: {k} removed from JWKS but never retired (never signed?)"
                                ),
                            }
                        }
                        self.published_since.remove(k);
                    }
                    for k in &kids {
                        self.published_since.entry(k.clone()).or_insert(self.now);
                    }
                    self.obs.published = Some(kids);
                }
                Step::Unsign => {
                    let held = self.obs.signing_held.take();
                    assert!(
                        held.as_ref().is_some_and(|k| s.revoked.contains(k)),
                        "only a revoked key is taken out of the signing Secret, not {held:?}"
                    );
                    if let Some(prev) = self.obs.signing.take() {
                        self.stopped_signing.insert(prev, self.now);
                    }
                    self.unsigned_for_revocation = true;
                }
                Step::Sign(kid) => {
                    // DESIGN I1: after an emergency revocation the replacement signs at once.
                    let replacing_revoked = self
                        .obs
                        .signing
                        .as_ref()
                        .is_some_and(|p| s.revoked.contains(p))
                        || std::mem::take(&mut self.unsigned_for_revocation);
                    if replacing_revoked {
                        self.exempt_prepublish.insert(kid.clone());
                    }
                    self.obs.signing_held = Some(kid.clone());
                    if let Some(prev) = self.obs.signing.replace(kid.clone())
                        && prev != kid
                    {
                        self.stopped_signing.insert(prev, self.now);
                    }
                    let since = self.published_since.get(&kid).copied();
                    let since =
                        since.unwrap_or_else(|| panic!("I1: {kid} signs but is not published"));
                    // I1 holds when a key becomes the signer. The Secret is also put back to
                    // the stored Active key when it holds the next key whose activation is not
                    // recorded yet (a crash between the two writes) and a longer prePublish
                    // since then postpones that activation: the Active key, which signed before,
                    // signs again. It was checked against the prePublish of its own activation,
                    // not the one in force now.
                    let restoring = self.signers.iter().any(|(k, _)| *k == kid)
                        && self.obs.state.as_ref().is_some_and(|st| {
                            st.keys
                                .iter()
                                .any(|r| r.kid == kid && r.state() == KeyState::Active)
                        });
                    if !restoring && !self.exempt_prepublish.contains(&kid) {
                        assert!(
                            self.now >= since + s.pre_publish,
                            "I1: {kid} signed at {} but published only since {since}",
                            self.now
                        );
                    }
                    self.signers.push((kid, self.now));
                }
                Step::Store(st, ev) => {
                    // Retired keys never keep private material.
                    for r in &st.keys {
                        if r.state() == KeyState::Verification {
                            assert!(r.private_pem.is_none(), "a verification key is private");
                            self.verification_kids.insert(r.kid.clone());
                        }
                        if r.state() == KeyState::Retired {
                            assert!(
                                r.private_pem.is_none(),
                                "retired key {} keeps its private key",
                                r.kid
                            );
                        }
                    }
                    self.events.extend(ev);
                    self.obs.state = Some(st);
                }
            }
            // Steady invariants after every write.
            if let (Some(sig), Some(pub_)) = (&self.obs.signing, &self.obs.published)
                && !s.revoked.contains(sig)
            {
                assert!(pub_.contains(sig), "I1: signer {sig} not in JWKS {pub_:?}");
            }
        }

        /// Runs steps until idle; returns the wake time. Panics on a step storm.
        fn settle(&mut self, s: &Settings) -> Option<DateTime<Utc>> {
            for _ in 0..20 {
                match plan(s, &self.obs, self.now) {
                    Plan::Do(step) => self.apply(step, s),
                    Plan::Idle { wake_at } => {
                        // I5: idle means a second plan is idle too (no hidden writes).
                        assert_eq!(plan(s, &self.obs, self.now), Plan::Idle { wake_at });
                        return wake_at;
                    }
                }
            }
            panic!("no convergence within 20 steps at {}", self.now);
        }

        fn active_kid(&self) -> Option<String> {
            self.obs
                .state
                .as_ref()?
                .keys
                .iter()
                .find(|r| r.state() == KeyState::Active)
                .map(|r| r.kid.clone())
        }
        fn count(&self, st: KeyState) -> usize {
            self.obs
                .state
                .as_ref()
                .map_or(0, |x| x.keys.iter().filter(|r| r.state() == st).count())
        }
    }

    #[test]
    fn first_key_is_published_then_active_at_once() {
        let s = settings("720h", "1h", "24h");
        let mut w = World::new();
        let wake = w.settle(&s).unwrap();
        let kid = w.active_kid().unwrap();
        assert_eq!(w.obs.signing.as_deref(), Some(kid.as_str()));
        assert_eq!(w.obs.published.as_deref(), Some(&[kid.clone()][..]));
        assert_eq!(
            wake,
            t0() + Duration::hours(719),
            "next key generated at activation + interval − prePublish"
        );
        assert_eq!(
            w.events,
            [
                Transition::Published(kid.clone()),
                Transition::Activated(kid)
            ]
        );
        assert_eq!(
            w.steps, 4,
            "generate, publish, sign, record publication and activation in one write"
        );
    }

    #[test]
    fn three_years_of_rotations_keep_i1_i2_and_never_burst() {
        let s = settings("720h", "1h", "24h");
        let mut w = World::new();
        let end = t0() + Duration::days(3 * 365);
        let mut wakeups = 0;
        while w.now < end {
            let wake = w.settle(&s).expect("always a next transition");
            assert!(wake > w.now);
            w.now = wake;
            wakeups += 1;
            assert!(w.count(KeyState::Active) == 1);
            assert!(w.count(KeyState::Pending) <= 1);
            assert!(
                w.count(KeyState::Retired) <= 1,
                "24h overlap < 720h interval: at most one retired key"
            );
        }
        let rotations = w.signers.len();
        // 3 years / 30 days ≈ 36.5 rotations (+ the first key).
        assert!((36..=38).contains(&rotations), "{rotations} signers");
        // Exactly one generation, activation and removal per rotation: no bursts.
        for pair in w.signers.windows(2) {
            let gap = pair[1].1 - pair[0].1;
            assert!(
                gap >= Duration::hours(720) && gap < Duration::hours(721),
                "rotation gap {gap}"
            );
        }
        // Per rotation: wake for generation, activation, removal — nothing else.
        assert!(
            wakeups <= rotations * 3 + 1,
            "{wakeups} wake-ups for {rotations} rotations: the planner polls"
        );
    }

    #[test]
    fn pre_publication_and_overlap_timeline() {
        let s = settings("10h", "2h", "3h");
        let mut w = World::new();
        w.settle(&s);
        let first = w.active_kid().unwrap();
        w.now = t0() + Duration::hours(8) - Duration::seconds(1);
        assert!(
            matches!(plan(&s, &w.obs, w.now), Plan::Idle { .. }),
            "nothing before activation + interval − prePublish"
        );
        w.now = t0() + Duration::hours(8);
        w.settle(&s);
        assert_eq!(w.count(KeyState::Pending), 1);
        assert_eq!(
            w.obs.published.as_ref().unwrap().len(),
            2,
            "next key published before it signs"
        );
        assert_eq!(
            w.obs.signing.as_deref(),
            Some(first.as_str()),
            "old key still signs"
        );
        w.now = t0() + Duration::hours(10);
        w.settle(&s);
        let second = w.active_kid().unwrap();
        assert_ne!(first, second);
        assert_eq!(w.obs.signing.as_deref(), Some(second.as_str()));
        assert_eq!(
            w.obs.published.as_ref().unwrap(),
            &vec![second.clone(), first.clone()],
            "active first, retired after"
        );
        w.now = t0() + Duration::hours(13) - Duration::seconds(1);
        w.settle(&s);
        assert!(
            w.obs.published.as_ref().unwrap().contains(&first),
            "retired key kept for overlap"
        );
        w.now = t0() + Duration::hours(13);
        w.settle(&s);
        assert_eq!(w.obs.published.as_ref().unwrap(), &vec![second.clone()]);
        assert!(w.events.contains(&Transition::Removed(first)));
    }

    #[test]
    fn manual_rotation_activates_after_pre_publish() {
        let mut s = settings("720h", "1h", "24h");
        let mut w = World::new();
        w.settle(&s);
        let first = w.active_kid().unwrap();
        w.now = t0() + Duration::hours(5);
        assert!(
            matches!(w.settle(&s), Some(t) if t == t0() + Duration::hours(719)),
            "no token → no manual rotation"
        );
        s.rotate_token = Some("now".into());
        let wake = w.settle(&s).unwrap();
        assert_eq!(
            wake,
            t0() + Duration::hours(6),
            "manual key activates prePublish after publication"
        );
        assert_eq!(w.count(KeyState::Pending), 1);
        w.now = wake;
        w.settle(&s);
        assert_ne!(w.active_kid().unwrap(), first);
        // The same token again does nothing; a new token rotates again.
        w.now += Duration::hours(1);
        let wake = w.settle(&s).unwrap();
        assert_eq!(w.count(KeyState::Pending), 0);
        assert_eq!(
            wake,
            t0() + Duration::hours(30),
            "first key removed at retirement (6h) + overlap (24h)"
        );
        s.rotate_token = Some("again".into());
        w.settle(&s);
        assert_eq!(w.count(KeyState::Pending), 1);
    }

    #[test]
    fn rotate_annotation_present_at_creation_does_not_rotate() {
        let mut s = settings("720h", "1h", "24h");
        s.rotate_token = Some("initial".into());
        let mut w = World::new();
        w.settle(&s);
        assert_eq!(w.count(KeyState::Pending), 0);
        assert_eq!(
            w.obs.state.as_ref().unwrap().rotate_token.as_deref(),
            Some("initial")
        );
    }

    #[test]
    fn manual_rotation_while_a_key_is_pending_reuses_it() {
        let mut s = settings("10h", "4h", "1h");
        let mut w = World::new();
        w.settle(&s);
        w.now = t0() + Duration::hours(6);
        w.settle(&s);
        assert_eq!(w.count(KeyState::Pending), 1);
        s.rotate_token = Some("x".into());
        let wake = w.settle(&s).unwrap();
        assert_eq!(w.count(KeyState::Pending), 1, "no second pending key");
        assert_eq!(
            wake,
            t0() + Duration::hours(10),
            "published at 6h + 4h prePublish"
        );
    }

    #[test]
    fn revoking_the_active_key_replaces_it_at_once() {
        let mut s = settings("720h", "1h", "24h");
        let mut w = World::new();
        w.settle(&s);
        w.now = t0() + Duration::hours(30);
        w.settle(&s);
        let old = w.active_kid().unwrap();
        s.revoked.insert(old.clone());
        w.revoked_ever.insert(old.clone());
        w.settle(&s);
        let new = w.active_kid().unwrap();
        assert_ne!(new, old);
        assert_eq!(w.obs.signing.as_deref(), Some(new.as_str()));
        assert_eq!(w.obs.published.as_ref().unwrap(), &vec![new.clone()]);
        assert!(
            w.obs
                .state
                .as_ref()
                .unwrap()
                .keys
                .iter()
                .all(|r| r.kid != old),
            "revoked record and private key destroyed"
        );
        assert!(w.events.contains(&Transition::Revoked {
            kid: old,
            was_active: true
        }));
    }

    /// I10: the first write after a revocation takes the revoked key out of the signing
    /// Secret, before the replacement is generated, published or anything else is due (a
    /// verification-key record and a scheduled generation are both due here).
    #[test]
    fn a_revoked_key_leaves_the_signing_secret_before_anything_else() {
        let mut s = settings("10h", "1h", "1h");
        let mut w = World::new();
        w.settle(&s);
        w.now = t0() + Duration::hours(9) + Duration::minutes(30); // a generation is due
        let old = w.active_kid().unwrap();
        s.revoked.insert(old.clone());
        w.revoked_ever.insert(old.clone());
        let v = verification(1, &[]);
        w.obs.verification = Some(v);
        assert_eq!(plan(&s, &w.obs, w.now), Plan::Do(Step::Unsign));
        w.apply(Step::Unsign, &s);
        assert_eq!(w.obs.signing_held, None);
        // Then the replacement, which signs at once, and the revoked record goes.
        w.settle(&s);
        let new = w.active_kid().unwrap();
        assert_ne!(new, old);
        assert_eq!(w.obs.signing.as_deref(), Some(new.as_str()));
        assert!(
            w.obs
                .state
                .as_ref()
                .unwrap()
                .keys
                .iter()
                .all(|r| r.kid != old),
            "the revoked record is gone"
        );
        // A signing Secret that names a key the set does not revoke is never emptied.
        assert_ne!(plan(&s, &w.obs, w.now), Plan::Do(Step::Unsign));
    }

    /// Revocations before scheduled rotations: a revoked Retired key is dropped before the
    /// generation that is due at the same instant, so a state that is full makes room first.
    #[test]
    fn revoked_records_go_before_a_scheduled_generation() {
        let mut s = settings("10h", "1h", "12h");
        let mut w = World::new();
        w.settle(&s);
        w.now = t0() + Duration::hours(9);
        w.settle(&s);
        w.now = t0() + Duration::hours(10);
        w.settle(&s); // the first key is Retired now
        let retired = w
            .obs
            .state
            .as_ref()
            .unwrap()
            .keys
            .iter()
            .find(|r| r.state() == KeyState::Retired)
            .unwrap()
            .kid
            .clone();
        w.now = t0() + Duration::hours(19); // the next generation is due
        s.revoked.insert(retired.clone());
        w.revoked_ever.insert(retired.clone());
        match plan(&s, &w.obs, w.now) {
            Plan::Do(Step::Store(next, events)) => {
                assert!(next.keys.iter().all(|r| r.kid != retired));
                assert_eq!(
                    events,
                    vec![Transition::Revoked {
                        kid: retired,
                        was_active: false
                    }]
                );
            }
            other => panic!("expected the revoked record dropped first, got {other:?}"),
        }
    }

    /// A revoked kid that some copy still holds leaves the copies before the replacement is
    /// generated (a generation that is refused or slow must not keep it published).
    #[test]
    fn a_revoked_kid_leaves_the_copies_before_its_replacement_is_generated() {
        let mut s = settings("10h", "1h", "1h");
        let mut w = World::new();
        w.settle(&s);
        let old = w.active_kid().unwrap();
        s.revoked.insert(old.clone());
        w.revoked_ever.insert(old.clone());
        w.apply(Step::Unsign, &s);
        w.obs.revoked_published = true;
        assert_eq!(plan(&s, &w.obs, w.now), Plan::Do(Step::Publish(vec![])));
        w.apply(Step::Publish(vec![]), &s);
        w.obs.revoked_published = false;
        assert!(matches!(
            plan(&s, &w.obs, w.now),
            Plan::Do(Step::Generate {
                reason: GenerateReason::Revocation,
                ..
            })
        ));
    }

    /// While a revoked Active key is being replaced the planner says so (the applier then
    /// lets a blocked copy not hold the replacement back); never for a first key.
    #[test]
    fn replacing_a_revoked_key_is_told_apart_from_a_first_key() {
        let mut s = settings("10h", "1h", "1h");
        let mut w = World::new();
        let Plan::Do(first) = plan(&s, &w.obs, w.now) else {
            panic!("a new set generates")
        };
        w.apply(first, &s);
        assert!(!replacing_revoked(w.obs.state.as_ref().unwrap(), &s));
        w.settle(&s);
        let active = w.active_kid().unwrap();
        s.revoked.insert(active);
        assert!(replacing_revoked(w.obs.state.as_ref().unwrap(), &s));
    }

    #[test]
    fn revoking_with_a_pending_key_promotes_it_and_revoking_retired_removes_it() {
        let mut s = settings("10h", "2h", "5h");
        let mut w = World::new();
        w.settle(&s);
        w.now = t0() + Duration::hours(8);
        w.settle(&s); // second pending
        w.now = t0() + Duration::hours(10);
        w.settle(&s); // second active, first retired
        w.now = t0() + Duration::hours(18);
        w.settle(&s); // third pending
        let st = w.obs.state.clone().unwrap();
        let pending = st
            .keys
            .iter()
            .find(|r| r.state() == KeyState::Pending)
            .unwrap()
            .kid
            .clone();
        let active = w.active_kid().unwrap();
        s.revoked.insert(active.clone());
        w.settle(&s);
        assert_eq!(
            w.active_kid().unwrap(),
            pending,
            "the published pending key replaces the revoked one"
        );
        assert_eq!(w.obs.published.as_ref().unwrap(), &vec![pending.clone()]);
        // Revoke a pending key: it leaves the JWKS and a new one is generated on schedule.
        w.now = t0() + Duration::hours(18) + Duration::hours(8);
        w.settle(&s);
        let p2 = w
            .obs
            .state
            .as_ref()
            .unwrap()
            .keys
            .iter()
            .find(|r| r.state() == KeyState::Pending)
            .unwrap()
            .kid
            .clone();
        s.revoked.insert(p2.clone());
        w.settle(&s);
        assert!(!w.obs.published.as_ref().unwrap().contains(&p2));
        let p3 = w
            .obs
            .state
            .as_ref()
            .unwrap()
            .keys
            .iter()
            .find(|r| r.state() == KeyState::Pending)
            .unwrap()
            .kid
            .clone();
        assert_ne!(
            p3, p2,
            "a fresh pending key replaces the revoked pending one"
        );
    }

    #[test]
    fn changed_algorithm_applies_to_the_next_key() {
        let mut s = settings("10h", "1h", "1h");
        s.algorithm = Algorithm::RS256;
        let mut w = World::new();
        w.settle(&s);
        s.algorithm = Algorithm::ES256;
        w.now = t0() + Duration::hours(9);
        w.settle(&s);
        let st = w.obs.state.as_ref().unwrap();
        assert_eq!(
            st.keys
                .iter()
                .find(|r| r.state() == KeyState::Active)
                .unwrap()
                .alg,
            Algorithm::RS256
        );
        assert_eq!(
            st.keys
                .iter()
                .find(|r| r.state() == KeyState::Pending)
                .unwrap()
                .alg,
            Algorithm::ES256
        );
        w.now = t0() + Duration::hours(10);
        w.settle(&s);
        assert_eq!(
            w.obs
                .state
                .as_ref()
                .unwrap()
                .keys
                .iter()
                .find(|r| r.state() == KeyState::Active)
                .unwrap()
                .alg,
            Algorithm::ES256
        );
    }

    #[test]
    fn shortened_interval_reschedules_without_a_burst() {
        let mut s = settings("720h", "1h", "24h");
        let mut w = World::new();
        w.settle(&s);
        w.now = t0() + Duration::hours(100);
        w.settle(&s);
        s.interval = Duration::hours(10); // the current key is 90h overdue under the new interval
        w.settle(&s);
        assert_eq!(w.count(KeyState::Pending), 1);
        assert_eq!(
            w.signers.len(),
            1,
            "not activated in the same step as publication"
        );
        let wake = w.settle(&s).unwrap();
        assert_eq!(
            wake,
            w.now + Duration::hours(1),
            "activates after prePublish"
        );
        w.now = wake;
        w.settle(&s);
        assert_eq!(w.signers.len(), 2);
        let next = w.settle(&s).unwrap();
        assert_eq!(
            next,
            w.now + Duration::hours(9),
            "then every 10h from the new activation"
        );
    }

    #[test]
    fn lengthened_interval_postpones_a_pending_activation() {
        let mut s = settings("10h", "2h", "1h");
        let mut w = World::new();
        w.settle(&s);
        w.now = t0() + Duration::hours(8);
        w.settle(&s);
        s.interval = Duration::hours(20);
        let wake = w.settle(&s).unwrap();
        assert_eq!(wake, t0() + Duration::hours(20));
    }

    #[test]
    fn clock_jumping_months_forward_catches_up_safely() {
        let s = settings("720h", "1h", "24h");
        let mut w = World::new();
        w.settle(&s);
        w.now = t0() + Duration::days(200);
        w.settle(&s);
        assert_eq!(
            w.signers.len(),
            1,
            "no publish-and-activate in one go after a jump"
        );
        assert_eq!(w.count(KeyState::Pending), 1);
        let wake = w.settle(&s).unwrap();
        assert_eq!(wake, w.now + Duration::hours(1));
        w.now = wake;
        w.settle(&s);
        assert_eq!(
            w.signers.len(),
            2,
            "exactly one rotation, not one per missed interval"
        );
    }

    #[test]
    fn clock_jumping_backward_never_shortens_windows() {
        let s = settings("10h", "2h", "3h");
        let mut w = World::new();
        w.settle(&s);
        w.now = t0() + Duration::hours(8);
        w.settle(&s);
        // Clock steps back 5h: the pending key's prePublish counts from its recorded
        // publication, so it cannot activate earlier than planned.
        w.now = t0() + Duration::hours(3);
        assert!(matches!(w.settle(&s), Some(t) if t == t0() + Duration::hours(10)));
        assert_eq!(w.signers.len(), 1);
        w.now = t0() + Duration::hours(10);
        w.settle(&s);
        assert_eq!(w.signers.len(), 2);
        w.now = t0() + Duration::hours(1);
        w.settle(&s);
        assert_eq!(
            w.count(KeyState::Retired),
            1,
            "retired key kept; overlap counts from retirement"
        );
    }

    /// What the user does before one planner call in the random walk.
    #[derive(Clone, Debug)]
    enum Input {
        Nothing,
        /// The rotate annotation set to this value.
        Rotate(u8),
        /// The Active key listed in `revokedKeyIds`.
        RevokeActive,
        /// A new schedule: interval hours, prePublish minutes.
        Reschedule(i64, i64),
    }

    /// When the operator runs again after an idle plan.
    #[derive(Clone, Debug)]
    enum Wake {
        /// Spuriously, halfway to the due time.
        Early,
        OnTime,
        /// Late by this many minutes (operator down).
        Late(i64),
    }

    fn walk_step() -> impl Strategy<Value = (Input, i64, Wake)> {
        let input = prop_oneof![
            80 => Just(Input::Nothing),
            10 => (0u8..5).prop_map(Input::Rotate),
            1 => Just(Input::RevokeActive),
            2 => (3i64..23, 30i64..150).prop_map(|(h, m)| Input::Reschedule(h, m)),
        ];
        let wake = prop_oneof![
            Just(Wake::Early),
            Just(Wake::OnTime),
            (0i64..900).prop_map(Wake::Late)
        ];
        // A write takes up to 10 minutes (slow API, crash and restart between steps).
        (input, 0i64..600, wake)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// Steps are applied one at a time, the clock advances between steps, and the user
        /// rotates, revokes and changes the schedule; the World asserts I1, I2 and I6 after
        /// every write. proptest shrinks a failing walk to the shortest one that fails.
        #[test]
        fn random_walk_of_crashes_clock_noise_and_operator_input(
            walk in proptest::collection::vec(walk_step(), 400)
        ) {
            let mut s = settings("10h", "2h", "3h");
            let mut w = World::new();
            for (input, write_secs, wake) in walk {
                match input {
                    Input::Nothing => {}
                    Input::Rotate(t) => s.rotate_token = Some(t.to_string()),
                    Input::RevokeActive => {
                        if let Some(a) = w.active_kid() {
                            s.revoked.insert(a.clone());
                            w.revoked_ever.insert(a);
                        }
                    }
                    Input::Reschedule(h, m) => {
                        s.interval = Duration::hours(h);
                        s.pre_publish = Duration::minutes(m).min(s.interval - Duration::minutes(1));
                    }
                }
                match plan(&s, &w.obs, w.now) {
                    Plan::Do(step) => {
                        w.apply(step, &s);
                        w.now += Duration::seconds(write_secs);
                    }
                    Plan::Idle { wake_at } => {
                        let wake_at = wake_at.expect("always a next transition");
                        w.now = match wake {
                            Wake::Early => w.now + (wake_at - w.now) / 2,
                            Wake::OnTime => wake_at,
                            Wake::Late(m) => wake_at + Duration::minutes(m),
                        };
                    }
                }
            }
            prop_assert!(w.signers.len() > 5, "the walk rotated only {} times", w.signers.len());
        }
    }

    fn verification(generation: i64, keys: &[(&KeyPair, DateTime<Utc>)]) -> Verification {
        Verification {
            generation,
            keys: keys
                .iter()
                .map(|(kp, until)| {
                    let mut jwk = kp.public_jwk();
                    jwk["kid"] = serde_json::json!(format!("legacy-{}", &kp.kid()[..6]));
                    let text = jwk.to_string();
                    let k = crate::core::import::public_keys(text.as_bytes(), None)
                        .unwrap()
                        .remove(0);
                    (k, *until)
                })
                .collect(),
        }
    }

    #[test]
    fn verification_keys_are_published_after_the_sets_own_until_their_time() {
        let s = settings("10m", "2m", "2m");
        let mut w = World::new();
        w.settle(&s);
        let own = w.active_kid().unwrap();
        let old = KeyPair::generate(Algorithm::RS256, None).unwrap();
        let until = t0() + Duration::minutes(5);
        w.obs.verification = Some(verification(4, &[(&old, until)]));
        let wake = w.settle(&s);
        let legacy = format!("legacy-{}", &old.kid()[..6]);
        assert_eq!(w.obs.published, Some(vec![own.clone(), legacy.clone()]));
        assert_eq!(w.count(KeyState::Verification), 1);
        assert!(w.events.contains(&Transition::Published(legacy.clone())));
        assert_eq!(wake, Some(until), "it wakes when the key is due to leave");
        let st = w.obs.state.as_ref().unwrap();
        assert_eq!(st.verification_generation, Some(4));
        assert_eq!(next_transition(st, &s, w.now), Some(until));

        // Its time comes: it leaves, and the set's own key stays.
        w.now = until;
        w.settle(&s);
        assert_eq!(w.obs.published, Some(vec![own]));
        assert_eq!(w.count(KeyState::Verification), 0);
        assert!(w.events.contains(&Transition::Removed(legacy)));
    }

    #[test]
    fn a_new_generation_keeps_unchanged_keys_and_drops_the_others_at_once() {
        let s = settings("10m", "2m", "2m");
        let mut w = World::new();
        w.settle(&s);
        let (a, b) = (
            KeyPair::generate(Algorithm::ES256, None).unwrap(),
            KeyPair::generate(Algorithm::EdDSA, None).unwrap(),
        );
        let later = t0() + Duration::hours(1);
        w.obs.verification = Some(verification(1, &[(&a, later), (&b, later)]));
        w.settle(&s);
        let published_a = w.obs.state.as_ref().unwrap().keys[1].published_at;
        w.now += Duration::seconds(30);
        let published = w.events.len();
        // Generation 2 lists only `a`, until later; a key already past its time is not taken.
        w.obs.verification = Some(verification(
            2,
            &[
                (&a, later + Duration::hours(1)),
                (&b, w.now - Duration::seconds(1)),
            ],
        ));
        w.settle(&s);
        let st = w.obs.state.as_ref().unwrap();
        let v: Vec<&KeyRecord> = st
            .keys
            .iter()
            .filter(|r| r.state() == KeyState::Verification)
            .collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].published_at, published_a, "kept, not published anew");
        assert_eq!(v[0].verify_until, Some(later + Duration::hours(1)));
        assert_eq!(w.obs.published.as_ref().unwrap().len(), 2);
        assert!(
            !w.events[published..]
                .iter()
                .any(|e| matches!(e, Transition::Published(_))),
            "{:?}",
            &w.events[published..]
        );
        // The same generation again is no write.
        assert!(matches!(plan(&s, &w.obs, w.now), Plan::Idle { .. }));
    }

    #[test]
    fn a_max_token_lifetime_longer_than_the_overlap_allows_is_refused() {
        let mut spec = spec();
        spec.max_token_lifetime = Some("1h".into());
        spec.rotation.overlap = "61m".into();
        let e = validate(&spec, None).unwrap_err();
        assert_eq!(e.field, "spec.rotation.overlap");
        assert!(e.why.contains("spec.maxTokenLifetime plus 2m"), "{}", e.why);
        spec.rotation.overlap = "62m".into();
        let ok = validate(&spec, None).unwrap();
        assert_eq!(ok.max_token_lifetime, Some(Duration::hours(1)));
        spec.max_token_lifetime = Some("0s".into());
        assert_eq!(
            validate(&spec, None).unwrap_err().field,
            "spec.maxTokenLifetime"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut spec = spec();
        assert!(validate(&spec, None).is_ok());
        spec.rotation.pre_publish = "800h".into();
        assert_eq!(
            validate(&spec, None).unwrap_err().field,
            "spec.rotation.prePublish"
        );
        spec.rotation.pre_publish = "1h".into();
        spec.rotation.overlap = "0s".into();
        assert_eq!(
            validate(&spec, None).unwrap_err().field,
            "spec.rotation.overlap"
        );
        spec.rotation.overlap = "soon".into();
        assert_eq!(
            validate(&spec, None).unwrap_err().field,
            "spec.rotation.overlap"
        );
        spec.rotation.overlap = "24h".into();
        spec.rsa_key_size = Some(2048);
        assert_eq!(validate(&spec, None).unwrap_err().field, "spec.rsaKeySize");
        spec.algorithm = Algorithm::PS384;
        assert!(validate(&spec, None).is_ok());
        spec.rsa_key_size = Some(1024);
        assert_eq!(validate(&spec, None).unwrap_err().field, "spec.rsaKeySize");
    }
}
