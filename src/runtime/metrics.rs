//! Prometheus metrics (text format via `prometheus-client`).

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::core::state::{KeyState, SetState};

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

/// Label set of an HTTP route (`jwks`, `discovery`, `healthz`, `readyz`, `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route.
    pub route: String,
}

/// Label set of an answered HTTP request: its route and status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route (as [`RouteLabels`]).
    pub route: String,
    /// The HTTP status code, e.g. `200`, `304`, `404`, `503`.
    pub code: String,
}

/// Label set of one condition of a set in one status (`True`, `False`, `Unknown`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// Namespace of the SigningKeySet.
    pub namespace: String,
    /// Name of the SigningKeySet.
    pub name: String,
    /// The condition's type (`Ready`, `FanOut`, `Discovery`, ...).
    pub condition: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
}

/// Label set of `keyturn_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// keyturn's version (Cargo.toml).
    pub version: String,
}

/// The condition types a set's status may carry, each exported in every status.
const CONDITIONS: [&str; 5] = ["Ready", "FanOut", "Discovery", "Reconciling", "Stalled"];

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ReasonLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    writes: Family<ObjectLabels, Counter>,
    transitions: Family<ReasonLabels, Counter>,
    keys: Family<StateLabels, Gauge>,
    next_transition: Family<SetLabels, Gauge<f64, AtomicU64>>,
    conditions: Family<ConditionLabels, Gauge>,
    last_publish: Gauge<f64, AtomicU64>,
    http: Family<RequestLabels, Counter>,
    http_seconds: Family<RouteLabels, prometheus_client::metrics::histogram::Histogram>,
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
            next_transition: Family::default(),
            conditions: Family::default(),
            last_publish: Gauge::default(),
            http: Family::default(),
            http_seconds: Family::new_with_constructor(|| {
                prometheus_client::metrics::histogram::Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ])
            }),
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
            "next_transition_timestamp_seconds",
            "Unix time the set's next planned transition is due (in the past while one is held back), set by every reconcile that knows the set's state, refusals included",
            m.next_transition.clone(),
        );
        registry.register(
            "set_condition",
            "1 for the status each condition of each set has now, 0 for the others",
            m.conditions.clone(),
        );
        registry.register(
            "build",
            "keyturn's version",
            prometheus_client::metrics::info::Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            }),
        );
        registry.register(
            "last_publish_timestamp_seconds",
            "Unix time of the last JWKS write",
            m.last_publish.clone(),
        );
        registry.register(
            "http_requests",
            "Requests to the public endpoint, by route and status code",
            m.http.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request to the public endpoint, by route",
            m.http_seconds.clone(),
        );
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

    /// Counts a request to the public endpoint by route and status code, and how long its
    /// answer took.
    pub fn http(&self, route: &str, code: u16, took: std::time::Duration) {
        self.http
            .get_or_create(&RequestLabels {
                route: route.into(),
                code: code.to_string(),
            })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabels {
                route: route.into(),
            })
            .observe(took.as_secs_f64());
    }
    /// Records a JWKS write now.
    pub fn published(&self) {
        self.last_publish
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }

    /// Records a reconcile's view of a set's keys and when its next transition is due (any
    /// outcome that knows the state: a refusal that holds a rotation back reports the instant
    /// it was due, so an alert sees it pass).
    pub fn observe_set(
        &self,
        namespace: &str,
        name: &str,
        state: &SetState,
        next_due: Option<DateTime<Utc>>,
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
        match next_due {
            Some(t) => {
                self.next_transition
                    .get_or_create(&labels)
                    .set(t.timestamp_millis() as f64 / 1000.0);
            }
            None => {
                self.next_transition.remove(&labels);
            }
        }
        self.remember(namespace, name);
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
        self.next_transition.remove(&SetLabels {
            namespace: namespace.into(),
            name: name.into(),
        });
        for condition in CONDITIONS {
            for status in ["True", "False", "Unknown"] {
                self.conditions.remove(&ConditionLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    condition: condition.into(),
                    status: status.into(),
                });
            }
        }
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.into(), name.into()));
    }

    /// Records the conditions a set's status carries now: 1 on the status each has, 0 on the
    /// others; a condition type the status does not carry has no series.
    pub fn observe_conditions(
        &self,
        namespace: &str,
        name: &str,
        conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    ) {
        for condition in CONDITIONS {
            let now = conditions.iter().find(|c| c.type_ == condition);
            for status in ["True", "False", "Unknown"] {
                let labels = ConditionLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    condition: condition.into(),
                    status: status.into(),
                };
                match now {
                    Some(c) => {
                        self.conditions
                            .get_or_create(&labels)
                            .set(i64::from(c.status == status));
                    }
                    None => {
                        self.conditions.remove(&labels);
                    }
                }
            }
        }
        self.remember(namespace, name);
    }

    /// Notes that `namespace/name` has per-set series (for [`Metrics::forget_all_sets`]).
    fn remember(&self, namespace: &str, name: &str) {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.into(), name.into()));
    }

    /// Drops every per-set series: a replica that lost the Lease no longer reconciles, and
    /// what it last saw would go stale beside the leader's.
    pub fn forget_all_sets(&self) {
        for (namespace, name) in self.sets() {
            self.forget_set(&namespace, &name);
        }
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

    fn ready(status: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        serde_json::from_value(serde_json::json!({
            "type": "Ready", "status": status, "reason": "R", "message": "",
            "lastTransitionTime": "2026-12-07T00:00:00Z"
        }))
        .unwrap()
    }

    /// A set's conditions are 1 on the status each has now and 0 on the others; a replica
    /// that loses the Lease drops every per-set series.
    #[test]
    fn conditions_follow_the_status_and_leave_with_the_lease() {
        let m = Metrics::new();
        m.observe_conditions("a", "one", &[ready("False")]);
        let text = m.encode();
        assert!(text.contains("keyturn_set_condition{namespace=\"a\",name=\"one\",condition=\"Ready\",status=\"False\"} 1"), "{text}");
        assert!(text.contains("keyturn_set_condition{namespace=\"a\",name=\"one\",condition=\"Ready\",status=\"True\"} 0"), "{text}");
        assert!(!text.contains("condition=\"FanOut\""), "{text}");
        m.observe_conditions("a", "one", &[ready("True")]);
        assert!(
            m.encode()
                .contains("condition=\"Ready\",status=\"True\"} 1")
        );
        m.observe_set("a", "two", &SetState::new(), Some(Utc::now()));
        m.forget_all_sets();
        let text = m.encode();
        assert!(
            !text.contains("name=\"one\"") && !text.contains("name=\"two\""),
            "{text}"
        );
        assert!(text.contains("keyturn_build_info{version="), "{text}");
    }

    #[test]
    fn a_forgotten_set_leaves_no_series() {
        let m = Metrics::new();
        m.observe_set("a", "one", &SetState::new(), Some(Utc::now()));
        m.observe_conditions("a", "one", &[ready("False")]);
        m.observe_set("a", "two", &SetState::new(), None);
        assert!(m.encode().contains("name=\"one\""));
        m.forget_set("a", "one");
        let text = m.encode();
        assert!(!text.contains("name=\"one\""), "{text}");
        assert!(text.contains("name=\"two\""), "{text}");
        assert_eq!(m.sets(), vec![("a".to_string(), "two".to_string())]);
    }

    /// Every series keyturn exports, as `/metrics` shows it once each kind of event happened:
    /// name → label names (Prometheus adds `instance` and `job` when it scrapes).
    fn exported() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        let m = Metrics::new();
        m.reconcile_started();
        m.error("ApiError");
        m.refused("InvalidSpec");
        m.write("status");
        m.transition("KeyPublished");
        m.set_leader(true);
        m.http("jwks", 200, std::time::Duration::from_millis(2));
        m.published();
        let kp =
            crate::core::keys::KeyPair::generate(crate::core::crd::Algorithm::EdDSA, None).unwrap();
        let st = crate::core::plan::with_new_key(
            None,
            &kp,
            crate::core::plan::GenerateReason::First,
            None,
            chrono::Utc::now(),
        );
        m.observe_set("identity", "auth", &st, Some(chrono::Utc::now()));
        m.observe_conditions("identity", "auth", &[ready("True")]);
        let mut out: std::collections::BTreeMap<_, std::collections::BTreeSet<String>> =
            Default::default();
        for line in m.encode().lines().filter(|l| !l.starts_with('#')) {
            let (name, labels) = match line.split_once('{') {
                Some((n, rest)) => (n, rest.split_once('}').map_or("", |(l, _)| l)),
                None => (line.split_whitespace().next().unwrap_or_default(), ""),
            };
            let set = out.entry(name.to_string()).or_default();
            set.extend(["instance".to_string(), "job".to_string()]);
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                set.insert(pair.split('=').next().unwrap_or_default().to_string());
            }
        }
        out
    }

    /// The metric names a PromQL text or a series selector mentions (`keyturn_*`).
    fn named(text: &str) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("keyturn_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            out.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
        out
    }

    fn read(path: &str) -> String {
        std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn the_dashboard_and_the_alerts_name_only_metrics_keyturn_exports() {
        let exported = exported();
        let dashboard: serde_json::Value =
            serde_json::from_str(&read("charts/keyturn/files/dashboard.json")).unwrap();
        let mut queries = vec![];
        for p in dashboard["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                queries.push(t["expr"].as_str().unwrap().to_string());
            }
        }
        for v in dashboard["templating"]["list"].as_array().unwrap() {
            if let Some(q) = v["query"].as_str() {
                queries.push(q.to_string());
            }
        }
        let rules: serde_json::Value =
            serde_norway::from_str(&read("charts/keyturn/files/alerts.yaml")).unwrap();
        for g in rules["groups"].as_array().unwrap() {
            for r in g["rules"].as_array().unwrap() {
                queries.push(r["expr"].as_str().unwrap().to_string());
            }
        }
        assert!(queries.len() >= 14, "{queries:?}");
        let mut used = 0;
        for q in &queries {
            // `keyturn signer`'s own series (src/signer/metrics.rs checks those).
            for name in named(q)
                .into_iter()
                .filter(|n| !n.starts_with("keyturn_signer_"))
            {
                assert!(
                    exported.contains_key(&name),
                    "{q:?} names {name}, which keyturn does not export; it exports {:?}",
                    exported.keys()
                );
                used += 1;
            }
        }
        // Every metric keyturn exports is on the dashboard.
        let on_dashboard: std::collections::BTreeSet<String> =
            queries.iter().flat_map(|q| named(q)).collect();
        for name in exported.keys() {
            assert!(
                on_dashboard.contains(name),
                "{name} is not on the dashboard or in an alert"
            );
        }
        assert!(used > 0);
    }

    #[test]
    fn alert_tests_use_series_keyturn_exports() {
        let exported = exported();
        let tests: serde_json::Value =
            serde_norway::from_str(&read("tests/monitoring/alerts-test.yaml")).unwrap();
        let mut series = 0;
        for t in tests["tests"].as_array().unwrap() {
            for s in t["input_series"].as_array().unwrap() {
                let sel = s["series"].as_str().unwrap();
                let (name, labels) = sel.split_once('{').unwrap_or((sel, "}"));
                if !name.starts_with("keyturn_") || name.starts_with("keyturn_signer_") {
                    // Another exporter's (the "no keyturn at all" case), or `keyturn signer`'s
                    // (src/signer/tests.rs checks those).
                    continue;
                }
                let have = exported
                    .get(name)
                    .unwrap_or_else(|| panic!("{sel}: keyturn does not export {name}"));
                for pair in labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|p| !p.is_empty())
                {
                    let label = pair.split('=').next().unwrap();
                    assert!(
                        have.contains(label),
                        "{sel}: {name} has no label {label} ({have:?})"
                    );
                }
                series += 1;
            }
        }
        assert!(series >= 6);
    }
}
