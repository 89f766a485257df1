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
use crate::crd::SigningKeySet;
use crate::state::{STATE_KEY, Sensitive, SetState};

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
    let snap = Snapshot::new(&doc.set, &state, doc.max_token_lifetime_seconds)?;
    Ok(Some((Current { doc, state }, snap)))
}

/// The set's token lifetime in seconds (`spec.maxTokenLifetime`, required for a signer set),
/// through the operator's own validation of the spec.
pub fn token_lifetime(set: &str, sks: &SigningKeySet) -> Result<i64, SignerError> {
    let bad = |why: String| SignerError::Set {
        set: set.into(),
        why,
    };
    let settings = crate::plan::validate(&sks.spec, None).map_err(|e| bad(e.to_string()))?;
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
    lifetime_seconds: i64,
) -> Result<Option<(Current, Snapshot)>, SignerError> {
    let set = opts.set();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(STATE_KEY))
        .ok_or(crate::state::StateError::Missing)?;
    let text = std::str::from_utf8(&bytes.0)
        .map_err(|_| crate::state::StateError::Parse("not UTF-8".into()))?;
    if let Some(c) = current
        && c.doc.state.expose() == text
        && c.doc.max_token_lifetime_seconds == lifetime_seconds
    {
        return Ok(None);
    }
    let state = SetState::from_bytes(text.as_bytes())?;
    if let Some(c) = current {
        file::check_progress(&c.state, &state).map_err(SignerError::Rollback)?;
    }
    let snap = Snapshot::new(&set, &state, lifetime_seconds)?;
    let doc = StateFile {
        version: FILE_VERSION,
        set,
        max_token_lifetime_seconds: lifetime_seconds,
        resource_version: secret.metadata.resource_version.clone(),
        state: Sensitive::new(zeroize::Zeroizing::new(text.to_string())),
    };
    Ok(Some((Current { doc, state }, snap)))
}

/// Watches the internal Secret until the process ends, writing and serving each accepted
/// version. Never returns an error: what fails is logged, counted and retried.
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
    let name = crate::crd::internal_secret_name(&opts.name);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(secrets, cfg).default_backoff().boxed();
    while let Some(ev) = events.next().await {
        let secret = match ev {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
            Ok(watcher::Event::Delete(_)) => {
                // Never drop keys because an object vanished: the API server would refuse
                // every token. The file keeps serving; the operator recreates the Secret.
                tracing::warn!(set = %set, secret = %name, "the internal Secret was deleted; serving the state file unchanged");
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                metrics.sync_errors.inc();
                tracing::warn!(set = %set, error = %e, "watching the internal Secret failed; serving the state file, retrying");
                continue;
            }
        };
        let lifetime = match sets.get(&opts.name).await {
            Ok(sks) => token_lifetime(&set, &sks),
            Err(e) => {
                metrics.sync_errors.inc();
                tracing::warn!(set = %set, error = %e, "reading the SigningKeySet failed; serving the state file, retrying");
                continue;
            }
        };
        let outcome = lifetime.and_then(|l| next(&opts, current.as_ref(), &secret, l));
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
