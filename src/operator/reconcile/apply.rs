//! Stage 3, plan + apply: the planner ([`crate::core::plan::plan`]) names one step at a time and
//! the [`Applier`] writes it, one method per step, until the planner is idle. Every write is
//! guarded (field manager, resourceVersion) in [`crate::operator::write::write`]; the JWKS copies go
//! through [`super::fanout`].

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use tracing::{info, warn};

use super::read::Objects;
use super::{Context, Error, Reason, Refusal, fanout, report};
use crate::core::crd::{Algorithm, SetRef, SigningKeySet};
use crate::core::keys::KeyPair;
use crate::core::objects;
use crate::core::plan::{self, GenerateReason, Observed, Plan, Settings, Step};
use crate::core::state::SetState;
use crate::operator::write;

/// Steps one reconcile takes at most; a plan that has not settled by then is picked up again
/// a second later (each step is one write, so this only bounds one reconcile's length).
const MAX_STEPS: usize = 32;

/// Data a Secret or ConfigMap can hold: 1 MiB less room for metadata.
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024 - 4096;

/// How applying the plan ended.
#[derive(Debug)]
pub enum Outcome {
    /// The planner is idle (or the step budget is spent).
    Idle(Applied),
    /// A step cannot be taken (the state or the JWKS would not fit): the refusal, with the
    /// state as it stands for the status.
    Refused(Refusal, Option<SetState>),
}

/// What the applied plan left.
#[derive(Debug, Default)]
pub struct Applied {
    /// The stored state after the last step.
    pub state: Option<SetState>,
    /// Kids every copy holds.
    pub published: Option<Vec<String>>,
    /// When the planner next has something to do.
    pub wake_at: Option<DateTime<Utc>>,
    /// False when the step budget ran out before the planner was idle.
    pub settled: bool,
    /// Copies that could not be written (`namespace: error`); nothing activates meanwhile.
    pub publish_failures: Vec<String>,
}

/// Writes the planner's steps for one set.
pub struct Applier<'a> {
    set: &'a SetRef,
    sks: &'a SigningKeySet,
    ctx: &'a Context,
    objects: &'a mut Objects,
    targets: &'a BTreeSet<String>,
    secrets: Api<Secret>,
    import: Option<KeyPair>,
    /// The internal Secret in `objects` is known current: this reconcile wrote it or
    /// checked its resourceVersion against the API server.
    internal_current: bool,
}

impl<'a> Applier<'a> {
    /// An applier for the set `sks` at `set`, over the objects `read` returned, for the
    /// consented targets.
    pub fn new(
        set: &'a SetRef,
        sks: &'a SigningKeySet,
        ctx: &'a Context,
        objects: &'a mut Objects,
        targets: &'a BTreeSet<String>,
    ) -> Self {
        let secrets = Api::namespaced(ctx.client.clone(), &set.namespace);
        Applier {
            set,
            sks,
            ctx,
            objects,
            targets,
            secrets,
            import: None,
            internal_current: false,
        }
    }

    /// The set's first key comes from `spec.import` instead of the RNG.
    pub fn importing(mut self, key: Option<KeyPair>) -> Self {
        self.import = key;
        self
    }

    /// Plans and applies until idle. `obs` is what `check` observed; it follows each write.
    pub async fn run(mut self, settings: &Settings, mut obs: Observed) -> Result<Outcome, Error> {
        let mut applied = Applied::default();
        for _ in 0..MAX_STEPS {
            let now = (self.ctx.clock)();
            let step = match plan::plan(settings, &obs, now) {
                Plan::Idle { wake_at } => {
                    applied.wake_at = wake_at;
                    applied.settled = true;
                    break;
                }
                Plan::Do(step) => step,
            };
            let refused = match step {
                Step::Generate {
                    alg,
                    rsa_bits,
                    reason,
                    rotate_token,
                } => {
                    self.generate(&mut obs, alg, rsa_bits, reason, rotate_token, now)
                        .await?
                }
                Step::Publish(kids) => {
                    // A copy that cannot be written holds back a scheduled activation, never
                    // a revocation's replacement: that one signs once every copy keyturn can
                    // write holds it, and the others are named (I10). Taking a revoked kid out
                    // of the copies is tried everywhere, whatever fails, but what follows it
                    // waits for every copy as usual.
                    let cleaning = std::mem::take(&mut obs.revoked_published);
                    let replacing = obs
                        .state
                        .as_ref()
                        .is_some_and(|st| plan::replacing_revoked(st, settings));
                    match self.publish(&obs, &kids, cleaning || replacing).await? {
                        Err(refusal) => Some(refusal),
                        Ok(failures) if !failures.is_empty() && !replacing => {
                            applied.publish_failures = failures;
                            applied.settled = true;
                            break;
                        }
                        Ok(failures) => {
                            if !failures.is_empty() {
                                applied.publish_failures = failures;
                            }
                            obs.published = Some(kids);
                            None
                        }
                    }
                }
                Step::Sign(kid) => match self.sign(&obs, &kid).await? {
                    Some(refusal) => Some(refusal),
                    None => {
                        obs.signing_held = Some(kid.clone());
                        obs.signing = Some(kid);
                        None
                    }
                },
                Step::Unsign => {
                    self.unsign().await?;
                    obs.signing = None;
                    obs.signing_held = None;
                    None
                }
                Step::Store(next, transitions) => {
                    self.store(&next).await?;
                    obs.state = Some(next);
                    report::announce(self.sks, self.ctx, &transitions).await;
                    None
                }
            };
            if let Some(refusal) = refused {
                return Ok(Outcome::Refused(refusal, obs.state));
            }
        }
        if !applied.settled {
            warn!("plan did not settle; will retry");
        } else if let Some(st) = obs.state.as_ref()
            && !self.public_state_current(st)
        {
            // The public-state annotation is derived like the JWKS (I7): written by an older
            // keyturn without it, or edited, it is written again (the data unchanged).
            self.store(st).await?;
        }
        applied.state = obs.state;
        applied.published = obs.published;
        Ok(Outcome::Idle(applied))
    }

    /// [`Step::Generate`]: a new key, stored in the internal Secret before anything else.
    async fn generate(
        &mut self,
        obs: &mut Observed,
        alg: Algorithm,
        rsa_bits: Option<u32>,
        reason: GenerateReason,
        rotate_token: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Option<Refusal>, Error> {
        let imported = match self.import.take() {
            Some(kp) if reason == GenerateReason::First && kp.alg() == alg => Some(kp),
            _ => None,
        };
        let was_imported = imported.is_some();
        if imported.is_none()
            && let Some(st) = obs.state.as_ref()
            && room(st) < max_record_bytes(alg, rsa_bits)
        {
            // No room for such a key: refused before the generation (RSA-4096 takes a
            // blocking thread for up to seconds) instead of after it.
            return Ok(Some(too_many_keys(self.set, self.sks, st.keys.len() + 1)));
        }
        let kp = match imported {
            Some(kp) => kp,
            None => {
                // A revocation's replacement is urgent: no storm of scheduled rotations, in
                // this namespace or any other, delays it.
                let urgent = reason == GenerateReason::Revocation;
                self.ctx
                    .memory
                    .keygen
                    .run(&self.set.namespace, urgent, move || {
                        KeyPair::generate(alg, rsa_bits)
                    })
                    .await
                    .ok_or_else(|| Error::Invariant("key generation task failed".into()))??
            }
        };
        let next = plan::with_new_key(obs.state.as_ref(), &kp, reason, rotate_token, now);
        if let Err(refusal) = state_fits(self.set, self.sks, &next) {
            // The current key keeps signing; old keys leave after their overlap and make
            // room, or a revocation does.
            return Ok(Some(refusal));
        }
        self.store(&next).await?;
        info!(kid = %kp.kid(), alg = %alg, ?reason, imported = was_imported, "stored new key");
        obs.state = Some(next);
        Ok(None)
    }

    /// [`Step::Publish`]: the JWKS of `kids` into every target; `Ok(Err)` when it would not
    /// fit a ConfigMap, `Ok(Ok(failures))` naming the copies that could not be written.
    async fn publish(
        &mut self,
        obs: &Observed,
        kids: &[String],
        revoking: bool,
    ) -> Result<Result<Vec<String>, Refusal>, Error> {
        let state = obs.state.as_ref().ok_or(Error::Invariant(
            "the plan publishes before any key is stored".into(),
        ))?;
        let bytes = objects::jwks_bytes(state, kids).ok_or(Error::Invariant(
            "the plan publishes a key that is not stored".into(),
        ))?;
        if bytes.len() > MAX_OBJECT_BYTES {
            return Ok(Err(Refusal::new(
                Reason::JwksTooLarge,
                format!(
                    "the JWKS would be {} bytes; a ConfigMap holds at most {MAX_OBJECT_BYTES}. Revoke or let old keys expire (shorter spec.rotation.overlap).",
                    bytes.len()
                ),
            )));
        }
        self.confirm_internal().await?;
        let failures = fanout::publish(
            self.set,
            self.sks,
            self.ctx,
            self.targets,
            &mut self.objects.copies,
            &bytes,
            revoking,
        )
        .await?;
        info!(
            keys = kids.len(),
            copies = self.targets.len(),
            failed = failures.len(),
            "published JWKS"
        );
        Ok(Ok(failures))
    }

    /// [`Step::Sign`]: the signing Secret holds key `kid`.
    async fn sign(&mut self, obs: &Observed, kid: &str) -> Result<Option<Refusal>, Error> {
        // A key once taken out of the signing Secret for a revocation never goes back in,
        // whatever the spec says now (a revocation taken back, a replica deciding from a set
        // that predates the revocation): the Secret remembers it.
        if self
            .objects
            .signing
            .as_ref()
            .is_some_and(|s| objects::revoked_from(&s.metadata).any(|k| k == kid))
        {
            return Ok(Some(Refusal::new(
                Reason::InvalidSpec,
                format!(
                    "spec.revokedKeyIds: key {kid} was revoked and never signs again; put it back in spec.revokedKeyIds (a manual rotation or a revocation gives the set a new key)"
                ),
            )));
        }
        let state = obs.state.as_ref().ok_or(Error::Invariant(
            "the plan signs before any key is stored".into(),
        ))?;
        let rec = state
            .keys
            .iter()
            .find(|r| r.kid == kid)
            .ok_or(Error::Invariant(format!(
                "the plan signs with key {kid}, which is not stored"
            )))?;
        let desired = objects::signing_secret(self.sks, rec).ok_or(Error::Invariant(format!(
            "key {kid} has no usable private key for the signing Secret"
        )))?;
        self.confirm_internal().await?;
        self.write_secret(Slot::Signing, desired).await?;
        info!(kid = %kid, "signing Secret holds key");
        Ok(None)
    }

    /// True when the internal Secret's public-state annotation is the one `state` gives.
    fn public_state_current(&self, state: &SetState) -> bool {
        let held = self
            .objects
            .internal
            .as_ref()
            .and_then(|s| s.annotations().get(objects::PUBLIC_STATE_ANNOTATION));
        held.map(String::as_bytes) == Some(state.public_bytes().as_slice())
    }

    /// [`Step::Unsign`]: the signing Secret holds no key (it held a revoked one). Never
    /// waits for the internal Secret to be confirmed current: it takes a key out, never puts
    /// an older one back. Also called when the set is refused before any plan, so that no
    /// refusal holds a revocation back.
    pub async fn unsign(&mut self) -> Result<(), Error> {
        let mut revoked: Vec<String> = self
            .objects
            .signing
            .as_ref()
            .map(|s| {
                objects::revoked_from(&s.metadata)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(held) = self
            .objects
            .signing
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get("kid"))
        {
            revoked.push(String::from_utf8_lossy(&held.0).into_owned());
        }
        self.write_secret(Slot::Signing, objects::unsigned_secret(self.sks, revoked))
            .await?;
        warn!(
            "a revoked key was taken out of the signing Secret; nothing signs until its replacement does"
        );
        Ok(())
    }

    /// [`Step::Store`] (and a new key): the internal Secret holds `state`.
    async fn store(&mut self, state: &SetState) -> Result<(), Error> {
        self.write_secret(Slot::Internal, objects::internal_secret(self.sks, state))
            .await
    }

    /// The signing Secret and the JWKS follow the internal Secret, which `read` took from the
    /// API server's watch cache: before either is written, that copy must be the current
    /// one, or a lagging cache could put an older key back into the signing Secret. Free when
    /// this reconcile wrote the internal Secret (its precondition held); otherwise one GET of
    /// its metadata from etcd, and [`Error::Stale`] when the resourceVersion moved on.
    async fn confirm_internal(&mut self) -> Result<(), Error> {
        if self.internal_current {
            return Ok(());
        }
        let name = self.sks.internal_secret_name();
        if super::read::changed_since(&self.secrets, &name, self.objects.internal.as_ref()).await? {
            return Err(Error::Stale(format!("the Secret {name}")));
        }
        self.internal_current = true;
        Ok(())
    }

    /// Writes one of the set's Secrets (guarded by [`write::write`]) and keeps what the
    /// API server answered as the current object. A write refused because the object is not
    /// as it was read (the watch cache lagged) is [`Error::Stale`].
    async fn write_secret(&mut self, slot: Slot, desired: Secret) -> Result<(), Error> {
        let (current, object) = match slot {
            Slot::Internal => (&mut self.objects.internal, "internal_secret"),
            Slot::Signing => (&mut self.objects.signing, "signing_secret"),
        };
        let written = match write::write(
            &self.secrets,
            current.as_ref(),
            desired,
            |m| objects::is_owned(m, self.sks),
            objects::same_secret,
        )
        .await
        {
            Err(e) => match e.lagged() {
                Some(what) => return Err(Error::Stale(format!("the {what}"))),
                None => return Err(e.into()),
            },
            Ok(w) => w,
        };
        if let Some(o) = written {
            self.ctx.memory.echoes.wrote(&o);
            *current = Some(o);
            self.ctx.metrics.write(object);
            if let Slot::Internal = slot {
                self.internal_current = true;
            }
        }
        Ok(())
    }
}

/// Which of the set's Secrets a write is for.
#[derive(Clone, Copy)]
enum Slot {
    Internal,
    Signing,
}

/// `TooManyKeys` when the internal Secret could not hold `next` (every key not yet removed,
/// with its public JWK). It fills up before the JWKS does: without this check the write
/// would fail at the API server and be retried forever without a condition saying why.
fn state_fits(set: &SetRef, sks: &SigningKeySet, next: &SetState) -> Result<(), Refusal> {
    let size = next.to_bytes().len();
    let public = next.public_bytes().len();
    if size <= MAX_OBJECT_BYTES && public <= objects::MAX_PUBLIC_STATE_BYTES {
        return Ok(());
    }
    Err(too_many_keys(set, sks, next.keys.len()))
}

/// Bytes the internal Secret can still take: under both its data limit and its public-state
/// annotation's.
fn room(state: &SetState) -> usize {
    let data = MAX_OBJECT_BYTES.saturating_sub(state.to_bytes().len());
    let public = objects::MAX_PUBLIC_STATE_BYTES.saturating_sub(state.public_bytes().len());
    data.min(public)
}

/// The most one more key record of `alg` adds to the stored state (its private PEM, public
/// JWK and times; an RSA-4096 record is about 4.3 KiB, an EC or Ed25519 one under 1 KiB), for
/// the check made before a key is generated.
fn max_record_bytes(alg: Algorithm, rsa_bits: Option<u32>) -> usize {
    if alg.is_rsa() {
        rsa_bits.unwrap_or(2048) as usize + 1024
    } else {
        1024
    }
}

fn too_many_keys(set: &SetRef, sks: &SigningKeySet, keys: usize) -> Refusal {
    Refusal::new(
        Reason::TooManyKeys,
        format!(
            "another key would not fit Secret {}/{} ({keys} keys; it holds at most {MAX_OBJECT_BYTES} bytes of keys and {} of public keys). The current key keeps signing (a revoked one does not). Shorten spec.rotation.overlap, rotate less often, or revoke old keys.",
            set.namespace,
            sks.internal_secret_name(),
            objects::MAX_PUBLIC_STATE_BYTES,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::KeyRecord;
    use crate::operator::reconcile::fixtures::{at, set};

    /// A state of `n` retired Ed25519 keys (public JWK and times only, as after retirement).
    fn retired(n: usize) -> SetState {
        let kp = KeyPair::generate(Algorithm::EdDSA, None).unwrap();
        let t = chrono::Utc::now();
        let rec = KeyRecord {
            kid: kp.kid().to_string(),
            alg: kp.alg(),
            public_jwk: kp.public_jwk(),
            private_pem: None,
            created_at: t,
            published_at: Some(t),
            activated_at: Some(t),
            retired_at: Some(t),
            manual: true,
            verify_until: None,
        };
        let mut s = SetState::new();
        s.keys = vec![rec; n];
        s
    }

    /// The check made before generating never lets through a key whose record would not fit.
    #[test]
    fn the_room_asked_before_generating_covers_the_record_generated() {
        let base = retired(3);
        for (alg, bits) in [
            (Algorithm::ES256, None),
            (Algorithm::ES384, None),
            (Algorithm::EdDSA, None),
            (Algorithm::RS256, Some(2048)),
        ] {
            let kp = KeyPair::generate(alg, bits).unwrap();
            let next = plan::with_new_key(
                Some(&base),
                &kp,
                GenerateReason::Scheduled,
                None,
                chrono::Utc::now(),
            );
            let added = next.to_bytes().len() - base.to_bytes().len();
            assert!(
                added <= max_record_bytes(alg, bits),
                "{alg}: a record adds {added} bytes, more than the {} asked for",
                max_record_bytes(alg, bits)
            );
        }
    }

    #[test]
    fn a_state_that_fits_a_secret_is_stored() {
        let sks = set(serde_json::json!({}));
        assert!(state_fits(&at(&sks), &sks, &retired(100)).is_ok());
    }

    #[test]
    fn a_state_too_large_for_a_secret_is_refused_with_a_reason() {
        let sks = set(serde_json::json!({}));
        let mut n = 100;
        while retired(n).public_bytes().len() <= objects::MAX_PUBLIC_STATE_BYTES {
            n *= 2;
        }
        let r = state_fits(&at(&sks), &sks, &retired(n)).unwrap_err();
        assert_eq!(r.reason, Reason::TooManyKeys);
        assert!(
            r.message.contains("identity/auth-keyturn-keys"),
            "{}",
            r.message
        );
        assert!(r.message.contains(&format!("({n} keys;")), "{}", r.message);
        // The boundary, measured on the object the applier would write (not on what
        // state_fits computes): the largest state whose internal Secret's public-state
        // annotation and state data are within the limits is stored, one key more is not.
        let written_sizes = |n: usize| {
            let secret = objects::internal_secret(&sks, &retired(n));
            let annotation = secret.metadata.annotations.as_ref().unwrap()
                [objects::PUBLIC_STATE_ANNOTATION]
                .len();
            let data = secret.data.as_ref().unwrap()[crate::core::state::STATE_KEY]
                .0
                .len();
            (annotation, data)
        };
        let within = |n: usize| {
            let (annotation, data) = written_sizes(n);
            annotation <= objects::MAX_PUBLIC_STATE_BYTES && data <= MAX_OBJECT_BYTES
        };
        let mut fits = 1;
        while within(fits + 1) {
            fits += 1;
        }
        assert!(fits > 100, "only {fits} retired keys fit");
        assert!(state_fits(&at(&sks), &sks, &retired(fits)).is_ok());
        assert!(state_fits(&at(&sks), &sks, &retired(fits + 1)).is_err());
    }
}
