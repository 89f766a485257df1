//! The signer's metrics (`/metrics` on `--metrics-addr`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::snapshot::Snapshot;

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

    pub(super) fn served(&self, s: &Snapshot) {
        for (state, n) in s.counts {
            self.keys
                .get_or_create(&KeyStateLabels {
                    state: state.as_str().into(),
                })
                .set(n);
        }
        self.data_timestamp.set(s.data_timestamp.timestamp());
    }

    pub(super) fn call(&self, method: &str, code: tonic::Code) {
        self.calls
            .get_or_create(&CallLabels {
                method: method.into(),
                code: format!("{code:?}"),
            })
            .inc();
    }
}
