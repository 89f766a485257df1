//! Faults against the real control plane: two replicas racing without leader election,
//! garbage in keyturn's own Secrets, and a fuzzed stream of specs.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::support::invariants::*;
use keyturn::core::crd::SigningKeySet;

fn ready_condition(s: &SigningKeySet) -> Option<(String, String, String)> {
    let c = s
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn two_replicas_without_leader_election_never_break_an_invariant() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "race").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cfg = watcher::Config::default().labels("app.kubernetes.io/managed-by=keyturn");
    let mut observed = observe(cms, cfg, secrets).await;
    // Both replicas reconcile everything: every write races the other's. Each under a name of
    // its own, so that the audit log shows the conflicts they met.
    let since = chrono::Utc::now();
    let users = [format!("race-a-{ns}"), format!("race-b-{ns}")];
    let mut a =
        support::Operator::start_as("a", &ns, support::impersonating_kubeconfig(&users[0]), &[]);
    let mut b =
        support::Operator::start_as("b", &ns, support::impersonating_kubeconfig(&users[1]), &[]);
    for (name, alg) in [("one", "ES256"), ("two", "EdDSA")] {
        support::try_create_set(&client, &ns, name, json!({"algorithm": alg, "rotation": {"interval": "5s", "prePublish": "2s", "overlap": "2s"}}))
            .await
            .unwrap();
    }
    // Until each set has had its first key and three rotations: counted from the first key,
    // not in a fixed window that holds both replicas' start-up. The deadline only guards a hang.
    const INTERVAL: Duration = Duration::from_secs(5);
    let mut history: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(60) + 4 * INTERVAL;
    let rotated = |h: &BTreeMap<String, Vec<Seen>>| {
        ["one", "two"]
            .iter()
            .all(|n| h.get(*n).is_some_and(|s| activation_gaps(s).len() >= 3))
    };
    while Instant::now() < end && !rotated(&history) {
        let Ok(Some((set, _, seen))) =
            tokio::time::timeout(end - Instant::now(), observed.next()).await
        else {
            break;
        };
        history.entry(set).or_default().push(seen);
    }
    a.assert_running();
    b.assert_running();
    for name in ["one", "two"] {
        let seen = history.remove(name).unwrap_or_default();
        // No two activations closer than the interval: a rotation both replicas made (each
        // deciding from what it read before the other wrote) would activate twice at once.
        let gaps = activation_gaps(&seen);
        assert!(gaps.len() >= 3, "{name}: only {} rotations", gaps.len());
        assert!(
            gaps.iter().all(|g| *g + JITTER >= INTERVAL),
            "{name}: activations {gaps:?} apart, closer than the interval: a duplicated or early rotation"
        );
        let (violations, _, signers) =
            check_history(seen, Duration::from_secs(2), Duration::from_secs(2));
        assert!(violations.is_empty(), "{name}: {violations:#?}");
        let distinct: std::collections::BTreeSet<_> = signers.iter().collect();
        assert_eq!(distinct.len(), signers.len(), "{name}: a key signed twice");
    }
    // Conflicts were met (the API server refused a write decided from what the other replica
    // had just changed: 409)...
    let conflicts = users
        .iter()
        .flat_map(|u| support::audit_writes(u, since))
        .filter(|e| e["responseStatus"]["code"] == 409)
        .count();
    assert!(
        conflicts > 0,
        "the replicas never raced (no 409 in the audit log)"
    );
    // ...and handled as retries, not as foreign objects.
    let logs = a.log_text() + &b.log_text();
    assert!(
        !logs.contains("ForeignObject"),
        "a race was mistaken for a foreign object"
    );
}

#[tokio::test]
async fn garbage_in_own_secrets_is_reported_and_no_published_key_vanishes() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "garbage").await;
    let mut op = support::Operator::start(&ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let other_alg =
        keyturn::core::keys::KeyPair::generate(keyturn::core::crd::Algorithm::ES384, None).unwrap();
    let other_same_alg =
        keyturn::core::keys::KeyPair::generate(keyturn::core::crd::Algorithm::ES256, None).unwrap();
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "truncated-pem",
            Box::new(|r: &mut Value| {
                let pem = r["privatePem"].as_str().unwrap().to_string();
                r["privatePem"] = json!(pem[..pem.len() / 2]);
            }),
        ),
        (
            "wrong-key-type",
            Box::new(move |r: &mut Value| {
                r["privatePem"] = json!(other_alg.to_pkcs8_pem().as_str())
            }),
        ),
        (
            "kid-mismatch",
            Box::new(move |r: &mut Value| {
                r["privatePem"] = json!(other_same_alg.to_pkcs8_pem().as_str())
            }),
        ),
        (
            "public-jwk-tampered",
            Box::new(|r: &mut Value| r["publicJwk"]["x"] = json!("AAAA")),
        ),
    ];
    for (name, _) in &cases {
        support::try_create_set(&client, &ns, name, json!({"algorithm": "ES256", "rotation": {"interval": "8s", "prePublish": "2s", "overlap": "2s"}})).await.unwrap();
    }
    for (name, _) in &cases {
        support::wait_object(
            &sets,
            name,
            "Ready",
            Duration::from_secs(30),
            |o: Option<&SigningKeySet>| {
                o.and_then(ready_condition)
                    .is_some_and(|(s, _, _)| s == "True")
            },
        )
        .await;
    }
    let mut before = BTreeMap::new();
    // When the last of them would have had its next key sign, as the schedule said.
    let mut due = chrono::Utc::now();
    for (name, _) in &cases {
        let t = sets
            .get(name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.next_rotation_time);
        let t = chrono::DateTime::parse_from_rfc3339(&t.expect("a Ready set says when it rotates"))
            .unwrap()
            .to_utc();
        due = due.max(t);
    }
    for (name, mutate) in &cases {
        let cm = cms.get(&format!("{name}-jwks")).await.unwrap();
        before.insert(name.to_string(), kids_of(&cm));
        let internal = secrets.get(&format!("{name}-keyturn-keys")).await.unwrap();
        let mut state: Value =
            serde_json::from_slice(&internal.data.unwrap()["state.json"].0).unwrap();
        mutate(&mut state["keys"][0]);
        secrets
            .patch(
                &format!("{name}-keyturn-keys"),
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"stringData": {"state.json": serde_json::to_string(&state).unwrap()}}),
                ),
            )
            .await
            .unwrap();
    }
    for (name, _) in &cases {
        let s = support::wait_object(
            &sets,
            name,
            "Ready=False InternalStateCorrupt",
            Duration::from_secs(30),
            |o: Option<&SigningKeySet>| {
                o.and_then(ready_condition)
                    .is_some_and(|(s, r, _)| s == "False" && r == "InternalStateCorrupt")
            },
        )
        .await
        .unwrap();
        let (_, _, msg) = ready_condition(&s).unwrap();
        assert!(!msg.contains("PRIVATE KEY"), "{name}: {msg}");
    }
    // Past every set's next activation, and once the operator has looked at each again (poked:
    // a corrupt state is retried every 5 minutes), every key that was published still is.
    support::wait_until(due).await;
    for (name, _) in &cases {
        let poked = support::poke(&sets, name).await;
        op.wait_reconciled_after(name, poked, Duration::from_secs(30))
            .await;
    }
    for (name, _) in &cases {
        let cm = cms.get(&format!("{name}-jwks")).await.unwrap();
        for kid in &before[*name] {
            assert!(
                kids_of(&cm).contains(kid),
                "{name}: published key {kid} vanished"
            );
        }
    }
    op.assert_running();
}

#[tokio::test]
async fn fuzzed_specs_are_accepted_and_reconciled_or_rejected_with_a_message() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "fuzz").await;
    let mut op = support::Operator::start(&ns);
    let mut rng = support::Rng(0x00C0_FFEE_1234);
    let algs = ["ES256", "ES384", "EdDSA", "RS256", "PS512"];
    let bad_algs = ["HS256", "", "es256", "RS1024"];
    let durs = ["1s", "90s", "15m", "1h30m", "720h", "1.5h"];
    let bad_durs = ["0s", "-1h", "1", "h", "10x", "999999999999h", "", "1h 30m"];
    let sizes = [Value::Null, Value::Null, json!(2048), json!(3072)];
    let bad_sizes = [json!(1024), json!(0), json!("big")];
    let mut accepted = vec![];
    let mut rejected = 0;
    let ar = ApiResource::erase::<SigningKeySet>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    for i in 0..80 {
        let mut spec = serde_json::Map::new();
        if !rng.next().is_multiple_of(4) {
            let alg = if rng.next().is_multiple_of(6) {
                *rng.pick(&bad_algs)
            } else {
                *rng.pick(&algs)
            };
            spec.insert("algorithm".into(), json!(alg));
        }
        let size = if rng.next().is_multiple_of(6) {
            rng.pick(&bad_sizes).clone()
        } else {
            rng.pick(&sizes).clone()
        };
        if !size.is_null() {
            spec.insert("rsaKeySize".into(), size);
        }
        let mut rot = serde_json::Map::new();
        for f in ["interval", "prePublish", "overlap"] {
            if !rng.next().is_multiple_of(3) {
                let d = if rng.next().is_multiple_of(8) {
                    *rng.pick(&bad_durs)
                } else {
                    *rng.pick(&durs)
                };
                rot.insert(f.into(), json!(d));
            }
        }
        spec.insert("rotation".into(), Value::Object(rot));
        match rng.next() % 5 {
            0 => {
                spec.insert("revokedKeyIds".into(), json!(["not-a-kid", ""]));
            }
            1 => {
                spec.insert("jwks".into(), json!({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": rng.pick(&["In", "Exists", "Bogus"]), "values": ["x"]}]}}));
            }
            2 => {
                spec.insert(
                    "secretName".into(),
                    json!(rng.pick(&["ok-name", "Bad_Name", &format!("f{i}-keyturn-keys")])),
                );
            }
            _ => {}
        }
        let name = format!("f{i}");
        // Untyped, so that values the Rust types cannot even hold reach the API server.
        let raw: DynamicObject =
            serde_json::from_value(support::set_manifest(&name, Value::Object(spec.clone())))
                .unwrap();
        match dynamic.create(&PostParams::default(), &raw).await {
            Ok(_) => accepted.push((name, spec)),
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{spec:?}: {e:?}");
                assert!(
                    e.message.contains("spec."),
                    "rejection does not name the field: {}",
                    e.message
                );
                rejected += 1;
            }
            Err(e) => panic!("{spec:?}: {e}"),
        }
    }
    eprintln!(
        "fuzz: {rejected} rejected by the API server, {} accepted",
        accepted.len()
    );
    assert!(
        rejected > 5 && accepted.len() > 5,
        "fuzzing too narrow: {rejected} rejected, {} accepted",
        accepted.len()
    );
    // Every accepted one ends up with a Ready condition: True, or False with a reason and message.
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    for (name, spec) in &accepted {
        let left = Duration::from_secs(120)
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(5));
        let s = support::wait_object(
            &sets,
            name,
            &format!("{name} {spec:?} reconciled"),
            left,
            |o: Option<&SigningKeySet>| {
                o.and_then(ready_condition)
                    .is_some_and(|(s, r, _)| s == "True" || (s == "False" && r != "NoActiveKey"))
            },
        )
        .await
        .unwrap();
        let (status, reason, message) = ready_condition(&s).unwrap();
        if status == "False" {
            assert!(
                !reason.is_empty() && !message.is_empty(),
                "{name}: {reason}: {message}"
            );
        }
    }
    op.assert_running();
    assert!(!op.log_text().contains("panicked"));
}

#[tokio::test]
async fn names_keyturn_cannot_use_are_rejected_at_apply_naming_the_field() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "names").await;
    let _op = support::Operator::start(&ns);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    // 1 and 63 characters: accepted, and they get keys (the name is a label value on every
    // object keyturn writes).
    for n in [1, 63] {
        let name = "a".repeat(n);
        support::create_set(&client, &ns, &name, json!({})).await;
        support::wait_object(
            &sets,
            &name,
            &format!("a {n}-character name Ready"),
            Duration::from_secs(60),
            |o: Option<&SigningKeySet>| {
                o.and_then(ready_condition)
                    .is_some_and(|(status, _, _)| status == "True")
            },
        )
        .await;
    }
    // 64 and 253 characters (a valid object name, an invalid label value): refused at apply.
    for n in [64, 253] {
        let name = "b".repeat(n);
        match support::try_create_set(&client, &ns, &name, json!({})).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{n}: {}", e.message);
                assert!(e.message.contains("metadata.name"), "{n}: {}", e.message);
                assert!(e.message.contains("63"), "{n}: {}", e.message);
            }
            other => panic!("a {n}-character name was accepted: {other:?}"),
        }
    }
}

/// An admission policy (a ValidatingAdmissionPolicy, evaluated by the API server itself)
/// refuses keyturn's writes for two sets: one with a plain message and 422 Invalid, one with
/// 403 Forbidden and a message that quotes the Secret it refused, private key included. Each set
/// says so in `Ready=False` (`WriteRejected`) and an Event carrying the API's message, with the
/// quoted key material withheld from the condition, the Event and the log; a third set in the
/// namespace is unaffected; and once the policy goes, the refused set gets its key.
#[tokio::test]
async fn writes_the_api_server_refuses_become_a_condition_and_an_event_without_key_material() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "rejected").await;
    let policy = format!("keyturn-test-{ns}");
    let manifest = format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [""], apiVersions: [v1], resources: [secrets], operations: [CREATE, UPDATE]}}
  variables:
  - name: set
    expression: "has(object.metadata.labels) && 'keyturn.dev/signing-key-set' in object.metadata.labels ? object.metadata.labels['keyturn.dev/signing-key-set'] : ''"
  validations:
  - expression: "variables.set != 'refused-invalid'"
    message: "signing keys for refused-invalid are not allowed in this namespace (test policy)"
    reason: Invalid
  - expression: "variables.set != 'refused-forbidden'"
    messageExpression: "'refused, quoting what it refused: ' + (has(object.data) && 'state.json' in object.data ? string(object.data['state.json']) : '')"
    reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec:
  policyName: {policy}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {ns}}}
"#
    );
    let out = support::kubectl(&["apply", "-f", "-"], Some(&manifest));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // The policy is in force once a dry-run create of a Secret like keyturn's is refused.
    for (set, code) in [("refused-invalid", 422), ("refused-forbidden", 403)] {
        let probe: Secret = serde_json::from_value(json!({
            "metadata": {"name": "probe", "labels": {"keyturn.dev/signing-key-set": set}}
        }))
        .unwrap();
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        support::wait_for(
            "the admission policy in force",
            Duration::from_secs(30),
            || async {
                match secrets.create(&dry, &probe).await {
                    Err(kube::Error::Api(e)) if e.code == code => Some(()),
                    _ => None,
                }
            },
        )
        .await;
    }

    let mut op = support::Operator::start(&ns);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    for name in ["refused-invalid", "refused-forbidden", "allowed"] {
        support::create_set(&client, &ns, name, json!({"algorithm": "ES256"})).await;
    }
    let rejected = |o: Option<&SigningKeySet>| {
        o.and_then(ready_condition)
            .is_some_and(|(s, r, _)| s == "False" && r == "WriteRejected")
    };
    let invalid = support::wait_object(
        &sets,
        "refused-invalid",
        "WriteRejected",
        Duration::from_secs(60),
        rejected,
    )
    .await
    .unwrap();
    let (_, _, msg) = ready_condition(&invalid).unwrap();
    assert!(
        msg.contains(
            "signing keys for refused-invalid are not allowed in this namespace (test policy)"
        ) && msg.contains("Secret refused-invalid-keyturn-keys"),
        "the condition carries the API's message and names the object: {msg}"
    );
    let forbidden = support::wait_object(
        &sets,
        "refused-forbidden",
        "WriteRejected",
        Duration::from_secs(60),
        rejected,
    )
    .await
    .unwrap();
    let (_, _, msg) = ready_condition(&forbidden).unwrap();
    assert!(msg.contains("message withheld"), "{msg}");
    support::wait_object(
        &sets,
        "allowed",
        "Ready",
        Duration::from_secs(60),
        |o: Option<&SigningKeySet>| {
            o.and_then(ready_condition)
                .is_some_and(|(s, _, _)| s == "True")
        },
    )
    .await;

    // Events with the same messages; nothing that was refused exists.
    let evs: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let notes = support::wait_for(
        "two WriteRejected Events",
        Duration::from_secs(30),
        || async {
            let notes: Vec<String> = evs
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("WriteRejected")
                        && e.type_.as_deref() == Some("Warning")
                })
                .filter_map(|e| e.note)
                .collect();
            (notes.iter().any(|n| n.contains("(test policy)"))
                && notes.iter().any(|n| n.contains("withheld")))
            .then_some(notes)
        },
    )
    .await;
    for name in ["refused-invalid", "refused-forbidden"] {
        assert!(
            secrets
                .get_opt(&format!("{name}-keyturn-keys"))
                .await
                .unwrap()
                .is_none()
        );
    }
    // The quoted Secret held the private key: it reached no condition, Event or log line.
    let log = op.log_text();
    for text in [msg.as_str(), &notes.join("\n"), &log] {
        for leak in ["PRIVATE KEY", "privatePem", "\"d\":"] {
            assert!(!text.contains(leak), "{leak} leaked: {text}");
        }
    }
    assert!(log.contains("WriteRejected"), "the refusal is logged");

    // The policy goes: the next try (every 30 s) succeeds.
    let out = support::kubectl(&["delete", "-f", "-"], Some(&manifest));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    support::wait_object(
        &sets,
        "refused-invalid",
        "Ready after the policy went",
        Duration::from_secs(90),
        |o: Option<&SigningKeySet>| {
            o.and_then(ready_condition)
                .is_some_and(|(s, _, _)| s == "True")
        },
    )
    .await;
    op.assert_running();
}

/// Every field with a limit, at the limit and one past it: at the limit the set is accepted
/// and gets the `Ready` condition it should (True, or `InvalidSpec` naming the field where the
/// schema cannot say it); one past, `kubectl apply` is refused naming the field. The grant's
/// fields the same way.
#[tokio::test]
async fn every_field_at_its_length_limit_reconciles_and_one_past_is_refused_naming_it() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "limits").await;
    let _op = support::Operator::start(&ns);
    let a = |n: usize| "a".repeat(n);
    let kid = |i: usize| format!("{i:0>128}");
    let many = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>();
    // (field, spec at the limit, spec one past it)
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "spec.secretName",
            json!({"secretName": a(253)}),
            json!({"secretName": a(254)}),
        ),
        (
            "spec.jwks.configMapName",
            json!({"jwks": {"configMapName": a(253)}}),
            json!({"jwks": {"configMapName": a(254)}}),
        ),
        (
            "spec.jwks.key",
            json!({"jwks": {"key": format!("{}.json", a(248))}}),
            json!({"jwks": {"key": format!("{}.json", a(249))}}),
        ),
        (
            "spec.rotation.interval",
            json!({"rotation": {"interval": format!("{:0>32}", "720h")}}),
            json!({"rotation": {"interval": format!("{:0>33}", "720h")}}),
        ),
        (
            "spec.revokedKeyIds",
            json!({"revokedKeyIds": many(64, &kid)}),
            json!({"revokedKeyIds": many(65, &kid)}),
        ),
        (
            "spec.revokedKeyIds[0]",
            json!({"revokedKeyIds": [kid(0)]}),
            json!({"revokedKeyIds": [format!("{}x", kid(0))]}),
        ),
        (
            "spec.jwks.namespaces",
            json!({"jwks": {"namespaces": many(1000, &|i| format!("{i:0>63}"))}}),
            json!({"jwks": {"namespaces": many(1001, &|i| format!("{i:0>63}"))}}),
        ),
        (
            "spec.jwks.namespaces[0]",
            json!({"jwks": {"namespaces": [a(63)]}}),
            json!({"jwks": {"namespaces": [a(64)]}}),
        ),
        (
            "spec.issuer",
            json!({"issuer": format!("https://{}", a(2040))}),
            json!({"issuer": format!("https://{}", a(2041))}),
        ),
    ];
    let ar = ApiResource::erase::<SigningKeySet>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let create = |name: String, spec: Value| {
        let dynamic = dynamic.clone();
        async move {
            let raw: DynamicObject =
                serde_json::from_value(support::set_manifest(&name, spec)).unwrap();
            dynamic.create(&PostParams::default(), &raw).await
        }
    };
    for (i, (field, at, past)) in cases.iter().enumerate() {
        if let Err(e) = create(format!("at-{i}"), at.clone()).await {
            panic!("{field} at its limit was refused: {e}");
        }
        match create(format!("past-{i}"), past.clone()).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{field}: {}", e.message);
                assert!(
                    e.message.contains(field),
                    "{field} not named: {}",
                    e.message
                );
            }
            other => panic!("{field} one past its limit was accepted: {other:?}"),
        }
    }
    // A label selector's values have the label rules, which the schema does not spell:
    // accepted at apply, then InvalidSpec naming the field.
    create(
        "selector".into(),
        json!({"jwks": {"namespaceSelector": {"matchLabels": {"team": a(64)}}}}),
    )
    .await
    .unwrap();
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    for (i, (field, _, _)) in cases.iter().enumerate() {
        support::wait_object(
            &sets,
            &format!("at-{i}"),
            &format!("{field} at its limit: Ready"),
            Duration::from_secs(60),
            |o: Option<&SigningKeySet>| {
                o.and_then(ready_condition)
                    .is_some_and(|(s, _, _)| s == "True")
            },
        )
        .await;
    }
    let s = support::wait_object(
        &sets,
        "selector",
        "InvalidSpec",
        Duration::from_secs(60),
        |o: Option<&SigningKeySet>| {
            o.and_then(ready_condition)
                .is_some_and(|(s, r, _)| s == "False" && r == "InvalidSpec")
        },
    )
    .await
    .unwrap();
    let (_, _, msg) = ready_condition(&s).unwrap();
    assert!(msg.contains("spec.jwks.namespaceSelector"), "{msg}");

    // The grant's fields.
    let gar = ApiResource::erase::<keyturn::core::crd::SigningKeySetGrant>(&());
    let grants: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &gar);
    let grant = |name: &str, from: Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySetGrant",
            "metadata": {"name": name}, "spec": {"from": from}
        }))
        .unwrap()
    };
    let from = |n: usize| many(n, &|i| format!("{i:0>63}"));
    let names = |n: usize| many(n, &|i| format!("copy-{i}"));
    let grant_cases: Vec<(&str, Value, Value)> = vec![
        (
            "spec.from[0].namespace",
            json!([{"namespace": a(63), "name": "s"}]),
            json!([{"namespace": a(64), "name": "s"}]),
        ),
        (
            "spec.from[0].name",
            json!([{"namespace": "a", "name": a(253)}]),
            json!([{"namespace": "a", "name": a(254)}]),
        ),
        (
            "spec.from",
            json!(
                from(64)
                    .iter()
                    .map(|n| json!({"namespace": n, "name": "s"}))
                    .collect::<Vec<_>>()
            ),
            json!(
                from(65)
                    .iter()
                    .map(|n| json!({"namespace": n, "name": "s"}))
                    .collect::<Vec<_>>()
            ),
        ),
        (
            "spec.from[0].configMapNames",
            json!([{"namespace": "a", "configMapNames": names(16)}]),
            json!([{"namespace": "a", "configMapNames": names(17)}]),
        ),
        // Every set of a namespace only with the names its copies may take (no squatting).
        (
            "configMapNames",
            json!([{"namespace": "a", "configMapNames": ["a-jwks"]}]),
            json!([{"namespace": "a"}]),
        ),
    ];
    for (i, (field, at, past)) in grant_cases.into_iter().enumerate() {
        grants
            .create(&PostParams::default(), &grant(&format!("at-{i}"), at))
            .await
            .unwrap_or_else(|e| panic!("{field} at its limit was refused: {e}"));
        match grants
            .create(&PostParams::default(), &grant(&format!("past-{i}"), past))
            .await
        {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{field}: {}", e.message);
                assert!(
                    e.message.contains(field),
                    "{field} not named: {}",
                    e.message
                );
            }
            other => panic!("{field} one past its limit was accepted: {other:?}"),
        }
    }
}

/// Namespaces with the oddest names Kubernetes allows (one character, all digits, 63
/// characters): a set in each gets keys, and fans out to the others with their consent.
#[tokio::test]
async fn sets_in_namespaces_with_odd_names_get_keys_and_fan_out() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    // Fixed names (these are the odd ones); left over from an earlier run, they are removed.
    let names = [
        "7".to_string(),
        "0123456789".to_string(),
        format!("keyturn-odd-{}", "q".repeat(51)),
    ];
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for n in &names {
        assert!(n.len() <= 63);
        // An earlier run's sets keep their copies' finalizer with no operator to run it.
        let leftovers: Api<SigningKeySet> = Api::namespaced(client.clone(), n);
        for s in leftovers.list(&Default::default()).await.unwrap() {
            let _ = leftovers
                .patch(
                    &s.metadata.name.unwrap(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
        let _ = nss.delete(n, &Default::default()).await;
        support::wait_for(
            &format!("namespace {n} absent"),
            Duration::from_secs(120),
            || async { nss.get_opt(n).await.ok()?.is_none().then_some(()) },
        )
        .await;
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": n}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let _ops: Vec<support::Operator> = names.iter().map(|n| support::Operator::start(n)).collect();
    // Distinct set names: a copy of one set lands where another set keeps its own ConfigMap.
    let set = |i: usize| format!("odd-{i}");
    for (i, n) in names.iter().enumerate() {
        for other in names.iter().filter(|o| *o != n) {
            support::grant(&client, other, n, &set(i)).await;
        }
        let targets: Vec<&String> = names.iter().filter(|o| *o != n).collect();
        support::create_set(
            &client,
            n,
            &set(i),
            json!({"jwks": {"namespaces": targets}}),
        )
        .await;
    }
    for (i, n) in names.iter().enumerate() {
        let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), n);
        support::wait_object(
            &sets,
            &set(i),
            &format!("{n}/{} Ready in all three namespaces", set(i)),
            Duration::from_secs(60),
            |o: Option<&SigningKeySet>| {
                o.and_then(ready_condition)
                    .is_some_and(|(s, _, _)| s == "True")
                    && o.and_then(|s| s.status.as_ref())
                        .is_some_and(|st| st.published_namespaces.len() == 3)
            },
        )
        .await;
    }
}
