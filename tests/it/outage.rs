//! API server and etcd outages mid-rotation, on a control plane of the test's own (so the
//! other tests keep theirs): the operator keeps running, reports the outage, reconnects and
//! converges with no I1/I2 violation seen by the independent checker.

use crate::support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::invariants::*;
use keyturn::core::crd::SigningKeySet;

async fn wait_api(client: &Client) {
    support::wait_for(
        "the API server to answer again",
        Duration::from_secs(60),
        || async { client.apiserver_version().await.ok().map(|_| ()) },
    )
    .await;
}

#[tokio::test]
async fn the_operator_rides_out_api_server_and_etcd_outages() {
    let plane = support::plane::Plane::start("outage");
    let client = plane.client().await;
    // The CRDs and a namespace on this plane.
    plane.install_crds(&client).await;
    let ns = "outage";
    let nsobj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &nsobj)
        .await
        .unwrap();

    // Observer: a watch misses what happens between a disconnect and its re-list, so across
    // outages the history is sampled instead: both objects every 100 ms (well under the 300 ms
    // JITTER the checker allows), skipping samples while the API is down. Nothing can be
    // written while it is down, so no state is missed that anyone could have seen.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    // How many signing keys the observer has seen so far (the rotation windows wait on it).
    let (signed_tx, signed) = tokio::sync::watch::channel(0usize);
    let observer = tokio::spawn(async move {
        let (mut last_cm, mut last_sec) = (0u64, 0u64);
        let mut last_kid = String::new();
        loop {
            if let Ok(Some(cm)) = cms.get_opt("auth-jwks").await {
                let rv = rv_of(&cm.metadata);
                if rv != last_cm {
                    last_cm = rv;
                    let _ = tx.send(Seen::Jwks {
                        rv,
                        at: Instant::now(),
                        kids: kids_of(&cm),
                        bytes: jwks_of(&cm),
                    });
                }
            }
            if let Ok(Some(s)) = secrets.get_opt("auth-signing-key").await {
                let rv = rv_of(&s.metadata);
                if rv != last_sec {
                    last_sec = rv;
                    let (token, kid) = sign_with_secret(&s);
                    if kid != last_kid {
                        last_kid = kid.clone();
                        signed_tx.send_modify(|n| *n += 1);
                    }
                    let _ = tx.send(Seen::Signer {
                        rv,
                        at: Instant::now(),
                        kid,
                        token,
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let mut op = support::Operator::start_as("outage", ns, plane.kubeconfig(), &[]);
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), ns);
    let obj: SigningKeySet = serde_json::from_value(json!({
        "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet", "metadata": {"name": "auth"},
        "spec": {"rotation": {"interval": "6s", "prePublish": "2s", "overlap": "3s"}}
    }))
    .unwrap();
    sets.create(&PostParams::default(), &obj).await.unwrap();
    // The schedule above, and the margin a reconcile on a loaded machine is given past it (a
    // rotation a whole interval late still fails).
    const INTERVAL: Duration = Duration::from_secs(6);
    const PRE: Duration = Duration::from_secs(2);
    const SLACK: Duration = Duration::from_secs(3);
    // Waits until the observer has seen `more` signing keys beyond those seen now, within
    // `within` of now.
    let rotations = |more: usize, within: Duration| {
        let mut signed = signed.clone();
        async move {
            let target = *signed.borrow() + more;
            tokio::time::timeout(within, signed.wait_for(|n| *n >= target))
                .await
                .unwrap_or_else(|_| panic!("{more} rotation(s) did not come within {within:?}"))
                .unwrap();
        }
    };
    // The first key: start-up (a hang guard), then one undisturbed rotation on schedule.
    rotations(1, Duration::from_secs(60)).await;
    rotations(1, INTERVAL + PRE + SLACK).await;

    // The API server goes away for 6 s (longer than prePublish, across a transition).
    plane.component("kill-component", "kube-apiserver");
    tokio::time::sleep(Duration::from_secs(6)).await;
    plane.component("start-component", "kube-apiserver");
    wait_api(&client).await;
    // A spec change made as soon as the API server answers again is seen within 45 s. Each of
    // the controller's watches backs off on its own; under kube-runtime's default, one backoff
    // over all of them paused every watch at each watch's 410 in turn, doubling each time, and
    // such a change went unseen for 126 s (measured after a restart of the API server).
    let patched = sets
        .patch(
            "auth",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotation": {"overlap": "4s"}}})),
        )
        .await
        .unwrap();
    let generation = patched.metadata.generation;
    let since = Instant::now();
    support::wait_object(
        &sets,
        "auth",
        "the spec change made after the API server's restart",
        Duration::from_secs(45),
        move |o: Option<&SigningKeySet>| {
            o.and_then(|s| s.status.as_ref())
                .is_some_and(|st| st.observed_generation == generation)
        },
    )
    .await;
    eprintln!(
        "spec change after the API server's restart observed in {:?}",
        since.elapsed()
    );
    // Rotating again after the API server came back (the operator is live: it just observed
    // the spec change), on schedule.
    rotations(1, INTERVAL + PRE + SLACK).await;

    // etcd goes away for 6 s under a running API server.
    plane.component("kill-component", "etcd");
    tokio::time::sleep(Duration::from_secs(6)).await;
    plane.component("start-component", "etcd");
    wait_api(&client).await;
    support::wait_for(
        "the API server to serve from etcd again",
        Duration::from_secs(60),
        || async { sets.get("auth").await.ok().map(|_| ()) },
    )
    .await;
    // Once the operator has reconciled again (its watches recover on their own backoff, at most
    // 30 s, a hang guard), two more rotations on schedule.
    let poked = support::poke(&sets, "auth").await;
    op.wait_reconciled_after("auth", poked, Duration::from_secs(45))
        .await;
    rotations(2, 2 * INTERVAL + PRE + SLACK).await;

    op.assert_running();
    observer.abort();
    let mut seen = vec![];
    while let Ok(s) = rx.try_recv() {
        seen.push(s);
    }
    let (violations, _, signers) = check_history(seen, PRE, Duration::from_secs(3));
    assert!(violations.is_empty(), "{violations:#?}");
    let distinct: std::collections::BTreeSet<_> = signers.iter().collect();
    assert_eq!(distinct.len(), signers.len(), "a key signed twice");
    assert!(
        signers.len() >= 5,
        "rotations did not continue after the outages: {} keys",
        signers.len()
    );
    let s = sets.get("auth").await.unwrap();
    let ready = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    // The outage was reported: failed reconciles in the log and in /metrics.
    let log = op.log_text();
    assert!(
        log.contains("reconcile failed") || log.contains("reconcile error"),
        "no outage in the log"
    );
    let (_, metrics) = op.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains("keyturn_reconcile_errors_total{"),
        "no outage in /metrics"
    );
}
