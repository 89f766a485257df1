//! The kubectl plugin (`kubectl keyturn`), run through kubectl's own plugin discovery (the
//! binary on the PATH) against the real control plane with the operator running: `status`,
//! `rotate`, `revoke`, and `verify` on a valid, a tampered, an unknown-kid and a retired-key
//! token, and on a revoked key's token; a viewer's identity may verify but not rotate or revoke.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use serde_json::json;

use crate::support::invariants::sign_with_secret;
use keyturn::core::crd::{Algorithm, SigningKeySet};
use keyturn::core::keys::KeyPair;

/// `kubectl keyturn ARGS` as `kubeconfig`, with the plugin found on the PATH by kubectl.
fn plugin(kubeconfig: &Path, args: &[&str]) -> Output {
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-keyturn"))
        .parent()
        .unwrap()
        .to_path_buf();
    let kubectl = std::env::var("KEYTURN_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(kubectl)
        .arg("keyturn")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("PATH", path)
        .output()
        .expect("run kubectl keyturn")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `verify`; returns the exit code and the output.
fn verify(kubeconfig: &Path, ns: &str, token: &str) -> (i32, String) {
    let o = plugin(kubeconfig, &["verify", "auth", token, "-n", ns]);
    (o.status.code().unwrap_or(-1), text(&o))
}

async fn kids(cms: &Api<ConfigMap>) -> Vec<String> {
    support::invariants::kids_of(&cms.get("auth-jwks").await.unwrap())
}

#[tokio::test]
async fn status_rotate_revoke_and_verify_through_kubectl() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "plugin").await;
    let mut op = support::Operator::start(&ns);
    let admin = support::kubeconfig_path();
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({"algorithm": "ES256", "rotation": {"interval": "1h", "prePublish": "3s", "overlap": "1h"}}),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let first = support::wait_object(
        &secrets,
        "auth-signing-key",
        "the first key",
        Duration::from_secs(60),
        |o: Option<&Secret>| o.is_some(),
    )
    .await
    .unwrap();
    let (token, first_kid) = sign_with_secret(&first);
    support::wait_object(
        &sets,
        "auth",
        "status lists the key",
        Duration::from_secs(30),
        |o: Option<&SigningKeySet>| {
            o.and_then(|s| s.status.as_ref())
                .is_some_and(|s| s.keys.len() == 1)
        },
    )
    .await
    .unwrap();

    // A valid token of the Active key.
    let (code, out) = verify(&admin, &ns, &token);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("valid\n"), "{out}");
    assert!(
        out.contains(&format!("key {first_kid} is Active")) && out.contains("at least until"),
        "{out}"
    );

    // Tampered: the payload changed under the same signature.
    let parts: Vec<&str> = token.split('.').collect();
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"sub":"admin","exp":4102444800}"#);
    let (code, out) = verify(&admin, &ns, &format!("{}.{forged}.{}", parts[0], parts[2]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature does not verify"), "{out}");

    // Unknown kid: a key the set never published.
    let stranger = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let stranger_token = {
        let key =
            jsonwebtoken::EncodingKey::from_ec_pem(stranger.to_pkcs8_pem().as_bytes()).unwrap();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(stranger.kid().into());
        jsonwebtoken::encode(&h, &json!({"sub": "x", "exp": 4102444800u64}), &key).unwrap()
    };
    let (code, out) = verify(&admin, &ns, &stranger_token);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown kid"), "{out}");

    // A viewer (get/list on sets and ConfigMaps) may verify and see the status, not rotate.
    let (_, viewer) = support::restricted_with(
        &client,
        &ns,
        "viewer",
        json!([
            {"apiGroups": ["keyturn.dev"], "resources": ["signingkeysets"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}
        ]),
    )
    .await;
    let (code, out) = verify(&viewer, &ns, &token);
    assert_eq!(code, 0, "{out}");
    let o = plugin(&viewer, &["rotate", "auth", "-n", &ns]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("forbidden"), "{}", text(&o));
    let o = plugin(&viewer, &["revoke", "auth", &first_kid, "-n", &ns]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // kubectl's connection flags: --kubeconfig wins over $KUBECONFIG (the viewer's, so the
    // rotation is refused), --context must exist, and --as is impersonation, which the viewer
    // may not do (no way to borrow the admin's rights through the plugin).
    let o = plugin(
        &admin,
        &[
            "--kubeconfig",
            viewer.to_str().unwrap(),
            "rotate",
            "auth",
            "-n",
            &ns,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("forbidden"), "{}", text(&o));
    let o = plugin(
        &admin,
        &["--context", "no-such-context", "status", "auth", "-n", &ns],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no-such-context"), "{}", text(&o));
    let o = plugin(
        &viewer,
        &[
            "--as",
            "keyturn-admin",
            "--as-group",
            "system:masters",
            "rotate",
            "auth",
            "-n",
            &ns,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("impersonate"), "{}", text(&o));

    // Rotate and wait: it returns once the new key signs (the signing Secret holds it); the
    // first one is Retired and still verifies.
    let o = plugin(&admin, &["rotate", "auth", "-n", &ns, "--wait"]);
    assert!(o.status.success(), "{}", text(&o));
    let rotated = support::signing_kid(&secrets.get("auth-signing-key").await.unwrap());
    assert_ne!(
        rotated, first_kid,
        "--wait returned before the new key signed"
    );
    assert!(
        text(&o).contains(&format!("{rotated} signs now")),
        "{}",
        text(&o)
    );
    support::wait_object(
        &sets,
        "auth",
        "status shows the first key Retired",
        Duration::from_secs(30),
        |o: Option<&SigningKeySet>| {
            o.and_then(|s| s.status.as_ref())
                .is_some_and(|s| s.keys.iter().any(|k| k.state == "Retired"))
        },
    )
    .await
    .unwrap();
    let (code, out) = verify(&admin, &ns, &token);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("key {first_kid} is Retired"))
            && out.contains("when it leaves the JWKS"),
        "{out}"
    );
    let o = plugin(&admin, &["status", "auth", "-n", &ns]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("Retired") && text(&o).contains("Active"),
        "{}",
        text(&o)
    );
    let o = plugin(&admin, &["status", "auth", "-n", &ns, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON status");
    assert!(v.to_string().contains(&first_kid), "{v}");
    let o = plugin(&admin, &["status", "auth", "-n", &ns, "-o", "yaml"]);
    let y: serde_json::Value = serde_norway::from_slice(&o.stdout).expect("YAML status");
    // The same keys in the same states (the relative seconds move between the two runs).
    let keys = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (k["kid"].to_string(), k["state"].to_string()))
            .collect()
    };
    assert_eq!(keys(&y), keys(&v));
    assert!(!keys(&y).is_empty());
    // The text view shortens kids to fit 80 columns; -o wide shows them whole, to paste.
    let o = plugin(&admin, &["status", "auth", "-n", &ns, "-o", "wide"]);
    assert!(
        text(&o)
            .lines()
            .any(|l| l.starts_with(&first_kid) && l.contains("Retired")),
        "{}",
        text(&o)
    );

    // Revoke the retired key: it leaves the JWKS and its tokens stop verifying.
    let o = plugin(&admin, &["revoke", "auth", "not-a-kid", "-n", &ns]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is not a key of"), "{}", text(&o));
    // A kid may start with `-` (base64url): it is taken as a kid, not as a flag.
    let o = plugin(&admin, &["revoke", "auth", "-1-not-a-kid", "-n", &ns]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("-1-not-a-kid is not a key of"),
        "{}",
        text(&o)
    );
    let o = plugin(&admin, &["revoke", "auth", &first_kid, "-n", &ns]);
    assert!(o.status.success(), "{}", text(&o));
    let set = sets.get("auth").await.unwrap();
    assert_eq!(set.spec.revoked_key_ids, vec![first_kid.clone()]);
    let f = first_kid.clone();
    support::wait_object(
        &cms,
        "auth-jwks",
        "the revoked key leaves the JWKS",
        Duration::from_secs(30),
        move |o: Option<&ConfigMap>| {
            o.is_some_and(|c| !support::invariants::kids_of(c).contains(&f))
        },
    )
    .await
    .unwrap();
    assert_eq!(kids(&cms).await.len(), 1);
    let (code, out) = verify(&admin, &ns, &token);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown kid"), "{out}");
    op.assert_running();
}

/// `verify --copy NAMESPACE` checks against the fan-out copy a verifier there mounts; a
/// namespace without a copy is an error, not a verdict.
#[tokio::test]
async fn verify_checks_a_fan_out_copy() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let src = support::fresh_namespace(&client, "plugin-src").await;
    let dst = support::fresh_namespace(&client, "plugin-dst").await;
    let none = support::fresh_namespace(&client, "plugin-none").await;
    let mut op = support::Operator::start(&src);
    support::grant(&client, &dst, &src, "auth").await;
    support::create_set(
        &client,
        &src,
        "auth",
        json!({"jwks": {"namespaces": [dst]}}),
    )
    .await;
    let copy: Api<ConfigMap> = Api::namespaced(client.clone(), &dst);
    support::wait_object(
        &copy,
        "auth-jwks",
        "the copy in the consenting namespace",
        Duration::from_secs(60),
        |o: Option<&ConfigMap>| o.is_some(),
    )
    .await
    .unwrap();
    // The signing Secret follows the copies (a key signs only once every copy holds it).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &src);
    let signing = support::wait_object(
        &secrets,
        "auth-signing-key",
        "the signing Secret",
        Duration::from_secs(60),
        |o: Option<&Secret>| o.is_some(),
    )
    .await
    .unwrap();
    let (token, kid) = sign_with_secret(&signing);
    let admin = support::kubeconfig_path();
    let o = plugin(
        &admin,
        &["verify", "auth", &token, "-n", &src, "--copy", &dst],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains(&format!("key {kid}")), "{}", text(&o));
    let o = plugin(
        &admin,
        &["verify", "auth", &token, "-n", &src, "--copy", &none],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not published there"), "{}", text(&o));
    op.assert_running();
}

/// `rotate --wait` gives up at its timeout with exit status 1 (the new key cannot sign before
/// prePublish has passed), and `completion` prints a script for the shell named.
#[tokio::test]
async fn rotate_wait_times_out_and_completion_prints_a_script() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "plugin-wait").await;
    let op = support::Operator::start(&ns);
    let admin = support::kubeconfig_path();
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({"rotation": {"interval": "1h", "prePublish": "1m", "overlap": "1h"}}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    support::wait_condition(&sets, "auth", "Ready", "True", "KeysPublished").await;
    let o = plugin(
        &admin,
        &["rotate", "auth", "-n", &ns, "--wait", "--timeout", "3s"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("did not sign within 3s"), "{}", text(&o));
    let o = plugin(&admin, &["rotate", "auth", "-n", &ns, "--timeout", "3s"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "--timeout without --wait: {}",
        text(&o)
    );
    for shell in ["bash", "zsh", "fish"] {
        let o = plugin(&admin, &["completion", shell]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("kubectl-keyturn"),
            "{shell}: {}",
            text(&o)
        );
    }
    drop(op);
}
