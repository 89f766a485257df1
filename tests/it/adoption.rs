//! Adopting keyturn without logging anyone out (issue 16), on the real control plane with the
//! operator running:
//!
//! - a team's issuer already signs with its own key and a previous key's tokens are still in
//!   flight: the set imports the first (`spec.import`) and publishes the second for
//!   verification only (`spec.verificationKeys`); a verifier that never refetches checks both
//!   tokens against every version of the JWKS, through the first rotation and past the overlap;
//! - a tenant who may only write SigningKeySets names a Secret it cannot read: nothing is
//!   imported until the Secret's writers consent; a tenant who may write the verification
//!   source ConfigMap rewrites it with its own key: what keyturn publishes and serves does not
//!   change;
//! - a verification key the JWKS rules refuse, a `maxTokenLifetime` longer than the overlap
//!   allows, and a source naming both a ConfigMap and a Secret are refused with the field named.

use crate::support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::support::invariants::{Seen, observe, verify_with_jwks};
use keyturn::core::crd::{Algorithm, SigningKeySet};
use keyturn::core::keys::KeyPair;

/// A token signed with `kp` carrying `kid`, valid for an hour.
fn token(kp: &KeyPair, kid: &str) -> String {
    let pem = kp.to_pkcs8_pem();
    let key = match kp.alg() {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        a if a.is_rsa() => EncodingKey::from_rsa_pem(pem.as_bytes()),
        _ => EncodingKey::from_ec_pem(pem.as_bytes()),
    }
    .unwrap();
    let mut header = Header::new(support::invariants::jwt_alg(kp.alg()));
    header.kid = Some(kid.to_string());
    let exp = chrono::Utc::now().timestamp() + 3600;
    jsonwebtoken::encode(&header, &json!({"sub": "old-issuer", "exp": exp}), &key).unwrap()
}

/// The Secret a team's issuer kept its key in, annotated (or not) for import into `set`.
async fn key_secret(
    client: &Client,
    ns: &str,
    name: &str,
    kp: &KeyPair,
    into: Option<&str>,
) -> Secret {
    let mut s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"private.pem": kp.to_pkcs8_pem().as_str()}
    }))
    .unwrap();
    if let Some(set) = into {
        s.metadata.annotations =
            Some([("keyturn.dev/import-into".to_string(), set.to_string())].into());
    }
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap()
}

/// A JWKS ConfigMap `name` holding `keys`, consenting to be read by the set `auth`
/// (`keyturn.dev/verification-for`).
async fn jwks_config_map(client: &Client, ns: &str, name: &str, keys: &[serde_json::Value]) {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"keyturn.dev/verification-for": "auth"}},
        "data": {"jwks.json": json!({"keys": keys}).to_string()}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
}

/// Waits until the set is `Ready` with `status` and `reason`; returns the message.
async fn wait_ready(
    sets: &Api<SigningKeySet>,
    name: &str,
    status: &'static str,
    reason: &'static str,
) -> String {
    support::wait_condition(sets, name, "Ready", status, reason).await
}

/// The migration: tokens of the imported key and of a verification-only key verify against
/// every version of the JWKS until each key's own deadline, with no refetch on an unknown kid.
#[tokio::test]
async fn an_issuer_keeps_its_key_and_its_old_tokens_through_the_first_rotation() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "adopt").await;
    let mut op = support::Operator::start(&ns);

    // The team's issuer signs with `current`; tokens of `previous` (kid "legacy-2025") are
    // still in flight.
    let current = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let previous = KeyPair::generate(Algorithm::EdDSA, None).unwrap();
    let source = key_secret(&client, &ns, "issuer-key", &current, Some("auth")).await;
    let mut legacy = previous.public_jwk();
    legacy["kid"] = json!("legacy-2025");
    jwks_config_map(&client, &ns, "previous-issuer", &[legacy]).await;
    let current_token = token(&current, current.kid());
    let previous_token = token(&previous, "legacy-2025");

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut seen = observe(
        cms.clone(),
        kube::runtime::watcher::Config::default().labels("keyturn.dev/signing-key-set=auth"),
        secrets.clone(),
    )
    .await;
    let (interval, pre, overlap, verify_for) = (12, 4, 10, 30);
    // Whole seconds, as the spec holds it.
    let until =
        chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + verify_for, 0).unwrap();
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({
            "algorithm": "ES256",
            "rotation": {"interval": format!("{interval}s"), "prePublish": format!("{pre}s"), "overlap": format!("{overlap}s")},
            "import": {"secretName": "issuer-key", "keyId": current.kid()},
            "verificationKeys": [{"configMapName": "previous-issuer", "key": "jwks.json", "until": until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}]
        }),
    )
    .await;

    // Follow the set until both old keys have left the JWKS, checking every version.
    let mut versions = 0;
    let mut first_signer: Option<(String, Instant)> = None;
    let mut retired_at: Option<Instant> = None;
    let (mut current_gone, mut previous_gone): (Option<Instant>, Option<Instant>) = (None, None);
    // A hang guard (start-up, then the verification key's 30 s), not the measure: the
    // measures are the durations asserted below, each from the schedule.
    let guard = Duration::from_secs(60 + verify_for as u64);
    let deadline = Instant::now() + guard;
    while current_gone.is_none() || previous_gone.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, copy_ns, s) = tokio::time::timeout(left, seen.next())
            .await
            .unwrap_or_else(|_| panic!("both old keys leave the JWKS within {guard:?}"))
            .expect("watch ended");
        match s {
            Seen::Signer { kid, at, .. } => match &first_signer {
                None => first_signer = Some((kid, at)),
                Some((f, _)) if *f != kid && retired_at.is_none() => retired_at = Some(at),
                Some(_) => {}
            },
            Seen::Jwks {
                kids, bytes, at, ..
            } if copy_ns.as_deref() == Some(ns.as_str()) => {
                versions += 1;
                if versions == 1 {
                    assert!(
                        kids.contains(&current.kid().to_string())
                            && kids.contains(&"legacy-2025".to_string()),
                        "the first JWKS already holds the imported and the verification key: {kids:?}"
                    );
                }
                match verify_with_jwks(&current_token, &bytes) {
                    Ok(()) => assert!(current_gone.is_none(), "the imported key came back"),
                    Err(e) if current_gone.is_none() => {
                        // It may leave only `overlap` after it stopped signing.
                        let retired = retired_at.expect("the imported key left before it retired");
                        assert!(
                            at.duration_since(retired) + support::invariants::JITTER
                                >= Duration::from_secs(overlap),
                            "imported key's token refused {:?} after retirement: {e}",
                            at.duration_since(retired)
                        );
                        current_gone = Some(at);
                    }
                    Err(_) => {}
                }
                match verify_with_jwks(&previous_token, &bytes) {
                    Ok(()) => assert!(previous_gone.is_none(), "the verification key came back"),
                    Err(e) if previous_gone.is_none() => {
                        assert!(
                            chrono::Utc::now() + chrono::Duration::milliseconds(300) >= until,
                            "previous issuer's token refused before its time: {e}"
                        );
                        assert!(
                            chrono::Utc::now() <= until + chrono::Duration::seconds(3),
                            "the verification key was kept past its until ({until})"
                        );
                        previous_gone = Some(at);
                    }
                    Err(_) => {}
                }
            }
            Seen::Jwks { .. } => {}
        }
    }
    let (first_kid, first_at) = first_signer.expect("a key signed");
    assert_eq!(
        first_kid,
        current.kid(),
        "the imported key signs first, at once"
    );
    let retired_at = retired_at.expect("the first rotation happened");
    // The imported key signed one interval (not less, and not a whole second late), and left
    // the JWKS once its overlap had passed, not much later.
    let (i, o) = (Duration::from_secs(interval), Duration::from_secs(overlap));
    let slack = Duration::from_secs(3);
    let signed_for = retired_at.duration_since(first_at);
    assert!(
        signed_for + support::invariants::JITTER >= i && signed_for <= i + slack,
        "the imported key signed {signed_for:?}; the interval is {i:?}"
    );
    let stayed = current_gone.unwrap().duration_since(retired_at);
    assert!(
        stayed <= o + slack,
        "the imported key stayed {stayed:?} after retiring; the overlap is {o:?}"
    );

    // The source Secret is exactly as the team left it.
    let after = secrets.get("issuer-key").await.unwrap();
    assert_eq!(after.resource_version(), source.resource_version());
    assert_eq!(after.data, source.data);
    assert_eq!(after.metadata.annotations, source.metadata.annotations);
    op.assert_running();
}

/// A tenant who may write SigningKeySets (and nothing else) names a Secret it cannot read:
/// nothing is imported, nothing is generated instead, until the Secret's writers consent.
#[tokio::test]
async fn a_secret_is_imported_only_when_its_writers_consent() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "adopt-consent").await;
    let mut op = support::Operator::start(&ns);
    let (tenant, _) = support::restricted_with(
        &client,
        &ns,
        "tenant",
        json!([{"apiGroups": ["keyturn.dev"], "resources": ["signingkeysets"], "verbs": ["create", "get", "list", "watch", "patch", "update"]}]),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        matches!(Api::<Secret>::namespaced(tenant.clone(), &ns).get("payments-key").await, Err(kube::Error::Api(e)) if e.code == 403),
        "the tenant cannot read Secrets"
    );
    let theirs = KeyPair::generate(Algorithm::RS256, None).unwrap();
    let source = key_secret(&client, &ns, "payments-key", &theirs, None).await;

    support::create_set(
        &tenant,
        &ns,
        "stolen",
        json!({"algorithm": "RS256", "import": {"secretName": "payments-key"}}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let msg = wait_ready(&sets, "stolen", "False", "ImportFailed").await;
    assert!(
        msg.contains("does not consent") && msg.contains("keyturn.dev/import-into: stolen"),
        "{msg}"
    );
    assert!(!msg.contains("PRIVATE"), "{msg}");
    for name in ["stolen-signing-key", "stolen-keyturn-keys"] {
        assert!(
            secrets.get_opt(name).await.unwrap().is_none(),
            "{name} was written"
        );
    }
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get_opt("stolen-jwks")
            .await
            .unwrap()
            .is_none(),
        "nothing is published while the import waits"
    );
    let after = secrets.get("payments-key").await.unwrap();
    assert_eq!(
        after.resource_version(),
        source.resource_version(),
        "the source is untouched"
    );

    // Its writers consent: the key is imported as it is, and signs.
    secrets
        .patch(
            "payments-key",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"keyturn.dev/import-into": "stolen"}}}),
            ),
        )
        .await
        .unwrap();
    wait_ready(&sets, "stolen", "True", "KeysPublished").await;
    let signing = secrets.get("stolen-signing-key").await.unwrap();
    assert_eq!(support::signing_kid(&signing), theirs.kid());
    op.assert_running();
}

/// A tenant who may write the verification source ConfigMap replaces its key with its own:
/// keyturn read the source for this generation of the spec, so neither the JWKS nor the HTTP
/// endpoint carries the tenant's key, also after the set is reconciled again.
#[tokio::test]
async fn rewriting_a_verification_source_does_not_reach_the_jwks() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "adopt-source").await;
    let mut op = support::Operator::start(&ns);
    let previous = KeyPair::generate(Algorithm::ES384, None).unwrap();
    jwks_config_map(&client, &ns, "previous-issuer", &[previous.public_jwk()]).await;
    let until = chrono::Utc::now() + chrono::Duration::hours(1);
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({"rotation": {"interval": "1h", "prePublish": "3s", "overlap": "1h"},
               "verificationKeys": [{"configMapName": "previous-issuer", "key": "jwks.json", "until": until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}]}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    wait_ready(&sets, "auth", "True", "KeysPublished").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let kids = support::invariants::kids_of(&cms.get("auth-jwks").await.unwrap());
    assert!(kids.contains(&previous.kid().to_string()), "{kids:?}");

    // The tenant may do anything to ConfigMaps in the namespace, nothing else.
    let (tenant, _) = support::restricted_with(
        &client,
        &ns,
        "cm-writer",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}]),
    )
    .await;
    let attacker = KeyPair::generate(Algorithm::ES384, None).unwrap();
    Api::<ConfigMap>::namespaced(tenant, &ns)
        .patch(
            "previous-issuer",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"jwks.json": json!({"keys": [attacker.public_jwk()]}).to_string()}})),
        )
        .await
        .expect("the tenant may write the source");

    // Reconciled again (a manual rotation publishes a new key): still the recorded key only.
    support::rotate(&sets, "auth", "1").await;
    let cm = support::wait_object(
        &cms,
        "auth-jwks",
        "the manual rotation's key published",
        Duration::from_secs(30),
        |o: Option<&ConfigMap>| o.is_some_and(|c| support::invariants::kids_of(c).len() == 3),
    )
    .await
    .unwrap();
    let kids = support::invariants::kids_of(&cm);
    assert!(kids.contains(&previous.kid().to_string()), "{kids:?}");
    assert!(!kids.contains(&attacker.kid().to_string()), "{kids:?}");
    let (code, body) = op
        .http_get(&format!("/jwks/{ns}/auth"))
        .expect("the endpoint answers");
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains(attacker.kid()), "{body}");
    op.assert_running();
}

/// Refusals name the field: a verification key the JWKS rules refuse (the set's own key goes
/// on; the set is Ready once the source is fixed, without a spec edit), a `maxTokenLifetime`
/// the overlap does not cover, a source naming both a ConfigMap and a Secret.
#[tokio::test]
async fn bad_adoption_input_is_refused_naming_the_field() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "adopt-bad").await;
    let mut op = support::Operator::start(&ns);

    let e = support::try_create_set(
        &client,
        &ns,
        "short",
        json!({"maxTokenLifetime": "1h", "rotation": {"overlap": "61m"}}),
    )
    .await
    .expect_err("an overlap shorter than the token lifetime plus the margin is rejected");
    assert!(
        e.to_string().contains("spec.rotation.overlap")
            && e.to_string().contains("maxTokenLifetime"),
        "{e}"
    );
    support::try_create_set(
        &client,
        &ns,
        "long-enough",
        json!({"maxTokenLifetime": "1h", "rotation": {"overlap": "62m"}}),
    )
    .await
    .expect("an overlap of the token lifetime plus 2m is accepted");
    let e = support::try_create_set(
        &client,
        &ns,
        "both",
        json!({"verificationKeys": [{"configMapName": "a", "secretName": "b", "key": "k", "until": "2030-01-01T00:00:00Z"}]}),
    )
    .await
    .expect_err("a source naming a ConfigMap and a Secret is rejected");
    assert!(
        e.to_string()
            .contains("exactly one of configMapName and secretName"),
        "{e}"
    );

    // A private JWK where public keys belong.
    let previous = KeyPair::generate(Algorithm::EdDSA, None).unwrap();
    let private: serde_json::Value = serde_json::from_str(&previous.private_jwk_json()).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    jwks_config_map(&client, &ns, "previous-issuer", &[private]).await;
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({"rotation": {"interval": "1h", "prePublish": "3s", "overlap": "1h"},
               "verificationKeys": [{"configMapName": "previous-issuer", "key": "jwks.json", "until": "2030-01-01T00:00:00Z"}]}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let msg = wait_ready(&sets, "auth", "False", "VerificationKeysRefused").await;
    assert!(
        msg.contains("spec.verificationKeys[0]") && msg.contains("private member"),
        "{msg}"
    );
    let d = serde_json::from_str::<serde_json::Value>(&previous.private_jwk_json()).unwrap()["d"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!msg.contains(&d), "{msg}");
    // The set's own key is published and signs meanwhile, without the refused key.
    let own = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("auth-signing-key")
        .await
        .unwrap();
    let kids = support::invariants::kids_of(&cms.get("auth-jwks").await.unwrap());
    assert_eq!(kids, vec![support::signing_kid(&own)]);

    // The source fixed (no spec edit): picked up on the retry.
    cms.patch(
        "previous-issuer",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"data": {"jwks.json": json!({"keys": [previous.public_jwk()]}).to_string()}}),
        ),
    )
    .await
    .unwrap();
    wait_ready(&sets, "auth", "True", "KeysPublished").await;
    let kids = support::invariants::kids_of(&cms.get("auth-jwks").await.unwrap());
    assert!(kids.contains(&previous.kid().to_string()), "{kids:?}");
    op.assert_running();
}

/// A tenant who may only write SigningKeySets names another team's private-key Secret as a
/// verification source: the Secret does not consent, so keyturn does not even read its data;
/// nothing of it is published, the refusal quotes none of it (nor tells whether it exists),
/// and the Secret is untouched. (A consenting source holding a private key is refused
/// unquoted too: see the private JWK in `bad_adoption_input_is_refused_naming_the_field`.)
#[tokio::test]
async fn a_private_key_secret_named_as_a_verification_source_is_refused_unquoted() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "adopt-probe").await;
    let mut op = support::Operator::start(&ns);
    let (tenant, _) = support::restricted_with(
        &client,
        &ns,
        "tenant",
        json!([{"apiGroups": ["keyturn.dev"], "resources": ["signingkeysets"], "verbs": ["create", "get", "list", "watch"]}]),
    )
    .await;
    let theirs = KeyPair::generate(Algorithm::ES256, None).unwrap();
    let source = key_secret(&client, &ns, "payments-key", &theirs, None).await;
    support::create_set(
        &tenant,
        &ns,
        "probe",
        json!({"rotation": {"interval": "1h", "prePublish": "3s", "overlap": "1h"},
               "verificationKeys": [{"secretName": "payments-key", "key": "private.pem", "until": "2030-01-01T00:00:00Z"}]}),
    )
    .await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let msg = wait_ready(&sets, "probe", "False", "VerificationKeysRefused").await;
    assert!(msg.contains("does not exist or does not consent"), "{msg}");
    assert!(
        !msg.contains("PRIVATE KEY-----") && !msg.contains(&theirs.public_jwk()["x"].to_string()),
        "{msg}"
    );
    // The same words for a Secret that does not exist at all.
    support::create_set(
        &tenant,
        &ns,
        "probe-missing",
        json!({"rotation": {"interval": "1h", "prePublish": "3s", "overlap": "1h"},
               "verificationKeys": [{"secretName": "no-such-key", "key": "private.pem", "until": "2030-01-01T00:00:00Z"}]}),
    )
    .await;
    let missing = wait_ready(&sets, "probe-missing", "False", "VerificationKeysRefused").await;
    assert_eq!(
        missing
            .replace("no-such-key", "payments-key")
            .replace("probe-missing", "probe"),
        msg
    );
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("probe-jwks")
        .await
        .unwrap();
    let kids = support::invariants::kids_of(&cm);
    assert_eq!(kids.len(), 1, "only the set's own key: {kids:?}");
    assert!(!kids.contains(&theirs.kid().to_string()));
    let (code, body) = op
        .http_get(&format!("/jwks/{ns}/probe"))
        .expect("the endpoint answers");
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains(theirs.kid()), "{body}");
    let after = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("payments-key")
        .await
        .unwrap();
    assert_eq!(after.resource_version(), source.resource_version());
    op.assert_running();
}
