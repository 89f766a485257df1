//! Running keyturn in production, checked against the real control plane: the kustomize
//! base, the restricted Pod Security Standard, least-privilege RBAC with a real ServiceAccount
//! token, leader election between two processes, and graceful shutdown.

use crate::support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

use keyturn::core::crd::SigningKeySet;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn create_namespace(client: &Client, name: &str, labels: serde_json::Value) {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

fn kid_of(s: &Secret) -> String {
    String::from_utf8(s.data.as_ref().unwrap()["kid"].0.clone()).unwrap()
}

#[tokio::test]
async fn kustomize_base_is_accepted_by_the_api_server() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    // A server-side dry run cannot create the namespace the other objects go into.
    create_namespace(
        &client,
        "keyturn-system",
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    )
    .await;
    let dir = root().join("deploy");
    let out = support::kubectl(
        &["apply", "-k", dir.to_str().unwrap(), "--dry-run=server"],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The CRDs are not part of deploy/ (its uninstall must not delete every set and key:
    // docs/operations.md); crds/ installs them apart.
    assert!(
        !stdout.contains("customresourcedefinition"),
        "deploy/ holds a CRD:\n{stdout}"
    );
    let crds = support::kubectl(
        &[
            "apply",
            "-k",
            root().join("crds").to_str().unwrap(),
            "--dry-run=server",
        ],
        None,
    );
    let crds_out = String::from_utf8_lossy(&crds.stdout);
    assert!(crds.status.success(), "crds/: {crds_out}");
    for obj in [
        "customresourcedefinition.apiextensions.k8s.io/signingkeysets.keyturn.dev",
        "customresourcedefinition.apiextensions.k8s.io/signingkeysetgrants.keyturn.dev",
    ] {
        assert!(crds_out.contains(obj), "{obj} missing from:\n{crds_out}");
    }
    for obj in [
        "clusterrole.rbac.authorization.k8s.io/keyturn-admin",
        "namespace/keyturn-system",
        "serviceaccount/keyturn",
        "clusterrole.rbac.authorization.k8s.io/keyturn",
        "clusterrolebinding.rbac.authorization.k8s.io/keyturn",
        "role.rbac.authorization.k8s.io/keyturn-leader-election",
        "deployment.apps/keyturn",
        "service/keyturn-jwks",
        "service/keyturn-metrics",
        "poddisruptionbudget.policy/keyturn",
    ] {
        assert!(stdout.contains(obj), "{obj} missing from:\n{stdout}");
    }
    // The examples are valid SigningKeySets too (and the Gateway example a valid HTTPRoute:
    // the Gateway API's CRD from hack/test-deps.sh).
    let gateway_crd = std::path::PathBuf::from(std::env::var("KEYTURN_TEST_VERIFIERS").unwrap())
        .join("gateway-crds/gateway.networking.k8s.io_httproutes.yaml");
    let out = support::kubectl(
        &[
            "apply",
            "--server-side",
            "-f",
            gateway_crd.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = support::kubectl(
        &[
            "wait",
            "--for=condition=established",
            "crd/httproutes.gateway.networking.k8s.io",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = support::fresh_namespace(&client, "examples").await;
    for ex in [
        "service-tokens-es256.yaml",
        "oidc-issuer-rs256.yaml",
        "migrate-rs256-to-es256.yaml",
        "grant-service-tokens.yaml",
        "networkpolicy.yaml",
        "issuer-behind-gateway.yaml",
    ] {
        let text = std::fs::read_to_string(root().join("examples").join(ex)).unwrap();
        let text = text
            .replace("namespace: default", &format!("namespace: {ns}"))
            .replace("namespace: gateway", &format!("namespace: {ns}"))
            .replace("namespace: keyturn-system", &format!("namespace: {ns}"))
            .replace("namespace: identity", &format!("namespace: {ns}"));
        let out = support::kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&text));
        assert!(
            out.status.success(),
            "{ex}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn deployment_pods_are_admitted_under_restricted_pod_security() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "psa").await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.patch(
        &ns,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}),
        ),
    )
    .await
    .unwrap();
    let dep: Deployment = serde_norway::from_str(
        &std::fs::read_to_string(root().join("deploy/deployment.yaml")).unwrap(),
    )
    .unwrap();
    let template = dep.spec.template;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("keyturn".into()),
            ..template.metadata.unwrap()
        },
        spec: template.spec,
        ..Default::default()
    };
    pods.create(&dry, &pod)
        .await
        .expect("the Deployment's Pod is admitted under restricted");
    // Control: the same Pod without its security context is refused, so enforcement is real.
    let mut bare = pod.clone();
    bare.spec.as_mut().unwrap().security_context = None;
    bare.spec.as_mut().unwrap().containers[0].security_context = None;
    match pods.create(&dry, &bare).await {
        Err(kube::Error::Api(e)) => assert!(e.message.contains("restricted"), "{}", e.message),
        other => panic!("a Pod without a security context was admitted: {other:?}"),
    }
}

#[tokio::test]
async fn least_privilege_rbac_is_enough_for_a_full_rotation_with_fan_out() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let home = support::fresh_namespace(&client, "rbac-home").await;
    let src = support::fresh_namespace(&client, "rbac-src").await;
    let dst = support::fresh_namespace(&client, "rbac-dst").await;
    // deploy/rbac.yaml, bound to a ServiceAccount of this test (names made unique so tests
    // running in parallel do not share a ClusterRole).
    let sa = format!("keyturn-{home}");
    let rbac = std::fs::read_to_string(root().join("deploy/rbac.yaml"))
        .unwrap()
        .lines()
        .map(|l| match l.trim() {
            "name: keyturn" => l.replace("name: keyturn", &format!("name: {sa}")),
            _ => l.replace("namespace: keyturn-system", &format!("namespace: {home}")),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let out = support::kubectl(&["apply", "-f", "-"], Some(&rbac));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kc = std::env::temp_dir().join(format!("{sa}.kubeconfig"));
    support::token_kubeconfig(&client, &home, &sa, &kc).await;

    let mut op = support::Operator::start_as(
        "rbac",
        &src,
        kc,
        &[
            "--leader-elect",
            "--lease-namespace",
            &home,
            "--lease-seconds",
            "10",
            "--instance",
            "rbac-0",
        ],
    );
    support::grant(&client, &dst, &src, "auth").await;
    support::create_set(&client, &src, "auth", json!({"rotation": {"interval": "6s", "prePublish": "2s", "overlap": "2s"}, "jwks": {"namespaces": [dst]}})).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &src);
    support::wait_first_key_then_rotation(&secrets, "auth-signing-key").await;
    let copy: Api<ConfigMap> = Api::namespaced(client.clone(), &dst);
    assert!(
        copy.get_opt("auth-jwks").await.unwrap().is_some(),
        "fan-out copy written"
    );
    // Clean-up through the finalizer also works with these rights.
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &src);
    let uid = sets.get("auth").await.unwrap().metadata.uid.unwrap();
    sets.delete("auth", &Default::default()).await.unwrap();
    support::wait_deleted(&sets, "auth", &uid, Duration::from_secs(30)).await;
    assert!(copy.get_opt("auth-jwks").await.unwrap().is_none());
    op.assert_running();
    let log = op.log_text();
    support::assert_no_forbidden(&log, "the deploy/ roles");
    assert!(
        log.contains("acquired leadership"),
        "ran as leader with the Role's Lease rights"
    );
}

#[tokio::test]
async fn two_replicas_one_writer_and_a_takeover_within_the_lease() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "leader").await;
    let lease_secs = 6;
    let args = |name: &'static str| -> Vec<String> {
        [
            "--leader-elect",
            "--lease-namespace",
            &ns,
            "--lease-seconds",
            &lease_secs.to_string(),
            "--instance",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a_args = args("replica-a");
    let b_args = args("replica-b");
    // Each replica under an identity of its own, so that the audit log tells their writes apart.
    let mut a = support::Operator::start_as(
        "a",
        &ns,
        support::impersonating_kubeconfig("keyturn-replica-a"),
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut b = support::Operator::start_as(
        "b",
        &ns,
        support::impersonating_kubeconfig("keyturn-replica-b"),
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    support::create_set(
        &client,
        &ns,
        "auth",
        json!({"rotation": {"interval": "6s", "prePublish": "2s", "overlap": "2s"}}),
    )
    .await;

    // Exactly one leader, and the follower writes nothing.
    let (mut leader, mut follower) =
        support::wait_for("one leader", Duration::from_secs(40), || async {
            match (a.is_leader(), b.is_leader()) {
                (true, false) => Some((0, 1)),
                (false, true) => Some((1, 0)),
                _ => None,
            }
        })
        .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    support::wait_object(
        &secrets,
        "auth-signing-key",
        "first key",
        Duration::from_secs(30),
        |o: Option<&Secret>| o.is_some(),
    )
    .await;
    // Watch the signing key over the handover.
    let mut kids: Vec<(String, Instant)> = vec![];
    let observe = |kids: &mut Vec<(String, Instant)>, s: &Secret| {
        let k = kid_of(s);
        if kids.last().map(|(x, _)| x) != Some(&k) {
            kids.push((k, Instant::now()));
        }
    };
    let ops = [&mut a, &mut b];
    let [pa, pb] = ops;
    let (lead_op, follow_op) = if leader == 0 { (pa, pb) } else { (pb, pa) };
    let since = chrono::Utc::now();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        observe(&mut kids, &secrets.get("auth-signing-key").await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The API server's audit log, not the operators' own word: once leadership settled,
    // the follower sent no write at all (not even a refused one), while the leader did.
    let identity = |i: usize| ["keyturn-replica-a", "keyturn-replica-b"][i];
    let follower_writes = support::audit_writes(identity(follower), since);
    assert!(
        follower_writes.is_empty(),
        "the follower wrote: {follower_writes:#?}"
    );
    assert!(
        !support::audit_writes(identity(leader), since).is_empty(),
        "the leader wrote nothing over a rotation (is the audit log on?)"
    );
    assert!(!follow_op.is_leader());
    // Both replicas are ready (watch caches synced) and serve the JWKS, leader or not.
    for op in [&*lead_op, &*follow_op] {
        assert_eq!(op.http_get("/readyz").map(|r| r.0), Some(200));
        assert_eq!(
            op.http_get(&format!("/jwks/{ns}/auth")).map(|r| r.0),
            Some(200)
        );
    }

    // Kill the leader: the follower takes over within the lease duration (plus its retry).
    lead_op.kill();
    let killed = Instant::now();
    while !follow_op.is_leader() {
        assert!(
            killed.elapsed() < Duration::from_secs(lease_secs + 10),
            "no takeover within {lease_secs}s + 10s"
        );
        observe(&mut kids, &secrets.get("auth-signing-key").await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let takeover = killed.elapsed();
    std::mem::swap(&mut leader, &mut follower);
    let until = Instant::now() + Duration::from_secs(14);
    while Instant::now() < until {
        observe(&mut kids, &secrets.get("auth-signing-key").await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    follow_op.assert_running();
    // Rotations continued after the takeover, no key signed twice, and none came early
    // (a duplicate rotation would activate twice within one interval).
    let distinct: BTreeSet<&String> = kids.iter().map(|(k, _)| k).collect();
    assert_eq!(distinct.len(), kids.len(), "a key signed twice: {kids:?}");
    assert!(
        kids.len() >= 3,
        "rotations stopped over the handover: {} keys, takeover took {takeover:?}",
        kids.len()
    );
    for w in kids.windows(2).skip(1) {
        // 100 ms polling on both ends; 6 s interval.
        assert!(
            w[1].1 - w[0].1 >= Duration::from_millis(5700),
            "two rotations {:?} apart",
            w[1].1 - w[0].1
        );
    }
    let _ = (leader, follower);
}

#[tokio::test]
async fn sigterm_finishes_releases_the_lease_and_exits() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let ns = support::fresh_namespace(&client, "sigterm").await;
    let args = |instance| {
        [
            "--leader-elect",
            "--lease-namespace",
            ns.as_str(),
            "--lease-seconds",
            "60",
            "--instance",
            instance,
        ]
    };
    let mut op =
        support::Operator::start_as("first", &ns, support::kubeconfig_path(), &args("first"));
    support::wait_for("leadership", Duration::from_secs(30), || async {
        op.is_leader().then_some(())
    })
    .await;
    let status = op
        .terminate(Duration::from_secs(15))
        .expect("exited within 15 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        op.log_text().contains("Lease released"),
        "{}",
        support::tail(&op.log, 20)
    );
    let lease = Api::<Lease>::namespaced(client.clone(), &ns)
        .get(keyturn::operator::leader::LEASE_NAME)
        .await
        .unwrap();
    assert!(
        serde_json::to_value(&lease).unwrap()["spec"]["holderIdentity"].is_null(),
        "the Lease still names a holder"
    );
    // A new replica leads at once, not after the 60 s lease would have expired: waited for
    // past the lease, and required well within it.
    let op2 =
        support::Operator::start_as("second", &ns, support::kubeconfig_path(), &args("second"));
    let start = Instant::now();
    support::wait_for(
        "the next replica leads",
        Duration::from_secs(90),
        || async { op2.is_leader().then_some(()) },
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "the next replica led after {:?}: it waited for the released lease to expire",
        start.elapsed()
    );
}
