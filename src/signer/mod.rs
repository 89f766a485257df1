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
//! docs/cluster-signer.md explains the design and how to run it.

pub mod file;
pub mod proto;
pub mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::core::crd::Algorithm;
use crate::core::keys::KeyPair;
use crate::core::state::{KeyState, SetState};

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

/// What the signer serves, built from one state: the Active key and every public key.
pub struct Snapshot {
    /// NAMESPACE/NAME of the set.
    pub set: String,
    /// The signing key, if the set has an Active key.
    active: Option<KeyPair>,
    /// Every key, SPKI DER, in the state's order.
    keys: Vec<proto::Key>,
    /// When the state last changed (its newest lifecycle time).
    pub data_timestamp: DateTime<Utc>,
    /// Seconds; `Metadata`'s answer.
    pub max_token_lifetime_seconds: i64,
    /// Keys per lifecycle state, for the metrics.
    counts: [(KeyState, i64); 4],
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("set", &self.set)
            .field("active", &self.active.as_ref().map(KeyPair::kid))
            .field(
                "keys",
                &self.keys.iter().map(|k| &k.key_id).collect::<Vec<_>>(),
            )
            .field("data_timestamp", &self.data_timestamp)
            .finish()
    }
}

impl Snapshot {
    /// Builds what to serve from a parsed state. Refused: an Active key of an algorithm the
    /// API server does not accept, a lifetime under 10 minutes.
    pub fn new(
        set: &str,
        state: &SetState,
        max_token_lifetime_seconds: i64,
    ) -> Result<Snapshot, SignerError> {
        if max_token_lifetime_seconds < MIN_TOKEN_LIFETIME_SECONDS {
            return Err(SignerError::Set {
                set: set.into(),
                why: format!(
                    "spec.maxTokenLifetime is {max_token_lifetime_seconds}s; the API server needs at least {MIN_TOKEN_LIFETIME_SECONDS}s (10m)"
                ),
            });
        }
        let mut active = None;
        let mut keys = Vec::with_capacity(state.keys.len());
        let mut counts = KeyState::ALL.map(|s| (s, 0i64));
        for r in &state.keys {
            let bad = |why: String| SignerError::Key {
                kid: r.kid.clone(),
                why,
            };
            let m = r
                .public_jwk
                .as_object()
                .ok_or_else(|| bad("public JWK is not an object".into()))?;
            let public = crate::core::keys::public_from_jwk(m)
                .map_err(|e| bad(format!("public JWK {e}")))?;
            keys.push(proto::Key {
                key_id: r.kid.clone(),
                key: crate::core::keys::spki_der(&public),
                exclude_from_oidc_discovery: false,
            });
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == r.state()) {
                c.1 += 1;
            }
            if r.state() == KeyState::Active {
                if !SIGNER_ALGORITHMS.contains(&r.alg) {
                    return Err(SignerError::Set {
                        set: set.into(),
                        why: format!(
                            "its Active key is {}; the API server accepts RS256, ES256 and ES384 only",
                            r.alg
                        ),
                    });
                }
                let pem = r
                    .private_pem
                    .as_ref()
                    .ok_or_else(|| bad("the Active key has no private key".into()))?;
                active = Some(
                    KeyPair::from_pkcs8_pem(r.alg, pem.expose()).map_err(|e| bad(e.to_string()))?,
                );
            }
        }
        Ok(Snapshot {
            set: set.into(),
            active,
            keys,
            data_timestamp: file::newest_time(state).unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
            max_token_lifetime_seconds,
            counts,
        })
    }

    /// The kid of the signing key.
    pub fn active_kid(&self) -> Option<&str> {
        self.active.as_ref().map(KeyPair::kid)
    }

    /// Every key's kid, in the state's order.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.key_id.as_str()).collect()
    }
}

/// Label set of one gRPC call's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `Sign`, `FetchKeys` or `Metadata`.
    pub method: String,
    /// The gRPC status code name (`OK`, `Unavailable`, ...).
    pub code: String,
}

/// Label set of a key state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyStateLabels {
    /// Pending, Active, Retired or VerificationOnly.
    pub state: String,
}

/// The signer's metrics (`/metrics` on `--metrics-addr`).
pub struct SignerMetrics {
    registry: Registry,
    /// gRPC calls by method and status code.
    pub calls: Family<CallLabels, Counter>,
    /// Time to answer `Sign` (seconds).
    pub sign_seconds: Histogram,
    /// Keys served by state.
    pub keys: Family<KeyStateLabels, Gauge>,
    /// Unix time of the served state's newest lifecycle change.
    pub data_timestamp: Gauge,
    /// Unix time the state was last confirmed from the API server.
    pub last_sync: Gauge,
    /// Failed attempts to read the set from the API server.
    pub sync_errors: Counter,
    /// States refused (older than the one served, or unusable).
    pub refused: Counter,
}

impl Default for SignerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SignerMetrics {
    /// A registry with every signer metric, prefixed `keyturn_signer`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keyturn_signer");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "requests",
            "gRPC calls answered, by method and status code",
            calls.clone(),
        );
        let sign_seconds =
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25]);
        registry.register(
            "sign_duration_seconds",
            "Time to answer Sign",
            sign_seconds.clone(),
        );
        let keys = Family::<KeyStateLabels, Gauge>::default();
        registry.register("keys", "Keys served by FetchKeys, by state", keys.clone());
        let data_timestamp = Gauge::default();
        registry.register(
            "data_timestamp_seconds",
            "Unix time of the served state's newest lifecycle change",
            data_timestamp.clone(),
        );
        let last_sync = Gauge::default();
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time the served state was last confirmed from the API server (0: not since start)",
            last_sync.clone(),
        );
        let sync_errors = Counter::default();
        registry.register(
            "sync_errors",
            "Failed reads of the set from the API server",
            sync_errors.clone(),
        );
        let refused = Counter::default();
        registry.register(
            "refused_states",
            "States not served: older than the one served, or unusable",
            refused.clone(),
        );
        SignerMetrics {
            registry,
            calls,
            sign_seconds,
            keys,
            data_timestamp,
            last_sync,
            sync_errors,
            refused,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    fn served(&self, s: &Snapshot) {
        for (state, n) in s.counts {
            self.keys
                .get_or_create(&KeyStateLabels {
                    state: state.as_str().into(),
                })
                .set(n);
        }
        self.data_timestamp.set(s.data_timestamp.timestamp());
    }

    fn call(&self, method: &str, code: tonic::Code) {
        self.calls
            .get_or_create(&CallLabels {
                method: method.into(),
                code: format!("{code:?}"),
            })
            .inc();
    }
}

/// The snapshot being served, swapped whole when the state changes.
#[derive(Clone)]
pub struct Served {
    current: Arc<tokio::sync::watch::Sender<Option<Arc<Snapshot>>>>,
    metrics: Arc<SignerMetrics>,
}

impl Served {
    /// Nothing served yet.
    pub fn new(metrics: Arc<SignerMetrics>) -> Self {
        Served {
            current: Arc::new(tokio::sync::watch::Sender::new(None)),
            metrics,
        }
    }

    /// The snapshot now served.
    pub fn get(&self) -> Option<Arc<Snapshot>> {
        self.current.borrow().clone()
    }

    /// Serves `s` from now on.
    pub fn set(&self, s: Snapshot) {
        self.metrics.served(&s);
        self.current.send_replace(Some(Arc::new(s)));
    }

    /// Waits until there is something to serve.
    pub async fn ready(&self) {
        let mut rx = self.current.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = rx.wait_for(Option::is_some).await;
    }
}

/// The gRPC service.
pub struct Service {
    served: Served,
    refresh_hint: Duration,
    metrics: Arc<SignerMetrics>,
}

impl Service {
    /// A service answering from `served`.
    pub fn new(served: Served, refresh_hint: Duration, metrics: Arc<SignerMetrics>) -> Self {
        Service {
            served,
            refresh_hint,
            metrics,
        }
    }

    fn snapshot(&self) -> Result<Arc<Snapshot>, tonic::Status> {
        self.served
            .get()
            .ok_or_else(|| tonic::Status::unavailable("keyturn signer has no state yet"))
    }

    /// Signs base64url claims with the Active key: (header, signature), both base64url.
    pub fn sign_claims(&self, claims: &str) -> Result<(String, String), tonic::Status> {
        if claims.is_empty()
            || !claims
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(tonic::Status::invalid_argument(
                "claims must be non-empty base64url without padding",
            ));
        }
        let snap = self.snapshot()?;
        let key = snap.active.as_ref().ok_or_else(|| {
            tonic::Status::unavailable(format!("SigningKeySet {} has no Active key yet", snap.set))
        })?;
        // serde_json sorts the members: {"alg","kid","typ"}, exactly what the API server allows.
        let header = json!({"alg": key.alg().as_str(), "kid": key.kid(), "typ": "JWT"});
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("JSON of strings"));
        let input = format!("{header}.{claims}");
        let sig = key
            .sign_jws(input.as_bytes())
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok((header, URL_SAFE_NO_PAD.encode(sig)))
    }

    /// Every key to verify with.
    pub fn keys(&self) -> Result<proto::FetchKeysResponse, tonic::Status> {
        let snap = self.snapshot()?;
        Ok(proto::FetchKeysResponse {
            keys: snap.keys.clone(),
            data_timestamp: Some(prost_types::Timestamp {
                seconds: snap.data_timestamp.timestamp(),
                nanos: snap.data_timestamp.timestamp_subsec_nanos() as i32,
            }),
            refresh_hint_seconds: self.refresh_hint.as_secs().max(1) as i64,
        })
    }
}

fn answer<T>(
    metrics: &SignerMetrics,
    method: &str,
    r: Result<T, tonic::Status>,
) -> Result<tonic::Response<T>, tonic::Status> {
    match r {
        Ok(v) => {
            metrics.call(method, tonic::Code::Ok);
            Ok(tonic::Response::new(v))
        }
        Err(e) => {
            metrics.call(method, e.code());
            tracing::warn!(method, code = ?e.code(), error = e.message(), "signer call failed");
            Err(e)
        }
    }
}

#[tonic::async_trait]
impl proto::ExternalJWTSigner for Service {
    async fn sign(
        &self,
        request: tonic::Request<proto::SignJwtRequest>,
    ) -> Result<tonic::Response<proto::SignJwtResponse>, tonic::Status> {
        let started = Instant::now();
        let r = self
            .sign_claims(&request.get_ref().claims)
            .map(|(header, signature)| proto::SignJwtResponse { header, signature });
        self.metrics
            .sign_seconds
            .observe(started.elapsed().as_secs_f64());
        answer(&self.metrics, "Sign", r)
    }

    async fn fetch_keys(
        &self,
        _: tonic::Request<proto::FetchKeysRequest>,
    ) -> Result<tonic::Response<proto::FetchKeysResponse>, tonic::Status> {
        answer(&self.metrics, "FetchKeys", self.keys())
    }

    async fn metadata(
        &self,
        _: tonic::Request<proto::MetadataRequest>,
    ) -> Result<tonic::Response<proto::MetadataResponse>, tonic::Status> {
        let r = self.snapshot().map(|s| proto::MetadataResponse {
            max_token_expiration_seconds: s.max_token_lifetime_seconds,
        });
        answer(&self.metrics, "Metadata", r)
    }
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

/// Binds the socket: a stale socket file from an earlier run is replaced (anything else at
/// the path is refused), and only the owner may connect (mode 0600).
pub fn bind(path: &std::path::Path) -> Result<tokio::net::UnixListener, SignerError> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let err = |why: String| SignerError::File {
        path: path.into(),
        why,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| err(format!("removing the old socket: {e}")))?
        }
        Ok(_) => {
            return Err(err(
                "exists and is not a socket; refusing to replace it".into()
            ));
        }
        Err(_) => {}
    }
    // The socket is created under a umask that leaves it 0600 from its first instant: no one
    // else can connect before the chmod below (which only repeats it). The umask is the
    // process's; the signer binds once, at start.
    // SAFETY: umask(2) only swaps the process's file-creation mask; it cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the mask that was in force.
    unsafe { libc::umask(old) };
    let l = bound.map_err(|e| err(format!("binding: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(format!("chmod 0600: {e}")))?;
    Ok(l)
}

/// Serves the gRPC API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::UnixListener,
    service: Service,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(proto::ExternalJWTSignerServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
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
