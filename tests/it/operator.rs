//! The SigningKeySet operator against the real control plane: rotations observed from the
//! objects themselves (not the operator's status), tokens verified by an independent JWT
//! library, I3/I4/I5/I7, bad input, and clean-up.

use crate::support;

use crate::support::invariants::*;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use keyturn::core::crd::{Algorithm, SigningKeySet};

const MANAGED: &str = "app.kubernetes.io/managed-by=keyturn";

fn ready(reason: Option<&'static str>) -> impl Fn(Option<&SigningKeySet>) -> bool {
    move |o: Option<&SigningKeySet>| {
        o.and_then(|s| s.status.as_ref())
            .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| match reason {
                None => c.status == "True",
                Some(r) => c.status == "False" && c.reason == r,
            })
    }
}

/// Waits for `Ready=False` with `reason` on set `name`; returns the condition's message.
async fn wait_not_ready(sets: &Api<SigningKeySet>, name: &str, reason: &'static str) -> String {
    let s = support::wait_object(
        sets,
        name,
        &format!("Ready=False {reason}"),
        Duration::from_secs(30),
        ready(Some(reason)),
    )
    .await
    .unwrap();
    s.status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message
}

async fn wait_ready(client: &Client, ns: &str, name: &str) -> SigningKeySet {
    let api: Api<SigningKeySet> = Api::namespaced(client.clone(), ns);
    support::wait_object(
        &api,
        name,
        &format!("{ns}/{name} Ready"),
        Duration::from_secs(60),
        ready(None),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn rotations_keep_i1_i2_i3_and_tokens_verify_for_every_algorithm() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "rotate").await;
    let mut op = support::Operator::start(&ns);
    let pre = Duration::from_secs(3);
    let overlap = Duration::from_secs(4);
    let name_of = |a: Algorithm| format!("set-{}", a.as_str().to_lowercase());

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cfg = watcher::Config::default().labels(MANAGED);
    let mut events = futures::stream::select(
        watcher::watcher(cms.clone(), cfg.clone())
            .map_ok(either::Either::Left)
            .boxed(),
        watcher::watcher(secrets.clone(), cfg)
            .map_ok(either::Either::Right)
            .boxed(),
    );
    // Both watches are established before anything exists, so every write is seen.
    let mut init_done = 0;
    while init_done < 2 {
        match events.next().await.unwrap().unwrap() {
            either::Either::Left(watcher::Event::InitDone)
            | either::Either::Right(watcher::Event::InitDone) => init_done += 1,
            _ => {}
        }
    }
    for alg in Algorithm::ALL {
        support::create_set(
            &client,
            &ns,
            &name_of(alg),
            json!({
                "algorithm": alg.as_str(),
                "rotation": {"interval": "8s", "prePublish": "3s", "overlap": "4s"}
            }),
        )
        .await;
    }

    let mut history: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    let mut signers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen_pems: BTreeSet<String> = BTreeSet::new();
    let mut seen_private_jwks: BTreeSet<String> = BTreeSet::new();
    let start = Instant::now();
    let want_signers = 4; // first key + 3 rotations
    while signers.len() < Algorithm::ALL.len() || signers.values().any(|s| s.len() < want_signers) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not enough rotations within 120s: {:?}",
            signers
                .iter()
                .map(|(k, s)| (k.clone(), s.len()))
                .collect::<Vec<_>>()
        );
        let ev = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("an event within 30s");
        let ev = ev.expect("stream open").expect("watch ok");
        let at = Instant::now();
        match ev {
            either::Either::Left(watcher::Event::Apply(cm)) => {
                let set = cm.labels()["keyturn.dev/signing-key-set"].clone();
                let bytes = jwks_of(&cm);
                history.entry(set).or_default().push(Seen::Jwks {
                    rv: rv_of(&cm.metadata),
                    at,
                    kids: kids_of(&cm),
                    bytes,
                });
            }
            either::Either::Right(watcher::Event::Apply(sec)) => {
                if sec.name_any().ends_with("-keyturn-keys") {
                    continue; // the internal Secret
                }
                let set = sec.labels()["keyturn.dev/signing-key-set"].clone();
                seen_pems.insert(secret_str(&sec, "private.pem"));
                seen_private_jwks.insert(secret_str(&sec, "private.jwk.json"));
                let kid = secret_str(&sec, "kid");
                let pj: serde_json::Value =
                    serde_json::from_str(&secret_str(&sec, "private.jwk.json")).unwrap();
                assert_eq!(pj["kid"], kid.as_str(), "private.jwk.json matches kid");
                assert_eq!(pj["alg"].as_str().unwrap(), secret_str(&sec, "alg"));
                let (token, tkid) = sign_with_secret(&sec);
                assert_eq!(tkid, kid);
                signers.entry(set.clone()).or_default().insert(kid.clone());
                history.entry(set).or_default().push(Seen::Signer {
                    rv: rv_of(&sec.metadata),
                    at,
                    kid,
                    token,
                });
            }
            _ => {}
        }
    }
    op.assert_running();
    for (set, seen) in history {
        let (violations, verified, order) = check_history(seen, pre, overlap);
        assert!(violations.is_empty(), "{set}: {violations:#?}");
        assert!(
            verified >= want_signers,
            "{set}: verified {verified} tokens"
        );
        let distinct: BTreeSet<_> = order.iter().collect();
        assert_eq!(distinct.len(), order.len(), "{set}: a key signed twice");
    }
    // The algorithms are what the specs asked for.
    for alg in Algorithm::ALL {
        let cm = cms.get(&format!("{}-jwks", name_of(alg))).await.unwrap();
        let keys = keyturn::core::jwks::parse(&jwks_of(&cm)).unwrap();
        assert!(
            keys.iter().all(|k| k["alg"] == alg.as_str()),
            "{alg}: {keys:?}"
        );
    }

    // I3: no private material outside the operator's Secrets.
    let mut haystack = String::new();
    for cm in cms
        .list(&ListParams::default().labels(MANAGED))
        .await
        .unwrap()
    {
        haystack.push_str(&serde_json::to_string(&cm).unwrap());
    }
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    for s in sets.list(&ListParams::default()).await.unwrap() {
        haystack.push_str(&serde_json::to_string(&s).unwrap());
    }
    let evs: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let evs = evs.list(&ListParams::default()).await.unwrap();
    assert!(!evs.items.is_empty(), "the operator records Events");
    haystack.push_str(&serde_json::to_string(&evs).unwrap());
    haystack.push_str(&op.log_text());
    assert!(!haystack.contains("PRIVATE KEY"), "a PEM block leaked");
    for pem in &seen_pems {
        for line in pem.lines().filter(|l| l.len() >= 40) {
            assert!(!haystack.contains(line), "private key bytes leaked");
        }
    }
    for pj in &seen_private_jwks {
        let v: serde_json::Value = serde_json::from_str(pj).unwrap();
        for m in ["d", "p", "q", "dp", "dq", "qi"] {
            if let Some(x) = v.get(m).and_then(|x| x.as_str()) {
                assert!(!haystack.contains(x), "private member {m} leaked");
            }
        }
    }
    for cm in cms
        .list(&ListParams::default().labels(MANAGED))
        .await
        .unwrap()
    {
        keyturn::core::jwks::validate(&jwks_of(&cm)).unwrap();
    }
}

/// Counts "reconciled" log lines for one set.
fn reconciles(op: &support::Operator, set: &str) -> usize {
    op.log_text()
        .lines()
        .filter(|l| l.contains("\"reconciled\"") && l.contains(&format!("\"set\":\"{set}\"")))
        .count()
}

#[tokio::test]
async fn steady_state_reconciles_write_nothing() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "steady").await;
    let mut op = support::Operator::start(&ns);
    support::create_set(&client, &ns, "idle", json!({})).await;
    wait_ready(&client, &ns, "idle").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let snapshot = || async {
        vec![
            secrets
                .get("idle-signing-key")
                .await
                .unwrap()
                .resource_version(),
            secrets
                .get("idle-keyturn-keys")
                .await
                .unwrap()
                .resource_version(),
            cms.get("idle-jwks").await.unwrap().resource_version(),
            sets.get_status("idle")
                .await
                .unwrap()
                .status
                .map(|s| serde_json::to_string(&s).unwrap()),
        ]
    };
    // Settle: a reconcile completed after a change of our own making. Reconciles of one set
    // never overlap, so whatever keyturn had in flight (the first key's writes) completed
    // before it. (Waiting for one keyturn causes itself was flaky: echoes of its own writes
    // start none.)
    let settled = reconciles(&op, "idle");
    sets.patch(
        "idle",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"example.com/settle": "1"}}})),
    )
    .await
    .unwrap();
    support::wait_for(
        "a reconcile after the settling annotation",
        Duration::from_secs(20),
        || async { (reconciles(&op, "idle") > settled).then_some(()) },
    )
    .await;
    let before = snapshot().await;

    // Trigger reconciles: an unrelated annotation, then a full restart (initial list).
    let n = reconciles(&op, "idle");
    sets.patch(
        "idle",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"example.com/poke": "1"}}})),
    )
    .await
    .unwrap();
    support::wait_for(
        "a reconcile after the annotation",
        Duration::from_secs(20),
        || async { (reconciles(&op, "idle") > n).then_some(()) },
    )
    .await;
    op.restart();
    let n = reconciles(&op, "idle");
    support::wait_for(
        "a reconcile after restart",
        Duration::from_secs(30),
        || async { (reconciles(&op, "idle") > n).then_some(()) },
    )
    .await;
    assert_eq!(
        snapshot().await,
        before,
        "I5: a steady-state reconcile wrote something"
    );
    op.assert_running();
}

#[tokio::test]
async fn status_configmap_and_signing_secret_are_rebuilt_without_losing_keys() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "rebuild").await;
    let _op = support::Operator::start(&ns);
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({"rotation": {"interval": "1h", "prePublish": "30m", "overlap": "1h"}}),
    )
    .await;
    wait_ready(&client, &ns, "auth").await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // A manual rotation gives two published keys (Active + Pending).
    support::rotate(&sets, "auth", "1").await;
    let cm = support::wait_object(
        &cms,
        "auth-jwks",
        "two keys published",
        Duration::from_secs(30),
        |o: Option<&ConfigMap>| o.is_some_and(|c| kids_of(c).len() == 2),
    )
    .await
    .unwrap();
    let kids = kids_of(&cm);
    let signing = secrets.get("auth-signing-key").await.unwrap();
    let active = secret_str(&signing, "kid");
    assert_eq!(kids[0], active, "Active key first");

    // ConfigMap deleted → rebuilt with the same keys.
    cms.delete("auth-jwks", &DeleteParams::default())
        .await
        .unwrap();
    let old_uid = cm.uid().unwrap();
    let rebuilt = support::wait_object(
        &cms,
        "auth-jwks",
        "ConfigMap rebuilt",
        Duration::from_secs(30),
        move |o: Option<&ConfigMap>| {
            o.is_some_and(|c| c.uid().as_deref() != Some(old_uid.as_str()))
        },
    )
    .await
    .unwrap();
    assert_eq!(kids_of(&rebuilt), kids, "I7: no published key lost");
    assert_eq!(jwks_of(&rebuilt), jwks_of(&cm), "same bytes");

    // Signing Secret deleted → rebuilt with the same Active key.
    secrets
        .delete("auth-signing-key", &DeleteParams::default())
        .await
        .unwrap();
    let old_uid = signing.uid().unwrap();
    let rebuilt = support::wait_object(
        &secrets,
        "auth-signing-key",
        "signing Secret rebuilt",
        Duration::from_secs(30),
        move |o: Option<&Secret>| o.is_some_and(|c| c.uid().as_deref() != Some(old_uid.as_str())),
    )
    .await
    .unwrap();
    assert_eq!(secret_str(&rebuilt, "kid"), active);
    assert_eq!(rebuilt.data, signing.data, "same key material");

    // Status wiped → rebuilt from the operator's Secrets.
    sets.patch_status(
        "auth",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": null})),
    )
    .await
    .unwrap();
    let back = support::wait_object(
        &sets,
        "auth",
        "status rebuilt",
        Duration::from_secs(30),
        ready(None),
    )
    .await
    .unwrap();
    let st = back.status.unwrap();
    assert_eq!(st.active_key_id.as_deref(), Some(active.as_str()));
    assert_eq!(
        st.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
        kids
    );
    assert_eq!(st.keys[1].state, "Pending");
}

#[tokio::test]
async fn deleting_the_set_garbage_collects_its_objects() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "gcset").await;
    let op = support::Operator::start(&ns);
    support::create_set(&client, &ns, "gone", json!({})).await;
    wait_ready(&client, &ns, "gone").await;
    drop(op); // the garbage collector, not the operator, cleans up
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let uids = (
        secrets
            .get("gone-signing-key")
            .await
            .unwrap()
            .uid()
            .unwrap(),
        secrets
            .get("gone-keyturn-keys")
            .await
            .unwrap()
            .uid()
            .unwrap(),
        cms.get("gone-jwks").await.unwrap().uid().unwrap(),
    );
    Api::<SigningKeySet>::namespaced(client.clone(), &ns)
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    support::wait_deleted(
        &secrets,
        "gone-signing-key",
        &uids.0,
        Duration::from_secs(90),
    )
    .await;
    support::wait_deleted(
        &secrets,
        "gone-keyturn-keys",
        &uids.1,
        Duration::from_secs(90),
    )
    .await;
    support::wait_deleted(&cms, "gone-jwks", &uids.2, Duration::from_secs(90)).await;
}

#[tokio::test]
async fn kubectl_rejects_invalid_specs_naming_the_field() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "invalid").await;
    let cases: [(&str, &str); 7] = [
        (
            "rotation: {interval: 1h, prePublish: 2h}",
            "spec.rotation.prePublish",
        ),
        (
            "rotation: {interval: 1h, prePublish: 1h}",
            "spec.rotation.prePublish",
        ),
        ("algorithm: ES256\n  rsaKeySize: 2048", "spec.rsaKeySize"),
        ("algorithm: HS256", "spec.algorithm"),
        ("rotation: {interval: 1 hour}", "spec.rotation.interval"),
        ("rotation: {overlap: 0s}", "spec.rotation.overlap"),
        ("algorithm: RS256\n  rsaKeySize: 1024", "spec.rsaKeySize"),
    ];
    for (i, (spec, field)) in cases.iter().enumerate() {
        let manifest = format!(
            "apiVersion: keyturn.dev/v1alpha1\nkind: SigningKeySet\nmetadata: {{name: bad-{i}, namespace: {ns}}}\nspec:\n  {spec}\n"
        );
        let out = support::kubectl(&["apply", "-f", "-"], Some(&manifest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} ({spec}) was accepted");
        assert!(
            stderr.contains(field),
            "case {i}: message does not name {field}: {stderr}"
        );
    }
    // A valid one is accepted, with defaults filled in.
    let ok = format!(
        "apiVersion: keyturn.dev/v1alpha1\nkind: SigningKeySet\nmetadata: {{name: fine, namespace: {ns}}}\nspec: {{}}\n"
    );
    let out = support::kubectl(&["apply", "-f", "-"], Some(&ok));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = Api::<SigningKeySet>::namespaced(client, &ns)
        .get("fine")
        .await
        .unwrap();
    assert_eq!(s.spec.algorithm, Algorithm::ES256);
    assert_eq!(s.spec.rotation.interval, "720h");
    assert_eq!(s.spec.rotation.pre_publish, "1h");
    assert_eq!(s.spec.rotation.overlap, "24h");
}

async fn events_with_reason(client: &Client, ns: &str, reason: &str) -> usize {
    let evs: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    evs.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .count()
}

#[tokio::test]
async fn what_the_schema_cannot_catch_becomes_ready_false_with_an_event() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "notready").await;
    let mut op = support::Operator::start(&ns);
    support::create_set(
        &client,
        &ns,
        "clash",
        json!({"secretName": "clash-keyturn-keys"}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let msg = wait_not_ready(&sets, "clash", "InvalidSpec").await;
    assert!(msg.contains("spec.secretName"), "{msg}");
    support::wait_for("an InvalidSpec Event", Duration::from_secs(20), || async {
        (events_with_reason(&client, &ns, "InvalidSpec").await > 0).then_some(())
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets
            .list(&ListParams::default().labels(MANAGED))
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing generated"
    );
    op.assert_running();
}

/// kstatus (Flux, Argo CD, `kubectl wait`): a refusal that needs a spec edit is `Stalled`, the
/// fix clears it, and every condition names the generation it describes.
#[tokio::test]
async fn kstatus_stalled_until_the_spec_is_fixed_and_kubectl_wait_reads_it() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "kstatus").await;
    let mut op = support::Operator::start(&ns);
    support::create_set(
        &client,
        &ns,
        "stuck",
        json!({"secretName": "stuck-keyturn-keys"}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    wait_not_ready(&sets, "stuck", "InvalidSpec").await;
    let kubectl_wait = |cond: &str| {
        let out = support::kubectl(
            &[
                "-n",
                &ns,
                "wait",
                &format!("--for=condition={cond}"),
                "sks/stuck",
                "--timeout=60s",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "kubectl wait --for=condition={cond}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    kubectl_wait("Stalled");
    let s = sets.get("stuck").await.unwrap();
    let generation = s.metadata.generation;
    let conds = s.status.unwrap().conditions;
    let stalled = conds.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(conds.iter().all(|c| c.observed_generation == generation));
    assert!(!conds.iter().any(|c| c.type_ == "Reconciling"));

    sets.patch(
        "stuck",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"secretName": "stuck-signing"}})),
    )
    .await
    .unwrap();
    kubectl_wait("Ready");
    let s = sets.get("stuck").await.unwrap();
    let st = s.status.unwrap();
    assert_eq!(st.observed_generation, s.metadata.generation);
    assert_eq!(
        st.conditions
            .iter()
            .map(|c| c.type_.as_str())
            .collect::<Vec<_>>(),
        vec!["Ready"],
        "a Ready set is neither Stalled nor Reconciling"
    );
    op.assert_running();
}

#[tokio::test]
async fn foreign_objects_with_the_target_name_are_left_byte_identical() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "foreign").await;
    let mut op = support::Operator::start(&ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let foreign_cm = cms
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": "mine-jwks"}, "data": {"jwks.json": "{\"keys\":[]}", "other": "x"}
        })).unwrap())
        .await
        .unwrap();
    let foreign_secret = secrets
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": "theirs-signing-key", "labels": {"app.kubernetes.io/managed-by": "keyturn"}},
            "stringData": {"kid": "not-yours"}
        })).unwrap())
        .await
        .unwrap();
    support::create_set(&client, &ns, "mine", json!({})).await;
    support::create_set(&client, &ns, "theirs", json!({})).await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    for (set, what) in [("mine", "ConfigMap"), ("theirs", "Secret")] {
        let msg = wait_not_ready(&sets, set, "ForeignObject").await;
        assert!(
            msg.contains(what) && msg.contains(&format!("{set}-")),
            "{}",
            msg
        );
    }
    support::wait_for("ForeignObject Events", Duration::from_secs(20), || async {
        (events_with_reason(&client, &ns, "ForeignObject").await >= 2).then_some(())
    })
    .await;
    let cm_now = cms.get("mine-jwks").await.unwrap();
    assert_eq!(
        cm_now.resource_version(),
        foreign_cm.resource_version(),
        "I4: foreign ConfigMap untouched"
    );
    assert_eq!(cm_now.data, foreign_cm.data);
    let sec_now = secrets.get("theirs-signing-key").await.unwrap();
    assert_eq!(
        sec_now.resource_version(),
        foreign_secret.resource_version(),
        "I4: foreign Secret untouched"
    );
    op.assert_running();
}

/// `status.nextRotationTime` of a Ready set: when its next key becomes Active.
async fn next_rotation(sets: &Api<SigningKeySet>, name: &str) -> chrono::DateTime<chrono::Utc> {
    let s = sets.get(name).await.unwrap();
    let t = s
        .status
        .and_then(|st| st.next_rotation_time)
        .expect("a Ready set says when it rotates");
    chrono::DateTime::parse_from_rfc3339(&t).unwrap().to_utc()
}

#[tokio::test]
async fn corrupted_internal_secret_is_reported_and_no_published_key_is_dropped() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "corrupt").await;
    let mut op = support::Operator::start(&ns);
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({"rotation": {"interval": "20s", "prePublish": "5s", "overlap": "5s"}}),
    )
    .await;
    wait_ready(&client, &ns, "auth").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let cm_before = cms.get("auth-jwks").await.unwrap();
    let signing_before = secrets.get("auth-signing-key").await.unwrap();
    // When the next key would sign, as the schedule said before the state was broken.
    let due = next_rotation(&sets, "auth").await;
    // Truncate the state document, as a bad restore or a bug elsewhere might.
    let internal = secrets.get("auth-keyturn-keys").await.unwrap();
    let state = internal.data.as_ref().unwrap()["state.json"].0.clone();
    let truncated = String::from_utf8_lossy(&state[..state.len() / 2]).to_string();
    secrets
        .patch(
            "auth-keyturn-keys",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"state.json": truncated}})),
        )
        .await
        .unwrap();
    let msg = wait_not_ready(&sets, "auth", "InternalStateCorrupt").await;
    assert!(msg.contains("auth-keyturn-keys"), "{msg}");
    assert!(!msg.contains("PRIVATE"), "{msg}");
    // Past the instant the next key would have signed, and once the operator has looked at the
    // set again (its retry is 5 minutes away: poked), nothing published has changed.
    support::wait_until(due).await;
    let poked = support::poke(&sets, "auth").await;
    op.wait_reconciled_after("auth", poked, Duration::from_secs(30))
        .await;
    let cm_after = cms.get("auth-jwks").await.unwrap();
    assert_eq!(cm_after.data, cm_before.data, "published JWKS untouched");
    assert_eq!(
        secrets.get("auth-signing-key").await.unwrap().data,
        signing_before.data
    );
    assert!(events_with_reason(&client, &ns, "InternalStateCorrupt").await > 0);
    op.assert_running();
}

#[tokio::test]
async fn manual_rotation_and_emergency_revocation() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "manual").await;
    let _op = support::Operator::start(&ns);
    support::create_set(&client, &ns, "auth", json!({"algorithm": "EdDSA", "rotation": {"interval": "720h", "prePublish": "3s", "overlap": "1h"}})).await;
    wait_ready(&client, &ns, "auth").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let first = secret_str(&secrets.get("auth-signing-key").await.unwrap(), "kid");

    let t0 = Instant::now();
    sets.patch(
        "auth",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"keyturn.dev/rotate": "now"}}})),
    )
    .await
    .unwrap();
    let cm = support::wait_object(
        &cms,
        "auth-jwks",
        "pending key published",
        Duration::from_secs(30),
        |o: Option<&ConfigMap>| o.is_some_and(|c| kids_of(c).len() == 2),
    )
    .await
    .unwrap();
    let published_at = Instant::now();
    let second = kids_of(&cm)[1].clone();
    assert_eq!(
        secret_str(&secrets.get("auth-signing-key").await.unwrap(), "kid"),
        first,
        "old key still signs"
    );
    let f2 = first.clone();
    let signing = support::wait_object(
        &secrets,
        "auth-signing-key",
        "manual key active",
        Duration::from_secs(30),
        move |o: Option<&Secret>| o.is_some_and(|s| secret_str(s, "kid") != f2),
    )
    .await
    .unwrap();
    assert_eq!(secret_str(&signing, "kid"), second);
    assert!(
        published_at.elapsed() + JITTER >= Duration::from_secs(3),
        "activated only after prePublish"
    );
    assert!(t0.elapsed() < Duration::from_secs(30));

    // Revoke the Active key: it leaves the JWKS and a replacement signs at once.
    sets.patch(
        "auth",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"revokedKeyIds": [second]}})),
    )
    .await
    .unwrap();
    // The revoked key leaves the signing Secret first (it may be empty for a moment: no key
    // rather than a revoked one), then the replacement signs.
    let s2 = second.clone();
    let signing = support::wait_object(
        &secrets,
        "auth-signing-key",
        "replacement signs",
        Duration::from_secs(30),
        move |o: Option<&Secret>| {
            o.and_then(|s| s.data.as_ref()?.get("kid"))
                .is_some_and(|k| k.0 != s2.as_bytes())
        },
    )
    .await
    .unwrap();
    let third = secret_str(&signing, "kid");
    let cm = cms.get("auth-jwks").await.unwrap();
    assert!(!kids_of(&cm).contains(&second), "revoked key left the JWKS");
    assert!(
        kids_of(&cm).contains(&third) && kids_of(&cm).contains(&first),
        "replacement published, retired key kept"
    );
    let s = support::wait_object(
        &sets,
        "auth",
        "status shows revocation",
        Duration::from_secs(30),
        |o: Option<&SigningKeySet>| {
            o.and_then(|s| s.status.as_ref())
                .is_some_and(|st| st.conditions.iter().any(|c| c.type_ == "Revoked"))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        s.status.unwrap().active_key_id.as_deref(),
        Some(third.as_str())
    );
    support::wait_for(
        "an ActiveKeyRevoked Event",
        Duration::from_secs(20),
        || async { (events_with_reason(&client, &ns, "ActiveKeyRevoked").await > 0).then_some(()) },
    )
    .await;
    let internal = secrets.get("auth-keyturn-keys").await.unwrap();
    let state = String::from_utf8(internal.data.unwrap()["state.json"].0.clone()).unwrap();
    assert!(
        !state.contains(&second),
        "revoked key's record and private key destroyed"
    );
}

#[tokio::test]
async fn a_deleted_internal_secret_never_replaces_published_keys() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "nostate").await;
    let mut op = support::Operator::start(&ns);
    support::create_set(&client, &ns, "auth", json!({})).await;
    wait_ready(&client, &ns, "auth").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let cm_before = cms.get("auth-jwks").await.unwrap();
    let signing_before = secrets.get("auth-signing-key").await.unwrap();
    secrets
        .delete("auth-keyturn-keys", &DeleteParams::default())
        .await
        .unwrap();
    let msg = wait_not_ready(&sets, "auth", "InternalStateMissing").await;
    assert!(msg.contains("auth-keyturn-keys"), "{msg}");
    assert_eq!(
        cms.get("auth-jwks").await.unwrap().data,
        cm_before.data,
        "published keys kept"
    );
    assert_eq!(
        secrets.get("auth-signing-key").await.unwrap().data,
        signing_before.data,
        "signing key kept"
    );
    assert!(
        secrets
            .get_opt("auth-keyturn-keys")
            .await
            .unwrap()
            .is_none(),
        "no fresh key set started"
    );
    op.assert_running();
}

#[tokio::test]
async fn keyturn_status_shows_each_key_and_its_timeline() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "view").await;
    let _op = support::Operator::start(&ns);
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({"rotation": {"interval": "1h", "prePublish": "10m", "overlap": "1h"}}),
    )
    .await;
    let s = wait_ready(&client, &ns, "auth").await;
    let active = s.status.unwrap().active_key_id.unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyturn"))
            .args(args)
            .env("KUBECONFIG", support::kubeconfig_path())
            .output()
            .unwrap()
    };
    let out = run(&["status", &format!("{ns}/auth")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("Ready=True") && text.contains("Active") && text.contains(&active[..13]),
        "{text}"
    );
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
    let out = run(&["status", &format!("{ns}/auth"), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["activeKeyId"], active.as_str());
    assert_eq!(v["keys"][0]["state"], "Active");
    let missing = run(&["status", &format!("{ns}/nope")]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

#[tokio::test]
async fn a_deleted_sets_metric_series_disappear() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "metrics").await;
    let op = support::Operator::start(&ns);
    for name in ["stays", "goes"] {
        support::create_set(&client, &ns, name, json!({})).await;
        wait_ready(&client, &ns, name).await;
    }
    let series = |name: &str| format!("namespace=\"{ns}\",name=\"{name}\"");
    let scrape = || {
        op.admin_get("/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    support::wait_for("both sets' series", Duration::from_secs(20), || async {
        let m = scrape();
        (m.contains(&series("stays")) && m.contains(&series("goes"))).then_some(())
    })
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let uid = sets.get("goes").await.unwrap().metadata.uid.unwrap();
    sets.delete("goes", &DeleteParams::default()).await.unwrap();
    support::wait_deleted(&sets, "goes", &uid, Duration::from_secs(30)).await;
    let m = support::wait_for(
        "the deleted set's series gone",
        Duration::from_secs(20),
        || async {
            let m = scrape();
            (!m.contains(&series("goes"))).then_some(m)
        },
    )
    .await;
    assert!(
        m.contains(&series("stays")),
        "the other set keeps its series:\n{m}"
    );
}
