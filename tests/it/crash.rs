//! Crash anywhere (I6): the operator is killed again and again — by the fault-injection hook
//! right after its N-th API write (every gap between two writes of one reconcile), and by
//! SIGKILL at random instants — while keys rotate on a second-scale schedule. An independent
//! observer watching only the ConfigMaps and signing Secrets finds no I1/I2 violation, every
//! token verifies, and no key is lost.

use crate::support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::support::invariants::*;
use keyturn::core::crd::SigningKeySet;

#[tokio::test]
async fn a_hundred_crashes_at_every_gap_break_no_invariant_and_lose_no_key() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "crash").await;
    let pre = Duration::from_secs(2);
    let overlap = Duration::from_secs(3);

    // The observer: every write to the sets' ConfigMaps and signing Secrets, by revision.
    // Every JWKS copy (the set's namespace and a fan-out namespace) and every signing Secret.
    let copy_ns = format!("{ns}-copy");
    let copy_obj: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": copy_ns}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &copy_obj)
        .await
        .unwrap();
    support::grant_all(&client, &copy_ns, &ns, &["es-jwks", "ed-jwks", "rs-jwks"]).await;
    let cms: Api<ConfigMap> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let copies_cfg =
        watcher::Config::default().labels(&format!("keyturn.dev/source-namespace={ns}"));
    let mut observed = observe(cms, copies_cfg, secrets.clone()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Observation>();
    let observer = tokio::spawn(async move {
        while let Some(o) = observed.next().await {
            let _ = tx.send(o);
        }
    });

    for (name, alg) in [("es", "ES256"), ("ed", "EdDSA"), ("rs", "RS256")] {
        support::create_set(&client, &ns, name, json!({"algorithm": alg, "rotation": {"interval": "5s", "prePublish": "2s", "overlap": "3s"}, "jwks": {"namespaces": [copy_ns]}})).await;
    }
    let kubeconfig = support::kubeconfig_path();
    let log_dir = std::env::var("KEYTURN_TEST_LOG_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let log = log_dir.join(format!("operator-{ns}-crash.log"));
    let mut rng = support::Rng(0x005E_ED0F_C4A5);
    let (mut injected, mut killed) = (0, 0);
    let start = Instant::now();
    for _ in 0..100 {
        // Which crash this run gets is the seed's choice, not the machine's speed (on a fast
        // machine most runs reached their N-th write before a random kill instant, and the
        // SIGKILLs fell under 20): the hook aborts it after its N-th write, or it runs without
        // the hook and is SIGKILLed at a random instant.
        let inject = rng.next().is_multiple_of(2);
        let abort_after = 1 + rng.next() % 6;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyturn"));
        cmd.args([
            "run",
            "--namespace",
            &ns,
            "--log-format",
            "json",
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(file);
        if inject {
            cmd.env(keyturn::operator::fault::ENV, abort_after.to_string());
        }
        let mut child = cmd.spawn().unwrap();
        // A hooked run has 30 s to reach its N-th write (the sets rotate every few seconds).
        let deadline = Instant::now()
            + if inject {
                Duration::from_secs(30)
            } else {
                Duration::from_millis(200 + rng.next() % 1500)
            };
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    inject,
                    "keyturn exited by itself without the hook: {status}"
                );
                injected += 1;
                break;
            }
            if Instant::now() >= deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let crash_phase = start.elapsed();
    // Then a healthy operator converges and keeps rotating.
    let mut op = support::Operator::start(&ns);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    for name in ["es", "ed", "rs"] {
        support::wait_object(
            &sets,
            name,
            "Ready after the crashes",
            Duration::from_secs(60),
            |o: Option<&SigningKeySet>| {
                o.and_then(|s| s.status.as_ref())
                    .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
                    .is_some_and(|c| c.status == "True")
            },
        )
        .await;
    }
    // Two more rotations of every set under observation.
    for name in ["es", "ed", "rs"] {
        let secret = format!("{name}-signing-key");
        for _ in 0..2 {
            let kid = support::signing_kid(&secrets.get(&secret).await.unwrap());
            support::wait_object(
                &secrets,
                &secret,
                &format!("{name} rotates after the crashes"),
                Duration::from_secs(30),
                |o: Option<&Secret>| o.is_some_and(|s| support::signing_kid(s) != kid),
            )
            .await;
        }
    }
    op.assert_running();
    observer.abort();
    let mut signer_events: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    let mut copy_events: BTreeMap<(String, String), Vec<Seen>> = BTreeMap::new();
    while let Ok((set, copy, seen)) = rx.try_recv() {
        match copy {
            None => signer_events.entry(set).or_default().push(seen),
            Some(c) => copy_events.entry((set, c)).or_default().push(seen),
        }
    }
    assert!(
        injected >= 20 && killed >= 20,
        "both crash kinds exercised: {injected} injected, {killed} SIGKILLed"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    let aborts = log_text.matches("aborting (fault injection)").count();
    assert!(aborts >= 20, "the write hook fired only {aborts} times");
    assert!(!log_text.contains("panicked"), "the operator panicked");
    for name in ["es", "ed", "rs"] {
        // I1 and I2 must hold in every copy: check each copy's JWKS history against the signer.
        for copy in [ns.as_str(), copy_ns.as_str()] {
            let mut seen = copy_events
                .remove(&(name.to_string(), copy.to_string()))
                .unwrap_or_default();
            assert!(!seen.is_empty(), "{name}: no JWKS seen in {copy}");
            seen.extend(signer_events.get(name).cloned().unwrap_or_default());
            let (violations, verified, signers) = check_history(seen, pre, overlap);
            assert!(
                violations.is_empty(),
                "{name} in {copy} after {injected} injected and {killed} SIGKILL crashes in {crash_phase:?}: {violations:#?}"
            );
            assert!(
                signers.len() >= 5,
                "{name}: only {} keys signed; rotations did not go on through the crashes",
                signers.len()
            );
            assert!(verified >= signers.len());
        }
    }
}
