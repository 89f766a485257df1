//! Obstruction, tried from the attacker's own identity against the real control plane: a
//! tenant who cannot forge a key tries to stop keyturn from doing its job for somebody else.
//! Each test is an attack of docs/security.md's "Obstruction" section:
//!
//! - a blocked copy (an object of the copy's name that keyturn did not make) never holds a
//!   revocation back: the revoked key leaves the signing Secret and every copy keyturn can
//!   write within seconds, and its replacement signs (I10);
//! - a ConfigMap that merely carries a copy's labels and annotations is never taken for the
//!   copy, is never touched, and cannot freeze the set (I11);
//! - a set parked in a refused state keeps no copy in a namespace that withdrew its consent
//!   (I8);
//! - a copy cannot take a name in another namespace that its grant did not list (squatting).
//!
//! (A `spec.verificationKeys` source read only with its writers' consent is attacked in
//! tests/it/adoption.rs.)

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use keyturn::core::crd::SigningKeySet;

/// How long a revocation may take to reach the signing Secret and every writable copy: a few
/// reconciles, far below any retry (the blocked copy's is 10 s, a refusal's 60 s).
const REVOCATION_WITHIN: Duration = Duration::from_secs(8);

async fn namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// The kids of the JWKS a ConfigMap holds (none when it holds no JWKS).
fn kids(cm: &ConfigMap) -> Vec<String> {
    cm.data
        .as_ref()
        .and_then(|d| d.get("jwks.json"))
        .and_then(|t| keyturn::core::jwks::kids(t.as_bytes()).ok())
        .unwrap_or_default()
}

/// A tenant of `ns` who may do anything with ConfigMaps there and nothing else.
async fn configmap_writer(client: &Client, ns: &str) -> Api<ConfigMap> {
    let (c, _) = support::restricted_with(
        client,
        ns,
        "cm-writer",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}]),
    )
    .await;
    Api::namespaced(c, ns)
}

/// Revokes `kid` of `src/auth` (the set's owner does it, with the admin client here: it is
/// not the attacker).
async fn revoke(client: &Client, src: &str, kid: &str) {
    Api::<SigningKeySet>::namespaced(client.clone(), src)
        .patch(
            "auth",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revokedKeyIds": [kid]}})),
        )
        .await
        .unwrap();
}

/// Waits until the signing Secret of `src/auth` holds a key other than `revoked`.
async fn wait_replaced(client: &Client, src: &str, revoked: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), src);
    let r = revoked.to_string();
    let s = support::wait_object(
        &secrets,
        "auth-signing-key",
        "the revoked key out of the signing Secret and its replacement in",
        REVOCATION_WITHIN,
        move |o: Option<&Secret>| {
            o.and_then(|s| s.data.as_ref()?.get("kid"))
                .is_some_and(|k| k.0 != r.as_bytes())
        },
    )
    .await
    .unwrap();
    support::signing_kid(&s)
}

/// Waits until `src/auth`'s status has `kid` Active and `Ready` with `status`/`reason` (a
/// status written after the revocation: one that only predates it names the revoked kid);
/// returns the condition's message.
async fn wait_status_after(
    client: &Client,
    src: &str,
    kid: &str,
    status: &'static str,
    reason: &'static str,
) -> String {
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), src);
    let kid = kid.to_string();
    let s = support::wait_object(
        &sets,
        "auth",
        &format!("status: {kid} Active, Ready={status} ({reason})"),
        REVOCATION_WITHIN,
        move |o: Option<&SigningKeySet>| {
            o.and_then(|s| s.status.as_ref()).is_some_and(|st| {
                st.active_key_id.as_deref() == Some(kid.as_str())
                    && st
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == status && c.reason == reason)
            })
        },
    )
    .await
    .unwrap();
    support::condition(&s, "Ready").unwrap().2
}

/// Waits until the copy `ns/auth-jwks` holds `kid` and not `revoked`.
async fn wait_copy(client: &Client, ns: &str, kid: &str, revoked: &str) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let (kid, revoked) = (kid.to_string(), revoked.to_string());
    support::wait_object(
        &cms,
        "auth-jwks",
        &format!("{ns}/auth-jwks to hold the replacement and not the revoked key"),
        REVOCATION_WITHIN,
        move |o: Option<&ConfigMap>| {
            o.is_some_and(|c| {
                let k = kids(c);
                k.contains(&kid) && !k.contains(&revoked)
            })
        },
    )
    .await;
}

/// Reproduction 1 of the obstruction issue: a tenant of a fan-out namespace replaces keyturn's
/// copy with an object of its own, which blocks every write there. The set's owner then
/// revokes its Active key in an emergency: the revoked key must stop signing at once.
#[tokio::test]
async fn a_blocked_copy_never_holds_a_revocation_back() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "revoke").await;
    let (dst, blocked) = (format!("{src}-a"), format!("{src}-b"));
    for ns in [&dst, &blocked] {
        namespace(&client, ns).await;
        support::grant(&client, ns, &src, "auth").await;
    }
    let attacker = configmap_writer(&client, &blocked).await;
    let _op = support::Operator::start(&src);
    support::create_set(
        &client,
        &src,
        "auth",
        json!({"rotation": {"interval": "1h", "prePublish": "10m", "overlap": "10m"},
               "jwks": {"namespaces": [dst, blocked]}}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &src);
    support::wait_condition(&sets, "auth", "Ready", "True", "KeysPublished").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &src);
    let revoked = support::signing_kid(&secrets.get("auth-signing-key").await.unwrap());

    // The attacker puts an object of its own where keyturn's copy was (keyturn recreates its
    // copy as soon as it is deleted: the attacker tries until its own object holds the name).
    let theirs: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "auth-jwks"}, "data": {"jwks.json": "theirs"}}),
    )
    .unwrap();
    let foreign = support::wait_for(
        "the attacker's object in the copy's place",
        Duration::from_secs(20),
        || async {
            let _ = attacker.delete("auth-jwks", &DeleteParams::default()).await;
            attacker.create(&PostParams::default(), &theirs).await.ok()
        },
    )
    .await;
    let msg = support::wait_condition(&sets, "auth", "Ready", "False", "PublishFailed").await;
    assert!(msg.contains(&blocked), "{msg}");

    // The emergency: the Active key is revoked while the copy is blocked.
    revoke(&client, &src, &revoked).await;
    let replacement = wait_replaced(&client, &src, &revoked).await;
    for ns in [&src, &dst] {
        wait_copy(&client, ns, &replacement, &revoked).await;
    }
    // The blocked copy is named, and stays the attacker's, byte for byte (I4).
    let msg = wait_status_after(&client, &src, &replacement, "False", "PublishFailed").await;
    assert!(msg.contains(&blocked) && !msg.contains(&dst), "{msg}");
    let now = attacker.get("auth-jwks").await.unwrap();
    assert_eq!(now.resource_version(), foreign.resource_version());
    // The revoked key is gone from keyturn's state, private key included.
    let internal = secrets.get("auth-keyturn-keys").await.unwrap();
    let state = String::from_utf8_lossy(&internal.data.unwrap()["state.json"].0).into_owned();
    assert!(
        !state.contains(&revoked),
        "the revoked record is still stored"
    );
}

/// Reproduction 2: a tenant of a fan-out namespace creates a second ConfigMap carrying the
/// copy's labels and owner annotation. It must not be taken for the copy: a revocation still
/// reaches the real copy at once, the set says Ready only once it has, and the decoy is left
/// untouched.
#[tokio::test]
async fn a_labelled_decoy_neither_freezes_a_set_nor_is_touched() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "decoy").await;
    let dst = format!("{src}-copies");
    namespace(&client, &dst).await;
    support::grant(&client, &dst, &src, "auth").await;
    let attacker = configmap_writer(&client, &dst).await;
    let _op = support::Operator::start(&src);
    support::create_set(
        &client,
        &src,
        "auth",
        json!({"rotation": {"interval": "1h", "prePublish": "10m", "overlap": "10m"},
               "jwks": {"namespaces": [dst]}}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &src);
    support::wait_condition(&sets, "auth", "Ready", "True", "KeysPublished").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &src);
    let revoked = support::signing_kid(&secrets.get("auth-signing-key").await.unwrap());

    // The decoy: the real copy's labels and annotations, under names sorting before and
    // after the copy's.
    let real = support::wait_for("the copy", Duration::from_secs(20), || async {
        attacker.get_opt("auth-jwks").await.unwrap()
    })
    .await;
    let mut decoys = vec![];
    for name in ["aa0", "zz1"] {
        let decoy: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": real.labels(), "annotations": real.annotations()},
            "data": {"jwks.json": "{\"keys\":[]}"}
        }))
        .unwrap();
        decoys.push(
            attacker
                .create(&PostParams::default(), &decoy)
                .await
                .unwrap(),
        );
    }

    revoke(&client, &src, &revoked).await;
    let replacement = wait_replaced(&client, &src, &revoked).await;
    wait_copy(&client, &dst, &replacement, &revoked).await;
    wait_status_after(&client, &src, &replacement, "True", "KeysPublished").await;
    for d in decoys {
        let now = attacker.get(&d.name_any()).await.unwrap();
        assert_eq!(
            now.resource_version(),
            d.resource_version(),
            "decoy {} was touched",
            d.name_any()
        );
    }
}

/// A tenant parks its set in a state keyturn refuses (a reserved name keyturn refuses at run
/// time, never retried) while the namespace it fans out to withdraws its consent: the copy
/// must leave all the same.
#[tokio::test]
async fn a_grant_withdrawn_while_the_set_is_refused_removes_the_copy() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "withdraw").await;
    let dst = format!("{src}-copies");
    namespace(&client, &dst).await;
    let grant = support::grant(&client, &dst, &src, "auth").await;
    let tenant = support::set_writer(&client, &src).await;
    let _op = support::Operator::start(&src);
    support::create_set(
        &client,
        &src,
        "auth",
        json!({"jwks": {"namespaces": [dst]}}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &src);
    support::wait_condition(&sets, "auth", "Ready", "True", "KeysPublished").await;
    let copies: Api<ConfigMap> = Api::namespaced(client.clone(), &dst);
    let copy = copies.get("auth-jwks").await.unwrap();

    Api::<SigningKeySet>::namespaced(tenant, &src)
        .patch(
            "auth",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"secretName": "auth-keyturn-keys"}})),
        )
        .await
        .expect("the tenant may edit its set");
    support::wait_condition(&sets, "auth", "Ready", "False", "InvalidSpec").await;

    // The target namespace's administrator withdraws consent.
    Api::<keyturn::core::crd::SigningKeySetGrant>::namespaced(client.clone(), &dst)
        .delete(&grant, &DeleteParams::default())
        .await
        .unwrap();
    support::wait_deleted(
        &copies,
        "auth-jwks",
        &copy.uid().unwrap(),
        Duration::from_secs(10),
    )
    .await;
}

/// Name squatting: namespace `dst` accepts every set of `src`, under the one copy name it
/// expects (`auth-jwks`). A tenant of `src` tries to take `payments-jwks` in `dst` before
/// `dst`'s own set `payments` exists (a set named `payments`), and `billing-jwks` (a set that
/// names its ConfigMap so): neither gets a copy (`FanOut=False ConsentMissing` naming the name to list),
/// `dst`'s own `payments` then gets its keys, and the granted name still gets its copy.
#[tokio::test]
async fn a_copy_cannot_take_a_name_the_grant_did_not_list() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "squat").await;
    let dst = format!("{src}-copies");
    namespace(&client, &dst).await;
    support::grant_all(&client, &dst, &src, &["auth-jwks"]).await;
    let tenant = support::set_writer(&client, &src).await;
    let _op = support::Operator::start(&src);
    let _op_dst = support::Operator::start(&dst);
    let tenant_sets: Api<SigningKeySet> = Api::namespaced(tenant, &src);
    for (name, spec) in [
        ("payments", json!({"jwks": {"namespaces": [dst]}})),
        (
            "decoy",
            json!({"jwks": {"namespaces": [dst], "configMapName": "billing-jwks"}}),
        ),
        ("auth", json!({"jwks": {"namespaces": [dst]}})),
    ] {
        let set: SigningKeySet = serde_json::from_value(json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        tenant_sets
            .create(&PostParams::default(), &set)
            .await
            .expect("the tenant may create sets in its namespace");
    }
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &src);
    for (name, copy) in [("payments", "payments-jwks"), ("decoy", "billing-jwks")] {
        let msg = support::wait_condition(&sets, name, "FanOut", "False", "ConsentMissing").await;
        assert!(
            msg.contains(&format!("as ConfigMap {copy}")) && msg.contains(&dst),
            "{name}: {msg}"
        );
    }
    // The granted name is written (so the refusals above are the name's, not the grant's).
    support::wait_condition(&sets, "auth", "FanOut", "True", "Consented").await;
    let copies: Api<ConfigMap> = Api::namespaced(client.clone(), &dst);
    let auth = copies.get("auth-jwks").await.expect("the granted copy");
    assert_eq!(
        auth.annotations().get("keyturn.dev/owner-uid"),
        sets.get("auth").await.unwrap().uid().as_ref()
    );
    for copy in ["payments-jwks", "billing-jwks"] {
        assert!(
            copies.get_opt(copy).await.unwrap().is_none(),
            "a copy took {copy}, a name the grant did not list"
        );
    }

    // dst's own set takes the name it wanted.
    support::create_set(&client, &dst, "payments", json!({})).await;
    let own: Api<SigningKeySet> = Api::namespaced(client.clone(), &dst);
    support::wait_condition(&own, "payments", "Ready", "True", "KeysPublished").await;
    let cm = copies.get("payments-jwks").await.unwrap();
    assert_eq!(
        cm.annotations().get("keyturn.dev/owner-uid"),
        own.get("payments").await.unwrap().uid().as_ref(),
        "payments-jwks in {dst} is its own set's"
    );
}

/// A selector is evaluated on every namespace event for every set that has one: a tenant's
/// set cannot carry a huge one. The API server refuses it at apply time, naming the field.
#[tokio::test]
async fn a_huge_namespace_selector_is_refused_at_apply_time() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "selector").await;
    let tenant = support::set_writer(&client, &ns).await;
    let labels: serde_json::Map<String, serde_json::Value> =
        (0..33).map(|i| (format!("l{i}"), json!("on"))).collect();
    let expressions: Vec<serde_json::Value> = (0..17)
        .map(|i| json!({"key": format!("k{i}"), "operator": "Exists"}))
        .collect();
    for (selector, field) in [
        (
            json!({"matchLabels": labels}),
            "spec.jwks.namespaceSelector.matchLabels",
        ),
        (
            json!({"matchExpressions": expressions}),
            "spec.jwks.namespaceSelector.matchExpressions",
        ),
    ] {
        let e = support::try_create_set(
            &tenant,
            &ns,
            "big",
            json!({"jwks": {"namespaceSelector": selector}}),
        )
        .await
        .expect_err("a huge selector is refused");
        assert!(e.to_string().contains(field), "{e}");
    }
}

/// deploy/'s ValidatingAdmissionPolicy, attacked from a tenant's identity: no decoy labelled
/// as keyturn's can be made, keyturn's copy cannot be tampered with or unlabelled, and
/// keyturn's finalizer cannot be removed by the set's author; keyturn's own identity (the
/// ServiceAccount deploy/ runs it as) is exempt, and keyturn keeps working. The plane is shared
/// with tests that write as tenants on purpose, so the shipped policy is installed under a
/// name of this test's and bound to this test's namespaces only.
#[tokio::test]
async fn the_admission_policy_keeps_keyturns_objects_out_of_other_hands() {
    use kube::api::ListParams;
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "vap").await;
    let dst = format!("{src}-copies");
    namespace(&client, &dst).await;
    support::grant(&client, &dst, &src, "auth").await;
    for ns in [&src, &dst] {
        Api::<Namespace>::all(client.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"keyturn.dev/vap-test": src}}})),
            )
            .await
            .unwrap();
    }
    let shipped =
        std::fs::read_to_string(support::root().join("deploy/admission-policy.yaml")).unwrap();
    let policy = shipped.split("\n---").next().unwrap().replace(
        "name: keyturn-objects",
        &format!("name: keyturn-objects-{src}"),
    );
    let binding = format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: keyturn-objects-{src}}}
spec:
  policyName: keyturn-objects-{src}
  validationActions: [Deny]
  matchResources:
    namespaceSelector: {{matchLabels: {{keyturn.dev/vap-test: {src}}}}}
"
    );
    let out = support::kubectl(
        &["apply", "-f", "-"],
        Some(&format!("{policy}\n---\n{binding}")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let _op = support::Operator::start(&src);
    support::create_set(
        &client,
        &src,
        "auth",
        json!({"jwks": {"namespaces": [dst]}}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &src);
    support::wait_condition(&sets, "auth", "Ready", "True", "KeysPublished").await;
    let attacker = configmap_writer(&client, &dst).await;
    let tenant = support::set_writer(&client, &src).await;
    let real = attacker.get("auth-jwks").await.unwrap();
    let decoy: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "zz1", "labels": real.labels(), "annotations": real.annotations()},
        "data": {"jwks.json": "{\"keys\":[]}"}
    }))
    .unwrap();
    let forbidden = |r: Result<ConfigMap, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(e)) if e.code == 403 => e.message,
        other => panic!("{what} was not refused: {other:?}"),
    };
    // The policy takes effect once the API server has it: probed with a dry run.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    support::wait_for("the policy in force", Duration::from_secs(30), || async {
        attacker.create(&dry, &decoy).await.is_err().then_some(())
    })
    .await;
    let msg = forbidden(
        attacker.create(&PostParams::default(), &decoy).await,
        "a decoy",
    );
    assert!(
        msg.contains("only keyturn creates or changes objects labelled"),
        "{msg}"
    );
    let mut tampered = real.clone();
    tampered
        .data
        .get_or_insert_default()
        .insert("jwks.json".into(), "{\"keys\":[]}".into());
    forbidden(
        attacker
            .replace("auth-jwks", &PostParams::default(), &tampered)
            .await,
        "tampering with the copy",
    );
    forbidden(
        attacker
            .patch(
                "auth-jwks",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}}),
                ),
            )
            .await,
        "unlabelling the copy",
    );
    // The set's author may edit the set, not remove keyturn's finalizer from it.
    let tenant_sets: Api<SigningKeySet> = Api::namespaced(tenant, &src);
    match tenant_sets
        .patch(
            "auth",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 403 => {
            assert!(
                e.message.contains("only keyturn removes its finalizer"),
                "{e:?}"
            )
        }
        other => panic!("removing keyturn's finalizer was not refused: {other:?}"),
    }
    assert!(
        sets.get("auth")
            .await
            .unwrap()
            .finalizers()
            .contains(&"keyturn.dev/jwks-copies".to_string())
    );
    // keyturn's own identity, as deploy/ runs it, is exempt (RBAC lets it write here).
    support::allow(
        &client,
        &dst,
        "keyturn-as-deployed",
        "keyturn-system",
        "keyturn",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]),
    )
    .await;
    let as_keyturn = as_service_account("keyturn-system", "keyturn").await;
    Api::<ConfigMap>::namespaced(as_keyturn, &dst)
        .create(&dry, &decoy)
        .await
        .expect("keyturn's ServiceAccount may create its labelled objects");
    // Deleting stays open (the garbage collector and namespace deletion need it): keyturn puts
    // its copy back, and nothing the attacker tried is left.
    attacker
        .delete("auth-jwks", &Default::default())
        .await
        .unwrap();
    support::wait_object(
        &attacker,
        "auth-jwks",
        "keyturn's copy back",
        Duration::from_secs(20),
        |o: Option<&ConfigMap>| o.is_some_and(|c| c.data == real.data),
    )
    .await;
    let labelled = attacker
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=keyturn"))
        .await
        .unwrap();
    assert_eq!(
        labelled.items.len(),
        1,
        "only keyturn's copy carries its labels"
    );
    let out = support::kubectl(
        &[
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            &format!("keyturn-objects-{src}"),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client that is ServiceAccount `ns/sa` by impersonation (the admin may impersonate), with
/// that account's groups and no other: the identity deploy/ runs keyturn as.
async fn as_service_account(ns: &str, sa: &str) -> Client {
    let text = std::fs::read_to_string(support::kubeconfig_path()).unwrap();
    let user = format!("system:serviceaccount:{ns}:{sa}");
    let groups = format!(
        "[\"system:serviceaccounts\", \"system:serviceaccounts:{ns}\", \"system:authenticated\"]"
    );
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("client-key:") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{l}\n{indent}as: {user}\n{indent}as-groups: {groups}")
            } else {
                l.to_string()
            }
        })
        .collect();
    let kc = kube::config::Kubeconfig::from_yaml(&out.join("\n")).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}
