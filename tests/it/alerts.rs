//! keyturn's alerts (`charts/keyturn/files/alerts.yaml`) fed with the series a real operator
//! exports in a real stuck state, not hand-typed ones: a blocked JWKS copy holding a scheduled
//! activation back past its instant, and a spec refused at runtime. The captured `/metrics`
//! text becomes a promtool test; its only change is the clock: promtool's starts at 0, so the
//! timestamp the gauge holds is moved by the same amount as the scrape instant (what the alert
//! sees, how long before the scrape the transition was due, is kept to the second: rounded, so
//! that the alert's description is exact).

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::support;
use keyturn::core::crd::SigningKeySet;

/// Where the scrape lands on promtool's clock.
const SCRAPE_AT: f64 = 600.0;

/// The value of `keyturn_next_transition_timestamp_seconds` for `ns/name` in a scrape.
fn due_of(metrics: &str, ns: &str, name: &str) -> Option<f64> {
    let prefix =
        format!("keyturn_next_transition_timestamp_seconds{{namespace=\"{ns}\",name=\"{name}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// Every `keyturn_set_condition` and `keyturn_next_transition_timestamp_seconds` sample of the
/// scrape as promtool input series, 40 minutes long; `shift` moves the timestamps onto
/// promtool's clock.
fn series(metrics: &str, shift: f64) -> String {
    let mut out = String::new();
    for line in metrics.lines() {
        let Some((selector, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let mut v: f64 = match value.parse() {
            Ok(v) => v,
            Err(_) => continue,
        };
        if selector.starts_with("keyturn_next_transition_timestamp_seconds{") {
            v = (v + shift).round();
        } else if !selector.starts_with("keyturn_set_condition{") {
            continue;
        }
        let labelled = selector.replacen('{', "{instance=\"a\",job=\"keyturn\",", 1);
        out += &format!("      - series: '{labelled}'\n        values: '{v}x40'\n");
    }
    out
}

#[tokio::test]
async fn the_alerts_fire_on_the_series_of_a_real_stuck_set() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "alerts").await;
    let blocked = format!("{src}-b");
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": blocked}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    support::grant(&client, &blocked, &src, "auth").await;
    let op = support::Operator::start(&src);
    // A key signs 40 s; the next is published 15 s before.
    support::create_set(
        &client,
        &src,
        "auth",
        json!({"rotation": {"interval": "40s", "prePublish": "15s", "overlap": "1m"},
               "jwks": {"namespaces": [blocked]}}),
    )
    .await;
    // Refused at runtime (the reserved name): Ready=False InvalidSpec, never retried.
    support::create_set(
        &client,
        &src,
        "bad",
        json!({"secretName": "bad-keyturn-keys"}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &src);
    support::wait_condition(&sets, "auth", "Ready", "True", "KeysPublished").await;
    support::wait_condition(&sets, "bad", "Ready", "False", "InvalidSpec").await;

    // Someone else's object takes the copy's place: every write there fails from now on.
    let theirs: Api<ConfigMap> = Api::namespaced(client.clone(), &blocked);
    let foreign: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "auth-jwks"}, "data": {"jwks.json": "theirs"}}),
    )
    .unwrap();
    support::wait_for(
        "a foreign object in the copy's place",
        Duration::from_secs(20),
        || async {
            let _ = theirs.delete("auth-jwks", &DeleteParams::default()).await;
            theirs.create(&PostParams::default(), &foreign).await.ok()
        },
    )
    .await;
    support::wait_condition(&sets, "auth", "Ready", "False", "PublishFailed").await;

    // The next activation's instant passes with the copy still blocked: the operator keeps
    // exporting that instant (now in the past), through reconcile after reconcile.
    let (first, due) = support::wait_for(
        "the next transition to be due in the scrape",
        Duration::from_secs(90),
        || async {
            let m = op.admin_get("/metrics")?.1;
            let due = due_of(&m, &src, "auth")?;
            (due < chrono::Utc::now().timestamp() as f64 - 1.0).then_some((m, due))
        },
    )
    .await;
    let ready_false = format!(
        "keyturn_set_condition{{namespace=\"{src}\",name=\"auth\",condition=\"Ready\",status=\"False\"}} 1"
    );
    assert!(first.contains(&ready_false), "{first}");
    op.wait_reconciled_after("auth", chrono::Utc::now(), Duration::from_secs(30))
        .await;
    let metrics = op.admin_get("/metrics").unwrap().1;
    let at = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    assert_eq!(
        due_of(&metrics, &src, "auth"),
        Some(due),
        "a refused reconcile moved the due instant on"
    );
    let late = at - due;
    assert!(late > 0.0 && late < 60.0, "{late}");

    // promtool: 4 minutes after the scrape the transition is not 5 minutes late; once it has
    // been more than 5 minutes late for the rule's 1 minute, KeyturnRotationOverdue fires for
    // this set, saying how late it is. The refused spec
    // (and the blocked set) fire KeyturnSetNotReady after its 15 minutes.
    let shift = SCRAPE_AT - at;
    let due_then = (due + shift).round();
    // Rules are evaluated once a minute: the alert fires at the first evaluation at least 6
    // minutes (5 late, then its `for: 1m`) after the due instant, and says how late it was then.
    let quiet = due_then + 240.0;
    let fire = ((due_then + 360.0) / 60.0).ceil() * 60.0 + 60.0;
    let late_then = (fire - due_then) as i64;
    let late_text = format!("{}m {}s", late_then / 60, late_then % 60);
    let runbook = "https://keyturn.dev/docs/troubleshooting#";
    let not_ready = |name: &str| {
        format!(
            "          - exp_labels: {{severity: warning, namespace: {src}, name: {name}}}
            exp_annotations:
              summary: \"SigningKeySet {src}/{name} is not ready.\"
              description: \"SigningKeySet {src}/{name} has been Ready=False for 15 minutes. `kubectl describe sks -n {src} {name}` gives the reason; the runbook says what to do for each.\"
              runbook_url: {runbook}keyturnsetnotready
"
        )
    };
    let test = format!(
        "rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
{series}    alert_rule_test:
      - eval_time: {quiet_ms}ms
        alertname: KeyturnRotationOverdue
        exp_alerts: []
      - eval_time: {fire_ms}ms
        alertname: KeyturnRotationOverdue
        exp_alerts:
          - exp_labels: {{severity: critical, namespace: {src}, name: auth}}
            exp_annotations:
              summary: \"Rotation of {src}/auth is overdue.\"
              description: \"The next transition of SigningKeySet {src}/auth was due {late_text} ago.\"
              runbook_url: {runbook}keyturnrotationoverdue
      - eval_time: 26m
        alertname: KeyturnSetNotReady
        exp_alerts:
{auth}{bad}",
        rules = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/keyturn/files/alerts.yaml"
        ),
        series = series(&metrics, shift),
        quiet_ms = (quiet * 1000.0) as i64,
        fire_ms = (fire * 1000.0) as i64,
        auth = not_ready("auth"),
        bad = not_ready("bad"),
    );
    let path = std::env::temp_dir().join(format!("keyturn-{src}-captured-test.yaml"));
    std::fs::write(&path, &test).unwrap();
    let promtool = std::path::PathBuf::from(
        std::env::var("KEYTURN_TEST_VERIFIERS").expect("KEYTURN_TEST_VERIFIERS (hack/test.sh)"),
    )
    .join("bin/promtool");
    let out = std::process::Command::new(promtool)
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "promtool on the captured series:\n{}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
