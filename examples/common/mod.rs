//! What the benchmark helpers (`bench_scale`, `bench_abuse`) share.

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

/// The `p` quantile (0.0–1.0) of `v`, nearest rank; NaN when empty.
pub fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_ns(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await;
}

/// How late key `kid` was published at `seen`, in ms: from the instant its generation was
/// scheduled (the key active when it was created + `interval - pre_publish`), read from the
/// operator's full-precision state (`state.json` of the internal Secret). `None` for a key
/// with no key active before it (a first key).
pub fn publication_lag_ms(
    state: &serde_json::Value,
    kid: &str,
    seen: chrono::DateTime<chrono::Utc>,
    interval_minus_pre_publish: chrono::Duration,
) -> Option<f64> {
    let keys = state["keys"].as_array()?;
    let rec = keys.iter().find(|r| r["kid"] == kid)?;
    let created: chrono::DateTime<chrono::Utc> = rec["createdAt"].as_str()?.parse().ok()?;
    let prev = keys
        .iter()
        .filter_map(|r| {
            r["activatedAt"]
                .as_str()
                .and_then(|a| a.parse::<chrono::DateTime<chrono::Utc>>().ok())
        })
        .filter(|a| *a <= created)
        .max()?;
    let scheduled = prev + interval_minus_pre_publish;
    Some((seen - scheduled).num_microseconds()? as f64 / 1e3)
}
