//! The reconcile of one SigningKeySet, as a pipeline. Each stage is a module, entered once:
//!
//! 1. [`read`]: the set's objects (internal Secret, signing Secret, JWKS ConfigMap and its
//!    copies, and for fan-out the namespaces and grants).
//! 2. [`check`] (pure): the settings, the consented fan-out, the stored state and what is
//!    observed, or a [`Refusal`] that carries its reason and retry.
//! 3. plan + [`apply`]: the planner ([`crate::core::plan`]) picks one step at a time, the applier
//!    writes it (one method per step; the JWKS copies through [`fanout`]), until idle.
//! 4. [`status`] (pure, `now` passed in) and [`report`]: the status patch, Events, metrics.
//!
//! `docs/architecture.md` walks through it with the invariants each stage enforces.

mod apply;
mod check;
mod fanout;
pub mod keygen;
#[cfg(test)]
mod mock;
mod read;
mod report;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tracing::{Instrument, debug, warn};

use crate::core::consent;
use crate::core::crd::{ROTATE_ANNOTATION, SetRef, SigningKeySet};
use crate::operator::write::WriteError;
use crate::runtime::metrics::Metrics;

pub use crate::core::crd::FINALIZER;
pub use check::Floors;
pub use fanout::CopyData;
pub use status::{FAN_OUT_CONDITION, derive_status};

/// The cluster admin's rules, from `keyturn run`'s flags.
#[derive(Default)]
pub struct Policy {
    /// Floors under every schedule and the quota of sets per namespace.
    pub floors: Floors,
    /// The issuer URL each set may claim in discovery (its `Discovery` condition).
    pub issuers: Arc<crate::core::issuer::Issuers>,
}

/// What the controller remembers between reconciles (none of it is the truth: each is a
/// cache or a courtesy that the API server's state overrides).
#[derive(Default)]
pub struct Memory {
    /// The data of the live sets' own copies, by version (read once, kept by keyturn's writes).
    pub copy_data: Arc<fanout::CopyData>,
    /// The fair queue of key generation.
    pub keygen: keygen::KeyGen,
    /// Consecutive failed reconciles per set, for [`error_policy`]'s backoff.
    pub backoff: Backoff,
    /// The status keyturn last wrote to each set, until the watch shows it.
    pub written: WrittenStatus,
    /// keyturn's own writes whose watch events must not start another reconcile.
    pub echoes: Arc<crate::operator::echo::Echoes>,
}

/// A source of the current time; tests and benchmarks may inject their own.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Shared state of the controller.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Who records keyturn's Events. A recorder is made per Event: kube-runtime's `Recorder`
    /// keeps every Event it published for six minutes to fold repeats into a series, and
    /// drops them only when it publishes again, so one long-lived recorder held the 20,000
    /// Events of 10,000 new sets for as long as the sets sat idle (keyturn announces
    /// transitions and new refusals, which do not repeat within minutes).
    pub reporter: kube::runtime::events::Reporter,
    /// Current time.
    pub clock: Clock,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Where this operator reads and writes, with the watch caches that scope needs.
    pub scope: Scope,
    /// Every SigningKeySet the controller watches (the quota of sets per namespace counts
    /// them); `None` in tests that have no controller.
    pub sets: Option<Store<SigningKeySet>>,
    /// The cluster admin's rules, from the flags.
    pub policy: Policy,
    /// What the controller remembers between reconciles.
    pub memory: Memory,
}

impl Context {
    /// True when `ns` is being deleted: its sets are going away, not broken.
    pub fn namespace_terminating(&self, ns: &str) -> bool {
        self.scope
            .cluster()
            .and_then(|c| c.namespaces.store.get(&ObjectRef::new(ns)))
            // A namespace is Terminating exactly when it has a deletionTimestamp.
            .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    }

    /// True when the set is being deleted, or its namespace is: no alarms for it.
    fn going_away(&self, set: &SetRef, sks: &SigningKeySet) -> bool {
        sks.metadata.deletion_timestamp.is_some() || self.namespace_terminating(&set.namespace)
    }

    /// Where JWKS copies are looked for: every namespace, or (namespace-only) none but the
    /// sets' own.
    fn copies_api(&self) -> Api<ConfigMap> {
        match &self.scope {
            Scope::NamespaceOnly(ns) => Api::namespaced(self.client.clone(), ns),
            Scope::Cluster(_) => Api::all(self.client.clone()),
        }
    }
}

/// Where the operator reads and writes. Fan-out needs every namespace, every grant and
/// keyturn's copies elsewhere, so those caches exist exactly in [`Scope::Cluster`]: a reconcile
/// cannot reach for a cache its install does not have.
pub enum Scope {
    /// Copies may go to any namespace that consents (sets watched in every namespace, or in
    /// the one `--namespace` names).
    Cluster(ClusterCaches),
    /// `--namespace-only`: nothing outside this namespace is read or written (no fan-out).
    NamespaceOnly(String),
}

/// The cluster-wide watch caches of [`Scope::Cluster`].
pub struct ClusterCaches {
    /// Every namespace's metadata: fan-out targets, and a namespace being deleted.
    pub namespaces: Cache<kube::core::PartialObjectMeta<Namespace>>,
    /// Every SigningKeySetGrant: consent to fan-out.
    pub grants: Cache<crate::core::crd::SigningKeySetGrant>,
    /// The metadata of keyturn-labelled ConfigMaps in namespaces other than their set's: JWKS
    /// copies, and anything that merely carries the labels.
    pub copies: Cache<kube::core::PartialObjectMeta<ConfigMap>>,
}

impl Scope {
    /// The cluster-wide caches, unless the install is namespace-only.
    pub fn cluster(&self) -> Option<&ClusterCaches> {
        match self {
            Scope::Cluster(c) => Some(c),
            Scope::NamespaceOnly(_) => None,
        }
    }

    /// True in namespace-only mode.
    pub fn namespace_only(&self) -> bool {
        matches!(self, Scope::NamespaceOnly(_))
    }
}

/// A watch cache a reconcile reads from, and whether its first complete list has arrived.
/// (Readiness is kept here rather than read from the store: kube-runtime's
/// `Store::wait_until_ready` wakes only the last of several concurrent waiters, and 48
/// reconciles may wait at once.)
#[derive(Clone)]
pub struct Cache<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    /// The objects.
    pub store: Store<K>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Cache<K> {
    /// A cache over `store`, complete once `ready` holds `true`.
    pub fn new(store: Store<K>, ready: tokio::sync::watch::Receiver<bool>) -> Self {
        Cache { store, ready }
    }

    /// Every object, once the first complete list has been stored.
    pub async fn complete(&self) -> Result<Vec<Arc<K>>, Error> {
        self.ready
            .clone()
            .wait_for(|r| *r)
            .await
            .map_err(|_| Error::Invariant("a watch cache stopped".into()))?;
        Ok(self.store.state())
    }
}

/// The status keyturn patched onto each set, kept only until the controller's watch cache
/// holds a newer version of the set than the one the patch was decided from (the patch's own
/// watch event drops it). A reconcile that
/// runs before that (the patch's own echo through another watch) decides from what keyturn
/// wrote, not from the older status, so it does not patch the same status again (nor re-date
/// its conditions' `lastTransitionTime`, nor repeat a refusal's Event).
#[derive(Default)]
pub struct WrittenStatus(Mutex<HashMap<SetRef, Written>>);

/// A status patch: onto which object (uid) and version it was decided from.
struct Written {
    uid: String,
    from_version: String,
    status: crate::core::crd::SigningKeySetStatus,
}

impl WrittenStatus {
    /// `sks` (the set `set`) as keyturn last left it: its status replaced by the one keyturn
    /// patched, when the cache still holds the version that patch was decided from. Otherwise
    /// `sks` unchanged (and the record dropped: the cache has caught up, or someone else
    /// changed the set).
    pub fn latest(&self, set: &SetRef, sks: Arc<SigningKeySet>) -> Arc<SigningKeySet> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = m.get(set) else { return sks };
        if sks.uid().as_ref() == Some(&w.uid)
            && sks.metadata.resource_version.as_ref() == Some(&w.from_version)
        {
            let mut newer = (*sks).clone();
            newer.status = Some(w.status.clone());
            return Arc::new(newer);
        }
        m.remove(set);
        sks
    }

    /// Records that `status` was patched onto `sks`, the set `set` (the version it was decided
    /// from).
    fn wrote(
        &self,
        set: &SetRef,
        sks: &SigningKeySet,
        status: &crate::core::crd::SigningKeySetStatus,
    ) {
        if let (Some(uid), Some(from_version)) = (sks.uid(), sks.metadata.resource_version.clone())
        {
            let w = Written {
                uid,
                from_version,
                status: status.clone(),
            };
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(set.clone(), w);
        }
    }

    /// Forgets a set (deleted).
    pub fn forget(&self, set: &SetRef) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(set);
    }
}

/// Conflicts in a row after which a set says `WriteConflict` (about 13 s of retries).
const STALE_STREAK: u32 = 6;

/// Consecutive failures per set: the exponent of the retry backoff.
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<SetRef, u32>>);

impl Backoff {
    /// Failures in a row so far.
    fn streak(&self, set: &SetRef) -> u32 {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(set).copied().unwrap_or(0)
    }

    /// Counts a failure; returns how many in a row.
    fn failed(&self, set: &SetRef) -> u32 {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(set.clone()).or_insert(0);
        *n += 1;
        *n
    }

    /// A reconcile that ended without an error ends the streak.
    fn succeeded(&self, set: &SetRef) {
        self.forget(set);
    }

    /// Forgets a set (deleted).
    pub fn forget(&self, set: &SetRef) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(set);
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
    Key(#[from] crate::core::keys::KeyError),
    /// A write's precondition failed because the watch cache it was decided from lagged
    /// (the object changed, appeared or went since): not a failure, the set is reconciled
    /// again from the newer cache.
    #[error("{0} changed since the watch cache was read; reconciling again")]
    Stale(String),
    /// The object has no namespace, name or uid (not read from the API server).
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
            Error::Write(WriteError::Foreign { .. }) => Reason::ForeignObject.as_str(),
            Error::Write(WriteError::Api { .. }) => "WriteFailed",
            Error::Kube(_) => "ApiError",
            Error::Key(_) => "KeyGenerationFailed",
            Error::Incomplete(_) => "Incomplete",
            Error::Stale(_) => "Stale",
            Error::Invariant(_) => Reason::InternalError.as_str(),
        }
    }

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

/// Why keyturn will not act on a set (the `Ready=False` reasons other than `NoActiveKey`);
/// each knows when to look again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The spec passed the schema but keyturn cannot act on it.
    InvalidSpec,
    /// An object with one of the set's names exists and is not keyturn's.
    ForeignObject,
    /// The internal Secret is gone while what was derived from it is not.
    InternalStateMissing,
    /// The internal Secret does not parse or is inconsistent.
    InternalStateCorrupt,
    /// Another key would not fit the internal Secret.
    TooManyKeys,
    /// The JWKS would not fit a ConfigMap.
    JwksTooLarge,
    /// A JWKS copy could not be written.
    PublishFailed,
    /// The API server refused a write for good.
    WriteRejected,
    /// A rule keyturn relies on did not hold (a bug).
    InternalError,
    /// The first key cannot be imported from `spec.import`'s Secret.
    ImportFailed,
    /// A `spec.verificationKeys` source is missing, does not consent, or holds a key the
    /// JWKS rules refuse.
    VerificationKeysRefused,
    /// The namespace has more sets than the cluster admin's quota; this one is not among the
    /// oldest.
    QuotaExceeded,
    /// keyturn's writes keep finding one of the set's objects changed by someone else since
    /// it was read (each try is retried at once; this says so once it lasts).
    WriteConflict,
}

impl Reason {
    /// The condition's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::ForeignObject => "ForeignObject",
            Reason::InternalStateMissing => "InternalStateMissing",
            Reason::InternalStateCorrupt => "InternalStateCorrupt",
            Reason::TooManyKeys => "TooManyKeys",
            Reason::JwksTooLarge => "JwksTooLarge",
            Reason::PublishFailed => "PublishFailed",
            Reason::WriteRejected => "WriteRejected",
            Reason::InternalError => "InternalError",
            Reason::ImportFailed => "ImportFailed",
            Reason::VerificationKeysRefused => "VerificationKeysRefused",
            Reason::WriteConflict => "WriteConflict",
            Reason::QuotaExceeded => "QuotaExceeded",
        }
    }

    /// When to look again: `None` waits for a change to the set (only a spec edit fixes
    /// it); otherwise the cause can clear without one (an object deleted, a backup
    /// restored, keys expiring, a policy changed) and is checked after this long.
    pub fn retry(self) -> Option<StdDuration> {
        let secs = match self {
            Reason::InvalidSpec => return None,
            Reason::PublishFailed | Reason::WriteConflict => 10,
            // The Secret or ConfigMap can be created, annotated or fixed without a spec edit.
            Reason::WriteRejected | Reason::ImportFailed | Reason::VerificationKeysRefused => 30,
            Reason::ForeignObject
            | Reason::InternalStateMissing
            | Reason::TooManyKeys
            | Reason::JwksTooLarge
            | Reason::QuotaExceeded
            | Reason::InternalError => 60,
            Reason::InternalStateCorrupt => 300,
        };
        Some(StdDuration::from_secs(secs))
    }
}

/// A set keyturn will not act on now: the reason and a message that says what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// For the condition and the Event: names the field or object, says what to do.
    pub message: String,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

/// Reconciles one SigningKeySet. A broken internal rule or a write the API server refuses
/// for good ends as `Ready=False` with an Event, never as a panic or a silent retry.
///
/// Where the set is ([`SetRef::of`]) is taken once, here, and handed to every stage; a set
/// without a namespace (or name) ends as [`Error::Incomplete`] before any stage runs.
pub async fn reconcile(sks: Arc<SigningKeySet>, ctx: Arc<Context>) -> Result<Action, Error> {
    sks.namespace().ok_or(Error::Incomplete("namespace"))?;
    let set = SetRef::of(&sks).ok_or(Error::Incomplete("name"))?;
    let span = span(&set);
    reconcile_set(&set, sks, ctx).instrument(span).await
}

/// The span of one set's reconcile (and of [`error_policy`] after it): every log line of it
/// carries the set and its namespace (no field added by hand).
fn span(set: &SetRef) -> tracing::Span {
    tracing::info_span!("reconcile", set = %set.name, namespace = %set.namespace)
}

async fn reconcile_set(
    set: &SetRef,
    sks: Arc<SigningKeySet>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let sks = ctx.memory.written.latest(set, sks);
    let refusal = match run(set, &sks, &ctx).await {
        Ok(action) => {
            ctx.memory.backoff.succeeded(set);
            return Ok(action);
        }
        Err(Error::Invariant(why)) => Refusal::new(
            Reason::InternalError,
            format!("keyturn hit an internal error and changed nothing more: {why}"),
        ),
        // A conflict is retried at once, quietly; one that lasts is someone else writing the
        // same object over and over, and says so instead of a debug line (I11).
        Err(Error::Stale(what)) if ctx.memory.backoff.streak(set) >= STALE_STREAK => Refusal::new(
            Reason::WriteConflict,
            format!(
                "{what} changed since the watch cache was read, {} times in a row: something else keeps writing it; keyturn retries",
                ctx.memory.backoff.streak(set) + 1
            ),
        ),
        Err(e) => match e.rejected_write() {
            Some(what) => Refusal::new(
                Reason::WriteRejected,
                format!(
                    "the API server refused a write, so keyturn changes nothing more until it succeeds (retried every {}s): {what}",
                    Reason::WriteRejected.retry().unwrap_or_default().as_secs()
                ),
            ),
            None => return Err(e),
        },
    };
    ctx.metrics.error(refusal.reason.as_str());
    report::refuse(set, &sks, &ctx, refusal, None).await
}

/// The pipeline: read → check → plan/apply → status, for the set `sks` at `set`.
async fn run(set: &SetRef, sks: &SigningKeySet, ctx: &Context) -> Result<Action, Error> {
    sks.uid().ok_or(Error::Incomplete("uid"))?;
    ctx.metrics.reconcile_started();
    if ctx.going_away(set, sks) {
        // Going away, not broken: what it last reported (a Ready=False, a due instant) must not
        // keep an alert firing while its finalizer runs or its namespace empties.
        ctx.metrics.forget_set(&set.namespace, &set.name);
    }
    if sks.metadata.deletion_timestamp.is_some() {
        return fanout::finalize(set, sks, ctx).await;
    }
    if ctx.namespace_terminating(&set.namespace) {
        // Its Secrets are being deleted under it; the set goes next (and, with copies
        // elsewhere, is finalized above).
        debug!("namespace is being deleted; nothing to do");
        return Ok(Action::await_change());
    }

    let mut objects = read::read(set, sks, ctx).await?;
    let token = sks.annotations().get(ROTATE_ANNOTATION).cloned();
    let sets = ctx.sets.as_ref().map(|s| s.state()).unwrap_or_default();
    let checked = match check::check(set, sks, &objects, token, ctx.scope.namespace_only())
        .and_then(|c| check::within_floors(&c.settings, &ctx.policy.floors).map(|()| c))
        .and_then(|c| {
            check::within_quota(
                set,
                sks,
                sets.iter().map(|s| &**s),
                ctx.policy.floors.max_sets_per_namespace,
            )
            .map(|()| c)
        }) {
        Ok(c) => c,
        Err(refusal) => {
            read::still_current(set, sks, ctx, &objects).await?;
            if check::holds_revoked(sks, &objects) {
                // No refusal holds a revocation back (I10): the revoked key leaves the
                // signing Secret even while keyturn can do nothing else for the set.
                apply::Applier::new(set, sks, ctx, &mut objects, &Default::default())
                    .unsign()
                    .await?;
            }
            // Nor consent withdrawn (I8): copies where no grant names the set any more go.
            fanout::release_withdrawn(set, sks, ctx, &mut objects).await?;
            return report::refuse(set, sks, ctx, refusal, None).await;
        }
    };
    fanout::hold_copies(set, sks, ctx).await?;

    let applied = match apply::Applier::new(set, sks, ctx, &mut objects, &checked.spread.targets)
        .importing(checked.import)
        .run(&checked.settings, checked.observed)
        .await?
    {
        apply::Outcome::Idle(a) => a,
        apply::Outcome::Refused(refusal, state) => {
            read::still_current(set, sks, ctx, &objects).await?;
            fanout::release_withdrawn(set, sks, ctx, &mut objects).await?;
            let at = state.as_ref().map(|st| (st, &checked.settings));
            return report::refuse(set, sks, ctx, refusal, at).await;
        }
    };
    fanout::release_copies(set, sks, ctx, &mut objects, &checked.spread).await?;

    let state = applied.state.as_ref().ok_or(Error::Invariant(
        "the plan settled without any stored key".into(),
    ))?;
    if !applied.publish_failures.is_empty() {
        let refusal = Refusal::new(
            Reason::PublishFailed,
            format!(
                "the JWKS could not be written everywhere, so no scheduled key activates until it is (a revoked key is taken out of every copy keyturn can write whatever else fails): {}",
                applied.publish_failures.join("; ")
            ),
        );
        return report::refuse(set, sks, ctx, refusal, Some((state, &checked.settings))).await;
    }
    if let Some(refusal) = checked.verification_refused {
        // The set's own keys went on above; it is not Ready until the sources can be read,
        // looked at again after the refusal's retry or at the next transition, if sooner.
        let retry = refusal.reason.retry().unwrap_or(StdDuration::from_secs(30));
        report::refuse(set, sks, ctx, refusal, Some((state, &checked.settings))).await?;
        let wake = applied.wake_at.map(|w| until(w, (ctx.clock)()));
        return Ok(Action::requeue(wake.map_or(retry, |w| w.min(retry))));
    }
    let now = (ctx.clock)();
    let published_in = status::published_namespaces(
        sks,
        state,
        applied.published.as_deref(),
        &objects.copies,
        &checked.spread.targets,
    );
    let mut st = status::derive_status(sks, &checked.settings, state, now, None, published_in);
    if consent::requested(sks) {
        let fan_out = status::fan_out_condition(set, sks, &checked.spread, now);
        report::fan_out_changed(sks, ctx, &fan_out, &checked.spread).await;
        st.conditions.push(fan_out);
    }
    if let Some(discovery) = status::discovery_condition(set, sks, &ctx.policy.issuers, now) {
        report::discovery_changed(sks, ctx, &discovery).await;
        st.conditions.push(discovery);
    }
    ctx.metrics.observe_set(
        &set.namespace,
        &set.name,
        state,
        crate::core::plan::due_transition(state, &checked.settings),
    );
    report::write_status(set, sks, ctx, st).await?;
    Ok(match applied.wake_at {
        Some(w) => Action::requeue(until(w, now)),
        None if !applied.settled => Action::requeue(StdDuration::from_secs(1)),
        None => Action::await_change(),
    })
}

/// How long to wait for the planner's next instant `wake`: just after it, so the plan sees it
/// as due.
fn until(wake: DateTime<Utc>, now: DateTime<Utc>) -> StdDuration {
    (wake - now).to_std().unwrap_or(StdDuration::ZERO) + StdDuration::from_millis(20)
}

/// Retry policy: back off on errors, report them in the log (in the set's reconcile span)
/// and metrics.
pub fn error_policy(sks: Arc<SigningKeySet>, err: &Error, ctx: Arc<Context>) -> Action {
    let Some(set) = SetRef::of(&sks) else {
        // Not read from the API server ([`Error::Incomplete`]): no set to keep a streak for,
        // and nothing a retry soon could change.
        warn!(reason = err.reason(), error = %err, "reconcile failed");
        ctx.metrics.error(err.reason());
        return Action::requeue(StdDuration::from_secs(60));
    };
    let _in_set = span(&set).entered();
    if ctx.going_away(&set, &sks) {
        // A teardown, not a failure: retried, never alarmed.
        debug!(error = %err, "reconcile failed while the set is going away");
        return Action::requeue(StdDuration::from_secs(5));
    }
    if let Error::Stale(_) = err {
        // A lagging cache, not a failure: no alarm, and retried at once the first time (a
        // cache that stays behind still backs off).
        debug!(error = %err, "reconciling again from a newer cache");
        let n = ctx.memory.backoff.failed(&set);
        return Action::requeue(StdDuration::from_millis(100 << n.min(9)));
    }
    warn!(reason = err.reason(), error = %err, "reconcile failed");
    ctx.metrics.error(err.reason());
    let n = ctx.memory.backoff.failed(&set);
    Action::requeue(StdDuration::from_secs((1u64 << n.min(6)).min(60)))
}

/// Fixtures for the stages' unit tests: a set, a stored state and the objects keyturn
/// would have written for it.
#[cfg(test)]
pub(crate) mod fixtures {
    use chrono::{DateTime, Utc};
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};

    use super::read::Objects;
    use crate::core::crd::{Algorithm, SigningKeySet};
    use crate::core::keys::KeyPair;
    use crate::core::objects;
    use crate::core::plan::{self, GenerateReason};
    use crate::core::state::SetState;

    /// `identity/auth` with `spec`, as read from the API server (uid, generation).
    pub fn set(spec: serde_json::Value) -> SigningKeySet {
        let mut sks: SigningKeySet = serde_json::from_value(serde_json::json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
            "metadata": {"name": "auth", "namespace": "identity", "uid": "u-1", "generation": 3},
            "spec": spec
        }))
        .unwrap();
        sks.metadata.resource_version = Some("7".into());
        sks
    }

    /// Where `sks` is (the fixtures all have a namespace and a name).
    pub fn at(sks: &SigningKeySet) -> crate::core::crd::SetRef {
        crate::core::crd::SetRef::of(sks).expect("a fixture set has a namespace and a name")
    }

    /// A fixed instant.
    pub fn t0() -> DateTime<Utc> {
        "2026-11-29T00:00:00Z".parse().unwrap()
    }

    /// One Ed25519 key, published and active since `t0`.
    pub fn active_state() -> SetState {
        let kp = KeyPair::generate(Algorithm::EdDSA, None).unwrap();
        let mut st = plan::with_new_key(None, &kp, GenerateReason::First, None, t0());
        st.keys[0].published_at = Some(t0());
        st.keys[0].activated_at = Some(t0());
        st
    }

    /// The objects keyturn writes for `state`: internal Secret, signing Secret, JWKS.
    pub fn written(sks: &SigningKeySet, state: &SetState) -> Objects {
        let kids: Vec<String> = state.keys.iter().map(|k| k.kid.clone()).collect();
        let bytes = objects::jwks_bytes(state, &kids).unwrap();
        let jwks: ConfigMap = objects::jwks_config_map(&at(sks), sks, "identity", &bytes);
        let signing: Secret = objects::signing_secret(sks, &state.keys[0]).unwrap();
        Objects {
            internal: Some(objects::internal_secret(sks, state)),
            signing: Some(signing),
            jwks: Some(jwks.clone()),
            copies: [("identity".to_string(), jwks)].into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod cache_tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;

    use super::Cache;

    /// Every reconcile waiting for a cache goes on once it is filled, not only the last one
    /// to wait (what kube-runtime's `Store::wait_until_ready` does with several waiters).
    #[tokio::test]
    async fn every_reconcile_waiting_for_a_cache_goes_on_once_it_is_filled() {
        let (store, mut writer) = kube::runtime::reflector::store::<ConfigMap>();
        let (ready, ready_rx) = tokio::sync::watch::channel(false);
        let cache = Cache::new(store, ready_rx);
        let waiters: Vec<_> = (0..48)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.complete().await.map(|v| v.len()) })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "nothing before the list"
        );
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "n"}
        }))
        .unwrap();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(cm));
        writer.apply_watcher_event(&Event::InitDone);
        ready.send_replace(true);
        for w in waiters {
            let n = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was never woken")
                .unwrap()
                .unwrap();
            assert_eq!(n, 1);
        }
    }
}
