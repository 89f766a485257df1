//! The reconcile pipeline: read → validate → plan → apply → status.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::consent::{self, FanOut};
use crate::crd::{
    FIELD_MANAGER, KeyStatus, ROTATE_ANNOTATION, SigningKeySet, SigningKeySetGrant,
    SigningKeySetStatus,
};
use crate::keys::KeyPair;
use crate::metrics::Metrics;
use crate::plan::{self, Observed, Plan, Settings, Step, Transition};
use crate::publish::{self, WriteError};
use crate::state::{KeyState, STATE_KEY, SetState};

/// A source of the current time; tests and benchmarks may inject their own.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Shared state of the controller.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Current time.
    pub clock: Clock,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Namespace-only mode: never read or write outside the set's namespace (no fan-out).
    pub namespace_only: bool,
    /// The one namespace this controller watches, if any.
    pub scope: Option<String>,
    /// Every namespace (cluster-wide mode), to tell a namespace being deleted.
    pub namespaces: Option<Store<Namespace>>,
}

impl Context {
    /// True when `ns` is being deleted: its sets are going away, not broken.
    pub fn namespace_terminating(&self, ns: &str) -> bool {
        self.namespaces
            .as_ref()
            .and_then(|s| s.get(&ObjectRef::new(ns)))
            .is_some_and(|n| {
                n.metadata.deletion_timestamp.is_some()
                    || n.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
            })
    }

    /// True when the set is being deleted, or its namespace is: no alarms for it.
    fn going_away(&self, sks: &SigningKeySet) -> bool {
        sks.metadata.deletion_timestamp.is_some()
            || self.namespace_terminating(&sks.namespace().unwrap_or_default())
    }

    /// Where JWKS copies are looked for: every namespace, or (namespace-only) none but the
    /// sets' own.
    fn copies_api(&self) -> Api<ConfigMap> {
        match (self.namespace_only, &self.scope) {
            (true, Some(ns)) => Api::namespaced(self.client.clone(), ns),
            _ => Api::all(self.client.clone()),
        }
    }
}

/// Errors a reconcile can end with; each becomes a retry with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A read or status write failed.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// Key generation failed.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// The object has no namespace or uid (not read from the API server).
    #[error("SigningKeySet has no {0}")]
    Incomplete(&'static str),
    /// A rule keyturn relies on did not hold (a bug): this reconcile stops, the set becomes
    /// `Ready=False` with reason `InternalError` and an Event, and it is retried in a minute.
    #[error("internal error: {0}")]
    Invariant(String),
}

impl Error {
    /// A short reason label for metrics and conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Write(WriteError::Foreign { .. }) => "ForeignObject",
            Error::Write(WriteError::Api { .. }) => "WriteFailed",
            Error::Kube(_) => "ApiError",
            Error::Key(_) => "KeyGenerationFailed",
            Error::Incomplete(_) => "Incomplete",
            Error::Invariant(_) => "InternalError",
        }
    }
}

impl Error {
    /// A write the API server refused for good (400 Bad Request, 403 Forbidden, 413 Too
    /// Large, 422 Invalid: an admission policy, a quota, a validation rule): retrying the same
    /// write cannot succeed until something else changes. The text names the object and
    /// carries the API's message (redacted if it could quote key material).
    fn rejected_write(&self) -> Option<String> {
        match self {
            Error::Write(
                w @ WriteError::Api {
                    source: kube::Error::Api(e),
                    ..
                },
            ) if matches!(e.code, 400 | 403 | 413 | 422) => Some(w.to_string()),
            _ => None,
        }
    }
}

/// Why the set is not ready, when it is not.
struct NotReady {
    reason: &'static str,
    message: String,
}

const MAX_STEPS: usize = 32;

/// Reconciles one SigningKeySet. A broken internal rule ends this reconcile as
/// `Ready=False` (`InternalError`) with an Event, never as a panic.
pub async fn reconcile(sks: Arc<SigningKeySet>, ctx: Arc<Context>) -> Result<Action, Error> {
    match reconcile_set(sks.clone(), ctx.clone()).await {
        Err(Error::Invariant(why)) => {
            ctx.metrics.error("InternalError");
            let nr = NotReady {
                reason: "InternalError",
                message: format!("keyturn hit an internal error and changed nothing more: {why}"),
            };
            refuse(&sks, &ctx, None, None, nr, Some(StdDuration::from_secs(60))).await
        }
        Err(e) if e.rejected_write().is_some() => {
            ctx.metrics.error("WriteRejected");
            let nr = NotReady {
                reason: "WriteRejected",
                message: format!(
                    "the API server refused a write, so keyturn changes nothing more until it succeeds (retried every {}s): {}",
                    REJECTED_RETRY.as_secs(),
                    e.rejected_write().unwrap_or_default()
                ),
            };
            refuse(&sks, &ctx, None, None, nr, Some(REJECTED_RETRY)).await
        }
        other => other,
    }
}

/// How often a write the API server refused for good is tried again: nothing announces that
/// an admission policy or a quota changed.
const REJECTED_RETRY: StdDuration = StdDuration::from_secs(30);

async fn reconcile_set(sks: Arc<SigningKeySet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = sks.namespace().ok_or(Error::Incomplete("namespace"))?;
    sks.uid().ok_or(Error::Incomplete("uid"))?;
    ctx.metrics.reconcile_started();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);

    if sks.metadata.deletion_timestamp.is_some() {
        return finalize(&sks, &ctx).await;
    }
    if ctx.namespace_terminating(&ns) {
        // Its Secrets are being deleted under it; the set goes next (and, with copies
        // elsewhere, is finalized above).
        debug!(set = %sks.name_any(), namespace = %ns, "namespace is being deleted; nothing to do");
        return Ok(Action::await_change());
    }

    // read
    let mut internal = secrets.get_opt(&sks.internal_secret_name()).await?;
    let mut signing = secrets.get_opt(&sks.secret_name()).await?;
    let cm = cms.get_opt(&sks.config_map_name()).await?;

    // validate
    let token = sks.annotations().get(ROTATE_ANNOTATION).cloned();
    let settings = match plan::validate(&sks.spec, token) {
        Ok(s) => s,
        Err(e) => {
            let nr = NotReady {
                reason: "InvalidSpec",
                message: e.to_string(),
            };
            return refuse(&sks, &ctx, None, None, nr, None).await;
        }
    };
    if sks.secret_name() == sks.internal_secret_name() {
        let nr = NotReady {
            reason: "InvalidSpec",
            message: format!(
                "spec.secretName: {:?} is reserved for keyturn's internal Secret",
                sks.secret_name()
            ),
        };
        return refuse(&sks, &ctx, None, Some(&settings), nr, None).await;
    }
    for (kind, name, meta) in [
        (
            "Secret",
            sks.internal_secret_name(),
            internal.as_ref().map(|o| &o.metadata),
        ),
        (
            "Secret",
            sks.secret_name(),
            signing.as_ref().map(|o| &o.metadata),
        ),
        (
            "ConfigMap",
            sks.config_map_name(),
            cm.as_ref().map(|o| &o.metadata),
        ),
    ] {
        if let Some(meta) = meta
            && !publish::is_owned(meta, &sks)
        {
            {
                let nr = NotReady {
                    reason: "ForeignObject",
                    message: format!(
                        "{kind} {ns}/{name} exists and is not managed by this SigningKeySet; keyturn leaves it untouched. Delete it or choose another name."
                    ),
                };
                return refuse_for_a_minute(&sks, &ctx, None, &settings, nr).await;
            }
        }
    }
    let fan_out = consent::requested(&sks);
    let spread = match fan_out_of(&sks, &ctx).await? {
        Ok(f) => f,
        Err(why) => {
            let nr = NotReady {
                reason: "InvalidSpec",
                message: why,
            };
            return refuse(&sks, &ctx, None, Some(&settings), nr, None).await;
        }
    };
    let targets = spread.targets.clone();
    let mut copies: BTreeMap<String, ConfigMap> = BTreeMap::new();
    if fan_out || has_finalizer(&sks) {
        for c in ctx
            .copies_api()
            .list(&ListParams::default().labels(&publish::copies_selector(&sks)))
            .await?
        {
            if let Some(cns) = c.namespace()
                && cns != ns
            {
                copies.insert(cns, c);
            }
        }
    }
    if fan_out && !ctx.namespace_only && !has_finalizer(&sks) {
        set_finalizer(&sks, &ctx, true).await?;
    }
    if let Some(c) = cm.clone() {
        copies.insert(ns.clone(), c);
    }
    if internal.is_none() && (signing.is_some() || cm.as_ref().is_some_and(|c| c.data.is_some())) {
        // The source of truth is gone but what was derived from it is still there: starting
        // a fresh key set would drop keys that verifiers and issuers use. Say so instead.
        let nr = NotReady {
            reason: "InternalStateMissing",
            message: format!(
                "Secret {ns}/{} is missing while the signing Secret or JWKS ConfigMap still exist; keyturn will not replace published keys. Restore it from backup, or delete {ns}/{} and {ns}/{} to start a new key set.",
                sks.internal_secret_name(),
                sks.secret_name(),
                sks.config_map_name()
            ),
        };
        return refuse_for_a_minute(&sks, &ctx, None, &settings, nr).await;
    }
    let state = match internal.as_ref() {
        None => None,
        Some(s) => {
            let bytes = s
                .data
                .as_ref()
                .and_then(|d| d.get(STATE_KEY))
                .map(|b| b.0.as_slice());
            match bytes
                .ok_or(crate::state::StateError::Missing)
                .and_then(SetState::from_bytes)
            {
                Ok(st) => Some(st),
                Err(e) => {
                    let nr = NotReady {
                        reason: "InternalStateCorrupt",
                        message: format!(
                            "Secret {ns}/{}: {e}. keyturn changes nothing until it is repaired or restored from backup; the published JWKS is left as it is.",
                            sks.internal_secret_name()
                        ),
                    };
                    return refuse(
                        &sks,
                        &ctx,
                        None,
                        Some(&settings),
                        nr,
                        Some(StdDuration::from_secs(300)),
                    )
                    .await;
                }
            }
        }
    };

    // plan → apply, one step at a time
    let mut obs = Observed {
        state,
        ..Default::default()
    };
    observe_published(&sks, &mut obs, &copies, &targets);
    obs.lagging = lagging_kids(&sks, obs.state.as_ref(), &copies, &targets);
    let mut publish_failures: Vec<String> = vec![];
    observe_signing(&mut obs, signing.as_ref());
    let mut wake_at = None;
    let mut steps = 0;
    loop {
        let now = (ctx.clock)();
        let step = match plan::plan(&settings, &obs, now) {
            Plan::Idle { wake_at: w } => {
                wake_at = w;
                break;
            }
            Plan::Do(step) => step,
        };
        steps += 1;
        if steps > MAX_STEPS {
            warn!(set = %sks.name_any(), namespace = %ns, "plan did not settle; will retry");
            break;
        }
        match step {
            Step::Generate {
                alg,
                rsa_bits,
                reason,
                rotate_token,
            } => {
                let kp = tokio::task::spawn_blocking(move || KeyPair::generate(alg, rsa_bits))
                    .await
                    .map_err(|e| Error::Invariant(format!("key generation task failed: {e}")))??;
                let next = plan::with_new_key(obs.state.as_ref(), &kp, reason, rotate_token, now);
                if let Err(nr) = state_fits(&sks, &next) {
                    // The current key keeps signing; old keys leave after their overlap and
                    // make room, or a revocation does.
                    return refuse_for_a_minute(&sks, &ctx, obs.state.as_ref(), &settings, nr)
                        .await;
                }
                store_state(&secrets, &mut internal, &sks, &next, &ctx.metrics).await?;
                info!(set = %sks.name_any(), namespace = %ns, kid = %kp.kid(), alg = %alg, ?reason, "stored new key");
                obs.state = Some(next);
            }
            Step::Publish(kids) => {
                let state = obs.state.as_ref().ok_or(Error::Invariant(
                    "the plan publishes before any key is stored".into(),
                ))?;
                let bytes = publish::jwks_bytes(state, &kids).ok_or(Error::Invariant(
                    "the plan publishes a key that is not stored".into(),
                ))?;
                if bytes.len() > MAX_OBJECT_BYTES {
                    let nr = NotReady {
                        reason: "JwksTooLarge",
                        message: format!(
                            "the JWKS would be {} bytes; a ConfigMap holds at most {MAX_OBJECT_BYTES}. Revoke or let old keys expire (shorter spec.rotation.overlap).",
                            bytes.len()
                        ),
                    };
                    return refuse_for_a_minute(&sks, &ctx, obs.state.as_ref(), &settings, nr)
                        .await;
                }
                let client = ctx.client.clone();
                let sks_ref = &sks;
                let copies_ref = &copies;
                let bytes_ref = &bytes;
                let results: Vec<(String, Result<Option<ConfigMap>, WriteError>)> =
                    futures::stream::iter(targets.iter().cloned())
                        .map(|t| {
                            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &t);
                            async move {
                                let desired = publish::jwks_config_map(sks_ref, &t, bytes_ref);
                                let r = publish::write(
                                    &api,
                                    copies_ref.get(&t),
                                    desired,
                                    |m| publish::is_owned_copy(m, sks_ref),
                                    publish::same_config_map,
                                )
                                .await;
                                (t, r)
                            }
                        })
                        .buffer_unordered(PUBLISH_CONCURRENCY)
                        .collect()
                        .await;
                let mut wrote = 0;
                for (t, r) in results {
                    match r {
                        Ok(Some(o)) => {
                            wrote += 1;
                            copies.insert(t, o);
                        }
                        Ok(None) => {}
                        Err(e) => publish_failures.push(format!("{t}: {e}")),
                    }
                }
                if wrote > 0 {
                    ctx.metrics.write("configmap");
                    ctx.metrics.published();
                }
                info!(set = %sks.name_any(), namespace = %ns, keys = kids.len(), copies = targets.len(), wrote, "published JWKS");
                if !publish_failures.is_empty() {
                    break;
                }
                obs.published = Some(kids);
            }
            Step::Sign(kid) => {
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
                let desired = publish::signing_secret(&sks, rec).ok_or(Error::Invariant(
                    format!("key {kid} has no usable private key for the signing Secret"),
                ))?;
                if let Some(o) = publish::write(
                    &secrets,
                    signing.as_ref(),
                    desired,
                    |m| publish::is_owned(m, &sks),
                    publish::same_secret,
                )
                .await?
                {
                    signing = Some(o);
                    ctx.metrics.write("signing_secret");
                }
                info!(set = %sks.name_any(), namespace = %ns, kid = %kid, "signing Secret holds key");
                obs.signing = Some(kid);
            }
            Step::Store(next, transitions) => {
                store_state(&secrets, &mut internal, &sks, &next, &ctx.metrics).await?;
                obs.state = Some(next);
                for t in transitions {
                    announce(&sks, &ctx, &t).await;
                }
            }
        }
    }

    // Copies in namespaces no longer selected are removed (owned ones only).
    for (cns, c) in copies.iter().filter(|(cns, _)| !targets.contains(*cns)) {
        if publish::is_owned_copy(&c.metadata, &sks) {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), cns);
            match api.delete(&c.name_any(), &DeleteParams::default()).await {
                Ok(_) => {
                    info!(set = %sks.name_any(), namespace = %ns, from = %cns, "removed JWKS copy from a deselected namespace")
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            ctx.metrics.write("configmap_delete");
        }
    }
    if !fan_out && has_finalizer(&sks) && copies.keys().all(|c| *c == ns) {
        set_finalizer(&sks, &ctx, false).await?;
    }

    // status
    let state = obs.state.as_ref().ok_or(Error::Invariant(
        "the plan settled without any stored key".into(),
    ))?;
    let now = (ctx.clock)();
    if !publish_failures.is_empty() {
        let nr = NotReady {
            reason: "PublishFailed",
            message: format!(
                "the JWKS could not be written everywhere, so no key activates until it is: {}",
                publish_failures.join("; ")
            ),
        };
        return refuse(
            &sks,
            &ctx,
            Some(state),
            Some(&settings),
            nr,
            Some(StdDuration::from_secs(10)),
        )
        .await;
    }
    let mut status = derive_status(&sks, &settings, state, now, None, &ns);
    if fan_out {
        report_fan_out(&sks, &ctx, &mut status, &spread).await;
    }
    let current = obs
        .published
        .as_ref()
        .and_then(|k| publish::jwks_bytes(state, k));
    status.published_namespaces = targets
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
        .collect();
    write_status(&sks, &ctx, status).await?;
    ctx.metrics
        .observe_set(&ns, &sks.name_any(), state, wake_at.map(|w| w - now));

    Ok(match wake_at {
        Some(w) => {
            let wait = (w - now).to_std().unwrap_or(StdDuration::ZERO);
            // Wake just after the instant so the plan sees it as due.
            Action::requeue(wait + StdDuration::from_millis(20))
        }
        None if steps > MAX_STEPS => Action::requeue(StdDuration::from_secs(1)),
        None => Action::await_change(),
    })
}

/// Writes the internal Secret with `state` (the operator's source of truth).
async fn store_state(
    secrets: &Api<Secret>,
    internal: &mut Option<Secret>,
    sks: &SigningKeySet,
    state: &SetState,
    metrics: &Metrics,
) -> Result<(), Error> {
    let desired = publish::internal_secret(sks, state);
    if let Some(o) = publish::write(
        secrets,
        internal.as_ref(),
        desired,
        |m| publish::is_owned(m, sks),
        publish::same_secret,
    )
    .await?
    {
        *internal = Some(o);
        metrics.write("internal_secret");
    }
    Ok(())
}

fn observe_published(
    sks: &SigningKeySet,
    obs: &mut Observed,
    copies: &BTreeMap<String, ConfigMap>,
    targets: &BTreeSet<String>,
) {
    let Some(state) = obs.state.as_ref() else {
        return;
    };
    let ns = sks.namespace().unwrap_or_default();
    let Some(own) = copies.get(&ns) else { return };
    let Some(text) = own.data.as_ref().and_then(|d| d.get(&sks.jwks_key())) else {
        return;
    };
    let Ok(kids) = crate::jwks::kids(text.as_bytes()) else {
        return;
    };
    if own.data.as_ref().is_none_or(|d| d.len() != 1)
        || publish::jwks_bytes(state, &kids).as_deref() != Some(text.as_bytes())
    {
        return;
    }
    // Published means: every selected copy holds exactly these bytes.
    let everywhere = targets.iter().all(|t| {
        copies
            .get(t)
            .is_some_and(|c| publish::is_owned_copy(&c.metadata, sks) && c.data == own.data)
    });
    if everywhere {
        obs.published = Some(kids);
    }
}

/// Pending keys recorded as published that some target's copy does not hold.
fn lagging_kids(
    sks: &SigningKeySet,
    state: Option<&SetState>,
    copies: &BTreeMap<String, ConfigMap>,
    targets: &BTreeSet<String>,
) -> BTreeSet<String> {
    let Some(state) = state else {
        return BTreeSet::new();
    };
    let held: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            copies
                .get(t)
                .and_then(|c| c.data.as_ref()?.get(&sks.jwks_key()).cloned())
                .and_then(|text| crate::jwks::kids(text.as_bytes()).ok())
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

/// Where the set's JWKS goes: its own namespace, and the requested ones that consented
/// (read here, decided by [`consent::fan_out`]). `Ok(Err(why))` for a selector the API
/// server would not accept.
async fn fan_out_of(sks: &SigningKeySet, ctx: &Context) -> Result<Result<FanOut, String>, Error> {
    if !consent::requested(sks) {
        let own = sks.namespace().unwrap_or_default();
        return Ok(Ok(FanOut {
            targets: BTreeSet::from([own]),
            ..Default::default()
        }));
    }
    if ctx.namespace_only {
        return Ok(Ok(consent::own_only(sks)));
    }
    let namespaces = Api::<Namespace>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?;
    let grants = Api::<SigningKeySetGrant>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(consent::fan_out(sks, &namespaces.items, &grants.items))
}

/// Adds the `FanOut` condition; a Warning Event when it turns False or names other namespaces.
async fn report_fan_out(
    sks: &SigningKeySet,
    ctx: &Context,
    status: &mut SigningKeySetStatus,
    spread: &FanOut,
) {
    let (st, reason, message) = consent::condition(sks, spread);
    let before = sks
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == FAN_OUT_CONDITION));
    let changed = before.is_none_or(|c| c.status != st || c.message != message);
    if changed && st == "False" {
        warn!(set = %sks.name_any(), namespace = sks.namespace().unwrap_or_default(), reason, denied = ?spread.denied, "fan-out refused");
        publish_event(sks, ctx, EventType::Warning, reason, "Publish", &message).await;
    }
    status
        .conditions
        .push(condition(sks, FAN_OUT_CONDITION, st, reason, &message));
}

/// Condition type saying whether every namespace the spec asks for consented.
pub const FAN_OUT_CONDITION: &str = "FanOut";

const FINALIZER: &str = "keyturn.dev/jwks-copies";
/// Data a Secret or ConfigMap can hold: 1 MiB less room for metadata.
const MAX_OBJECT_BYTES: usize = 1024 * 1024 - 4096;

/// `Ready=False` with `nr`, checked again in a minute: causes that clear without any change
/// to the set (a foreign object deleted, a backup restored, old keys expiring).
async fn refuse_for_a_minute(
    sks: &SigningKeySet,
    ctx: &Context,
    state: Option<&SetState>,
    settings: &Settings,
    nr: NotReady,
) -> Result<Action, Error> {
    refuse(
        sks,
        ctx,
        state,
        Some(settings),
        nr,
        Some(StdDuration::from_secs(60)),
    )
    .await
}

/// `TooManyKeys` when the internal Secret could not hold `next` (every key not yet removed,
/// with its public JWK). It fills up before the JWKS does: without this check the write
/// would fail at the API server and be retried forever without a condition saying why.
fn state_fits(sks: &SigningKeySet, next: &SetState) -> Result<(), NotReady> {
    let size = next.to_bytes().len();
    if size <= MAX_OBJECT_BYTES {
        return Ok(());
    }
    Err(NotReady {
        reason: "TooManyKeys",
        message: format!(
            "storing another key would make Secret {}/{} {size} bytes ({} keys); a Secret holds at most {MAX_OBJECT_BYTES}. The current key keeps signing. Shorten spec.rotation.overlap, rotate less often, or revoke old keys.",
            sks.namespace().unwrap_or_default(),
            sks.internal_secret_name(),
            next.keys.len()
        ),
    })
}
const PUBLISH_CONCURRENCY: usize = 16;

fn has_finalizer(sks: &SigningKeySet) -> bool {
    sks.finalizers().iter().any(|f| f == FINALIZER)
}

async fn set_finalizer(sks: &SigningKeySet, ctx: &Context, present: bool) -> Result<(), Error> {
    let mut fins: Vec<String> = sks
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        fins.push(FINALIZER.into());
    }
    let api: Api<SigningKeySet> =
        Api::namespaced(ctx.client.clone(), &sks.namespace().unwrap_or_default());
    // resourceVersion makes this a compare-and-swap: other finalizers are never lost.
    let patch =
        json!({"metadata": {"finalizers": fins, "resourceVersion": sks.resource_version()}});
    match api
        .patch(
            &sks.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {}
        // Releasing the finalizer of a set that is already gone: done.
        Err(kube::Error::Api(e)) if e.code == 404 && !present => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    crate::fault::wrote();
    ctx.metrics.write("finalizer");
    Ok(())
}

/// Deletion: remove the JWKS copies in other namespaces (ownerReferences cannot reach
/// them), then release the finalizer. Objects in the set's namespace go with the GC.
async fn finalize(sks: &SigningKeySet, ctx: &Context) -> Result<Action, Error> {
    if !has_finalizer(sks) {
        return Ok(Action::await_change());
    }
    let own = sks.namespace().unwrap_or_default();
    for c in ctx
        .copies_api()
        .list(&ListParams::default().labels(&publish::copies_selector(sks)))
        .await?
    {
        let cns = c.namespace().unwrap_or_default();
        if cns == own || !publish::is_owned_copy(&c.metadata, sks) {
            continue;
        }
        match Api::<ConfigMap>::namespaced(ctx.client.clone(), &cns)
            .delete(&c.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    set_finalizer(sks, ctx, false).await?;
    info!(set = %sks.name_any(), namespace = %own, "removed JWKS copies; finalizer released");
    Ok(Action::await_change())
}

fn observe_signing(obs: &mut Observed, signing: Option<&Secret>) {
    let (Some(sec), Some(state)) = (signing, obs.state.as_ref()) else {
        return;
    };
    let Some(kid) = sec.data.as_ref().and_then(|d| d.get("kid")) else {
        return;
    };
    let kid = String::from_utf8_lossy(&kid.0).to_string();
    let Some(rec) = state.keys.iter().find(|r| r.kid == kid) else {
        return;
    };
    if publish::signing_data(rec).as_ref() == sec.data.as_ref() {
        obs.signing = Some(kid);
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The status derived from the operator's state (pure apart from the set's identity).
pub fn derive_status(
    sks: &SigningKeySet,
    s: &Settings,
    state: &SetState,
    now: DateTime<Utc>,
    not_ready: Option<(&str, &str)>,
    ns: &str,
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
        Some((reason, message)) => ("False", reason.to_string(), message.to_string()),
        None => match active {
            Some(a) => (
                "True",
                "KeysPublished".to_string(),
                format!("key {} signs; {} key(s) published", a.kid, keys.len()),
            ),
            None => (
                "False",
                "NoActiveKey".to_string(),
                "no key is signing yet".to_string(),
            ),
        },
    };
    let mut conditions = vec![condition(sks, "Ready", status, &reason, &message)];
    let revoked_here: Vec<&String> = s.revoked.iter().collect();
    if !revoked_here.is_empty() {
        conditions.push(condition(
            sks,
            "Revoked",
            "True",
            "KeysRevoked",
            &format!(
                "spec.revokedKeyIds lists {} key id(s); they are excluded from every JWKS and their private keys destroyed",
                revoked_here.len()
            ),
        ));
    }
    SigningKeySetStatus {
        observed_generation: sks.metadata.generation,
        active_key_id: active.map(|a| a.kid.clone()),
        next_rotation_time: plan::next_rotation(state, s).map(ts),
        key_count: Some(keys.len() as i32),
        keys,
        published_namespaces: vec![ns.to_string()],
        conditions,
    }
}

fn condition(
    sks: &SigningKeySet,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> Condition {
    // Keep the transition time when the status did not change: steady state writes nothing.
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
        last_transition_time: previous.unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
    }
}

async fn write_status(
    sks: &SigningKeySet,
    ctx: &Context,
    status: SigningKeySetStatus,
) -> Result<(), Error> {
    if sks.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<SigningKeySet> =
        Api::namespaced(ctx.client.clone(), &sks.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "keyturn.dev/v1alpha1",
        "kind": "SigningKeySet",
        "status": status,
    });
    api.patch_status(
        &sks.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    crate::fault::wrote();
    ctx.metrics.write("status");
    Ok(())
}

/// Reports a set keyturn will not act on: `Ready=False` with a reason, an Event on change.
async fn refuse(
    sks: &SigningKeySet,
    ctx: &Context,
    state: Option<&SetState>,
    settings: Option<&Settings>,
    nr: NotReady,
    retry: Option<StdDuration>,
) -> Result<Action, Error> {
    if ctx.going_away(sks) {
        debug!(set = %sks.name_any(), reason = nr.reason, "not reporting: the set is going away");
        return Ok(Action::await_change());
    }
    let already = sks.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Ready"
                && c.status == "False"
                && c.reason == nr.reason
                && c.message == nr.message
        })
    });
    if !already {
        warn!(set = %sks.name_any(), namespace = sks.namespace().unwrap_or_default(), reason = nr.reason, message = %nr.message, "not ready");
        publish_event(
            sks,
            ctx,
            EventType::Warning,
            nr.reason,
            "Reconcile",
            &nr.message,
        )
        .await;
    }
    ctx.metrics.refused(nr.reason);
    let mut status = match (state, settings) {
        (Some(st), Some(s)) => derive_status(
            sks,
            s,
            st,
            (ctx.clock)(),
            Some((nr.reason, &nr.message)),
            &sks.namespace().unwrap_or_default(),
        ),
        _ => sks.status.clone().unwrap_or_default(),
    };
    status.observed_generation = sks.metadata.generation;
    let mut conds: Vec<Condition> = status
        .conditions
        .into_iter()
        .filter(|c| c.type_ != "Ready")
        .collect();
    conds.insert(0, condition(sks, "Ready", "False", nr.reason, &nr.message));
    // A refusal does not re-evaluate consent: keep what the last full reconcile reported.
    if consent::requested(sks)
        && let Some(c) = sks
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == FAN_OUT_CONDITION))
        && !conds.iter().any(|c| c.type_ == FAN_OUT_CONDITION)
    {
        conds.push(c.clone());
    }
    status.conditions = conds;
    write_status(sks, ctx, status).await?;
    Ok(match retry {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

async fn announce(sks: &SigningKeySet, ctx: &Context, t: &Transition) {
    let (type_, reason, note) = match t {
        Transition::Published(k) => (
            EventType::Normal,
            "KeyPublished",
            format!("key {k} published in the JWKS"),
        ),
        Transition::Activated(k) => (
            EventType::Normal,
            "KeyActivated",
            format!("key {k} is now the signing key"),
        ),
        Transition::Retired(k) => (
            EventType::Normal,
            "KeyRetired",
            format!("key {k} stopped signing; it stays in the JWKS for the overlap window"),
        ),
        Transition::Removed(k) => (
            EventType::Normal,
            "KeyRemoved",
            format!("key {k} left the JWKS after its overlap window"),
        ),
        Transition::Revoked {
            kid,
            was_active: true,
        } => (
            EventType::Warning,
            "ActiveKeyRevoked",
            format!(
                "key {kid} was revoked while signing; a replacement signs now and verifiers with stale caches will reject its tokens until they refresh"
            ),
        ),
        Transition::Revoked {
            kid,
            was_active: false,
        } => (
            EventType::Warning,
            "KeyRevoked",
            format!("key {kid} was revoked and left the JWKS"),
        ),
    };
    info!(set = %sks.name_any(), namespace = sks.namespace().unwrap_or_default(), reason, "{note}");
    ctx.metrics.transition(reason);
    publish_event(sks, ctx, type_, reason, "Rotate", &note).await;
}

/// An Event's note holds at most 1024 characters (the API server refuses the Event
/// otherwise); a longer one is cut, the condition keeps the whole message.
fn event_note(note: &str) -> String {
    const MAX: usize = 1024;
    if note.chars().count() <= MAX {
        return note.to_string();
    }
    let mut cut: String = note.chars().take(MAX - 1).collect();
    cut.push('…');
    cut
}

async fn publish_event(
    sks: &SigningKeySet,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(event_note(note)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &sks.object_ref(&())).await {
        warn!(error = %e, "could not record Event");
    }
}

/// Retry policy: back off on errors, report them in the log and metrics.
pub fn error_policy(sks: Arc<SigningKeySet>, err: &Error, ctx: Arc<Context>) -> Action {
    if ctx.going_away(&sks) {
        // A teardown, not a failure: retried, never alarmed.
        debug!(set = %sks.name_any(), namespace = sks.namespace().unwrap_or_default(), error = %err, "reconcile failed while the set is going away");
        return Action::requeue(StdDuration::from_secs(5));
    }
    warn!(set = %sks.name_any(), namespace = sks.namespace().unwrap_or_default(), reason = err.reason(), error = %err, "reconcile failed");
    ctx.metrics.error(err.reason());
    let n = ctx
        .metrics
        .consecutive_errors(&sks.namespace().unwrap_or_default(), &sks.name_any());
    let secs = (1u64 << n.min(6)).min(60);
    Action::requeue(StdDuration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_notes_fit_the_api_limit() {
        assert_eq!(event_note("short"), "short");
        let long = "é".repeat(3000);
        let cut = event_note(&long);
        assert_eq!(cut.chars().count(), 1024);
        assert!(cut.ends_with('…'));
        assert_eq!(event_note(&"x".repeat(1024)), "x".repeat(1024));
    }

    use super::*;
    use crate::crd::Algorithm;
    use crate::keys::KeyPair;
    use crate::state::KeyRecord;

    fn set() -> SigningKeySet {
        let mut sks: SigningKeySet = serde_json::from_value(serde_json::json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
            "metadata": {"name": "auth", "namespace": "identity"}, "spec": {}
        }))
        .unwrap();
        sks.metadata.uid = Some("u".into());
        sks
    }

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
        };
        let mut s = SetState::new();
        s.keys = vec![rec; n];
        s
    }

    #[test]
    fn a_state_that_fits_a_secret_is_stored() {
        assert!(state_fits(&set(), &retired(100)).is_ok());
    }

    #[test]
    fn a_state_too_large_for_a_secret_is_refused_with_a_reason() {
        let mut n = 1000;
        while retired(n).to_bytes().len() <= MAX_OBJECT_BYTES {
            n *= 2;
        }
        let nr = state_fits(&set(), &retired(n)).unwrap_err();
        assert_eq!(nr.reason, "TooManyKeys");
        assert!(
            nr.message.contains("identity/auth-keyturn-keys"),
            "{}",
            nr.message
        );
        assert!(
            nr.message.contains(&format!("({n} keys)")),
            "{}",
            nr.message
        );
        // One key fewer than the limit allows still fits.
        let per_key = retired(2).to_bytes().len() - retired(1).to_bytes().len();
        let fits = (MAX_OBJECT_BYTES - retired(0).to_bytes().len()) / per_key;
        assert!(state_fits(&set(), &retired(fits)).is_ok());
        assert!(state_fits(&set(), &retired(fits + 1)).is_err());
    }
}
