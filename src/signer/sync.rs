//! Keeps the signer's state current from the API server: a watch of the set's internal
//! Secret (one object, by name), each version checked ([`super::file::check_progress`]),
//! written to the state file, then served. While the API server is unreachable the watch
//! retries with backoff and the signer keeps serving what it has.

use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};

use super::file::{self, FILE_VERSION, StateFile};
use super::{Options, Served, SignerError, SignerMetrics, Snapshot};
use crate::core::crd::SigningKeySet;
use crate::core::state::{STATE_KEY, Sensitive, SetState};

/// The state the signer serves and the document it came from.
#[derive(Debug)]
pub struct Current {
    /// The document in the state file.
    pub doc: StateFile,
    /// Its parsed state.
    pub state: SetState,
}

/// Reads and checks the state file at start; `Ok(None)` when there is none.
pub fn load(opts: &Options) -> Result<Option<(Current, Snapshot)>, SignerError> {
    let Some(doc) = file::read(&opts.state_file)? else {
        return Ok(None);
    };
    if doc.set != opts.set() {
        return Err(SignerError::File {
            path: opts.state_file.clone(),
            why: format!("holds SigningKeySet {}, not {}", doc.set, opts.set()),
        });
    }
    let state = doc.parse()?;
    let snap = Snapshot::new(
        &doc.set,
        &without_revoked(&state, &doc.revoked_key_ids),
        doc.max_token_lifetime_seconds,
    )?;
    Ok(Some((Current { doc, state }, snap)))
}

/// What the signer takes from the SigningKeySet itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `spec.maxTokenLifetime`, seconds.
    pub lifetime_seconds: i64,
    /// `spec.revokedKeyIds`, sorted.
    pub revoked: Vec<String>,
}

impl Policy {
    /// The set's policy through the operator's own validation of the spec.
    pub fn of(set: &str, sks: &SigningKeySet) -> Result<Policy, SignerError> {
        let mut revoked = sks.spec.revoked_key_ids.clone();
        revoked.sort();
        revoked.dedup();
        Ok(Policy {
            lifetime_seconds: token_lifetime(set, sks)?,
            revoked,
        })
    }
}

/// The state without the records of revoked keys: the signer neither hands them to the API
/// server nor signs with them, even before the operator has written the revocation (a
/// blocked operator cannot hold it back, I10). A revoked Active key leaves no signer: `Sign`
/// answers Unavailable until the replacement arrives.
pub fn without_revoked(state: &SetState, revoked: &[String]) -> SetState {
    let mut s = state.clone();
    s.keys.retain(|r| !revoked.contains(&r.kid));
    s
}

/// The set's token lifetime in seconds (`spec.maxTokenLifetime`, required for a signer set),
/// through the operator's own validation of the spec.
pub fn token_lifetime(set: &str, sks: &SigningKeySet) -> Result<i64, SignerError> {
    let bad = |why: String| SignerError::Set {
        set: set.into(),
        why,
    };
    let settings = crate::core::plan::validate(&sks.spec, None).map_err(|e| bad(e.to_string()))?;
    let lifetime = settings.max_token_lifetime.ok_or_else(|| {
        bad("spec.maxTokenLifetime is not set; the API server's signer needs it (Metadata)".into())
    })?;
    Ok(lifetime.num_seconds())
}

/// What to do with one version of the internal Secret: the new document and snapshot to
/// serve, `Ok(None)` when it changes nothing, or why it is refused.
pub fn next(
    opts: &Options,
    current: Option<&Current>,
    secret: &Secret,
    policy: &Policy,
) -> Result<Option<(Current, Snapshot)>, SignerError> {
    let lifetime_seconds = policy.lifetime_seconds;
    let set = opts.set();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(STATE_KEY))
        .ok_or(crate::core::state::StateError::Missing)?;
    let text = std::str::from_utf8(&bytes.0)
        .map_err(|_| crate::core::state::StateError::Parse("not UTF-8".into()))?;
    if let Some(c) = current
        && c.doc.state.expose() == text
        && c.doc.max_token_lifetime_seconds == lifetime_seconds
        && c.doc.revoked_key_ids == policy.revoked
    {
        return Ok(None);
    }
    let state = SetState::from_bytes(text.as_bytes())?;
    if let Some(c) = current {
        file::check_progress(&c.state, &state).map_err(SignerError::Rollback)?;
    }
    let snap = Snapshot::new(
        &set,
        &without_revoked(&state, &policy.revoked),
        lifetime_seconds,
    )?;
    let doc = StateFile {
        version: FILE_VERSION,
        set,
        max_token_lifetime_seconds: lifetime_seconds,
        resource_version: secret.metadata.resource_version.clone(),
        revoked_key_ids: policy.revoked.clone(),
        state: Sensitive::new(zeroize::Zeroizing::new(text.to_string())),
    };
    Ok(Some((Current { doc, state }, snap)))
}

/// One event of the signer's two watches.
enum Seen {
    Secret(Box<Secret>),
    Set(Box<SigningKeySet>),
}

/// A watch event with its object wrapped as one of [`Seen`].
fn seen<K>(ev: watcher::Event<K>, wrap: impl Fn(K) -> Seen) -> watcher::Event<Seen> {
    match ev {
        watcher::Event::Apply(o) => watcher::Event::Apply(wrap(o)),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(wrap(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(wrap(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Watches the internal Secret and the SigningKeySet (each one object, by name) until the
/// process ends, writing and serving each accepted version. The set is watched, not only read
/// when the Secret changes: a revocation in its spec takes effect in the signer at once, even
/// while the operator cannot write (I10). Never returns an error: what fails is logged,
/// counted and retried.
pub async fn run(
    client: Client,
    opts: Options,
    mut current: Option<Current>,
    served: Served,
    metrics: Arc<SignerMetrics>,
) {
    let set = opts.set();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &opts.namespace);
    let sets: Api<SigningKeySet> = Api::namespaced(client, &opts.namespace);
    let name = crate::core::crd::internal_secret_name(&opts.name);
    let by_name = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
    let secret_events = watcher(secrets, by_name(&name))
        .default_backoff()
        .map(|ev| ev.map(|e| seen(e, |s| Seen::Secret(Box::new(s)))));
    let set_events = watcher(sets, by_name(&opts.name))
        .default_backoff()
        .map(|ev| ev.map(|e| seen(e, |s| Seen::Set(Box::new(s)))));
    let mut events = futures::stream::select(secret_events, set_events).boxed();
    let (mut secret, mut policy): (Option<Box<Secret>>, Option<Result<Policy, SignerError>>) =
        (None, None);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(
                watcher::Event::Apply(Seen::Secret(s)) | watcher::Event::InitApply(Seen::Secret(s)),
            ) => secret = Some(s),
            Ok(watcher::Event::Apply(Seen::Set(s)) | watcher::Event::InitApply(Seen::Set(s))) => {
                policy = Some(Policy::of(&set, &s));
                // A spec the signer refuses (its lifetime) still revokes: the keys it names
                // stop being served at once, from memory, whatever else is wrong with it.
                if let (Some(Err(_)), Some(c)) = (&policy, &current)
                    && !s.spec.revoked_key_ids.is_empty()
                    && let Ok(snap) = Snapshot::new(
                        &set,
                        &without_revoked(&c.state, &s.spec.revoked_key_ids),
                        c.doc.max_token_lifetime_seconds,
                    )
                {
                    tracing::warn!(set = %set, active = snap.active_kid().unwrap_or("-"), "the set's spec is refused; its revoked keys are no longer served");
                    served.set(snap);
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                // Never drop keys because an object vanished: the API server would refuse
                // every token. The file keeps serving; the operator recreates the Secret.
                tracing::warn!(set = %set, secret = %name, "the internal Secret or the SigningKeySet was deleted; serving the state file unchanged");
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                metrics.sync_errors.inc();
                tracing::warn!(set = %set, error = %e, "watching the internal Secret or the SigningKeySet failed; serving the state file, retrying");
                continue;
            }
        }
        let (Some(secret), Some(policy)) = (&secret, &policy) else {
            continue;
        };
        let outcome = match policy {
            Ok(p) => next(&opts, current.as_ref(), secret, p),
            Err(e) => Err(SignerError::Set {
                set: set.clone(),
                why: e.to_string(),
            }),
        };
        match outcome {
            Ok(None) => {}
            Ok(Some((c, snap))) => {
                if let Err(e) = file::write(&opts.state_file, &c.doc) {
                    // Not served before it is on disk: a restart must not go back to an older
                    // state than the API server has seen signatures from.
                    metrics.refused.inc();
                    tracing::error!(set = %set, error = %e, "writing the state file failed; still serving the previous state");
                    continue;
                }
                tracing::info!(
                    set = %set,
                    active = snap.active_kid().unwrap_or("-"),
                    keys = ?snap.kids(),
                    resource_version = c.doc.resource_version.as_deref().unwrap_or(""),
                    "serving a new state"
                );
                served.set(snap);
                current = Some(c);
            }
            Err(e) => {
                metrics.refused.inc();
                tracing::error!(set = %set, error = %e, "refused the internal Secret's state; still serving the previous state");
                continue;
            }
        }
        metrics.last_sync.set(chrono::Utc::now().timestamp());
    }
}
