//! Benchmark helper for `hack/bench`: time to publish one JWKS change to N namespaces,
//! keyturn (fan-out by namespace selector) versus a plain client making the same N
//! ConfigMap writes with the same concurrency, on the same control plane in the same run.
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
                let grant: keyturn::crd::SigningKeySetGrant = serde_json::from_value(json!({
                    "metadata": {"name": "bench"},
                    "spec": {"from": [{"namespace": "bench-src", "name": "bench"}]}
                }))
                .unwrap();
                let _ = Api::<keyturn::crd::SigningKeySetGrant>::namespaced(client, &name)
                    .create(&PostParams::default(), &grant)
                    .await;
            }
        })
        .await;

    // Baseline: a plain client updating one ConfigMap per namespace (created first, then the
    // update is timed, as keyturn updates existing copies on a key change). Both sides are
    // timed the same way: from the trigger until a LIST shows every copy changed.
    let write_all = |payload: String| {
        let client = client.clone();
        let names = names.clone();
        async move {
            futures::stream::iter(names)
                .for_each_concurrent(CONCURRENCY, |ns| {
                    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
                    let payload = payload.clone();
                    async move {
                        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "baseline-jwks"}, "data": {"jwks.json": payload}});
                        api.patch("baseline-jwks", &PatchParams::apply("bench").force(), &Patch::Apply(&cm)).await.expect("baseline write");
                    }
                })
                .await;
        }
    };
    write_all("{\"keys\":[1]}".into()).await;
    let all_cms: Api<ConfigMap> = Api::all(client.clone());
    let baseline_done = |payload: &'static str| {
        let all_cms = all_cms.clone();
        async move {
            let list = all_cms
                .list(&ListParams::default().fields("metadata.name=baseline-jwks"))
                .await
                .unwrap();
            list.items
                .iter()
                .filter(|c| c.data.as_ref().unwrap()["jwks.json"] == payload)
                .count()
        }
    };
    let start = Instant::now();
    let writer = tokio::spawn(write_all("{\"keys\":[1,2]}".into()));
    while baseline_done("{\"keys\":[1,2]}").await < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let baseline = start.elapsed();
    writer.await?;

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
    sets.patch(
        "bench",
        &PatchParams::apply("bench").force(),
        &Patch::Apply(&set),
    )
    .await?;
    let cms: Api<ConfigMap> = Api::all(client.clone());
    let copies_with = |kids: usize| {
        let cms = cms.clone();
        async move {
            let list = cms
                .list(&ListParams::default().labels("keyturn.dev/signing-key-set=bench"))
                .await
                .unwrap();
            list.items
                .iter()
                .filter(|c| c.namespace().is_some_and(|n| n.starts_with("bench-")))
                .filter(|c| {
                    keyturn::jwks::kids(c.data.as_ref().unwrap()["jwks.json"].as_bytes())
                        .unwrap()
                        .len()
                        == kids
                })
                .count()
        }
    };
    let start = Instant::now();
    while copies_with(1).await < n + 1 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "initial fan-out did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let initial = start.elapsed();
    // One JWKS change: a manual rotation publishes a second key everywhere.
    let start = Instant::now();
    sets.patch("bench", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"keyturn.dev/rotate": format!("{:?}", Instant::now())}}}))).await?;
    while copies_with(2).await < n + 1 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "fan-out of the change did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let change = start.elapsed();
    println!("namespaces={n}");
    println!("baseline_update_seconds={:.2}", baseline.as_secs_f64());
    println!(
        "keyturn_initial_fanout_seconds={:.2}",
        initial.as_secs_f64()
    );
    println!("keyturn_change_fanout_seconds={:.2}", change.as_secs_f64());
    println!("ratio={:.2}", change.as_secs_f64() / baseline.as_secs_f64());
    Ok(())
}
