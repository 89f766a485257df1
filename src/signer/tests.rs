use super::file::{StateFile, check_progress};
use super::proto::ExternalJWTSigner as _;
use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::core::keys::KeyPair;
use crate::core::state::SetState;
use crate::core::state::{KeyRecord, Sensitive};
use chrono::TimeZone as _;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

fn record(kp: &KeyPair, created: i64, activated: Option<i64>, retired: Option<i64>) -> KeyRecord {
    KeyRecord {
        kid: kp.kid().into(),
        alg: kp.alg(),
        public_jwk: kp.public_jwk(),
        private_pem: retired.is_none().then(|| Sensitive::new(kp.to_pkcs8_pem())),
        created_at: t(created),
        published_at: Some(t(created + 1)),
        activated_at: activated.map(t),
        retired_at: retired.map(t),
        manual: false,
        verify_until: None,
    }
}

fn state(keys: Vec<KeyRecord>) -> SetState {
    SetState {
        keys,
        ..SetState::new()
    }
}

fn service(snap: Option<Snapshot>) -> Service {
    let metrics = Arc::new(SignerMetrics::new());
    let served = Served::new(metrics.clone());
    if let Some(s) = snap {
        served.set(s);
    }
    Service::new(served, Duration::from_secs(10), metrics)
}

fn decode(b64: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(b64).unwrap()
}

#[test]
fn signs_with_the_active_key_for_every_algorithm_the_api_server_accepts() {
    for alg in SIGNER_ALGORITHMS {
        let retired = KeyPair::generate(alg, None).unwrap();
        let active = KeyPair::generate(alg, None).unwrap();
        let pending = KeyPair::generate(alg, None).unwrap();
        let st = state(vec![
            record(&retired, 0, Some(10), Some(100)),
            record(&active, 90, Some(100), None),
            record(&pending, 150, None, None),
        ]);
        let svc = service(Some(Snapshot::new("kube-system/sa", &st, 3600).unwrap()));
        let claims = URL_SAFE_NO_PAD.encode(
            br#"{"iss":"https://example","sub":"system:serviceaccount:a:b","exp":4000000000}"#,
        );
        let (header, sig) = svc.sign_claims(&claims).unwrap();
        // The header is exactly what the API server's strict decoder allows.
        let h: serde_json::Value = serde_json::from_slice(&decode(&header)).unwrap();
        assert_eq!(
            h,
            json!({"alg": alg.as_str(), "kid": active.kid(), "typ": "JWT"}),
            "{alg}"
        );
        // An independent verifier (jsonwebtoken) accepts it with the Active public JWK only.
        let token = format!("{header}.{claims}.{sig}");
        let verify = |kp: &KeyPair| {
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(kp.public_jwk()).unwrap();
            let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
            let mut v = jsonwebtoken::Validation::new(
                jsonwebtoken::Algorithm::from_str(alg.as_str()).unwrap(),
            );
            v.set_required_spec_claims(&["exp"]);
            v.validate_aud = false;
            jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).is_ok()
        };
        assert!(verify(&active), "{alg}: the Active key verifies");
        assert!(!verify(&pending), "{alg}: a Pending key does not");
        assert!(!verify(&retired), "{alg}: a Retired key does not");
    }
}

use std::str::FromStr as _;

#[test]
fn fetch_keys_returns_every_key_as_spki_with_the_published_kid() {
    let a = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let p = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let r = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let legacy = KeyPair::generate(Algorithm::RS256, None).unwrap();
    let mut v = record(&legacy, 0, None, None);
    v.private_pem = None;
    v.published_at = None;
    v.kid = "legacy-apiserver-kid".into();
    v.public_jwk["kid"] = json!("legacy-apiserver-kid");
    v.verify_until = Some(t(10_000));
    let st = state(vec![
        v,
        record(&r, 0, Some(5), Some(100)),
        record(&a, 50, Some(100), None),
        record(&p, 200, None, None),
    ]);
    let svc = service(Some(Snapshot::new("kube-system/sa", &st, 3600).unwrap()));
    let resp = svc.keys().unwrap();
    assert_eq!(resp.refresh_hint_seconds, 10);
    assert_eq!(resp.data_timestamp.unwrap().seconds, t(201).timestamp());
    let kids: Vec<&str> = resp.keys.iter().map(|k| k.key_id.as_str()).collect();
    assert_eq!(kids, ["legacy-apiserver-kid", r.kid(), a.kid(), p.kid()]);
    assert!(resp.keys.iter().all(|k| !k.exclude_from_oidc_discovery));
    // Each DER parses back (through the crypto crates' SPKI decoders) to the published key.
    use pkcs8::DecodePublicKey as _;
    for (k, kp) in resp.keys[1..].iter().zip([&r, &a, &p]) {
        let back = p256::PublicKey::from_public_key_der(&k.key).unwrap();
        let members = crate::core::keys::public_members(&crate::core::keys::Public::P256(back));
        for (name, value) in members {
            assert_eq!(kp.public_jwk()[&name], value);
        }
    }
    let rsa_back = rsa::PublicKey::from_public_key_der(&resp.keys[0].key).unwrap();
    assert_eq!(
        crate::core::keys::public_members(&crate::core::keys::Public::Rsa(Box::new(rsa_back)))["n"],
        legacy.public_jwk()["n"]
    );
}

#[test]
fn a_set_the_api_server_cannot_use_is_refused_with_the_reason() {
    for alg in [Algorithm::EdDSA, Algorithm::PS256, Algorithm::RS384] {
        let kp = KeyPair::generate(alg, None).unwrap();
        let e =
            Snapshot::new("ns/s", &state(vec![record(&kp, 0, Some(1), None)]), 3600).unwrap_err();
        assert!(
            e.to_string().contains("RS256, ES256 and ES384 only"),
            "{alg}: {e}"
        );
    }
    let kp = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let e = Snapshot::new("ns/s", &state(vec![record(&kp, 0, Some(1), None)]), 599).unwrap_err();
    assert!(
        e.to_string().contains("spec.maxTokenLifetime is 599s"),
        "{e}"
    );
}

#[test]
fn bad_claims_no_state_and_no_active_key_are_clear_errors() {
    let kp = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let svc = service(Some(
        Snapshot::new("ns/s", &state(vec![record(&kp, 0, Some(1), None)]), 600).unwrap(),
    ));
    for bad in ["", "abc=", "a.b", "a b", "ä"] {
        let e = svc.sign_claims(bad).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
    }
    let e = service(None).sign_claims("e30").unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    let pending_only = state(vec![record(&kp, 0, None, None)]);
    let svc = service(Some(Snapshot::new("ns/s", &pending_only, 600).unwrap()));
    let e = svc.sign_claims("e30").unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert_eq!(e.message(), "SigningKeySet ns/s has no Active key yet");
    // FetchKeys still answers: the Pending key is what the API server must learn first.
    assert_eq!(svc.keys().unwrap().keys.len(), 1);
}

#[tokio::test]
async fn the_grpc_methods_answer_and_are_counted() {
    let kp = KeyPair::generate(Algorithm::ES384, None).unwrap();
    let svc = service(Some(
        Snapshot::new("ns/s", &state(vec![record(&kp, 0, Some(1), None)]), 3600).unwrap(),
    ));
    let md = svc
        .metadata(tonic::Request::new(proto::MetadataRequest {}))
        .await
        .unwrap();
    assert_eq!(md.get_ref().max_token_expiration_seconds, 3600);
    let signed = svc
        .sign(tonic::Request::new(proto::SignJwtRequest {
            claims: "e30".into(),
        }))
        .await
        .unwrap();
    assert!(!signed.get_ref().signature.is_empty());
    let err = svc
        .sign(tonic::Request::new(proto::SignJwtRequest {
            claims: "e30=".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let text = svc.metrics.encode();
    for line in [
        "keyturn_signer_requests_total{method=\"Metadata\",code=\"Ok\"} 1",
        "keyturn_signer_requests_total{method=\"Sign\",code=\"Ok\"} 1",
        "keyturn_signer_requests_total{method=\"Sign\",code=\"InvalidArgument\"} 1",
        "keyturn_signer_sign_duration_seconds_count 2",
        "keyturn_signer_keys{state=\"Active\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // Nothing private reaches the metrics or the Debug output.
    let pem = kp.to_pkcs8_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!text.contains(&body[..40]));
    let dbg = format!("{:?}", svc.served.get().unwrap());
    assert!(
        !dbg.contains(&body[..40]) && dbg.contains(kp.kid()),
        "{dbg}"
    );
}

#[test]
fn a_state_only_moves_forward() {
    let a = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let b = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let before = state(vec![
        record(&a, 0, Some(10), None),
        record(&b, 50, None, None),
    ]);
    let rotated = state(vec![
        record(&a, 0, Some(10), Some(100)),
        record(&b, 50, Some(100), None),
    ]);
    let removed = state(vec![record(&b, 50, Some(100), None)]);
    assert_eq!(check_progress(&before, &rotated), Ok(()));
    assert_eq!(
        check_progress(&rotated, &removed),
        Ok(()),
        "removal after overlap"
    );
    assert_eq!(check_progress(&before, &before), Ok(()));
    let e = check_progress(&rotated, &before).unwrap_err();
    assert!(e.contains("is before the served state's"), "{e}");
    // Same newest time, but a key going back from Active to Pending.
    let mut back = rotated.clone();
    back.keys[1].activated_at = None;
    back.keys[1].published_at = Some(t(100));
    let e = check_progress(&rotated, &back).unwrap_err();
    assert!(e.contains("would go back from Active to Pending"), "{e}");
    // ... or an Active key that was Retired.
    let e = check_progress(&rotated, &before).unwrap_err();
    assert!(!e.is_empty());
    // An Active key older than the served one (a restored backup of the other branch).
    let c = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let mut other = state(vec![record(&c, 0, Some(20), None)]);
    other.keys[0].published_at = Some(t(200));
    let e = check_progress(&rotated, &other).unwrap_err();
    assert!(
        e.contains("was activated before the served Active key"),
        "{e}"
    );
}

fn opts(dir: &std::path::Path) -> Options {
    Options {
        namespace: "kube-system".into(),
        name: "sa".into(),
        socket: dir.join("signer.sock"),
        state_file: dir.join("state.json"),
        refresh_hint: Duration::from_secs(10),
    }
}

fn secret(st: &SetState, rv: &str) -> k8s_openapi::api::core::v1::Secret {
    let mut s = k8s_openapi::api::core::v1::Secret::default();
    s.metadata.resource_version = Some(rv.into());
    s.data = Some(
        [(
            crate::core::state::STATE_KEY.to_string(),
            k8s_openapi::ByteString(st.to_bytes()),
        )]
        .into(),
    );
    s
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("keyturn-signer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_state_file_round_trips_privately_and_refuses_going_back() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempdir("file");
    let o = opts(&dir);
    assert!(sync::load(&o).unwrap().is_none());
    let a = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let b = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let before = state(vec![
        record(&a, 0, Some(10), None),
        record(&b, 50, None, None),
    ]);
    let after = state(vec![
        record(&a, 0, Some(10), Some(100)),
        record(&b, 50, Some(100), None),
    ]);
    let (c1, s1) = sync::next(&o, None, &secret(&before, "1"), &lifetime(3600))
        .unwrap()
        .unwrap();
    assert_eq!(s1.active_kid(), Some(a.kid()));
    file::write(&o.state_file, &c1.doc).unwrap();
    let mode = std::fs::metadata(&o.state_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary file left"
    );
    let (loaded, snap) = sync::load(&o).unwrap().unwrap();
    assert_eq!(loaded.doc, c1.doc);
    assert_eq!(snap.kids(), [a.kid(), b.kid()]);
    // The same version again changes nothing; a newer one is taken; an older one refused.
    assert!(
        sync::next(&o, Some(&loaded), &secret(&before, "1"), &lifetime(3600))
            .unwrap()
            .is_none()
    );
    let (c2, s2) = sync::next(&o, Some(&loaded), &secret(&after, "2"), &lifetime(3600))
        .unwrap()
        .unwrap();
    assert_eq!(s2.active_kid(), Some(b.kid()));
    let e = sync::next(&o, Some(&c2), &secret(&before, "3"), &lifetime(3600)).unwrap_err();
    assert!(matches!(e, SignerError::Rollback(_)), "{e}");
    // A lifetime change alone is a new document.
    assert!(
        sync::next(&o, Some(&c2), &secret(&after, "2"), &lifetime(7200))
            .unwrap()
            .is_some()
    );
    // Debug of the document never shows the private keys.
    let dbg = format!("{:?}", c2.doc);
    assert!(
        dbg.contains("<redacted>") && !dbg.contains("PRIVATE"),
        "{dbg}"
    );
    // A file of another set, or of another layout, is refused by name.
    let other = StateFile {
        set: "default/other".into(),
        ..c2.doc.clone()
    };
    file::write(&o.state_file, &other).unwrap();
    let e = sync::load(&o).unwrap_err().to_string();
    assert!(
        e.contains("holds SigningKeySet default/other, not kube-system/sa"),
        "{e}"
    );
    // Another layout: a whole document of this set, but of a layout version this keyturn does
    // not know (a bare `{"version":2}` would fail as "not a state file" first).
    let newer = StateFile {
        version: c2.doc.version + 1,
        ..c2.doc.clone()
    };
    file::write(&o.state_file, &newer).unwrap();
    let e = sync::load(&o).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "layout version {} is not supported",
            c2.doc.version + 1
        )),
        "{e}"
    );
    std::fs::write(&o.state_file, b"{\"version\":2}").unwrap();
    let e = sync::load(&o).unwrap_err().to_string();
    assert!(e.contains("not a keyturn signer state file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A policy with this token lifetime and nothing revoked.
fn lifetime(seconds: i64) -> sync::Policy {
    sync::Policy {
        lifetime_seconds: seconds,
        revoked: vec![],
    }
}

/// A kid in `spec.revokedKeyIds` is neither signed with nor handed to the API server, from
/// the set's spec alone (the operator has not written anything since), and after a restart
/// from the state file too.
#[test]
fn a_revoked_key_neither_signs_nor_verifies_before_the_operator_writes() {
    let dir = tempdir("revoked");
    let o = opts(&dir);
    let a = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let b = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let st = state(vec![
        record(&a, 0, Some(10), None),
        record(&b, 50, None, None),
    ]);
    let (c1, s1) = sync::next(&o, None, &secret(&st, "1"), &lifetime(3600))
        .unwrap()
        .unwrap();
    assert_eq!(s1.active_kid(), Some(a.kid()));
    file::write(&o.state_file, &c1.doc).unwrap();
    let revoked = sync::Policy {
        lifetime_seconds: 3600,
        revoked: vec![a.kid().to_string()],
    };
    // The same Secret, the set's spec changed: a new document.
    let (c2, s2) = sync::next(&o, Some(&c1), &secret(&st, "1"), &revoked)
        .unwrap()
        .expect("a revocation alone changes what is served");
    assert_eq!(
        s2.active_kid(),
        None,
        "the revoked Active key does not sign"
    );
    assert_eq!(s2.kids(), vec![b.kid()], "nor is it handed out to verify");
    let e = service(Some(s2)).sign_claims("e30").unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::Unavailable,
        "no key signs until the replacement arrives"
    );
    file::write(&o.state_file, &c2.doc).unwrap();
    let (_, reloaded) = sync::load(&o).unwrap().unwrap();
    assert_eq!(
        reloaded.active_kid(),
        None,
        "a restart keeps the revocation"
    );
    assert_eq!(reloaded.kids(), vec![b.kid()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A symlink planted where the state file's temporary file goes is removed, never written
/// through: the keys land in the state file and nowhere else.
#[test]
fn the_state_file_is_never_written_through_a_planted_symlink() {
    let dir = tempdir("symlink");
    let o = opts(&dir);
    let elsewhere = dir.join("elsewhere");
    std::fs::write(&elsewhere, b"untouched").unwrap();
    let tmp = dir.join(format!(
        ".{}.tmp",
        o.state_file.file_name().unwrap().to_string_lossy()
    ));
    std::os::unix::fs::symlink(&elsewhere, &tmp).unwrap();
    let kp = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let st = state(vec![record(&kp, 0, Some(1), None)]);
    let (c, _) = sync::next(&o, None, &secret(&st, "1"), &lifetime(3600))
        .unwrap()
        .unwrap();
    file::write(&o.state_file, &c.doc).unwrap();
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"untouched");
    assert!(
        !std::fs::symlink_metadata(&o.state_file)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let (_, loaded) = sync::load(&o).unwrap().unwrap();
    assert_eq!(loaded.active_kid(), Some(kp.kid()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_socket_replaces_only_a_stale_socket_and_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempdir("sock");
    let path = dir.join("s.sock");
    std::fs::write(&path, b"not a socket").unwrap();
    let e = bind(&path).unwrap_err().to_string();
    assert!(e.contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_file(&path).unwrap();
    let first = bind(&path).unwrap();
    drop(first); // leaves the socket file behind, as a killed signer does
    let _second = bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_token_lifetime_comes_from_the_spec_through_its_validation() {
    let mut sks = crate::core::crd::SigningKeySet::new(
        "sa",
        serde_json::from_value(json!({
            "algorithm": "RS256",
            "rotation": {"interval": "24h", "prePublish": "1h", "overlap": "2h"},
            "jwks": {}
        }))
        .unwrap(),
    );
    let e = sync::token_lifetime("kube-system/sa", &sks)
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.maxTokenLifetime is not set"), "{e}");
    sks.spec.max_token_lifetime = Some("1h".into());
    assert_eq!(sync::token_lifetime("kube-system/sa", &sks).unwrap(), 3600);
    sks.spec.max_token_lifetime = Some("3h".into());
    let e = sync::token_lifetime("kube-system/sa", &sks)
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.rotation.overlap"), "{e}");
}

/// Every `keyturn_signer_*` series the alerts and their promtool tests name is one the signer
/// exports, with the labels it has (the operator's own are checked in src/runtime/metrics.rs).
#[test]
fn the_signer_alerts_name_only_series_the_signer_exports() {
    let m = SignerMetrics::new();
    m.call("Sign", tonic::Code::Ok);
    let text = m.encode();
    let exported: std::collections::BTreeMap<String, String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let sel = l.split_whitespace().next()?;
            let (name, labels) = sel.split_once('{').unwrap_or((sel, ""));
            Some((name.to_string(), labels.to_string()))
        })
        .collect();
    let read =
        |p: &str| std::fs::read_to_string(format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut seen = 0;
    for file in [
        "charts/keyturn/files/alerts.yaml",
        "tests/monitoring/alerts-test.yaml",
    ] {
        let body = read(file);
        let mut rest = body.as_str();
        while let Some(i) = rest.find("keyturn_signer_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            assert!(
                exported.contains_key(name),
                "{file} names {name}; the signer exports {:?}",
                exported.keys()
            );
            seen += 1;
            rest = &tail[end..];
        }
    }
    assert!(seen >= 4, "{seen}");
    assert!(exported["keyturn_signer_requests_total"].contains("method="));
    assert!(exported["keyturn_signer_requests_total"].contains("code="));
}
