//! `keyturn signer`: the Kubernetes API server's external JWT signer (KEP-740,
//! `k8s.io/externaljwt/apis/v1`), serving one SigningKeySet's keys on a Unix socket.
//!
//! - `Sign` signs with the set's Active key (RS256, ES256 or ES384: what the API server
//!   accepts); `FetchKeys` returns every Pending, Active, Retired and verification-only key;
//!   `Metadata` returns the set's `spec.maxTokenLifetime`.
//! - The signer is the API server's dependency, so it never needs the API server to serve: it
//!   serves from a local state file ([`file`]), a copy of the set's internal Secret. While the
//!   API server is reachable, [`sync`] keeps the file current from a watch of that Secret, and
//!   never moves it backwards ([`file::check_progress`]).
//!
//! - The layout: [`snapshot`] (what is served, built from a state), [`service`] (the one
//!   served now and the gRPC methods), [`metrics`], [`socket`] (binding and serving the Unix socket), [`file`] and
//!   [`sync`]; this module holds the errors, the options and [`run`], which wires them.
//!
//! docs/cluster-signer.md explains the design and how to run it.

pub mod file;
mod metrics;
pub mod proto;
mod service;
mod snapshot;
mod socket;
pub mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use metrics::{CallLabels, KeyStateLabels, SignerMetrics};
pub use service::{Served, Service};
pub use snapshot::Snapshot;
pub use socket::{bind, serve};

use crate::core::crd::Algorithm;

/// Algorithms the Kubernetes API server accepts from an external signer (its
/// `validateJWTHeader`); keyturn makes keys for these three.
pub const SIGNER_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::ES384];

/// The shortest token lifetime the API server accepts from an external signer's `Metadata`
/// (its `MinTokenAgeSec`, 10 minutes): a shorter `spec.maxTokenLifetime` is refused.
pub const MIN_TOKEN_LIFETIME_SECONDS: i64 = 600;

/// Why the signer cannot serve a state.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The state file or the internal Secret does not hold a usable state.
    #[error(transparent)]
    State(#[from] crate::core::state::StateError),
    /// A key of the state cannot be served.
    #[error("key {kid}: {why}")]
    Key {
        /// The key's kid (public).
        kid: String,
        /// What is wrong.
        why: String,
    },
    /// The set cannot back the API server's signer.
    #[error("SigningKeySet {set}: {why}")]
    Set {
        /// NAMESPACE/NAME.
        set: String,
        /// What is wrong.
        why: String,
    },
    /// The state file cannot be read or written.
    #[error("state file {path}: {why}")]
    File {
        /// Its path.
        path: PathBuf,
        /// What went wrong (never the content).
        why: String,
    },
    /// A newer state was refused because it is older than the one served.
    #[error("refused a state older than the one served: {0}")]
    Rollback(String),
}

/// How `keyturn signer` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespace of the SigningKeySet.
    pub namespace: String,
    /// Name of the SigningKeySet.
    pub name: String,
    /// The Unix socket to serve on (given to the API server as
    /// `--service-account-signing-endpoint`).
    pub socket: PathBuf,
    /// The local copy of the set's state.
    pub state_file: PathBuf,
    /// `refresh_hint_seconds` of `FetchKeys`: how soon the API server fetches keys again.
    pub refresh_hint: Duration,
}

impl Options {
    /// NAMESPACE/NAME.
    pub fn set(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Runs the signer: serves the state file at once when there is one (else waits for the
/// first state from the API server), keeps it current from the API server, and serves
/// `/metrics` and `/healthz` on `metrics_addr`, until `shutdown`.
pub async fn run(
    client: kube::Client,
    opts: Options,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: crate::runtime::shutdown::Shutdown,
) -> Result<(), SignerError> {
    let metrics = Arc::new(SignerMetrics::new());
    let served = Served::new(metrics.clone());
    let current = match sync::load(&opts) {
        Ok(Some((current, snap))) => {
            tracing::info!(
                set = %snap.set,
                active = snap.active_kid().unwrap_or("-"),
                keys = ?snap.kids(),
                "serving the state file"
            );
            served.set(snap);
            Some(current)
        }
        Ok(None) => {
            tracing::info!(set = %opts.set(), file = %opts.state_file.display(), "no state file yet: waiting for the set's state from the API server before serving");
            None
        }
        Err(e) => return Err(e),
    };
    let sync = tokio::spawn(sync::run(
        client,
        opts.clone(),
        current,
        served.clone(),
        metrics.clone(),
    ));
    let admin = metrics_listener.map(|l| {
        let (m, s) = (metrics.clone(), served.clone());
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || async move { m.encode() }),
            )
            .route(
                "/healthz",
                axum::routing::get(move || async move {
                    match s.get() {
                        Some(_) => (axum::http::StatusCode::OK, "ok"),
                        None => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no state yet"),
                    }
                }),
            );
        let stop = shutdown.clone().wait();
        tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(stop).await })
    });
    tokio::select! {
        _ = served.ready() => {}
        _ = shutdown.clone().wait() => { sync.abort(); return Ok(()); }
    }
    let listener = bind(&opts.socket)?;
    tracing::info!(socket = %opts.socket.display(), "serving the ExternalJWTSigner API");
    let service = Service::new(served, opts.refresh_hint, metrics);
    let result = serve(listener, service, shutdown.clone().wait()).await;
    sync.abort();
    if let Some(a) = admin {
        let _ = a.await;
    }
    let _ = std::fs::remove_file(&opts.socket);
    result.map_err(|e| SignerError::File {
        path: opts.socket.clone(),
        why: format!("serving: {e}"),
    })
}

#[cfg(test)]
mod tests;
