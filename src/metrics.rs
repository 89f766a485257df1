//! Prometheus metrics (text format via `prometheus-client`).

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use chrono::Duration;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::{KeyState, SetState};

/// Label set naming one SigningKeySet.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetLabels {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Label set with a key state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Pending, Active or Retired.
    pub state: String,
}

/// Label set of a reason (`Ready` reasons, errors, transitions).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The reason.
    pub reason: String,
}

/// Label set of the kind of object written (`internal_secret`, `signing_secret`,
/// `configmap`, `configmap_delete`, `status`, `finalizer`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    /// What was written.
    pub object: String,
}

/// Label set of an HTTP route (`jwks`, `discovery`, `not_found`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route.
    pub route: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ReasonLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    writes: Family<ObjectLabels, Counter>,
    transitions: Family<ReasonLabels, Counter>,
    keys: Family<StateLabels, Gauge>,
    next_rotation: Family<SetLabels, Gauge<f64, AtomicU64>>,
    last_publish: Gauge<f64, AtomicU64>,
    http: Family<RouteLabels, Counter>,
    leader: Gauge,
    observed: Mutex<std::collections::BTreeSet<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every keyturn metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keyturn");
        let m = Metrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            refusals: Family::default(),
            writes: Family::default(),
            transitions: Family::default(),
            keys: Family::default(),
            next_rotation: Family::default(),
            last_publish: Gauge::default(),
            http: Family::default(),
            leader: Gauge::default(),
            observed: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciles started", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            m.errors.clone(),
        );
        registry.register(
            "not_ready",
            "Reconciles that reported Ready=False, by reason",
            m.refusals.clone(),
        );
        registry.register("writes", "API writes, by object", m.writes.clone());
        registry.register(
            "transitions",
            "Key lifecycle transitions, by reason",
            m.transitions.clone(),
        );
        registry.register("keys", "Keys by set and state", m.keys.clone());
        registry.register(
            "seconds_until_next_transition",
            "Seconds until the set's next planned transition",
            m.next_rotation.clone(),
        );
        registry.register(
            "last_publish_timestamp_seconds",
            "Unix time of the last JWKS write",
            m.last_publish.clone(),
        );
        registry.register("http_requests", "HTTP requests, by route", m.http.clone());
        registry.register(
            "leader",
            "1 when this replica holds the Lease and runs the controller",
            m.leader.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    /// Counts a reconcile.
    pub fn reconcile_started(&self) {
        self.reconciles.inc();
    }
    /// Counts a failed reconcile.
    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }
    /// Counts a Ready=False outcome.
    pub fn refused(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }
    /// Counts one API write.
    pub fn write(&self, object: &str) {
        self.writes
            .get_or_create(&ObjectLabels {
                object: object.into(),
            })
            .inc();
    }
    /// Counts a lifecycle transition.
    pub fn transition(&self, reason: &str) {
        self.transitions
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }
    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
    /// Counts an HTTP request.
    pub fn http(&self, route: &str) {
        self.http
            .get_or_create(&RouteLabels {
                route: route.into(),
            })
            .inc();
    }
    /// Records a JWKS write now.
    pub fn published(&self) {
        self.last_publish
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }

    /// Records a successful reconcile's view of a set and resets its error streak.
    pub fn observe_set(
        &self,
        namespace: &str,
        name: &str,
        state: &SetState,
        until_next: Option<Duration>,
    ) {
        for st in KeyState::ALL {
            let n = state.keys.iter().filter(|r| r.state() == st).count();
            self.keys
                .get_or_create(&StateLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    state: st.as_str().into(),
                })
                .set(n as i64);
        }
        let labels = SetLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        match until_next {
            Some(d) => {
                self.next_rotation
                    .get_or_create(&labels)
                    .set(d.num_milliseconds() as f64 / 1000.0);
            }
            None => {
                self.next_rotation.remove(&labels);
            }
        }
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.into(), name.into()));
    }

    /// Drops every per-set series (and the error streak) of a set that is gone, so clusters
    /// that create and delete sets do not grow `/metrics` without bound.
    pub fn forget_set(&self, namespace: &str, name: &str) {
        for st in KeyState::ALL {
            self.keys.remove(&StateLabels {
                namespace: namespace.into(),
                name: name.into(),
                state: st.as_str().into(),
            });
        }
        self.next_rotation.remove(&SetLabels {
            namespace: namespace.into(),
            name: name.into(),
        });
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.into(), name.into()));
    }

    /// Sets that have per-set series: (namespace, name).
    pub fn sets(&self) -> Vec<(String, String)> {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_set_leaves_no_series() {
        let m = Metrics::new();
        m.observe_set("a", "one", &SetState::new(), Some(Duration::seconds(5)));
        m.observe_set("a", "two", &SetState::new(), None);
        assert!(m.encode().contains("name=\"one\""));
        m.forget_set("a", "one");
        let text = m.encode();
        assert!(!text.contains("name=\"one\""), "{text}");
        assert!(text.contains("name=\"two\""), "{text}");
        assert_eq!(m.sets(), vec![("a".to_string(), "two".to_string())]);
    }
}
