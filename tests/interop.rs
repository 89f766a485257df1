//! The signing Secret loads in the stacks issuers use: every algorithm's `private.pem` (PKCS#8
//! v1) in OpenSSL 3 (`openssl pkey`), Node's `crypto` and Python's `cryptography`, holding the
//! same key as `private.jwk.json`; and a Secret written by an older keyturn (Ed25519 in the
//! PKCS#8 v2 form those stacks reject) is rewritten once, same key and kid.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

fn data(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn verifiers_dir() -> String {
    std::env::var("KEYTURN_TEST_VERIFIERS").unwrap_or_else(|_| {
        panic!("KEYTURN_TEST_VERIFIERS is not set: run hack/test.sh, or hack/test-deps.sh DIR and export it")
    })
}

/// Node: `crypto.createPrivateKey` on the PEM, and on the private JWK; both must give the same
/// public key.
const NODE: &str = r#"
const crypto = require('crypto'); const fs = require('fs');
const [pemFile, jwkFile] = process.argv.slice(1);
const fromPem = crypto.createPrivateKey(fs.readFileSync(pemFile));
const fromJwk = crypto.createPrivateKey({key: JSON.parse(fs.readFileSync(jwkFile)), format: 'jwk'});
const pub = k => crypto.createPublicKey(k).export({type: 'spki', format: 'der'}).toString('hex');
if (pub(fromPem) !== pub(fromJwk)) { console.error('private.pem and private.jwk.json differ'); process.exit(1); }
console.log('ok');
"#;

/// Python `cryptography` (and PyJWT for the JWK): the same check.
const PYTHON: &str = r#"
import json, sys
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import get_default_algorithms
pem_file, jwk_file = sys.argv[1:]
key = serialization.load_pem_private_key(open(pem_file, 'rb').read(), password=None)
jwk = json.load(open(jwk_file))
other = get_default_algorithms()[jwk['alg']].from_jwk(json.dumps(jwk))
spki = lambda k: k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
if spki(key) != spki(other):
    sys.exit('private.pem and private.jwk.json differ')
print('ok')
"#;

/// Loads the signing Secret's key in OpenSSL, Node and Python; panics naming the stack that fails.
fn load_everywhere(what: &str, s: &Secret) {
    let dir = std::env::temp_dir().join(format!("keyturn-interop-{}-{what}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("private.pem");
    let jwk = dir.join("private.jwk.json");
    std::fs::write(&pem, data(s, "private.pem")).unwrap();
    std::fs::write(&jwk, data(s, "private.jwk.json")).unwrap();
    let pythonpath = format!("{}/python", verifiers_dir());
    let runs: [(&str, Command); 3] = [
        ("openssl pkey", {
            let mut c = Command::new("openssl");
            c.args(["pkey", "-noout", "-in"]).arg(&pem);
            c
        }),
        ("node crypto", {
            let mut c = Command::new("node");
            c.args(["-e", NODE]).arg(&pem).arg(&jwk);
            c
        }),
        ("python cryptography", {
            let mut c = Command::new("python3");
            c.args(["-c", PYTHON])
                .arg(&pem)
                .arg(&jwk)
                .env("PYTHONPATH", &pythonpath);
            c
        }),
    ];
    for (stack, mut cmd) in runs {
        let out = cmd.output().unwrap_or_else(|e| panic!("{stack}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {stack} cannot load the signing Secret: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn every_algorithms_private_pem_loads_in_openssl_node_and_python() {
    let client = common::client().await;
    common::ensure_crd(&client).await;
    let ns = common::fresh_namespace(&client, "interop").await;
    let _op = common::Operator::start(&ns);
    let mut sets: Vec<(String, serde_json::Value)> = keyturn::crd::Algorithm::ALL
        .iter()
        .map(|a| (a.as_str().to_lowercase(), json!({"algorithm": a.as_str()})))
        .collect();
    for bits in [3072, 4096] {
        sets.push((
            format!("rs256-{bits}"),
            json!({"algorithm": "RS256", "rsaKeySize": bits}),
        ));
    }
    for (name, spec) in &sets {
        common::create_set(&client, &ns, name, spec.clone()).await;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for (name, _) in &sets {
        let s = common::wait_object(
            &secrets,
            &format!("{name}-signing-key"),
            "signing Secret",
            Duration::from_secs(120),
            |o: Option<&Secret>| o.is_some(),
        )
        .await
        .unwrap();
        load_everywhere(name, &s);
    }
}

#[tokio::test]
async fn an_old_eddsa_signing_secret_is_rewritten_once_in_the_v1_form() {
    let client = common::client().await;
    common::ensure_crd(&client).await;
    let ns = common::fresh_namespace(&client, "upgrade").await;
    let mut op = common::Operator::start(&ns);
    common::create_set(&client, &ns, "ed", json!({"algorithm": "EdDSA"})).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let sets: Api<keyturn::crd::SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let ready = |o: Option<&keyturn::crd::SigningKeySet>| {
        o.and_then(|s| s.status.as_ref()).is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    // Settled (the key's activation recorded) before the old operator goes away.
    common::wait_object(&sets, "ed", "Ready", Duration::from_secs(60), ready).await;
    let s = secrets.get("ed-signing-key").await.unwrap();
    op.kill();
    let kid = data(&s, "kid");
    let v1 = data(&s, "private.pem");

    // What keyturn wrote before: the same key as PKCS#8 v2 (RFC 5958 with the public key), in
    // the signing Secret and in the internal state.
    let jwk: serde_json::Value = serde_json::from_str(&data(&s, "private.jwk.json")).unwrap();
    let seed = URL_SAFE_NO_PAD.decode(jwk["d"].as_str().unwrap()).unwrap();
    // ed25519-dalek 2's own encoding is what keyturn stored and wrote before.
    let seed: [u8; 32] = seed.try_into().unwrap();
    let v2 = {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .to_pkcs8_pem(pkcs8::LineEnding::LF)
            .unwrap()
            .to_string()
    };
    let out = Command::new("openssl")
        .args(["pkey", "-noout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(v2.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(!out.success(), "control: OpenSSL 3.0 rejects the v2 form");
    let internal = secrets.get("ed-keyturn-keys").await.unwrap();
    let mut state: serde_json::Value =
        serde_json::from_slice(&internal.data.as_ref().unwrap()["state.json"].0).unwrap();
    for k in state["keys"].as_array_mut().unwrap() {
        if k["kid"] == kid.as_str() {
            k["privatePem"] = json!(v2);
        }
    }
    let enc = |b: &[u8]| STANDARD.encode(b);
    for (name, key, value) in [
        (
            "ed-keyturn-keys",
            "state.json",
            serde_json::to_vec(&state).unwrap(),
        ),
        ("ed-signing-key", "private.pem", v2.as_bytes().to_vec()),
    ] {
        secrets
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {key: enc(&value)}})),
            )
            .await
            .unwrap();
    }

    assert_eq!(
        data(&secrets.get("ed-signing-key").await.unwrap(), "private.pem"),
        v2,
        "the old form is in place"
    );
    // The upgraded operator writes the v1 form once: same key, same kid.
    op.restart();
    let fixed = common::wait_object(
        &secrets,
        "ed-signing-key",
        "private.pem rewritten",
        Duration::from_secs(60),
        |o: Option<&Secret>| {
            o.is_some_and(|s| {
                // The base64 of RFC 8410's v1 prefix (30 2e 02 01 00 ...) opens the body.
                String::from_utf8_lossy(&s.data.as_ref().unwrap()["private.pem"].0)
                    .lines()
                    .nth(1)
                    .is_some_and(|l| l.starts_with("MC4CAQAwBQYDK2VwBCIEI"))
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(data(&fixed, "kid"), kid, "same kid");
    assert_eq!(
        data(&fixed, "private.pem"),
        v1,
        "the v1 form of the same key"
    );
    load_everywhere("upgraded", &fixed);
    let rv = fixed.metadata.resource_version.clone();
    // Settled: Ready with this key, and the rewrite was the signing Secret's only write.
    common::wait_object(
        &sets,
        "ed",
        "Ready after the upgrade",
        Duration::from_secs(30),
        ready,
    )
    .await;
    let (_, metrics) = op.admin_get("/metrics").unwrap();
    let writes = |object: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("keyturn_writes_total{{reason=\"{object}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse::<f64>().unwrap() as u64)
            .unwrap_or(0)
    };
    assert_eq!(writes("signing_secret"), 1, "{metrics}");
    assert_eq!(writes("internal_secret"), 0, "{metrics}");
    assert_eq!(
        secrets
            .get("ed-signing-key")
            .await
            .unwrap()
            .metadata
            .resource_version,
        rv,
        "steady state writes nothing more"
    );
}
