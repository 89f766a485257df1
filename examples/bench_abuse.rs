//! Benchmark helper for `hack/bench-abuse` (issue 29: obstruction). Subcommands:
//!
//! - `victim TAG ROTATIONS REVOCATIONS`: a set `victim-TAG` in `bench-victim` (ES256, interval
//!   4s, prePublish 1s, overlap 2s, fanned out to `bench-victim-copies`). For each of ROTATIONS
//!   rotations, the delay from the scheduled publication instant (the previous key's activation
//!   plus interval minus prePublish, from the operator's own state) to the new key in the JWKS
//!   ConfigMap; then REVOCATIONS times: its Active kid revoked, and the time until the signing
//!   Secret and both JWKS ConfigMaps no longer hold it. Prints p50/p99 of each.
//! - `storm N`: N RSA-4096 sets in `bench-hostile` on the shortest schedule the CRD accepts
//!   that still rotates (interval 2s, prePublish 1s, overlap 1s): a generation storm.
//! - `decoys N BYTES`: N/2 ConfigMaps and N/2 Secrets of BYTES each in `bench-decoys`, every
//!   one labelled as keyturn's (managed-by, a set, a source namespace; the Secrets named as
//!   internal Secrets are), none of them keyturn's; 8 at a time.
//! - `unstorm`: deletes the storm's namespace's sets.

use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use keyturn::core::crd::SigningKeySet;

mod common;
use common::{ensure_ns, pct};

fn kids(cm: &ConfigMap) -> Vec<String> {
    cm.data
        .as_ref()
        .and_then(|d| d.get("jwks.json"))
        .and_then(|t| keyturn::core::jwks::kids(t.as_bytes()).ok())
        .unwrap_or_default()
}

fn signing_kid(s: &Secret) -> Option<String> {
    let k = s.data.as_ref()?.get("kid")?;
    Some(String::from_utf8_lossy(&k.0).into_owned())
}

async fn victim(client: Client, tag: &str, rotations: usize, revocations: usize) {
    const NS: &str = "bench-victim";
    const COPIES: &str = "bench-victim-copies";
    ensure_ns(&client, NS).await;
    ensure_ns(&client, COPIES).await;
    let name = format!("victim-{tag}");
    let grant: keyturn::core::crd::SigningKeySetGrant = serde_json::from_value(json!({
        "metadata": {"name": name}, "spec": {"from": [{"namespace": NS, "name": name}]}
    }))
    .unwrap();
    let _ = Api::<keyturn::core::crd::SigningKeySetGrant>::namespaced(client.clone(), COPIES)
        .create(&PostParams::default(), &grant)
        .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), NS);
    let set: SigningKeySet = serde_json::from_value(json!({"apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet", "metadata": {"name": name},
        "spec": {"rotation": {"interval": "4s", "prePublish": "1s", "overlap": "2s"}, "jwks": {"namespaces": [COPIES]}}}))
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let copies: Api<ConfigMap> = Api::namespaced(client.clone(), COPIES);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut stream = watcher::watcher(
        cms.clone(),
        watcher::Config::default().labels(&format!("keyturn.dev/signing-key-set={name}")),
    )
    .boxed();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    let mut lags = vec![];
    let mut first = true;
    while lags.len() < rotations {
        let Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) =
            stream.next().await
        else {
            continue;
        };
        let now = chrono::Utc::now();
        let new: Vec<String> = kids(&cm)
            .into_iter()
            .filter(|k| !seen.contains(k))
            .collect();
        if new.is_empty() {
            continue;
        }
        seen.extend(new.iter().cloned());
        if std::mem::take(&mut first) {
            continue; // the first key has no schedule
        }
        let internal = secrets.get(&format!("{name}-keyturn-keys")).await.unwrap();
        let state: serde_json::Value =
            serde_json::from_slice(&internal.data.unwrap()["state.json"].0).unwrap();
        for k in &new {
            lags.extend(common::publication_lag_ms(
                &state,
                k,
                now,
                chrono::Duration::seconds(3),
            ));
        }
    }
    drop(stream);
    let mut revoke_ms = vec![];
    let mut revoked: Vec<String> = vec![];
    for _ in 0..revocations {
        let active = loop {
            if let Some(k) = secrets
                .get_opt(&format!("{name}-signing-key"))
                .await
                .unwrap()
                .as_ref()
                .and_then(signing_kid)
                && !revoked.contains(&k)
            {
                break k;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        revoked.push(active.clone());
        let t = Instant::now();
        sets.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revokedKeyIds": revoked}})),
        )
        .await
        .unwrap();
        // Gone from the signing Secret and both JWKS copies (polled: three objects).
        loop {
            let sig = secrets
                .get_opt(&format!("{name}-signing-key"))
                .await
                .unwrap();
            let own = cms.get_opt(&format!("{name}-jwks")).await.unwrap();
            let copy = copies.get_opt(&format!("{name}-jwks")).await.unwrap();
            let gone = sig.as_ref().and_then(signing_kid).as_deref() != Some(active.as_str())
                && own.as_ref().is_some_and(|c| !kids(c).contains(&active))
                && copy.as_ref().is_some_and(|c| !kids(c).contains(&active));
            if gone {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        revoke_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{tag}: rotations={} lag_p50_ms={:.0} lag_p99_ms={:.0} lag_max_ms={:.0}",
        lags.len(),
        pct(lags.clone(), 0.5),
        pct(lags.clone(), 0.99),
        pct(lags, 1.0)
    );
    println!(
        "{tag}: revocations={} revocation_p50_ms={:.0} revocation_p99_ms={:.0} revocation_max_ms={:.0}",
        revoke_ms.len(),
        pct(revoke_ms.clone(), 0.5),
        pct(revoke_ms.clone(), 0.99),
        pct(revoke_ms, 1.0)
    );
}

async fn storm(client: Client, n: usize) {
    const NS: &str = "bench-hostile";
    ensure_ns(&client, NS).await;
    let sets: Api<SigningKeySet> = Api::namespaced(client, NS);
    for i in 0..n {
        let set: SigningKeySet = serde_json::from_value(json!({"apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet", "metadata": {"name": format!("storm-{i:03}")},
            "spec": {"algorithm": "RS256", "rsaKeySize": 4096, "rotation": {"interval": "2s", "prePublish": "1s", "overlap": "1s"}}}))
        .unwrap();
        let _ = sets.create(&PostParams::default(), &set).await;
    }
    println!("storm_sets={n}");
}

async fn unstorm(client: Client) {
    let sets: Api<SigningKeySet> = Api::namespaced(client, "bench-hostile");
    let _ = sets
        .delete_collection(&Default::default(), &Default::default())
        .await;
    println!("storm_deleted");
}

async fn decoys(client: Client, n: usize, bytes: usize) {
    const NS: &str = "bench-decoys";
    ensure_ns(&client, NS).await;
    let blob = "x".repeat(bytes);
    let t = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(8, |i| {
            let (client, blob) = (client.clone(), blob.clone());
            async move {
                let set = format!("decoy-{i:05}");
                let labels = json!({"app.kubernetes.io/managed-by": "keyturn", "keyturn.dev/signing-key-set": set, "keyturn.dev/source-namespace": "bench-victim"});
                if i % 2 == 0 {
                    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("{set}-jwks"), "labels": labels, "annotations": {"keyturn.dev/owner-uid": "not-a-set"}}, "data": {"jwks.json": blob}})).unwrap();
                    let _ = Api::<ConfigMap>::namespaced(client, NS)
                        .create(&PostParams::default(), &cm)
                        .await;
                } else {
                    let s: Secret = serde_json::from_value(json!({"metadata": {"name": format!("{set}-keyturn-keys"), "labels": labels}, "stringData": {"state.json": blob}})).unwrap();
                    let _ = Api::<Secret>::namespaced(client, NS)
                        .create(&PostParams::default(), &s)
                        .await;
                }
            }
        })
        .await;
    println!(
        "decoys={n} bytes_each={bytes} created_in_s={:.1}",
        t.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| -> anyhow::Result<usize> {
        Ok(args.get(i).map(|s| s.parse()).transpose()?.unwrap_or(d))
    };
    let client = Client::try_default().await?;
    match args.get(1).map(String::as_str) {
        Some("victim") => {
            let tag = args.get(2).cloned().unwrap_or_else(|| "quiet".into());
            victim(client, &tag, arg(3, 20)?, arg(4, 10)?).await
        }
        Some("storm") => storm(client, arg(2, 30)?).await,
        Some("unstorm") => unstorm(client).await,
        Some("decoys") => decoys(client, arg(2, 1000)?, arg(3, 700 * 1024)?).await,
        _ => anyhow::bail!(
            "usage: bench_abuse victim TAG ROTATIONS REVOCATIONS | storm N | unstorm | decoys N BYTES"
        ),
    }
    Ok(())
}
