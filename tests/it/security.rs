//! The trust boundaries (DESIGN.md, docs/security.md), attacked from the identities an
//! attacker would have — ServiceAccounts bound only to that attacker's rights — against the
//! real control plane with the operator running:
//!
//! - a tenant who may create SigningKeySets in its own namespace tries to put keys into
//!   namespaces that did not consent (listed, selected, `kube-system`) and to consent for them;
//! - someone who may write ConfigMaps forges and tampers with JWKS ConfigMaps, hoping the HTTP
//!   endpoint serves them;
//! - a network client forges the Host header, holds connections open, sends slow headers and
//!   bodies, and looks for /metrics on the public port;
//! - an operator that cannot elect a leader or cannot watch must fail, not look healthy;
//! - the namespace-only install runs a rotation under its own token with nothing else.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::invariants::{Seen, observe};
use crate::support::{Resp, parse_response as parse};
use keyturn::core::crd::{SigningKeySet, SigningKeySetGrant};

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// keyturn's ConfigMaps in `ns` that came from sets in `from`.
async fn copies_from(client: &Client, ns: &str, from: &str) -> Vec<String> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("keyturn.dev/source-namespace={from}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect()
}

fn is_forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(e)) if e.code == 403)
}

/// The user-facing aggregated ClusterRoles of deploy/rbac-users.yaml.
fn apply_user_roles() {
    let out = support::kubectl(
        &[
            "apply",
            "-f",
            root().join("deploy/rbac-users.yaml").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_tenant_cannot_reach_a_namespace_that_did_not_consent() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let _roles = support::CLUSTER_ROLES.read().await;
    apply_user_roles();
    let tenant = support::fresh_namespace(&client, "tenant").await;
    let victim = support::fresh_namespace(&client, "victim").await;
    let label = format!("jwks-{tenant}");
    Api::<Namespace>::all(client.clone())
        .patch(
            &victim,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label.clone(): "on"}}})),
        )
        .await
        .unwrap();
    // The tenant: may manage SigningKeySets (and read Events) in its own namespace, nothing else.
    let (tenant_client, _) =
        support::restricted_with(&client, &tenant, "tenant", json!([{"apiGroups": ["keyturn.dev"], "resources": ["signingkeysets"], "verbs": ["*"]},
               {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["get", "list"]}])).await;
    // The victim's administrator: the default `admin` role (which aggregates keyturn-admin).
    let (victim_admin, _) = support::restricted_client(&client, &victim, "admin").await;
    support::bind(
        &client,
        &victim,
        "admin",
        "ClusterRole",
        "admin",
        &victim,
        "admin",
    )
    .await;

    // Observe every JWKS copy of tenant/auth in any namespace, and the tenant's signing Secrets.
    let copies_cfg = kube::runtime::watcher::Config::default().labels(&format!(
        "keyturn.dev/source-namespace={tenant},keyturn.dev/signing-key-set=auth"
    ));
    let mut observed = observe(
        Api::<ConfigMap>::all(client.clone()),
        copies_cfg,
        Api::namespaced(client.clone(), &tenant),
    )
    .await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let observer = tokio::spawn(async move {
        while let Some(o) = observed.next().await {
            let _ = tx.send(o);
        }
    });

    let _op = support::Operator::start(&tenant);
    let tenant_sets: Api<SigningKeySet> = Api::namespaced(tenant_client.clone(), &tenant);
    let pp = PostParams::default();
    let set = |name: &str, jwks: serde_json::Value| -> SigningKeySet {
        serde_json::from_value(support::set_manifest(
            name,
            json!({"rotation": {"interval": "9s", "prePublish": "3s", "overlap": "3s"}, "jwks": jwks}),
        ))
        .unwrap()
    };
    tenant_sets
        .create(
            &pp,
            &set(
                "auth",
                json!({"namespaces": [victim, "kube-system"], "configMapName": "payments-trusted-issuers"}),
            ),
        )
        .await
        .expect("the tenant may create sets in its namespace");
    tenant_sets
        .create(
            &pp,
            &set(
                "sel",
                json!({"namespaceSelector": {"matchLabels": {label.clone(): "on"}}}),
            ),
        )
        .await
        .unwrap();

    // The tenant cannot consent on behalf of the victim or kube-system.
    for ns in [victim.as_str(), "kube-system"] {
        let g: SigningKeySetGrant = serde_json::from_value(json!({
            "metadata": {"name": "mine"},
            "spec": {"from": [{"namespace": tenant, "configMapNames": ["auth-jwks"]}]}
        }))
        .unwrap();
        let r = Api::<SigningKeySetGrant>::namespaced(tenant_client.clone(), ns)
            .create(&pp, &g)
            .await;
        assert!(is_forbidden(r), "the tenant created a grant in {ns}");
    }

    // Both sets work in their own namespace, and say where they may not publish.
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &tenant);
    support::wait_condition(&sets, "auth", "Ready", "True", "KeysPublished").await;
    let msg = support::wait_condition(&sets, "auth", "FanOut", "False", "ConsentMissing").await;
    assert!(
        msg.contains(&victim) && msg.contains("kube-system"),
        "{msg}"
    );
    // A selector's refusals are counted, never named: the tenant learns no namespace's name
    // or labels from it.
    let msg = support::wait_condition(&sets, "sel", "FanOut", "False", "ConsentMissing").await;
    assert!(
        !msg.contains(&victim)
            && msg.contains("1 namespace(s) spec.jwks.namespaceSelector matches"),
        "{msg}"
    );
    // ... with a Warning Event the tenant can read.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(tenant_client.clone(), &tenant);
    support::wait_for(
        "a ConsentMissing Event naming the victim",
        Duration::from_secs(30),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("ConsentMissing")
                        && e.type_.as_deref() == Some("Warning")
                        && e.note.as_deref().is_some_and(|n| n.contains(&victim))
                })
                .then_some(())
        },
    )
    .await;
    // Nothing of the tenant's reached either namespace, under any name.
    for ns in [victim.as_str(), "kube-system"] {
        assert_eq!(
            copies_from(&client, ns, &tenant).await,
            Vec::<String>::new(),
            "{ns}"
        );
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        for name in ["payments-trusted-issuers", "sel-jwks"] {
            assert!(
                cms.get_opt(name).await.unwrap().is_none(),
                "{ns}/{name} was written"
            );
        }
    }

    // The victim's administrator consents to tenant/auth only: its copy appears there.
    // (The `admin` role gets keyturn-admin's rules from the ClusterRole aggregation controller.)
    let as_admin = format!("system:serviceaccount:{victim}:admin");
    support::wait_for(
        "admin aggregates keyturn-admin",
        Duration::from_secs(30),
        || async {
            let out = support::kubectl(
                &[
                    "auth",
                    "can-i",
                    "create",
                    "signingkeysetgrants.keyturn.dev",
                    "-n",
                    &victim,
                    "--as",
                    &as_admin,
                ],
                None,
            );
            (String::from_utf8_lossy(&out.stdout).trim() == "yes").then_some(())
        },
    )
    .await;
    let grant = support::grant(&victim_admin, &victim, &tenant, "auth").await;
    let victim_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &victim);
    let own_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &tenant);
    support::wait_for("the consented copy", Duration::from_secs(30), || async {
        let c = victim_cms
            .get_opt("payments-trusted-issuers")
            .await
            .unwrap()?;
        let o = own_cms.get_opt("payments-trusted-issuers").await.unwrap()?;
        (c.data == o.data).then_some(())
    })
    .await;
    support::wait_condition(&sets, "auth", "FanOut", "False", "ConsentMissing").await; // kube-system still refused
    assert_eq!(
        copies_from(&client, "kube-system", &tenant).await,
        Vec::<String>::new()
    );
    assert!(
        victim_cms.get_opt("sel-jwks").await.unwrap().is_none(),
        "a grant naming auth let sel in"
    );

    // Rotations now wait for the consented copy: every key that signs after the grant was in
    // it for prePublish first (ordered by etcd revision, timed by arrival) — also a key that
    // was already Pending when the copy appeared: its prePublish starts again.
    let granted_at = Instant::now();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &tenant);
    let kid = |s: &Secret| String::from_utf8(s.data.as_ref().unwrap()["kid"].0.clone()).unwrap();
    let k0 = kid(&secrets.get("auth-signing-key").await.unwrap());
    let mut seen_kids = vec![k0.clone()];
    for _ in 0..3 {
        let last = seen_kids.last().unwrap().clone();
        let s = support::wait_object(
            &secrets,
            "auth-signing-key",
            "a rotation",
            Duration::from_secs(40),
            move |o: Option<&Secret>| {
                o.is_some_and(|s| {
                    String::from_utf8_lossy(&s.data.as_ref().unwrap()["kid"].0) != last
                })
            },
        )
        .await
        .unwrap();
        seen_kids.push(kid(&s));
    }
    let mut victim_jwks: Vec<(u64, Instant, Vec<String>)> = vec![];
    let mut signers: Vec<(u64, Instant, String)> = vec![];
    let deadline = Instant::now() + Duration::from_secs(5);
    // The watch stream lags the GETs above: wait until it has delivered the last activation.
    while signers
        .iter()
        .filter(|(_, _, k)| *k == seen_kids[3])
        .count()
        == 0
    {
        match tokio::time::timeout(deadline - Instant::now(), rx.recv()).await {
            Ok(Some((_, Some(ns), Seen::Jwks { rv, at, kids, .. }))) if ns == victim => {
                victim_jwks.push((rv, at, kids))
            }
            Ok(Some((_, None, Seen::Signer { rv, at, kid, .. }))) => signers.push((rv, at, kid)),
            Ok(Some(_)) => {}
            _ => panic!("the observer never saw the activation of {}", seen_kids[3]),
        }
    }
    while let Ok(o) = rx.try_recv() {
        match o {
            (_, Some(ns), Seen::Jwks { rv, at, kids, .. }) if ns == victim => {
                victim_jwks.push((rv, at, kids))
            }
            (_, None, Seen::Signer { rv, at, kid, .. }) => signers.push((rv, at, kid)),
            _ => {}
        }
    }
    observer.abort();
    for k in &seen_kids[1..] {
        let (srv, sat, _) = signers
            .iter()
            .find(|(_, at, kid)| kid == k && *at >= granted_at)
            .unwrap_or_else(|| {
                panic!("no activation of {k} observed after the grant; kids {seen_kids:?}, signers {:?}", signers.iter().map(|(rv, at, k)| (rv, *at >= granted_at, k)).collect::<Vec<_>>())
            });
        let (crv, cat, _) = victim_jwks
            .iter()
            .find(|(_, _, kids)| kids.contains(k))
            .unwrap_or_else(|| panic!("{k} signed but never appeared in the consented copy"));
        assert!(
            crv < srv,
            "{k} signed (rv {srv}) before the consented copy had it (rv {crv})"
        );
        assert!(
            *sat + support::invariants::JITTER >= *cat + Duration::from_secs(3),
            "{k} signed {:?} after it reached the consented copy; prePublish is 3s",
            *sat - *cat
        );
    }

    // Withdrawing consent removes keyturn's copy, and only it.
    Api::<SigningKeySetGrant>::namespaced(victim_admin.clone(), &victim)
        .delete(&grant, &Default::default())
        .await
        .unwrap();
    support::wait_for(
        "the copy removed after consent was withdrawn",
        Duration::from_secs(30),
        || async {
            victim_cms
                .get_opt("payments-trusted-issuers")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    let v = victim.clone();
    support::wait_object(
        &sets,
        "auth",
        "FanOut names the victim again",
        Duration::from_secs(30),
        move |o: Option<&SigningKeySet>| {
            o.and_then(|s| support::condition(s, "FanOut"))
                .is_some_and(|(st, r, m)| st == "False" && r == "ConsentMissing" && m.contains(&v))
        },
    )
    .await;
}

/// A JWKS with a symmetric key and its secret: what a forger would like verifiers to trust.
const FORGED: &str = r#"{"keys":[{"kty":"oct","kid":"forged","alg":"HS256","use":"sig","k":"Zm9yZ2VkLXNlY3JldC1rZXktbWF0ZXJpYWw"}]}"#;

fn leaked(body: &str) -> bool {
    body.contains("forged") || body.contains("Zm9yZ2Vk") || body.contains("\"oct\"")
}

#[tokio::test]
async fn the_endpoint_never_serves_a_jwks_keyturn_did_not_derive() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "forge").await;
    // The attacker may write ConfigMaps in the namespace, nothing else.
    let (attacker, _) = support::restricted_with(
        &client,
        &ns,
        "cm-writer",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}]),
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(attacker.clone(), &ns);
    let forged: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "auth-jwks", "labels": {
            "app.kubernetes.io/managed-by": "keyturn",
            "keyturn.dev/signing-key-set": "auth",
            "keyturn.dev/source-namespace": ns}},
        "data": {"jwks.json": FORGED}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &forged).await.unwrap();
    let op = support::Operator::start_with(&ns, &["--public-url", "https://keys.example.test"]);
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({"rotation": {"interval": "720h", "prePublish": "10m", "overlap": "1h"}, "issuer": format!("https://keys.example.test/{ns}/auth")}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    support::wait_condition(&sets, "auth", "Ready", "False", "ForeignObject").await;
    // Wait until the endpoint knows the set (its cache has it) and check what it answers.
    let jwks_path = format!("/jwks/{ns}/auth");
    let discovery_path = format!("/{ns}/auth/.well-known/openid-configuration");
    support::wait_for(
        "the endpoint to know the set",
        Duration::from_secs(20),
        || async {
            let (code, body) = op.http_get(&jwks_path)?;
            (code != 404 || !body.contains("no such SigningKeySet")).then_some(())
        },
    )
    .await;
    for path in [&jwks_path, &discovery_path] {
        let r = raw_get(op.http_port, path, "x").await;
        assert!(matches!(r.status, 404 | 503), "{path}: {}", r.status);
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
        assert!(
            !leaked(&r.text()),
            "{path} served the forgery: {}",
            r.text()
        );
        let v: serde_json::Value = serde_json::from_str(&r.text()).expect("a JSON reason");
        assert!(v["error"].is_string());
    }

    // The attacker gives up the name; keyturn publishes its own, woken by the deletion (well
    // before the refusal's 60 s retry) once its watch of labelled ConfigMaps is listed (a
    // deletion before that is seen only by the retry).
    support::wait_for(
        "keyturn's watch caches filled",
        Duration::from_secs(20),
        || async { op.log_text().contains("watch caches filled").then_some(()) },
    )
    .await;
    cms.delete("auth-jwks", &Default::default()).await.unwrap();
    support::wait_condition_within(
        &sets,
        "auth",
        "Ready",
        "True",
        "KeysPublished",
        Duration::from_secs(20),
    )
    .await;
    let own: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let genuine = support::wait_for(
        "the genuine JWKS served",
        Duration::from_secs(20),
        || async {
            let cm = own.get_opt("auth-jwks").await.unwrap()?;
            let bytes = cm.data.as_ref()?.get("jwks.json")?.clone();
            let (code, body) = op.http_get(&jwks_path)?;
            (code == 200 && body == bytes).then_some(bytes)
        },
    )
    .await;

    // Now it tampers with keyturn's own ConfigMap (an owned object, ownerReference intact):
    // the mounted copy is the attacker's for a moment, the endpoint never is.
    let mut tampered = cms.get("auth-jwks").await.unwrap();
    tampered
        .data
        .as_mut()
        .unwrap()
        .insert("jwks.json".into(), FORGED.into());
    cms.replace("auth-jwks", &PostParams::default(), &tampered)
        .await
        .unwrap();
    for _ in 0..20 {
        let r = raw_get(op.http_port, &jwks_path, "x").await;
        assert_eq!(r.status, 200);
        assert!(
            !leaked(&r.text()),
            "the endpoint served the tampered ConfigMap"
        );
        assert_eq!(
            r.text(),
            genuine,
            "the endpoint serves what keyturn derived"
        );
    }
    // ... and keyturn puts its own bytes back into the ConfigMap.
    support::wait_for(
        "the tampered ConfigMap repaired",
        Duration::from_secs(30),
        || async {
            let cm = own.get("auth-jwks").await.ok()?;
            (cm.data.as_ref()?.get("jwks.json")? == &genuine).then_some(())
        },
    )
    .await;

    // Discovery: URLs from --public-url, never from the Host header.
    let d = raw_get(op.http_port, &discovery_path, "evil.example.net").await;
    assert_eq!(d.status, 200);
    assert!(!d.text().contains("evil.example.net"), "{}", d.text());
    let doc: serde_json::Value = serde_json::from_str(&d.text()).unwrap();
    assert_eq!(
        doc["jwks_uri"],
        format!("https://keys.example.test/jwks/{ns}/auth")
    );
}

/// A tenant who may create SigningKeySets tries to claim another set's issuer in its own
/// discovery document: the origin the cluster admin gave `auth` (`--issuer`), and the URL
/// `auth` would be served under without it. Neither is served (`404`,
/// `Discovery=False IssuerMismatch` naming the URL the set may claim); the tenant's set that
/// claims its own URL is served.
#[tokio::test]
async fn a_set_cannot_claim_another_sets_issuer() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "issuer").await;
    let pin = format!("{ns}/auth=https://auth.example.test");
    let op = support::Operator::start_with(
        &ns,
        &[
            "--public-url",
            "https://keys.example.test",
            "--issuer",
            &pin,
        ],
    );
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({"issuer": "https://auth.example.test"}),
    )
    .await;
    let tenant = support::set_writer(&client, &ns).await;
    let tenant_sets: Api<SigningKeySet> = Api::namespaced(tenant, &ns);
    let default_of_auth = format!("https://keys.example.test/{ns}/auth");
    let own = format!("https://keys.example.test/{ns}/mine");
    for (name, issuer) in [
        ("claim", "https://auth.example.test"),
        ("default", default_of_auth.as_str()),
        ("mine", own.as_str()),
    ] {
        let set: SigningKeySet = serde_json::from_value(json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
            "metadata": {"name": name}, "spec": {"issuer": issuer}
        }))
        .unwrap();
        tenant_sets
            .create(&PostParams::default(), &set)
            .await
            .expect("the tenant may create sets");
    }
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    for name in ["auth", "mine"] {
        support::wait_condition(&sets, name, "Discovery", "True", "Served").await;
    }
    for name in ["claim", "default"] {
        let msg =
            support::wait_condition(&sets, name, "Discovery", "False", "IssuerMismatch").await;
        assert!(
            msg.contains(&format!("(https://keys.example.test/{ns}/{name})")),
            "{name}: {msg}"
        );
    }
    let discovery = |name: &str| format!("/{ns}/{name}/.well-known/openid-configuration");
    for (name, issuer) in [
        ("auth", "https://auth.example.test"),
        ("mine", own.as_str()),
    ] {
        let path = discovery(name);
        let d = support::wait_for("the document served", Duration::from_secs(20), || async {
            let r = raw_get(op.http_port, &path, "x").await;
            (r.status == 200).then_some(r)
        })
        .await;
        let doc: serde_json::Value = serde_json::from_str(&d.text()).unwrap();
        assert_eq!(doc["issuer"], issuer);
        assert_eq!(
            doc["jwks_uri"],
            format!("https://keys.example.test/jwks/{ns}/{name}")
        );
    }
    for name in ["claim", "default"] {
        let path = discovery(name);
        // Until the endpoint's cache has the set's state it says so; then it refuses.
        let r = support::wait_for("the refusal", Duration::from_secs(20), || async {
            let r = raw_get(op.http_port, &path, "x").await;
            assert_ne!(r.status, 200, "{name}'s claim was served: {}", r.text());
            r.text().contains("is not the URL").then_some(r)
        })
        .await;
        assert_eq!(r.status, 404, "{name}: {}", r.text());
    }
}

#[tokio::test]
async fn discovery_without_a_public_url_refuses_instead_of_trusting_host() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "nohost").await;
    let op = support::Operator::start(&ns);
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({"issuer": "https://auth.example.test"}),
    )
    .await;
    let path = format!("/jwks/{ns}/auth");
    support::wait_for("JWKS served", Duration::from_secs(30), || async {
        (op.http_get(&path)?.0 == 200).then_some(())
    })
    .await;
    let r = raw_get(
        op.http_port,
        &format!("/{ns}/auth/.well-known/openid-configuration"),
        "evil.example.net",
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(!r.text().contains("evil.example.net"), "{}", r.text());
    assert!(r.text().contains("--public-url"), "{}", r.text());
}

async fn raw_get(port: u16, path: &str, host: &str) -> Resp {
    support::raw_request(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("an HTTP response")
}

/// Reads until the server closes the connection; `None` if it is still open after `limit`.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![];
    match tokio::time::timeout(limit, s.read_to_end(&mut buf)).await {
        Ok(_) => Some(buf),
        Err(_) => None,
    }
}

#[tokio::test]
async fn the_public_port_is_bounded_and_has_no_metrics() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "limits").await;
    let op = support::Operator::start_with(&ns, &["--http-header-timeout", "1s"]);
    support::wait_for("the endpoint up", Duration::from_secs(30), || async {
        (op.http_get("/readyz")?.0 == 200).then_some(())
    })
    .await;
    let port = op.http_port;

    // /metrics is only on the admin port.
    let r = raw_get(port, "/metrics", "x").await;
    assert_eq!(r.status, 404);
    assert!(!r.text().contains("keyturn_"), "{}", r.text());
    let (code, body) = op.admin_get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("keyturn_reconciles_total"), "{body}");

    // A slow client that never finishes its headers is cut off by the header timeout, and so
    // is one that connects and says nothing.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    for (what, s) in [("slow headers", &mut slow), ("silence", &mut silent)] {
        let got = closed_within(s, Duration::from_secs(10)).await;
        let got = got
            .unwrap_or_else(|| panic!("{what}: still connected 10 s after a 1 s header timeout"));
        if let Some(r) = parse(&got) {
            assert_eq!(r.status, 408, "{what}");
        }
    }
    // A body on a GET is refused past its limit.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let got = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("an answer");
    assert_eq!(parse(&got).map(|r| r.status), Some(413));
    // Still serving.
    assert_eq!(raw_get(port, "/healthz", "x").await.status, 200);
}

#[tokio::test]
async fn connections_beyond_the_bound_wait_for_a_free_slot() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "conns").await;
    let op = support::Operator::start_with(
        &ns,
        &[
            "--http-max-connections",
            "4",
            "--http-header-timeout",
            "60s",
        ],
    );
    support::wait_for("the endpoint up", Duration::from_secs(30), || async {
        (op.http_get("/readyz")?.0 == 200).then_some(())
    })
    .await;
    // Four idle connections hold every slot.
    let mut idle = vec![];
    for _ in 0..4 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", op.http_port))
                .await
                .unwrap(),
        );
    }
    // The fifth is accepted by the kernel but not served while they stay.
    let mut fifth = tokio::net::TcpStream::connect(("127.0.0.1", op.http_port))
        .await
        .unwrap();
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut fifth, Duration::from_secs(2))
            .await
            .is_none(),
        "a fifth connection was served while four held every slot"
    );
    // One leaves; the fifth is served.
    drop(idle.pop());
    let got = closed_within(&mut fifth, Duration::from_secs(10))
        .await
        .expect("the fifth connection served once a slot was free");
    assert_eq!(parse(&got).map(|r| r.status), Some(200));
}

#[tokio::test]
async fn an_operator_that_cannot_elect_becomes_unready_and_exits() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "noelect").await;
    // The Lease's namespace does not exist: the election can never start.
    let mut op = support::Operator::start_with(
        &ns,
        &[
            "--leader-elect",
            "--lease-namespace",
            &format!("{ns}-missing"),
        ],
    );
    let why = support::wait_for(
        "/readyz to say why it is not ready",
        Duration::from_secs(30),
        || async {
            let (code, body) = op.admin_get("/readyz")?;
            (code == 503 && body.contains("leader election cannot start")).then_some(body)
        },
    )
    .await;
    assert!(why.contains("attempt"), "{why}");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = op.exited() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still running 60 s after the election failed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!status.success(), "exited with {status}");
    let log = op.log_text();
    assert!(log.contains("leader election cannot start"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn an_operator_that_cannot_watch_fails_at_start_naming_what() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "nowatch").await;
    // An identity that may read SigningKeySets and nothing else.
    let (_, kc) =
        support::restricted_with(&client, &ns, "half", json!([{"apiGroups": ["keyturn.dev"], "resources": ["signingkeysets"], "verbs": ["get", "list", "watch"]}])).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args([
            "run",
            "--namespace",
            &ns,
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kc)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot list Secrets in namespace"), "{err}");
    assert!(err.contains("RBAC"), "{err}");
}

/// `kubectl kustomize deploy-namespaced`, as JSON objects.
fn namespaced_install() -> Vec<serde_json::Value> {
    let out = support::kubectl(
        &[
            "kustomize",
            root().join("deploy-namespaced").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---\n")
        .map(|doc| serde_norway::from_str(doc).expect("YAML"))
        .collect()
}

#[tokio::test]
async fn the_namespace_only_install_rotates_under_its_own_token_and_nothing_else() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let objs = namespaced_install();
    let kinds: BTreeMap<String, String> = objs
        .iter()
        .map(|o| {
            (
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                ),
                String::new(),
            )
        })
        .collect();
    assert!(!kinds.contains_key("ClusterRole/keyturn"), "{kinds:?}");
    assert!(
        !kinds.contains_key("ClusterRoleBinding/keyturn"),
        "{kinds:?}"
    );
    let deploy = objs.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--namespace-only")),
        "{args}"
    );

    // The overlay's Roles, bound to a ServiceAccount of this test's namespace.
    let ns = support::fresh_namespace(&client, "nsonly").await;
    let other = support::fresh_namespace(&client, "nsonly-other").await;
    support::grant(&client, &other, &ns, "auth").await;
    let sa = "keyturn";
    let (_, kc) = support::restricted_client(&client, &ns, sa).await;
    let mut rbac = vec![];
    for o in objs
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "RoleBinding")
    {
        let text = serde_json::to_string(o)
            .unwrap()
            .replace("keyturn-system", &ns);
        rbac.push(serde_json::from_str::<serde_json::Value>(&text).unwrap());
    }
    assert_eq!(
        rbac.len(),
        4,
        "the keyturn and leader-election Roles and bindings"
    );
    let list = json!({"apiVersion": "v1", "kind": "List", "items": rbac});
    let out = support::kubectl(&["apply", "-f", "-"], Some(&list.to_string()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really has nothing cluster-wide.
    for (verb, res) in [
        ("list", "secrets"),
        ("list", "configmaps"),
        ("list", "namespaces"),
    ] {
        let out = support::kubectl(
            &[
                "auth",
                "can-i",
                verb,
                res,
                "--all-namespaces",
                "--as",
                &format!("system:serviceaccount:{ns}:{sa}"),
            ],
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "{verb} {res}"
        );
    }

    let mut op = support::Operator::start_as(
        "nsonly",
        &ns,
        kc,
        &[
            "--namespace-only",
            "--leader-elect",
            "--lease-namespace",
            &ns,
            "--lease-seconds",
            "10",
            "--instance",
            "nsonly-0",
        ],
    );
    support::create_set(&client, &ns, "auth", json!({"rotation": {"interval": "6s", "prePublish": "2s", "overlap": "2s"}, "jwks": {"namespaces": [other]}})).await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let msg = support::wait_condition(&sets, "auth", "FanOut", "False", "FanOutDisabled").await;
    assert!(msg.contains(&other), "{msg}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    support::wait_first_key_then_rotation(&secrets, "auth-signing-key").await;
    // The endpoint serves it too, from the namespace-scoped caches.
    let path = format!("/jwks/{ns}/auth");
    support::wait_for("JWKS served", Duration::from_secs(20), || async {
        (op.http_get(&path)?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(
        copies_from(&client, &other, &ns).await,
        Vec::<String>::new(),
        "a copy left the namespace"
    );
    op.assert_running();
    let log = op.log_text();
    support::assert_no_forbidden(&log, "deploy-namespaced's Roles");
    assert!(log.contains("acquired leadership"), "{log}");
}
