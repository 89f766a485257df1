//! Benchmark helper for `hack/bench`: time to publish one JWKS change to N namespaces,
//! keyturn (fan-out by namespace selector) versus a plain client making the same N
//! ConfigMap writes with the same concurrency, on the same control plane in the same run.
//!
//! The two sides alternate for several rounds in one run (`KEYTURN_BENCH_ROUNDS`, default 5):
//! each round times the plain client's N updates, then keyturn's first fan-out of a new set
//! and one change of its JWKS, then deletes the set (its copies with it) for the next round.
//! Every round is printed, then the medians: on a noisy machine one pair says little. With
//! `KEYTURN_BENCH_CPU_PIDS` (`name=pid,...`) and `KEYTURN_BENCH_CLK_TCK` set, each timed phase
//! also says how many CPU seconds those processes and this client spent in it.
//!
//! Usage: cargo run --release --example bench_publish -- N (KUBECONFIG set, keyturn running).

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const CONCURRENCY: usize = 16; // the same bound keyturn uses (reconcile::PUBLISH_CONCURRENCY)
const LABEL: &str = "keyturn-bench";
/// The baseline's stand-in for a set name, as long as keyturn's ("bench") plus one.
const BASELINE_SET: &str = "bench-b";

/// CPU seconds (user + system) so far of the named processes and of this client.
struct Cpu {
    procs: Vec<(String, String)>,
    hz: f64,
}

impl Cpu {
    fn from_env() -> Self {
        let procs = std::env::var("KEYTURN_BENCH_CPU_PIDS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .chain([("client".to_string(), "self".to_string())])
            .collect();
        let hz = std::env::var("KEYTURN_BENCH_CLK_TCK")
            .ok()
            .and_then(|h| h.parse().ok())
            .unwrap_or(100.0);
        Cpu { procs, hz }
    }

    fn now(&self) -> Vec<f64> {
        self.procs
            .iter()
            .map(|(_, pid)| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let f: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, r)| r.split_whitespace().collect())
                    .unwrap_or_default();
                let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                (tick(11) + tick(12)) / self.hz
            })
            .collect()
    }

    /// "name=seconds ..." spent since `before`.
    fn since(&self, before: &[f64]) -> String {
        self.procs
            .iter()
            .zip(self.now().iter().zip(before))
            .map(|((name, _), (a, b))| format!("{name}={:.2}", a - b))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    let client = Client::try_default().await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    // Setup: N labelled namespaces, each consenting (a SigningKeySetGrant) to copies from
    // bench-src/bench, and a source namespace.
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i:04}")).collect();
    futures::stream::iter(names.iter().cloned().chain(["bench-src".to_string()]))
        .for_each_concurrent(CONCURRENCY, |name| {
            let (nss, client) = (nss.clone(), client.clone());
            async move {
                let ns: Namespace = serde_json::from_value(
                    json!({"metadata": {"name": name, "labels": {LABEL: "on"}}}),
                )
                .unwrap();
                let _ = nss.create(&PostParams::default(), &ns).await;
                let grant: keyturn::core::crd::SigningKeySetGrant = serde_json::from_value(json!({
                    "metadata": {"name": "bench"},
                    "spec": {"from": [{"namespace": "bench-src", "name": "bench"}]}
                }))
                .unwrap();
                let _ = Api::<keyturn::core::crd::SigningKeySetGrant>::namespaced(client, &name)
                    .create(&PostParams::default(), &grant)
                    .await;
            }
        })
        .await;

    // Baseline: a plain client updating one ConfigMap per namespace (created first, then the
    // update is timed, as keyturn updates existing copies on a key change). Both sides are
    // timed the same way: from the trigger until a LIST shows every copy changed. The plain
    // client writes what keyturn writes, so that both sides' writes and both LISTs carry the
    // same bytes: a JWKS of two ES256 keys, three labels and one annotation of about the
    // same lengths as keyturn's (other names: keyturn does not watch these). Two plain
    // clients: a server-side apply of the whole object (the idiomatic client, this
    // benchmark's baseline from the start) and a JSON merge patch of the data alone (the
    // cheapest update there is; keyturn's own writes are merge patches with a precondition).
    let write_all = |payload: String, apply: bool| {
        let client = client.clone();
        let names = names.clone();
        async move {
            futures::stream::iter(names)
                .for_each_concurrent(CONCURRENCY, |ns| {
                    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
                    let payload = payload.clone();
                    async move {
                        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "baseline-jwks",
                                "labels": {"app.kubernetes.io/managed-by": "bench-b",
                                    "bench.keyturn.dev/set": BASELINE_SET,
                                    "bench.keyturn.dev/source-ns": "bench-src"},
                                "annotations": {"bench.keyturn.dev/owner-uid": "00000000-0000-4000-8000-000000000000"}},
                            "data": {"jwks.json": payload}});
                        if apply {
                            api.patch("baseline-jwks", &PatchParams::apply("bench").force(), &Patch::Apply(&cm)).await.expect("baseline write");
                        } else {
                            let data = json!({"data": {"jwks.json": payload}});
                            api.patch("baseline-jwks", &PatchParams::default(), &Patch::Merge(&data)).await.expect("baseline write");
                        }
                    }
                })
                .await;
        }
    };
    // A JWKS document as keyturn publishes it during a rotation: two fresh ES256 keys.
    let two_keys = || {
        let keys: Vec<serde_json::Value> = (0..2)
            .map(|_| {
                keyturn::core::keys::KeyPair::generate(keyturn::core::crd::Algorithm::ES256, None)
                    .expect("ES256 key")
                    .public_jwk()
            })
            .collect();
        String::from_utf8(keyturn::core::jwks::to_bytes(&keys)).expect("JSON is UTF-8")
    };
    write_all(two_keys(), true).await;
    let all_cms: Api<ConfigMap> = Api::all(client.clone());
    let baseline_done = |payload: String| {
        let all_cms = all_cms.clone();
        async move {
            let list = all_cms
                .list(
                    &ListParams::default().labels(&format!("bench.keyturn.dev/set={BASELINE_SET}")),
                )
                .await
                .unwrap();
            list.items
                .iter()
                .filter(|c| c.data.as_ref().unwrap()["jwks.json"] == payload)
                .count()
        }
    };

    // keyturn: a set fanning out to every labelled namespace.
    let sets: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "bench-src",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("keyturn.dev", "v1alpha1", "SigningKeySet"),
            "signingkeysets",
        ),
    );
    let set = json!({"apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet", "metadata": {"name": "bench"},
        "spec": {"jwks": {"namespaceSelector": {"matchLabels": {LABEL: "on"}}}}});
    let cms: Api<ConfigMap> = Api::all(client.clone());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "bench-src");
    let own = ListParams::default().labels("keyturn.dev/signing-key-set=bench");
    let copies_with = |kids: usize| {
        let (cms, own) = (cms.clone(), own.clone());
        async move {
            let list = cms.list(&own).await.unwrap();
            list.items
                .iter()
                .filter(|c| c.namespace().is_some_and(|n| n.starts_with("bench-")))
                .filter(|c| {
                    keyturn::core::jwks::kids(c.data.as_ref().unwrap()["jwks.json"].as_bytes())
                        .unwrap()
                        .len()
                        == kids
                })
                .count()
        }
    };
    let wait = |what: &'static str, start: Instant| {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "{what} did not finish"
        );
        Ok(())
    };
    let rounds: usize = std::env::var("KEYTURN_BENCH_ROUNDS")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5)
        .max(1);
    println!("namespaces={n} rounds={rounds}");
    let cpu = Cpu::from_env();
    let (mut baselines, mut merges, mut initials, mut changes) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let mut plain = vec![];
        for apply in [true, false] {
            let payload = two_keys();
            let cpu_before = cpu.now();
            let start = Instant::now();
            let writer = tokio::spawn(write_all(payload.clone(), apply));
            while baseline_done(payload.clone()).await < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let took = start.elapsed();
            writer.await?;
            plain.push((took, cpu.since(&cpu_before)));
        }
        let [(baseline, baseline_cpu), (merge, merge_cpu)] =
            <[_; 2]>::try_from(plain).expect("two plain clients");

        sets.patch(
            "bench",
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&set),
        )
        .await?;
        let start = Instant::now();
        while copies_with(1).await < n + 1 {
            wait("initial fan-out", start)?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let initial = start.elapsed();
        // One JWKS change: a manual rotation publishes a second key everywhere.
        let cpu_before = cpu.now();
        let start = Instant::now();
        sets.patch("bench", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"keyturn.dev/rotate": format!("{:?}", Instant::now())}}}))).await?;
        while copies_with(2).await < n + 1 {
            wait("fan-out of the change", start)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let change = start.elapsed();
        let change_cpu = cpu.since(&cpu_before);
        println!(
            "round={round} baseline_update_seconds={:.2} merge_patch_baseline_seconds={:.2} keyturn_initial_fanout_seconds={:.2} keyturn_change_fanout_seconds={:.2} round_ratio={:.2} round_ratio_vs_merge_patch={:.2}",
            baseline.as_secs_f64(),
            merge.as_secs_f64(),
            initial.as_secs_f64(),
            change.as_secs_f64(),
            change.as_secs_f64() / baseline.as_secs_f64(),
            change.as_secs_f64() / merge.as_secs_f64()
        );
        println!(
            "round={round} cpu_seconds baseline: {baseline_cpu}; merge-patch baseline: {merge_cpu}; keyturn change: {change_cpu}"
        );
        baselines.push(baseline.as_secs_f64());
        merges.push(merge.as_secs_f64());
        initials.push(initial.as_secs_f64());
        changes.push(change.as_secs_f64());
        if round == rounds {
            break; // the last set stays, for the HTTP benchmark
        }
        // Gone with everything it owns (copies by keyturn's finalizer, its own objects by the
        // garbage collector), so the next round's set starts as the first did.
        sets.delete("bench", &Default::default()).await?;
        let start = Instant::now();
        while sets.get_opt("bench").await?.is_some()
            || !cms.list(&own).await?.items.is_empty()
            || !secrets.list(&own).await?.items.is_empty()
        {
            wait("deletion", start)?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The middle value (the upper of the two middle ones for an even number of rounds).
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, m, i, c) = (
        median(&mut baselines),
        median(&mut merges),
        median(&mut initials),
        median(&mut changes),
    );
    println!("baseline_update_seconds={b:.2}");
    println!("merge_patch_baseline_seconds={m:.2}");
    println!("keyturn_initial_fanout_seconds={i:.2}");
    println!("keyturn_change_fanout_seconds={c:.2}");
    println!("ratio={:.2} (medians of {rounds} rounds)", c / b);
    println!(
        "ratio_vs_merge_patch={:.2} (medians of {rounds} rounds)",
        c / m
    );
    Ok(())
}
