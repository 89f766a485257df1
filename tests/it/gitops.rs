//! GitOps tools' view of a set: Argo CD's Lua health check (`deploy/argocd/argocd-cm-health.yaml`)
//! run in fengari (a Lua VM from npm, installed by hack/test-deps.sh) on SigningKeySets read
//! from the real plane in three states: Ready, refused for good (Stalled), not yet reconciled.

use std::io::Write;
use std::process::{Command, Stdio};

use kube::api::Api;
use serde_json::{Value, json};

use crate::support;
use keyturn::core::crd::SigningKeySet;

/// The Lua script of the shipped argocd-cm patch.
fn health_script() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/argocd/argocd-cm-health.yaml"
    );
    let doc: Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["data"]["resource.customizations.health.keyturn.dev_SigningKeySet"]
        .as_str()
        .expect("the health key of argocd-cm")
        .to_string()
}

/// Argo CD's health of each object: (status, message).
fn health(objects: &[Value]) -> Vec<(String, String)> {
    let dir = std::path::PathBuf::from(
        std::env::var("KEYTURN_TEST_VERIFIERS").expect("KEYTURN_TEST_VERIFIERS (hack/test.sh)"),
    );
    let script = std::env::temp_dir().join(format!("keyturn-argocd-{}.lua", std::process::id()));
    std::fs::write(&script, health_script()).unwrap();
    let mut child = Command::new("node")
        .arg(dir.join("argocd-health.mjs"))
        .arg(&script)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(objects).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&script);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["status"].as_str().unwrap_or_default().to_string(),
                v["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn argo_cd_reads_a_sets_health_from_its_conditions() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "gitops").await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    // Not reconciled yet: no operator runs for the namespace.
    support::create_set(&client, &ns, "early", json!({})).await;
    let early = serde_json::to_value(sets.get("early").await.unwrap()).unwrap();
    let op = support::Operator::start(&ns);
    support::create_set(&client, &ns, "good", json!({})).await;
    // Refused for good: the reserved name (Ready=False and Stalled=True, InvalidSpec).
    support::create_set(
        &client,
        &ns,
        "bad",
        json!({"secretName": "bad-keyturn-keys"}),
    )
    .await;
    support::wait_condition(&sets, "good", "Ready", "True", "KeysPublished").await;
    support::wait_condition(&sets, "bad", "Ready", "False", "InvalidSpec").await;
    let good = serde_json::to_value(sets.get("good").await.unwrap()).unwrap();
    let bad = serde_json::to_value(sets.get("bad").await.unwrap()).unwrap();
    let got = health(&[good, bad, early]);
    assert_eq!(got[0].0, "Healthy", "{got:?}");
    assert_eq!(got[1].0, "Degraded", "{got:?}");
    assert!(got[1].1.contains("spec.secretName"), "{got:?}");
    assert_eq!(got[2].0, "Progressing", "{got:?}");
    // A spec edit keyturn has not yet observed is Progressing, not Healthy from the old status.
    let mut edited = serde_json::to_value(sets.get("good").await.unwrap()).unwrap();
    edited["metadata"]["generation"] =
        json!(edited["metadata"]["generation"].as_i64().unwrap() + 1);
    assert_eq!(health(&[edited])[0].0, "Progressing");
    drop(op);
}
