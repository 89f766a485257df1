//! Benchmark helper for `hack/bench` (issue 6). Subcommands:
//!
//! - `keygen`: median time per key for each algorithm and size, next to `openssl genpkey`
//!   for the same key on the same machine (openssl's figure includes starting a process).
//! - `baseline N`: a plain client making the minimal writes of N sets (signing Secret,
//!   internal Secret, ConfigMap, status) with real ES256 keys, 16 at a time; prints seconds.
//! - `converge N`: creates N ES256 SigningKeySets at once in `bench-kt` and prints the
//!   seconds until all are Ready, counted from a watch (keyturn must be running).
//! - `lag N`: N rotations of one set (interval 1s, prePublish 500ms); for each, the delay from
//!   the scheduled publication instant to the new JWKS in the API server; prints p50/p99.
//! - `noise N`: N unrelated 10 KiB Secrets in `bench-noise`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use keyturn::core::crd::{Algorithm, SigningKeySet};
use keyturn::core::keys::KeyPair;

mod common;
use common::{ensure_ns, pct};

const CONCURRENCY: usize = 16;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// (label, algorithm, RSA bits, samples, `openssl genpkey` arguments)
type KeygenCase = (
    &'static str,
    Algorithm,
    Option<u32>,
    usize,
    &'static [&'static str],
);

fn keygen() {
    println!(
        "| key | keys | keyturn median | openssl genpkey median (incl. process start) | ratio |"
    );
    println!("|---|---|---|---|---|");
    let cases: [KeygenCase; 6] = [
        (
            "ES256 (P-256)",
            Algorithm::ES256,
            None,
            200,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        (
            "ES384 (P-384)",
            Algorithm::ES384,
            None,
            200,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
        (
            "EdDSA (Ed25519)",
            Algorithm::EdDSA,
            None,
            200,
            &["-algorithm", "ED25519"],
        ),
        (
            "RSA 2048",
            Algorithm::RS256,
            Some(2048),
            101,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "RSA 3072",
            Algorithm::RS256,
            Some(3072),
            61,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
        ),
        (
            "RSA 4096",
            Algorithm::RS256,
            Some(4096),
            41,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
        ),
    ];
    for (label, alg, bits, n, ossl) in cases {
        // Alternating, so both see the same machine load; RSA times vary widely from key to
        // key (prime search), hence the medians over dozens of keys.
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let t = Instant::now();
            let k = KeyPair::generate(alg, bits).unwrap();
            let _pem = k.to_pkcs8_pem();
            ours.push(t.elapsed());
            let t = Instant::now();
            let out = std::process::Command::new("openssl")
                .arg("genpkey")
                .args(ossl)
                .output()
                .unwrap();
            assert!(out.status.success());
            theirs.push(t.elapsed());
        }
        let (ours, theirs) = (median(ours).as_secs_f64(), median(theirs).as_secs_f64());
        println!(
            "| {label} | {n} | {:.2} ms | {:.2} ms | {:.2}× |",
            ours * 1e3,
            theirs * 1e3,
            ours / theirs
        );
    }
}

async fn baseline(client: Client, n: usize) {
    ensure_ns(&client, "bench-plain").await;
    let start = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(CONCURRENCY, |i| {
            let client = client.clone();
            async move {
                let name = format!("p{i:05}");
                let kp = tokio::task::spawn_blocking(|| KeyPair::generate(Algorithm::ES256, None).unwrap()).await.unwrap();
                let secrets: Api<Secret> = Api::namespaced(client.clone(), "bench-plain");
                let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "bench-plain");
                let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), "bench-plain");
                let pp = PostParams::default();
                let set: SigningKeySet = serde_json::from_value(json!({"apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet", "metadata": {"name": name}, "spec": {}})).unwrap();
                sets.create(&pp, &set).await.unwrap();
                let sec = |n: String, k: &str, v: String| -> Secret {
                    serde_json::from_value(json!({"metadata": {"name": n}, "stringData": {k: v}})).unwrap()
                };
                secrets.create(&pp, &sec(format!("{name}-signing-key"), "private.pem", kp.to_pkcs8_pem().to_string())).await.unwrap();
                secrets.create(&pp, &sec(format!("{name}-keyturn-keys"), "state.json", kp.to_pkcs8_pem().to_string())).await.unwrap();
                let jwks = String::from_utf8(keyturn::core::jwks::to_bytes(&[kp.public_jwk()])).unwrap();
                let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("{name}-jwks")}, "data": {"jwks.json": jwks}})).unwrap();
                cms.create(&pp, &cm).await.unwrap();
                let status = json!({"apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet", "status": {"activeKeyId": kp.kid(), "conditions": [{"type": "Ready", "status": "True", "reason": "KeysPublished", "message": "plain", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
                sets.patch_status(&name, &PatchParams::apply("bench").force(), &Patch::Apply(&status)).await.unwrap();
            }
        })
        .await;
    println!("baseline_seconds={:.2}", start.elapsed().as_secs_f64());
}

async fn converge(client: Client, n: usize) {
    ensure_ns(&client, "bench-kt").await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), "bench-kt");
    let start = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(CONCURRENCY, |i| {
            let sets = sets.clone();
            async move {
                let set: SigningKeySet = serde_json::from_value(json!({"apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet", "metadata": {"name": format!("k{i:05}")}, "spec": {}})).unwrap();
                sets.create(&PostParams::default(), &set).await.unwrap();
            }
        })
        .await;
    // Ready sets counted from a watch (a LIST of every set each poll would load the API
    // server more than keyturn does at 10,000 sets).
    let mut ready = std::collections::HashSet::new();
    let mut events = watcher::watcher(sets, watcher::Config::default()).boxed();
    while ready.len() < n {
        let Some(ev) = events.next().await else { break };
        let s = match ev {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
            _ => continue,
        };
        let name = s.metadata.name.clone().unwrap_or_default();
        if s.status.as_ref().is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        }) {
            ready.insert(name);
        } else {
            ready.remove(&name);
        }
    }
    println!("converge_seconds={:.2}", start.elapsed().as_secs_f64());
}

async fn noise(client: Client, n: usize) {
    ensure_ns(&client, "bench-noise").await;
    let secrets: Api<Secret> = Api::namespaced(client, "bench-noise");
    let blob = "x".repeat(10 * 1024);
    futures::stream::iter(0..n)
        .for_each_concurrent(CONCURRENCY, |i| {
            let secrets = secrets.clone();
            let blob = blob.clone();
            async move {
                let s: Secret = serde_json::from_value(json!({"metadata": {"name": format!("noise-{i:05}")}, "stringData": {"blob": blob}})).unwrap();
                let _ = secrets.create(&PostParams::default(), &s).await;
            }
        })
        .await;
    println!("noise_secrets={n}");
}

async fn lag(client: Client, n: usize) {
    ensure_ns(&client, "bench-lag").await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), "bench-lag");
    let set: SigningKeySet = serde_json::from_value(json!({"apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet", "metadata": {"name": "lag"},
        "spec": {"rotation": {"interval": "1s", "prePublish": "500ms", "overlap": "500ms"}}}))
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "bench-lag");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "bench-lag");
    let mut stream = watcher::watcher(
        cms,
        watcher::Config::default().labels("keyturn.dev/signing-key-set=lag"),
    )
    .boxed();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let mut seen: std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>> =
        Default::default();
    let mut lags = vec![];
    while lags.len() < n {
        let Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) =
            stream.next().await
        else {
            continue;
        };
        let now = chrono::Utc::now();
        let kids =
            keyturn::core::jwks::kids(cm.data.as_ref().unwrap()["jwks.json"].as_bytes()).unwrap();
        let new: Vec<String> = kids
            .iter()
            .filter(|k| !seen.contains_key(*k))
            .cloned()
            .collect();
        if new.is_empty() {
            continue;
        }
        for k in &new {
            seen.insert(k.clone(), now);
        }
        // The scheduled instant: the previous key's activation + interval − prePublish, from
        // the operator's full-precision state.
        let internal = secrets.get("lag-keyturn-keys").await.unwrap();
        let state: serde_json::Value =
            serde_json::from_slice(&internal.data.unwrap()["state.json"].0).unwrap();
        for k in &new {
            lags.extend(common::publication_lag_ms(
                &state,
                k,
                now,
                chrono::Duration::milliseconds(500),
            ));
        }
    }
    println!("lag_rotations={}", lags.len());
    println!("lag_p50_ms={:.1}", pct(lags.clone(), 0.5));
    println!("lag_p99_ms={:.1}", pct(lags.clone(), 0.99));
    println!("lag_max_ms={:.1}", pct(lags, 1.0));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    match args.get(1).map(String::as_str) {
        Some("keygen") => keygen(),
        Some("baseline") => baseline(Client::try_default().await?, n).await,
        Some("converge") => converge(Client::try_default().await?, n).await,
        Some("noise") => noise(Client::try_default().await?, n).await,
        Some("lag") => lag(Client::try_default().await?, n).await,
        _ => anyhow::bail!("usage: bench_scale keygen|baseline N|converge N|noise N|lag N"),
    }
    Ok(())
}
