//! Stage 3, plan + apply: the planner ([`crate::plan::plan`]) names one step at a time and
//! the [`Applier`] writes it, one method per step, until the planner is idle. Every write is
//! guarded (field manager, resourceVersion) in [`crate::publish::write`]; the JWKS copies go
//! through [`super::fanout`].

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use tracing::{info, warn};

use super::read::Objects;
use super::{Context, Error, Reason, Refusal, fanout, report};
use crate::crd::{Algorithm, SigningKeySet};
use crate::keys::KeyPair;
use crate::plan::{self, GenerateReason, Observed, Plan, Settings, Step};
use crate::publish;
use crate::state::SetState;

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
    /// An applier over the objects `read` returned, for the consented targets.
    pub fn new(
        sks: &'a SigningKeySet,
        ctx: &'a Context,
        objects: &'a mut Objects,
        targets: &'a BTreeSet<String>,
    ) -> Self {
        let secrets = Api::namespaced(ctx.client.clone(), &sks.namespace().unwrap_or_default());
        Applier {
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
                Step::Publish(kids) => match self.publish(&obs, &kids).await? {
                    Err(refusal) => Some(refusal),
                    Ok(failures) if !failures.is_empty() => {
                        applied.publish_failures = failures;
                        applied.settled = true;
                        break;
                    }
                    Ok(_) => {
                        obs.published = Some(kids);
                        None
                    }
                },
                Step::Sign(kid) => {
                    self.sign(&obs, &kid).await?;
                    obs.signing = Some(kid);
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
            warn!(set = %self.sks.name_any(), namespace = self.sks.namespace().unwrap_or_default(), "plan did not settle; will retry");
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
        let kp = match imported {
            Some(kp) => kp,
            None => tokio::task::spawn_blocking(move || KeyPair::generate(alg, rsa_bits))
                .await
                .map_err(|e| Error::Invariant(format!("key generation task failed: {e}")))??,
        };
        let next = plan::with_new_key(obs.state.as_ref(), &kp, reason, rotate_token, now);
        if let Err(refusal) = state_fits(self.sks, &next) {
            // The current key keeps signing; old keys leave after their overlap and make
            // room, or a revocation does.
            return Ok(Some(refusal));
        }
        self.store(&next).await?;
        info!(set = %self.sks.name_any(), namespace = self.sks.namespace().unwrap_or_default(), kid = %kp.kid(), alg = %alg, ?reason, imported = was_imported, "stored new key");
        obs.state = Some(next);
        Ok(None)
    }

    /// [`Step::Publish`]: the JWKS of `kids` into every target; `Ok(Err)` when it would not
    /// fit a ConfigMap, `Ok(Ok(failures))` naming the copies that could not be written.
    async fn publish(
        &mut self,
        obs: &Observed,
        kids: &[String],
    ) -> Result<Result<Vec<String>, Refusal>, Error> {
        let state = obs.state.as_ref().ok_or(Error::Invariant(
            "the plan publishes before any key is stored".into(),
        ))?;
        let bytes = publish::jwks_bytes(state, kids).ok_or(Error::Invariant(
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
            self.sks,
            self.ctx,
            self.targets,
            &mut self.objects.copies,
            &bytes,
        )
        .await?;
        info!(set = %self.sks.name_any(), namespace = self.sks.namespace().unwrap_or_default(), keys = kids.len(), copies = self.targets.len(), failed = failures.len(), "published JWKS");
        Ok(Ok(failures))
    }

    /// [`Step::Sign`]: the signing Secret holds key `kid`.
    async fn sign(&mut self, obs: &Observed, kid: &str) -> Result<(), Error> {
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
        let desired = publish::signing_secret(self.sks, rec).ok_or(Error::Invariant(format!(
            "key {kid} has no usable private key for the signing Secret"
        )))?;
        self.confirm_internal().await?;
        self.write_secret(Slot::Signing, desired).await?;
        info!(set = %self.sks.name_any(), namespace = self.sks.namespace().unwrap_or_default(), kid = %kid, "signing Secret holds key");
        Ok(())
    }

    /// [`Step::Store`] (and a new key): the internal Secret holds `state`.
    async fn store(&mut self, state: &SetState) -> Result<(), Error> {
        self.write_secret(Slot::Internal, publish::internal_secret(self.sks, state))
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

    /// Writes one of the set's Secrets (guarded by [`publish::write`]) and keeps what the
    /// API server answered as the current object. A write refused because the object is not
    /// as it was read (the watch cache lagged) is [`Error::Stale`].
    async fn write_secret(&mut self, slot: Slot, desired: Secret) -> Result<(), Error> {
        let (current, object) = match slot {
            Slot::Internal => (&mut self.objects.internal, "internal_secret"),
            Slot::Signing => (&mut self.objects.signing, "signing_secret"),
        };
        let written = match publish::write(
            &self.secrets,
            current.as_ref(),
            desired,
            |m| publish::is_owned(m, self.sks),
            publish::same_secret,
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
            self.ctx.echoes.wrote(&o);
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
fn state_fits(sks: &SigningKeySet, next: &SetState) -> Result<(), Refusal> {
    let size = next.to_bytes().len();
    if size <= MAX_OBJECT_BYTES {
        return Ok(());
    }
    Err(Refusal::new(
        Reason::TooManyKeys,
        format!(
            "storing another key would make Secret {}/{} {size} bytes ({} keys); a Secret holds at most {MAX_OBJECT_BYTES}. The current key keeps signing. Shorten spec.rotation.overlap, rotate less often, or revoke old keys.",
            sks.namespace().unwrap_or_default(),
            sks.internal_secret_name(),
            next.keys.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::fixtures::set;
    use crate::state::KeyRecord;

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

    #[test]
    fn a_state_that_fits_a_secret_is_stored() {
        assert!(state_fits(&set(serde_json::json!({})), &retired(100)).is_ok());
    }

    #[test]
    fn a_state_too_large_for_a_secret_is_refused_with_a_reason() {
        let sks = set(serde_json::json!({}));
        let mut n = 1000;
        while retired(n).to_bytes().len() <= MAX_OBJECT_BYTES {
            n *= 2;
        }
        let r = state_fits(&sks, &retired(n)).unwrap_err();
        assert_eq!(r.reason, Reason::TooManyKeys);
        assert!(
            r.message.contains("identity/auth-keyturn-keys"),
            "{}",
            r.message
        );
        assert!(r.message.contains(&format!("({n} keys)")), "{}", r.message);
        // One key fewer than the limit allows still fits.
        let per_key = retired(2).to_bytes().len() - retired(1).to_bytes().len();
        let fits = (MAX_OBJECT_BYTES - retired(0).to_bytes().len()) / per_key;
        assert!(state_fits(&sks, &retired(fits)).is_ok());
        assert!(state_fits(&sks, &retired(fits + 1)).is_err());
    }
}
