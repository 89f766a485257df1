//! `keyturn status NAMESPACE/NAME`: a readable view of one set — each key's state and a
//! timeline relative to now, so the overlap windows are visible — in 80 columns, or JSON.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::core::crd::SigningKeySet;

fn parse(t: &Option<String>) -> Option<DateTime<Utc>> {
    t.as_ref()?.parse().ok()
}

/// A duration relative to now, compact: `-3d4h` (past), `in 29d` (future), `now`.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    if secs.abs() < 1 {
        return "now".into();
    }
    let a = secs.unsigned_abs();
    let (d, h, m, s) = (a / 86_400, (a % 86_400) / 3_600, (a % 3_600) / 60, a % 60);
    let text = if d > 0 {
        if h > 0 {
            format!("{d}d{h}h")
        } else {
            format!("{d}d")
        }
    } else if h > 0 {
        if m > 0 {
            format!("{h}h{m}m")
        } else {
            format!("{h}h")
        }
    } else if m > 0 {
        if s > 0 {
            format!("{m}m{s}s")
        } else {
            format!("{m}m")
        }
    } else {
        format!("{s}s")
    };
    if secs < 0 {
        format!("-{text}")
    } else {
        format!("in {text}")
    }
}

fn short(kid: &str) -> String {
    if kid.chars().count() > 14 {
        format!("{}…", kid.chars().take(13).collect::<String>())
    } else {
        kid.to_string()
    }
}

/// How `status` prints a set (`-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table in 80 columns (kids shortened).
    Text,
    /// The table with every kid in full (wider than 80 columns), to paste into `revoke`.
    Wide,
    /// The view as JSON (pretty).
    Json,
    /// The view as YAML.
    Yaml,
}

/// The view as `keyturn status` and `kubectl keyturn status` print it.
pub fn render(set: &SigningKeySet, now: DateTime<Utc>, format: Format) -> String {
    match format {
        Format::Json => {
            let mut out = serde_json::to_string_pretty(&render_json(set, now))
                .expect("a JSON value serializes");
            out.push('\n');
            out
        }
        Format::Yaml => {
            serde_norway::to_string(&render_json(set, now)).expect("a JSON value serializes")
        }
        Format::Text => render_text(set, now, false),
        Format::Wide => render_text(set, now, true),
    }
}

/// The text view: every line at most 80 columns, or with `wide` every kid in full.
pub fn render_text(set: &SigningKeySet, now: DateTime<Utc>, wide: bool) -> String {
    let name = format!(
        "{}/{}",
        set.metadata.namespace.as_deref().unwrap_or(""),
        set.metadata.name.as_deref().unwrap_or("")
    );
    let status = set.status.clone().unwrap_or_default();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let mut out = String::new();
    out.push_str(&format!(
        "{name}  {}  interval {} · prePublish {} · overlap {}\n",
        set.spec.algorithm,
        set.spec.rotation.interval,
        set.spec.rotation.pre_publish,
        set.spec.rotation.overlap
    ));
    match ready {
        Some(c) => out.push_str(&format!("Ready={} ({})\n", c.status, c.reason)),
        None => out.push_str("Ready=Unknown (not reconciled yet)\n"),
    }
    if let Some(c) = ready.filter(|c| c.status != "True") {
        let mut msg = c.message.clone();
        if msg.chars().count() > 78 {
            msg = format!("{}…", msg.chars().take(77).collect::<String>());
        }
        out.push_str(&format!("  {msg}\n"));
    }
    if let Some(next) = parse(&status.next_rotation_time) {
        out.push_str(&format!("next rotation {}\n", relative(next, now)));
    }
    out.push('\n');
    let kid_width = if wide { 43 } else { 15 };
    let row = |cells: [&str; 6]| {
        let line = format!(
            "{:<kid_width$} {:<10} {:<10} {:<10} {:<10} {:<10}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
        );
        format!("{}\n", line.trim_end())
    };
    out.push_str(&row([
        "KID",
        "STATE",
        "PUBLISHED",
        "ACTIVATED",
        "RETIRED",
        "REMOVED",
    ]));
    for k in &status.keys {
        let col = |t: &Option<String>| {
            parse(t)
                .map(|t| relative(t, now))
                .unwrap_or_else(|| "-".into())
        };
        // "VerificationOnly" shortened to fit the column.
        let state = if k.state == "VerificationOnly" {
            "VerifyOnly"
        } else {
            &k.state
        };
        let kid = if wide { k.kid.clone() } else { short(&k.kid) };
        out.push_str(&row([
            &kid,
            state,
            &col(&k.published_at),
            &col(&k.activated_at),
            &col(&k.retired_at),
            &col(&k.remove_at),
        ]));
    }
    if status.keys.is_empty() {
        out.push_str("(no keys yet)\n");
    }
    out
}

/// The JSON view: absolute times and seconds relative to now, full kids.
pub fn render_json(set: &SigningKeySet, now: DateTime<Utc>) -> Value {
    let status = set.status.clone().unwrap_or_default();
    let rel = |t: &Option<String>| parse(t).map(|t| (t - now).num_seconds());
    json!({
        "namespace": set.metadata.namespace,
        "name": set.metadata.name,
        "algorithm": set.spec.algorithm.as_str(),
        "rotation": set.spec.rotation,
        "ready": status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| json!({"status": c.status, "reason": c.reason, "message": c.message})),
        "activeKeyId": status.active_key_id,
        "nextRotationTime": status.next_rotation_time,
        "secondsUntilNextRotation": rel(&status.next_rotation_time),
        "keys": status.keys.iter().map(|k| json!({
            "kid": k.kid, "algorithm": k.algorithm, "state": k.state,
            "publishedAt": k.published_at, "activatedAt": k.activated_at, "retiredAt": k.retired_at, "removeAt": k.remove_at,
            "secondsSincePublished": rel(&k.published_at).map(|s| -s),
            "secondsUntilRemoved": rel(&k.remove_at),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SigningKeySet {
        serde_json::from_value(json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
            "metadata": {"name": "auth", "namespace": "identity"},
            "spec": {"algorithm": "ES256", "rotation": {"interval": "720h", "prePublish": "1h", "overlap": "24h"}},
            "status": {
                "activeKeyId": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
                "nextRotationTime": "2026-12-28T10:00:00Z",
                "keys": [
                    {"kid": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs", "algorithm": "ES256", "state": "Active",
                     "publishedAt": "2026-11-28T09:00:00Z", "activatedAt": "2026-11-28T10:00:00Z"},
                    {"kid": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k", "algorithm": "RS256", "state": "Retired",
                     "publishedAt": "2026-10-29T09:00:00Z", "activatedAt": "2026-10-29T10:00:00Z",
                     "retiredAt": "2026-11-28T10:00:00Z", "removeAt": "2026-11-29T10:00:00Z"},
                    {"kid": "legacy-2025", "algorithm": "RS256", "state": "VerificationOnly",
                     "publishedAt": "2026-11-28T09:00:00Z", "removeAt": "2026-12-15T00:00:00Z"}
                ],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KeysPublished", "message": "ok", "lastTransitionTime": "2026-11-28T10:00:00Z"}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn relative_times_read_naturally() {
        let now: DateTime<Utc> = "2026-11-28T12:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(relative(at("2026-11-28T10:00:00Z"), now), "-2h");
        assert_eq!(relative(at("2026-11-29T10:00:00Z"), now), "in 22h");
        assert_eq!(relative(at("2026-12-28T10:00:00Z"), now), "in 29d22h");
        assert_eq!(relative(at("2026-11-28T12:01:30Z"), now), "in 1m30s");
        assert_eq!(relative(now, now), "now");
    }

    #[test]
    fn text_view_fits_80_columns_and_shows_the_overlap() {
        let now: DateTime<Utc> = "2026-11-28T12:00:00Z".parse().unwrap();
        let text = render_text(&sample(), now, false);
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        assert!(text.contains("identity/auth  ES256"), "{text}");
        assert!(text.contains("Ready=True (KeysPublished)"));
        assert!(text.contains("next rotation in 29d22h"));
        let retired = text.lines().find(|l| l.contains("Retired")).unwrap();
        assert!(
            retired.contains("-2h") && retired.contains("in 22h"),
            "retired 2h ago, removed in 22h: {retired}"
        );
        let legacy = text.lines().find(|l| l.starts_with("legacy-2025")).unwrap();
        assert!(
            legacy.contains("VerifyOnly") && legacy.contains("in 16d12h"),
            "a verification-only key until its time: {legacy}"
        );
    }

    /// `-o wide` prints every kid in full (what `revoke` takes), `-o yaml` the JSON view.
    #[test]
    fn wide_and_yaml_views_have_full_kids() {
        let now: DateTime<Utc> = "2026-11-28T12:00:00Z".parse().unwrap();
        let kid = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        assert!(!render(&sample(), now, Format::Text).contains(kid));
        let wide = render(&sample(), now, Format::Wide);
        assert!(
            wide.lines()
                .any(|l| l.starts_with(kid) && l.contains("Active")),
            "{wide}"
        );
        let yaml: serde_json::Value =
            serde_norway::from_str(&render(&sample(), now, Format::Yaml)).unwrap();
        assert_eq!(yaml, render_json(&sample(), now));
    }

    #[test]
    fn json_view_has_full_kids_and_relative_seconds() {
        let now: DateTime<Utc> = "2026-11-28T12:00:00Z".parse().unwrap();
        let v = render_json(&sample(), now);
        assert_eq!(
            v["keys"][0]["kid"],
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(v["keys"][1]["secondsUntilRemoved"], 22 * 3600);
        assert_eq!(v["secondsUntilNextRotation"], (29 * 24 + 22) * 3600);
    }
}
