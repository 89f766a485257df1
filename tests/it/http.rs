//! The HTTP endpoint against the real control plane: real verifier libraries that nobody
//! here wrote (Node's jose, Python's PyJWT) verify every token through rotations, and the
//! edge cases of the protocol.

use crate::support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::Api;
use serde_json::json;

async fn wait_published(client: &Client, ns: &str, cm: &str) -> ConfigMap {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    support::wait_object(
        &api,
        cm,
        "JWKS published",
        Duration::from_secs(30),
        |o: Option<&ConfigMap>| o.is_some(),
    )
    .await
    .unwrap()
}

use crate::support::{Resp, raw_request as raw};

async fn get(port: u16, path: &str, extra: &str) -> Resp {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{extra}\r\n"
    );
    raw(port, req.as_bytes()).await.expect("response")
}

async fn wait_http_200(port: u16, path: &str) -> Resp {
    let start = Instant::now();
    loop {
        if let Ok(r) = raw(
            port,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
            && r.status == 200
        {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{path} never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn http_edge_cases() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "http").await;
    // `web` is served at an origin of its own (the cluster admin's `--issuer`).
    let pin = format!("{ns}/web=https://auth.example.com");
    let op = support::Operator::start_with(
        &ns,
        &[
            "--public-url",
            "https://keys.example.test/",
            "--issuer",
            &pin,
        ],
    );
    let port = op.http_port;
    support::create_set(&client, &ns, "web", json!({"rotation": {"interval": "720h", "prePublish": "10m", "overlap": "1h"}, "issuer": "https://auth.example.com"})).await;
    support::create_set(&client, &ns, "plain", json!({})).await;
    let cm = wait_published(&client, &ns, "web-jwks").await;
    wait_published(&client, &ns, "plain-jwks").await;
    let path = format!("/jwks/{ns}/web");
    let ok = wait_http_200(port, &path).await;
    // Same bytes as the ConfigMap, with the JWK Set media type.
    let cm_bytes = cm.data.unwrap()["jwks.json"].clone().into_bytes();
    let ok = if ok.body == cm_bytes {
        ok
    } else {
        wait_http_200(port, &path).await
    };
    assert_eq!(
        ok.body, cm_bytes,
        "HTTP serves the bytes of the ConfigMap (both derived from keyturn's state)"
    );
    assert_eq!(ok.header("content-type"), Some("application/jwk-set+json"));
    let cache = ok.header("cache-control").unwrap();
    let max_age: i64 = cache
        .strip_prefix("public, max-age=")
        .expect(cache)
        .parse()
        .unwrap();
    assert!(
        (0..=600).contains(&max_age),
        "max-age {max_age} exceeds prePublish (600 s)"
    );
    // Spread: 20 fetches in a row get max-ages in [540, 600] (prePublish, less at most a
    // tenth; the next change is 720h away), not all the same.
    let mut ages = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = get(port, &path, "").await;
        let v: i64 = r
            .header("cache-control")
            .and_then(|c| c.strip_prefix("public, max-age="))
            .and_then(|v| v.parse().ok())
            .unwrap();
        ages.insert(v);
    }
    assert!(
        ages.iter().all(|a| (540..=600).contains(a)) && ages.len() > 1,
        "max-ages of 20 fetches: {ages:?}"
    );
    let tag = ok.header("etag").unwrap().to_string();

    // Conditional GET.
    let not_modified = get(port, &path, &format!("If-None-Match: {tag}\r\n")).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(tag.as_str()));
    assert_eq!(
        get(port, &path, "If-None-Match: \"stale\"\r\n")
            .await
            .status,
        200
    );

    // HEAD: headers, no body.
    let head = raw(
        port,
        format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(cm_bytes.len().to_string().as_str())
    );

    // Unknown sets: 404 with a JSON error.
    for p in [
        format!("/jwks/{ns}/nope"),
        "/jwks/no-such-namespace/web".to_string(),
        "/nothing/here".to_string(),
    ] {
        let r = get(port, &p, "").await;
        assert_eq!(r.status, 404, "{p}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error body");
        assert!(v["error"].is_string(), "{p}: {v}");
    }
    // Traversal attempts never reach anything.
    for p in [
        "/jwks/../../etc/passwd".to_string(),
        "/jwks/%2e%2e/%2e%2e".to_string(),
        format!("/jwks/{ns}/..%2fweb"),
        format!("/jwks/{ns}/web/../../etc"),
        "/jwks/..;/x".to_string(),
        format!("/jwks/{}/web", ns.to_uppercase()),
    ] {
        let r = get(port, &p, "").await;
        assert!((400..500).contains(&r.status), "{p} answered {}", r.status);
        assert!(
            !String::from_utf8_lossy(&r.body).contains("\"keys\""),
            "{p} leaked a JWKS"
        );
    }
    // Wrong method.
    let post = raw(
        port,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(post.status, 405);
    // Oversized headers: refused (431) or the connection is dropped; the server lives on.
    let huge = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    // A dropped connection (Err) is also a refusal.
    if let Ok(r) = raw(port, huge.as_bytes()).await {
        assert!(
            (400..500).contains(&r.status),
            "oversized headers answered {}",
            r.status
        );
    }
    assert_eq!(
        get(port, &path, "").await.status,
        200,
        "still serving after the oversized request"
    );

    // Discovery document.
    let d = get(
        port,
        &format!("/{ns}/web/.well-known/openid-configuration"),
        "",
    )
    .await;
    assert_eq!(d.status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(doc["issuer"], "https://auth.example.com");
    assert_eq!(
        doc["jwks_uri"],
        format!("https://keys.example.test{path}"),
        "from --public-url (its trailing slash dropped), never from Host"
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    // Every member OpenID Connect Discovery 1.0 §3 marks REQUIRED.
    for field in [
        "issuer",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ] {
        assert!(doc.get(field).is_some(), "{field} missing: {doc}");
    }
    assert_eq!(doc["subject_types_supported"], json!(["public"]));
    let no_issuer = get(
        port,
        &format!("/{ns}/plain/.well-known/openid-configuration"),
        "",
    )
    .await;
    assert_eq!(no_issuer.status, 404);

    // Health on both ports; metrics on the admin port only.
    assert_eq!(get(port, "/healthz", "").await.status, 200);
    assert_eq!(get(port, "/readyz", "").await.status, 200);
    assert_eq!(get(op.metrics_port, "/readyz", "").await.status, 200);
    assert_eq!(get(port, "/metrics", "").await.status, 404);
    let m = get(op.metrics_port, "/metrics", "").await;
    let text = String::from_utf8(m.body).unwrap();
    // By route and status code: the JWKS served (200) and revalidated (304), the missing
    // discovery (404), the path that names nothing (other, 404); and timed.
    for series in [
        "keyturn_http_requests_total{route=\"jwks\",code=\"200\"}",
        "keyturn_http_requests_total{route=\"jwks\",code=\"304\"}",
        "keyturn_http_requests_total{route=\"discovery\",code=\"404\"}",
        "keyturn_http_requests_total{route=\"other\",code=\"404\"}",
        "keyturn_http_request_duration_seconds_count{route=\"jwks\"}",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    assert!(text.contains("keyturn_reconciles_total"), "{text}");
}

/// A verifier process: one token per line in, "ok <kid>" / "fail ..." per line out.
struct Verifier {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Verifier {
    fn start(
        name: &'static str,
        program: &str,
        args: &[&str],
        pythonpath: Option<&str>,
    ) -> Verifier {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(p) = pythonpath {
            cmd.env("PYTHONPATH", p);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} verifier ({program}): {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Verifier {
            name,
            child,
            stdin,
            stdout,
        }
    }

    fn verify(&mut self, token: &str) -> String {
        writeln!(self.stdin, "{token}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "{} verifier exited", self.name);
        line.trim().to_string()
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sign(secret: &Secret) -> (String, String) {
    let d = secret.data.as_ref().unwrap();
    let s = |k: &str| String::from_utf8(d[k].0.clone()).unwrap();
    let kid = s("kid");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(s("private.pem").as_bytes()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.clone());
    let exp = chrono::Utc::now().timestamp() + 600;
    (
        jsonwebtoken::encode(&header, &json!({"sub": "svc", "exp": exp}), &key).unwrap(),
        kid,
    )
}

#[tokio::test]
async fn jose_and_pyjwt_verify_every_token_through_three_rotations() {
    let dir = std::env::var("KEYTURN_TEST_VERIFIERS").unwrap_or_else(|_| {
        panic!("KEYTURN_TEST_VERIFIERS is not set: run hack/test.sh, or hack/test-deps.sh DIR and export it")
    });
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "verify").await;
    let op = support::Operator::start(&ns);
    // prePublish 4 s against verifiers whose key set is pinned and refreshed every 1 s, never on
    // an unknown kid (see tests/verifiers/): a key that signed before it was published fails.
    support::create_set(&client, &ns, "iss", json!({"algorithm": "ES256", "rotation": {"interval": "8s", "prePublish": "4s", "overlap": "4s"}})).await;
    wait_published(&client, &ns, "iss-jwks").await;
    let url = format!("http://127.0.0.1:{}/jwks/{ns}/iss", op.http_port);
    wait_http_200(op.http_port, &format!("/jwks/{ns}/iss")).await;
    let mut verifiers = [
        Verifier::start("jose", "node", &[&format!("{dir}/verify.mjs"), &url], None),
        Verifier::start(
            "pyjwt",
            "python3",
            &[&format!("{dir}/verify.py"), &url],
            Some(&format!("{dir}/python")),
        ),
    ];
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secrets = &secrets;
    support::wait_object(
        secrets,
        "iss-signing-key",
        "signing key",
        Duration::from_secs(30),
        |o: Option<&Secret>| o.is_some(),
    )
    .await;
    let mut kids = BTreeSet::new();
    let mut failures = vec![];
    let mut checked = 0;
    let start = Instant::now();
    // Issue tokens with whatever key the signing Secret holds, as an issuer would, and
    // verify each at once with both libraries, until three rotations have happened.
    while kids.len() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "only {} keys signed within 90 s",
            kids.len()
        );
        let secret = secrets.get("iss-signing-key").await.unwrap();
        let (token, kid) = sign(&secret);
        kids.insert(kid.clone());
        for v in verifiers.iter_mut() {
            let answer = v.verify(&token);
            checked += 1;
            if answer != format!("ok {kid}") {
                failures.push(format!("{} at {:?}: {answer}", v.name, start.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} verifications failed: {failures:#?}",
        failures.len()
    );
    assert!(checked > 100, "only {checked} verifications");
    drop(op);
}

#[tokio::test]
async fn the_jwks_service_manifest_is_accepted_by_the_api_server() {
    let client = support::client().await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/service-jwks.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    // The manifest names keyturn-system; apply it with a server-side dry run into a fresh
    // namespace of that role so the API server validates it for real.
    let ns = support::fresh_namespace(&client, "svc").await;
    let manifest = text.replace("namespace: keyturn-system", &format!("namespace: {ns}"));
    let out = support::kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&manifest));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("service/keyturn-jwks created (server dry run)")
    );
}
