//! The `ExternalJWTSigner` gRPC service: `Sign`, `FetchKeys` and `Metadata`, answered from
//! the snapshot being served ([`Served`], swapped whole when the state changes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::metrics::SignerMetrics;
use super::proto;
use super::snapshot::Snapshot;

/// The gRPC service.
pub struct Service {
    pub(super) served: Served,
    refresh_hint: Duration,
    pub(super) metrics: Arc<SignerMetrics>,
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
