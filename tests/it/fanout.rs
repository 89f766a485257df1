//! Namespace fan-out against the real control plane: copies appear in listed and selected
//! namespaces (also ones created later), disappear when deselected, stay byte-identical to
//! the source, never overwrite a foreign ConfigMap, and block activation until published.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use keyturn::core::crd::SigningKeySet;

async fn namespace(client: &Client, name: &str, labels: serde_json::Value) {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn copy_in(client: &Client, ns: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

fn data(cm: &ConfigMap) -> BTreeMap<String, String> {
    cm.data.clone().unwrap_or_default()
}

/// Waits until the copy in `ns` holds the same data as the source in `src`.
async fn wait_identical(client: &Client, src: &str, ns: &str, name: &str) {
    support::wait_for(
        &format!("copy in {ns} identical to the source"),
        Duration::from_secs(30),
        || async {
            let s = copy_in(client, src, name).await?;
            let c = copy_in(client, ns, name).await?;
            let managed = c
                .labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str)
                == Some("keyturn");
            (managed && data(&s) == data(&c)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn copies_follow_listed_and_selected_namespaces_and_stay_identical() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "fan").await;
    let label = format!("jwks-{src}");
    let listed = format!("{src}-listed");
    let before = format!("{src}-before");
    let later = format!("{src}-later");
    namespace(&client, &listed, json!({})).await;
    namespace(&client, &before, json!({label.clone(): "on"})).await;
    for ns in [&listed, &before] {
        support::grant(&client, ns, &src, "fan").await;
    }
    let _op = support::Operator::start(&src);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &src);
    let obj: SigningKeySet = serde_json::from_value(json!({
        "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
        "metadata": {"name": "fan"},
        "spec": {
            "rotation": {"interval": "10s", "prePublish": "3s", "overlap": "3s"},
            "jwks": {"namespaces": [listed, "does-not-exist-yet"], "namespaceSelector": {"matchLabels": {label.clone(): "on"}}}
        }
    }))
    .unwrap();
    sets.create(&PostParams::default(), &obj).await.unwrap();
    wait_identical(&client, &src, &listed, "fan-jwks").await;
    wait_identical(&client, &src, &before, "fan-jwks").await;

    // A namespace created later with the label gets its copy.
    namespace(&client, &later, json!({label.clone(): "on"})).await;
    support::grant_all(&client, &later, &src, &["fan-jwks"]).await;
    wait_identical(&client, &src, &later, "fan-jwks").await;

    // Through a rotation, every copy keeps matching the source.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &src);
    let first = secrets.get("fan-signing-key").await.unwrap().data.unwrap()["kid"]
        .0
        .clone();
    support::wait_object(
        &secrets,
        "fan-signing-key",
        "a rotation",
        Duration::from_secs(40),
        move |o: Option<&Secret>| o.is_some_and(|s| s.data.as_ref().unwrap()["kid"].0 != first),
    )
    .await;
    for ns in [&listed, &before, &later] {
        wait_identical(&client, &src, ns, "fan-jwks").await;
    }
    let mut want = vec![src.clone(), listed.clone(), before.clone(), later.clone()];
    want.sort();
    support::wait_object(
        &sets,
        "fan",
        "status lists the namespaces",
        Duration::from_secs(20),
        move |o: Option<&SigningKeySet>| {
            o.and_then(|s| s.status.as_ref())
                .is_some_and(|st| st.published_namespaces == want)
        },
    )
    .await;

    // Deselect by label: that copy goes away; the others stay.
    Api::<Namespace>::all(client.clone())
        .patch(
            &before,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label.clone(): null}}})),
        )
        .await
        .unwrap();
    support::wait_for(
        "copy removed from the deselected namespace",
        Duration::from_secs(30),
        || async {
            copy_in(&client, &before, "fan-jwks")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(copy_in(&client, &listed, "fan-jwks").await.is_some());

    // Deleting the set removes copies in other namespaces (finalizer), then the set goes.
    let uid = sets.get("fan").await.unwrap().uid().unwrap();
    sets.delete("fan", &DeleteParams::default()).await.unwrap();
    support::wait_deleted(&sets, "fan", &uid, Duration::from_secs(30)).await;
    for ns in [&listed, &later] {
        assert!(
            copy_in(&client, ns, "fan-jwks").await.is_none(),
            "copy left behind in {ns}"
        );
    }
}

#[tokio::test]
async fn a_foreign_configmap_blocks_activation_and_is_never_touched() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "block").await;
    let other = format!("{src}-other");
    namespace(&client, &other, json!({})).await;
    support::grant_all(&client, &other, &src, &["blk-jwks"]).await;
    let foreign_api: Api<ConfigMap> = Api::namespaced(client.clone(), &other);
    let foreign = foreign_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "blk-jwks"}, "data": {"jwks.json": "theirs"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let op = support::Operator::start(&src);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &src);
    let obj: SigningKeySet = serde_json::from_value(json!({
        "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
        "metadata": {"name": "blk"},
        "spec": {"rotation": {"interval": "10s", "prePublish": "2s", "overlap": "2s"}, "jwks": {"namespaces": [other]}}
    }))
    .unwrap();
    sets.create(&PostParams::default(), &obj).await.unwrap();
    let s = support::wait_object(
        &sets,
        "blk",
        "Ready=False PublishFailed",
        Duration::from_secs(30),
        |o: Option<&SigningKeySet>| {
            o.and_then(|s| s.status.as_ref())
                .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "False" && c.reason == "PublishFailed")
        },
    )
    .await
    .unwrap();
    let msg = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(msg.contains(&other) && msg.contains("not managed"), "{msg}");
    // No key signs while one copy cannot hold it: I1 wins over the schedule.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &src);
    // Past prePublish after the refusal (the key was stored before it), and once the operator
    // has looked at the set again, nothing signs.
    support::wait_until(chrono::Utc::now() + chrono::Duration::seconds(2)).await;
    let poked = support::poke(&sets, "blk").await;
    op.wait_reconciled_after("blk", poked, Duration::from_secs(30))
        .await;
    assert!(
        secrets.get_opt("blk-signing-key").await.unwrap().is_none(),
        "a key signs before every copy has it"
    );
    let now = foreign_api.get("blk-jwks").await.unwrap();
    assert_eq!(
        now.resource_version(),
        foreign.resource_version(),
        "I4: foreign ConfigMap untouched"
    );
    assert_eq!(now.data, foreign.data);
    let evs: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &src);
    assert!(
        evs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("PublishFailed")),
        "an Event names the failure"
    );

    // Once the foreign object is gone, the set publishes everywhere and its key signs.
    foreign_api
        .delete("blk-jwks", &DeleteParams::default())
        .await
        .unwrap();
    support::wait_object(
        &secrets,
        "blk-signing-key",
        "first key signs",
        Duration::from_secs(40),
        |o: Option<&Secret>| o.is_some(),
    )
    .await;
    let src_cm = Api::<ConfigMap>::namespaced(client.clone(), &src)
        .get("blk-jwks")
        .await
        .unwrap();
    let copy = foreign_api.get("blk-jwks").await.unwrap();
    assert_eq!(copy.data, src_cm.data);
}

#[tokio::test]
async fn renaming_the_jwks_key_moves_the_data_in_every_copy() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "rename").await;
    let listed = format!("{src}-listed");
    namespace(&client, &listed, json!({})).await;
    support::grant(&client, &listed, &src, "ren").await;
    let _op = support::Operator::start(&src);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &src);
    support::create_set(
        &client,
        &src,
        "ren",
        json!({"jwks": {"namespaces": [listed]}}),
    )
    .await;
    wait_identical(&client, &src, &listed, "ren-jwks").await;
    let before = data(&copy_in(&client, &src, "ren-jwks").await.unwrap());
    assert_eq!(before.keys().collect::<Vec<_>>(), ["jwks.json"]);

    sets.patch(
        "ren",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"jwks": {"key": "keys.json"}}})),
    )
    .await
    .unwrap();
    // Only the new data key is left, holding the same JWKS, in the source and the copy: a
    // workload still reading jwks.json must fail visibly, not read a JWKS that never changes.
    let want = BTreeMap::from([("keys.json".to_string(), before["jwks.json"].clone())]);
    for ns in [&src, &listed] {
        support::wait_for(
            &format!("{ns}/ren-jwks holds only keys.json"),
            Duration::from_secs(30),
            || async { (data(&copy_in(&client, ns, "ren-jwks").await?) == want).then_some(()) },
        )
        .await;
    }
}

/// Sum of every series of a counter in a Prometheus text scrape.
fn counter_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn deleting_a_namespace_of_rotating_sets_is_a_quiet_teardown() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "teardown").await;
    let dst = format!("{src}-copies");
    namespace(&client, &dst, json!({})).await;
    let copy_names: Vec<String> = (0..10).map(|i| format!("set{i}-jwks")).collect();
    let copy_names: Vec<&str> = copy_names.iter().map(String::as_str).collect();
    support::grant_all(&client, &dst, &src, &copy_names).await;
    let op = support::Operator::start(&src);
    let names: Vec<String> = (0..10).map(|i| format!("set{i}")).collect();
    for name in &names {
        support::create_set(&client, &src, name, json!({"rotation": {"interval": "4s", "prePublish": "1s", "overlap": "1s"}, "jwks": {"namespaces": [dst]}})).await;
    }
    for name in &names {
        wait_identical(&client, &src, &dst, &format!("{name}-jwks")).await;
    }
    let scrape = || op.admin_get("/metrics").map(|(_, m)| m).unwrap_or_default();
    let before = scrape();
    let log_before = op.log_text().lines().count();

    let nss: Api<Namespace> = Api::all(client.clone());
    let uid = nss.get(&src).await.unwrap().metadata.uid.unwrap();
    nss.delete(&src, &DeleteParams::default()).await.unwrap();
    support::wait_deleted(&nss, &src, &uid, Duration::from_secs(120)).await;
    // The finalizer still removed every copy in the other namespace.
    let copies: Api<ConfigMap> = Api::namespaced(client.clone(), &dst);
    support::wait_for("copies removed", Duration::from_secs(30), || async {
        copies
            .list(&ListParams::default().labels(&format!("keyturn.dev/source-namespace={src}")))
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let after = scrape();
    for counter in ["keyturn_reconcile_errors_total", "keyturn_not_ready_total"] {
        assert_eq!(
            counter_sum(&before, counter),
            counter_sum(&after, counter),
            "{counter} moved during a teardown:\n{after}"
        );
    }
    let log = op.log_text();
    let noisy: Vec<&str> = log
        .lines()
        .skip(log_before)
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(noisy.is_empty(), "a teardown logged warnings: {noisy:#?}");
}

/// A tenant of a target namespace (allowed every verb on ConfigMaps there, nothing else)
/// rewrites keyturn's JWKS copy twice in a row, the second time before keyturn's cache of
/// copies can have seen the first: keyturn puts the copy back each time (a write decided
/// from the stale cache fails its resourceVersion precondition and is retried, quietly),
/// and the set stays Ready.
#[tokio::test]
async fn a_tenant_rewriting_a_copy_in_its_namespace_gets_it_put_back() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "repair").await;
    let dst = format!("{src}-copies");
    namespace(&client, &dst, json!({})).await;
    support::grant(&client, &dst, &src, "auth").await;
    let (tenant, _) = support::restricted_with(
        &client,
        &dst,
        "cm-writer",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}]),
    )
    .await;
    let op = support::Operator::start(&src);
    support::create_set(
        &client,
        &src,
        "auth",
        json!({"jwks": {"namespaces": [dst]}}),
    )
    .await;
    wait_identical(&client, &src, &dst, "auth-jwks").await;
    let copies: Api<ConfigMap> = Api::namespaced(tenant, &dst);
    let forged = |kid: String| {
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid,
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})
        .to_string()
    };
    for round in 0..2 {
        // Two different rewrites back to back, each over what the tenant just read.
        for j in 0..2 {
            let want = forged(format!("forged-{round}-{j}"));
            // The tenant's write must land (re-read if keyturn's repair came in between).
            let written =
                support::wait_for("the tenant's rewrite", Duration::from_secs(10), || async {
                    let mut c = copies.get("auth-jwks").await.unwrap();
                    c.data
                        .get_or_insert_default()
                        .insert("jwks.json".into(), want.clone());
                    match copies
                        .replace("auth-jwks", &PostParams::default(), &c)
                        .await
                    {
                        Ok(c) => Some(c),
                        Err(kube::Error::Api(e)) if e.code == 409 => None,
                        Err(e) => panic!("the tenant may write ConfigMaps here: {e}"),
                    }
                })
                .await;
            assert_eq!(written.data.unwrap()["jwks.json"], want);
        }
        wait_identical(&client, &src, &dst, "auth-jwks").await;
    }
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &src);
    let s = sets.get("auth").await.unwrap();
    let ready = s
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("True"), "the set stays Ready");
    let noisy: Vec<String> = op
        .log_text()
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .map(String::from)
        .collect();
    assert!(noisy.is_empty(), "a repair logged warnings: {noisy:#?}");
}
