//! keyturn on a real node: the operator as Pods from its image, workloads mounting the JWKS
//! ConfigMap and the signing Secret through rotations, measured.
//!
//! Run by `hack/e2e-node` (from `hack/test.sh`) inside the network namespace of a plane started
//! with `hack/control-plane start --node`: a real kubelet, containerd and runc, a CNI bridge,
//! kube-proxy, kube-scheduler. Nothing here is simulated: the kubelet mounts the volumes, the
//! Pods run the images hack/e2e-node pushed to the node's registry.
//!
//! One scenario, in order (each phase's assertions name it):
//! 1. install: `kubectl apply -k tests/node/overlay` (crds/ and deploy/ with the local image); both
//!    replicas Ready under `restricted` Pod Security with their probes; exactly one holds the
//!    Lease.
//! 2. workloads: the verifier Deployment of docs/verifiers.md and the issuer Deployment of
//!    docs/issuer.md (their manifests, read from the docs, with the test image), a verifier
//!    mounting `jwks.json` with `subPath`, and a Pod fetching the JWKS through the
//!    `keyturn-jwks` Service.
//! 3. three rotations: every token each issuer Pod mints is verified by each verifier Pod,
//!    which reads only its mounted file (no other key source: a key that signs before it is
//!    in the file fails); the leader Pod is deleted after the first rotation and the schedule
//!    holds (activations one interval apart: no double rotation, none missed).
//! 4. measured: the kubelet's delay from each ConfigMap and Secret write to the file content
//!    inside each Pod (written to `$KEYTURN_TEST_LOG_DIR/propagation.json`).
use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const IMAGE: &str = "127.0.0.1:5000/keyturn-e2e:1";
const SYSTEM: &str = "keyturn-system";
const NS: &str = "identity"; // the docs' namespace and set
const SET: &str = "auth";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The kubelet's syncFrequency on this node (hack/e2e-node passes it).
fn sync_frequency() -> Duration {
    let s = std::env::var("KEYTURN_TEST_NODE_SYNC_FREQUENCY").unwrap_or_else(|_| "1m".into());
    keyturn::core::duration::parse(&s)
        .ok()
        .and_then(|d| d.to_std().ok())
        .unwrap_or_else(|| panic!("KEYTURN_TEST_NODE_SYNC_FREQUENCY={s:?} is not a duration"))
}

/// A plain HTTP/1.1 request to a Pod: (status, body).
async fn http(ip: &str, method: &str, path: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let go = async {
        let mut s = tokio::net::TcpStream::connect((ip, 8080)).await.ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.ok()?;
        s.write_all(body).await.ok()?;
        let mut buf = vec![];
        s.read_to_end(&mut buf).await.ok()?;
        let r = support::parse_response(&buf)?;
        Some((r.status, r.body))
    };
    tokio::time::timeout(Duration::from_secs(10), go)
        .await
        .ok()
        .flatten()
}

async fn http_json(ip: &str, method: &str, path: &str, body: &[u8]) -> Value {
    let (status, b) = http(ip, method, path, body)
        .await
        .unwrap_or_else(|| panic!("no answer from {ip}{path}"));
    assert_eq!(status, 200, "{ip}{path}: {}", String::from_utf8_lossy(&b));
    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{ip}{path}: not JSON ({e})"))
}

/// The first ```yaml block of a doc that contains `needle`, as JSON.
fn doc_manifest(doc: &str, needle: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
    let text = std::fs::read_to_string(&path).unwrap();
    let block = text
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains(needle))
        .unwrap_or_else(|| panic!("{doc} has no yaml block with {needle:?}"));
    // Parsed by kubectl, as a user applying it gets it (`defaultMode: 0440` is octal there).
    let out = support::kubectl(
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        Some(block),
    );
    assert!(
        out.status.success(),
        "{doc}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{doc}: {e}"))
}

/// Ready Pods with label `app=<app>` in `ns`, once `n` of them are: (name, IP).
async fn ready_pods(client: &Client, ns: &str, selector: &str, n: usize) -> Vec<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    support::wait_for(
        &format!("{n} Ready Pods {selector} in {ns}"),
        Duration::from_secs(180),
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels(selector))
                    .await
                    .ok()?;
                let ready: Vec<(String, String)> = list
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
                    .map(|p| {
                        (
                            p.name_any(),
                            p.status.as_ref().unwrap().pod_ip.clone().unwrap(),
                        )
                    })
                    .collect();
                (ready.len() == n).then_some(ready)
            }
        },
    )
    .await
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn lease_holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    leases
        .get_opt(keyturn::operator::leader::LEASE_NAME)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Phase 1: deploy/ (through the overlay) as two Pods on the node.
async fn install(client: &Client) {
    let out = support::kubectl(
        &[
            "apply",
            "--server-side",
            "-k",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/overlay"),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "kubectl apply -k tests/node/overlay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns: Namespace = Api::all(client.clone()).get(SYSTEM).await.unwrap();
    assert_eq!(
        ns.labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted"),
        "keyturn-system enforces the restricted Pod Security Standard"
    );
    // The policy is enforced here (a Pod it forbids is refused), so the operator's Pods below
    // were admitted under it, not beside it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let privileged: Pod = serde_json::from_value(json!({
        "metadata": {"name": "not-restricted"},
        "spec": {"containers": [{"name": "c", "image": IMAGE,
                 "securityContext": {"privileged": true}}]}
    }))
    .unwrap();
    let refused = pods.create(&PostParams::default(), &privileged).await;
    match refused {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 403 && e.message.contains("violates PodSecurity \"restricted"),
            "refused for another reason: {e:?}"
        ),
        other => panic!("a privileged Pod was not refused in {SYSTEM}: {other:?}"),
    }

    let t0 = Instant::now();
    let replicas = ready_pods(client, SYSTEM, "app.kubernetes.io/name=keyturn", 2).await;
    println!(
        "install: 2 operator Pods Ready {:.1}s after apply",
        t0.elapsed().as_secs_f64()
    );
    for (name, _) in &replicas {
        let p = pods.get(name).await.unwrap();
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert!(
            c.readiness_probe.is_some() && c.liveness_probe.is_some(),
            "{name}: probes"
        );
        assert_eq!(
            c.image.as_deref(),
            Some("127.0.0.1:5000/keyturn:e2e"),
            "{name} runs the locally built image"
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        let st = p.status.as_ref().unwrap();
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 0, "{name} never restarted");
    }
    // Both replicas are Ready (the follower's watch caches are synced too); exactly one leads.
    let holder = support::wait_for("a Lease holder", Duration::from_secs(60), || async {
        lease_holder(client).await
    })
    .await;
    let names: Vec<&str> = replicas.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&holder.as_str()),
        "the Lease is held by {holder:?}, not by one of {names:?}"
    );
}

/// A workload Deployment from a doc's manifest, with the test image in `mode`.
fn workload(mut d: Value, mode: &str, replicas: u32) -> Deployment {
    let c = &mut d["spec"]["template"]["spec"]["containers"][0];
    c["image"] = json!(IMAGE);
    c["args"] = json!([mode]);
    c["imagePullPolicy"] = json!("IfNotPresent");
    c["readinessProbe"] =
        json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1});
    d["spec"]["replicas"] = json!(replicas);
    serde_json::from_value(d).unwrap()
}

/// One write keyturn made, as the test's watch saw it.
#[derive(Clone, Debug)]
struct Write {
    at_ms: i64,
    sha256: String,
    kids: Vec<String>,
}

/// Writes in the order the test's watch saw them.
type Writes = Arc<Mutex<Vec<Write>>>;

/// Watches the JWKS ConfigMap (`jwks.json`) and the signing Secret (`private.jwk.json`): one
/// [`Write`] per new content of each.
fn record_writes(client: &Client) -> (Writes, Writes) {
    let cms = record(
        Api::<ConfigMap>::namespaced(client.clone(), NS),
        format!("{SET}-jwks"),
        |cm| {
            (
                support::invariants::jwks_of(cm),
                support::invariants::kids_of(cm),
            )
        },
    );
    let secrets = record(
        Api::<Secret>::namespaced(client.clone(), NS),
        format!("{SET}-signing-key"),
        |s| {
            let data = s.data.as_ref().unwrap();
            (
                data["private.jwk.json"].0.clone(),
                vec![support::signing_kid(s)],
            )
        },
    );
    (cms, secrets)
}

/// Watches the object `name`; `content` gives the bytes a workload reads and their kids.
fn record<K>(api: Api<K>, name: String, content: fn(&K) -> (Vec<u8>, Vec<String>)) -> Writes
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let writes = Writes::default();
    let to = writes.clone();
    tokio::spawn(async move {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut w = watcher::watcher(api, cfg).boxed();
        while let Ok(Some(ev)) = w.try_next().await {
            if let Event::Apply(o) | Event::InitApply(o) = ev {
                let (bytes, kids) = content(&o);
                push_write(&to, &bytes, kids);
            }
        }
    });
    writes
}

fn push_write(to: &Mutex<Vec<Write>>, bytes: &[u8], kids: Vec<String>) {
    let sha = sha256_hex(bytes);
    let mut v = to.lock().unwrap();
    if v.last().is_none_or(|w| w.sha256 != sha) {
        v.push(Write {
            at_ms: now_ms(),
            sha256: sha,
            kids,
        });
    }
}

/// What a workload Pod saw of its mounted file: (first seen at, sha256, kids).
async fn observed(ip: &str) -> Vec<(i64, String, Vec<String>)> {
    let v = http_json(ip, "GET", "/observed", b"").await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["at_ms"].as_i64().unwrap(),
                o["sha256"].as_str().unwrap().to_string(),
                o["kids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

/// Delays (ms) from each write to the moment a Pod first saw that content, for writes made
/// after the Pod's first observation (earlier content was there when it started).
async fn delays(writes: &[Write], pods: &[(String, String)]) -> Vec<(String, String, i64)> {
    let mut out = vec![];
    for (name, ip) in pods {
        let seen = observed(ip).await;
        let start = seen.first().map(|s| s.0).unwrap_or(i64::MAX);
        for w in writes.iter().filter(|w| w.at_ms > start) {
            if let Some(s) = seen.iter().find(|s| s.1 == w.sha256) {
                out.push((name.clone(), w.kids.join(","), s.0 - w.at_ms));
            }
        }
    }
    out
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, d: &[(String, String, i64)]) -> Value {
    let mut ms: Vec<i64> = d.iter().map(|x| x.2).collect();
    ms.sort();
    assert!(!ms.is_empty(), "no {name} propagation was measured");
    let s = json!({
        "samples": ms.len(),
        "p50_ms": percentile(&ms, 0.5),
        "p99_ms": percentile(&ms, 0.99),
        "max_ms": ms.last(),
        "all_ms": ms,
    });
    println!("propagation {name}: {s}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyturn_on_a_real_node() {
    let client = support::client().await;
    install(&client).await;

    // Phase 2: the set, the workloads of the docs.
    let sync = sync_frequency();
    // The kubelet refreshes a Pod's volumes at each Pod sync: every syncFrequency, jittered up
    // to 1.5×. prePublish and overlap cover that with a margin; the interval is as short as
    // prePublish allows, to see three rotations in a test.
    let max_sync = sync.as_secs() * 3 / 2 + 10;
    let pre = max_sync;
    let overlap = max_sync;
    let interval = pre + 15;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .unwrap();
    let (cm_writes, secret_writes) = record_writes(&client);
    let sets: Api<keyturn::core::crd::SigningKeySet> = Api::namespaced(client.clone(), NS);
    let set: keyturn::core::crd::SigningKeySet = serde_json::from_value(json!({
        "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
        "metadata": {"name": SET, "namespace": NS},
        "spec": {"algorithm": "ES256", "rotation": {
            "interval": format!("{interval}s"), "prePublish": format!("{pre}s"),
            "overlap": format!("{overlap}s")}}
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    println!(
        "set {NS}/{SET}: interval {interval}s, prePublish {pre}s, overlap {overlap}s (kubelet syncFrequency {sync:?})"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    support::wait_object(
        &secrets,
        &format!("{SET}-signing-key"),
        "the first key (from the operator Pods)",
        Duration::from_secs(60),
        |o: Option<&Secret>| o.is_some(),
    )
    .await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let verifier = doc_manifest("docs/verifiers.md", "name: orders");
    let issuer = doc_manifest("docs/issuer.md", "name: issuer");
    let mut subpath = verifier.clone();
    subpath["metadata"]["name"] = json!("orders-subpath");
    subpath["spec"]["selector"]["matchLabels"]["app"] = json!("orders-subpath");
    subpath["spec"]["template"]["metadata"]["labels"]["app"] = json!("orders-subpath");
    // The docs' warning: jwks.json mounted with subPath, at the same path.
    subpath["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = json!([
        {"name": "jwks", "mountPath": "/etc/keyturn/jwks/jwks.json", "subPath": "jwks.json", "readOnly": true}
    ]);
    for (d, mode, n) in [
        (verifier, "verifier", 2),
        (issuer, "issuer", 2),
        (subpath, "verifier", 1),
    ] {
        deployments
            .create(&PostParams::default(), &workload(d, mode, n))
            .await
            .unwrap();
    }
    let jwks_svc: Service = Api::namespaced(client.clone(), SYSTEM)
        .get("keyturn-jwks")
        .await
        .unwrap();
    let svc = jwks_svc.spec.unwrap();
    let url = format!(
        "http://{}:{}/jwks/{NS}/{SET}",
        svc.cluster_ip.unwrap(),
        svc.ports.unwrap()[0].port
    );
    let fetcher: Pod = serde_json::from_value(json!({
        "metadata": {"name": "fetch", "labels": {"app": "fetch"}},
        "spec": {"containers": [{"name": "fetch", "image": IMAGE, "args": ["fetch"],
            "env": [{"name": "KEYTURN_JWKS_URL", "value": url}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &fetcher)
        .await
        .unwrap();
    let verifiers = ready_pods(&client, NS, "app=orders", 2).await;
    let issuers = ready_pods(&client, NS, "app=issuer", 2).await;
    let sub = ready_pods(&client, NS, "app=orders-subpath", 1).await;
    let fetch = ready_pods(&client, NS, "app=fetch", 1).await;

    // The JWKS through the Service (kube-proxy → an operator Pod) is the ConfigMap's bytes.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    support::wait_for(
        "the Service's JWKS to equal the ConfigMap's",
        Duration::from_secs(30),
        || async {
            let before = support::invariants::jwks_of(&cms.get(&format!("{SET}-jwks")).await.ok()?);
            let (status, body) = http(&fetch[0].1, "GET", "/fetch", b"").await?;
            let after = support::invariants::jwks_of(&cms.get(&format!("{SET}-jwks")).await.ok()?);
            (status == 200 && before == after && body == before).then_some(())
        },
    )
    .await;
    println!("service: {url} from a Pod returned the ConfigMap's bytes");

    // Phase 3: mint and verify continuously through three rotations.
    let results = Arc::new(Mutex::new(Vec::<(String, i64, String, Value)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let minting = {
        let (results, stop) = (results.clone(), stop.clone());
        let (issuers, mut all_verifiers) = (issuers.clone(), verifiers.clone());
        all_verifiers.extend(sub.iter().cloned());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for (iname, iip) in &issuers {
                    let t = http_json(iip, "GET", "/token", b"").await;
                    let token = t["token"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{iname} minted no token: {t}"));
                    let kid = t["kid"].as_str().unwrap().to_string();
                    let at = t["at_ms"].as_i64().unwrap();
                    for (vname, vip) in &all_verifiers {
                        let r = http_json(vip, "POST", "/verify", token.as_bytes()).await;
                        results
                            .lock()
                            .unwrap()
                            .push((kid.clone(), at, vname.clone(), r));
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let first_kid = secret_writes.lock().unwrap()[0].kids[0].clone();
    let mut leader_gone = None;
    for rotation in 1..=3 {
        let seen = secret_writes.lock().unwrap().len();
        support::wait_for(
            &format!("rotation {rotation}"),
            Duration::from_secs(interval + 60),
            || async { (secret_writes.lock().unwrap().len() > seen).then_some(()) },
        )
        .await;
        println!(
            "rotation {rotation}: {} signs",
            secret_writes.lock().unwrap().last().unwrap().kids[0]
        );
        if rotation == 1 {
            // The leader Pod goes away (graceful delete: SIGTERM releases the Lease) just after
            // a rotation; the next key's publication is due within the handover.
            let old = lease_holder(&client).await.unwrap();
            let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
            let t = Instant::now();
            pods.delete(&old, &DeleteParams::default()).await.unwrap();
            let new = support::wait_for("a new leader", Duration::from_secs(60), || async {
                lease_holder(&client).await.filter(|h| *h != old)
            })
            .await;
            let took = t.elapsed();
            println!(
                "handover: {old} deleted, {new} leads after {:.1}s",
                took.as_secs_f64()
            );
            assert!(
                took < Duration::from_secs(15),
                "the handover took {took:?}, longer than the 15 s Lease"
            );
            leader_gone = Some(old);
        }
    }
    // The last issuer switch can take a full kubelet sync after the activation.
    let last = secret_writes.lock().unwrap().last().unwrap().clone();
    support::wait_for(
        "every issuer Pod to sign with the last key",
        Duration::from_secs(max_sync + 30),
        || async {
            let r = results.lock().unwrap();
            let signing: BTreeSet<&str> = r
                .iter()
                .rev()
                .take(issuers.len() * 3 * 4)
                .map(|x| x.0.as_str())
                .collect();
            (signing.len() == 1 && signing.contains(last.kids[0].as_str())).then_some(())
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    minting.await.unwrap();

    // Replacement operator Pod is Ready again; the deleted one is not among them.
    let now_replicas = ready_pods(&client, SYSTEM, "app.kubernetes.io/name=keyturn", 2).await;
    assert!(
        !now_replicas
            .iter()
            .any(|(n, _)| Some(n) == leader_gone.as_ref())
    );

    // Every token minted verifies in every directory-mounted verifier.
    let results = results.lock().unwrap().clone();
    let sub_name = &sub[0].0;
    let failures: Vec<_> = results
        .iter()
        .filter(|r| &r.2 != sub_name && r.3["ok"] != json!(true))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} verifications failed in directory-mounted verifiers, e.g. {:?}",
        failures.len(),
        results.len(),
        failures.first()
    );
    let kids_signed: Vec<String> = {
        let mut v: Vec<(i64, String)> = vec![];
        for r in &results {
            if !v.iter().any(|x| x.1 == r.0) {
                v.push((r.1, r.0.clone()));
            }
        }
        v.sort();
        v.into_iter().map(|x| x.1).collect()
    };
    assert!(
        kids_signed.len() >= 4 && kids_signed[0] == first_kid,
        "tokens were signed by {kids_signed:?}: the first key and three rotations"
    );

    // Pre-publication, seen from inside the Pods: each kid was in each verifier's mounted file
    // before the first token it signed was minted.
    let first_mint: BTreeMap<&str, i64> = results.iter().fold(BTreeMap::new(), |mut m, r| {
        let e = m.entry(r.0.as_str()).or_insert(r.1);
        *e = (*e).min(r.1);
        m
    });
    for (vname, vip) in &verifiers {
        let seen = observed(vip).await;
        for (kid, minted) in &first_mint {
            let in_file = seen
                .iter()
                .find(|s| s.2.iter().any(|k| k == kid))
                .map(|s| s.0)
                .unwrap_or_else(|| panic!("{vname} never had {kid} in its mounted file"));
            assert!(
                in_file < *minted,
                "{kid} signed at {minted} but reached {vname}'s file only at {in_file}"
            );
            println!(
                "pre-publication: {kid} in {vname}'s file {:.1}s before it signed",
                (minted - in_file) as f64 / 1000.0
            );
        }
    }

    // The subPath mount never changed, so tokens of every rotated key failed there: the docs'
    // warning, shown. (The directory mounts above saw every change.)
    let sub_seen = observed(&sub[0].1).await;
    assert_eq!(
        sub_seen.len(),
        1,
        "the subPath mount was copied once and never updated: {sub_seen:?}"
    );
    let sub_failed: BTreeSet<&str> = results
        .iter()
        .filter(|r| &r.2 == sub_name && r.3["ok"] != json!(true))
        .map(|r| r.0.as_str())
        .collect();
    for kid in &kids_signed[1..] {
        assert!(
            sub_failed.contains(kid.as_str()),
            "a token of the rotated key {kid} verified against the subPath copy"
        );
    }
    println!(
        "subPath: {} of {} tokens failed against the stale copy (every key after the first)",
        results
            .iter()
            .filter(|r| &r.2 == sub_name && r.3["ok"] != json!(true))
            .count(),
        results.iter().filter(|r| &r.2 == sub_name).count()
    );

    // The schedule held through the handover: each activation one interval after the last.
    let activations: Vec<Write> = secret_writes.lock().unwrap().clone();
    for w in activations.windows(2) {
        let gap = (w[1].at_ms - w[0].at_ms) as f64 / 1000.0;
        assert!(
            (gap - interval as f64).abs() <= 5.0,
            "activation of {:?} came {gap:.1}s after the previous one, not {interval}s (a double or missed rotation)",
            w[1].kids
        );
    }

    // Phase 4: the kubelet's propagation delays, as the Pods saw them.
    let cm_list = cm_writes.lock().unwrap().clone();
    let secret_list = secret_writes.lock().unwrap().clone();
    let cm_delays = delays(&cm_list, &verifiers).await;
    let secret_delays = delays(&secret_list, &issuers).await;
    let report = json!({
        "kubelet": {"syncFrequency": format!("{sync:?}"),
                    "configMapAndSecretChangeDetectionStrategy": "Watch"},
        "schedule": {"interval_s": interval, "prePublish_s": pre, "overlap_s": overlap},
        "configmap_to_file": summary("ConfigMap → verifier file", &cm_delays),
        "secret_to_file": summary("Secret → issuer file", &secret_delays),
        "tokens_verified": results.iter().filter(|r| &r.2 != sub_name).count(),
    });
    if let Ok(dir) = std::env::var("KEYTURN_TEST_LOG_DIR") {
        std::fs::write(
            std::path::Path::new(&dir).join("propagation.json"),
            serde_json::to_string_pretty(&report).unwrap(),
        )
        .unwrap();
    }
    for (what, d) in [("ConfigMap", &cm_delays), ("Secret", &secret_delays)] {
        for (pod, kids, ms) in d {
            println!("  {what} [{kids}] → {pod}: {:.1}s", *ms as f64 / 1000.0);
        }
    }
    // The set stayed healthy throughout.
    let s = sets.get(SET).await.unwrap();
    let ready = s
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("True"), "{NS}/{SET} is Ready");
}
