//! Uninstalling keyturn the way the docs say (`kubectl delete -k deploy/`, docs/operations.md)
//! never destroys a key, and installing it again adopts what it left: on a plane of the test's
//! own, since the install is cluster-wide (roles, admission policy, `keyturn-system`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::support;
use crate::support::plane::Plane;
use keyturn::core::crd::SigningKeySet;

fn dir(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(name)
        .display()
        .to_string()
}

/// Every object keyturn keeps for the set: (kind/name) → (uid, resourceVersion, data).
async fn keys_of(client: &kube::Client, ns: &str) -> BTreeMap<String, (String, String, String)> {
    let mut out = BTreeMap::new();
    for s in Api::<Secret>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
    {
        let data = serde_json::to_string(&s.data).unwrap();
        let m = s.metadata;
        out.insert(
            format!("Secret/{}", m.name.unwrap()),
            (m.uid.unwrap(), m.resource_version.unwrap(), data),
        );
    }
    for c in Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
    {
        let m = c.metadata;
        if m.name.as_deref() == Some("kube-root-ca.crt") {
            continue;
        }
        out.insert(
            format!("ConfigMap/{}", m.name.unwrap()),
            (
                m.uid.unwrap(),
                m.resource_version.unwrap(),
                serde_json::to_string(&c.data).unwrap(),
            ),
        );
    }
    out
}

#[tokio::test]
async fn uninstalling_keyturn_keeps_every_key_and_a_reinstall_adopts_them() {
    let plane = Plane::start("uninstall");
    let client = plane.client().await;
    // The install the docs give: the CRDs once, then keyturn.
    plane.kubectl(&["apply", "--server-side", "-k", &dir("crds")]);
    plane.kubectl(&[
        "wait",
        "--for=condition=established",
        "crd/signingkeysets.keyturn.dev",
        "crd/signingkeysetgrants.keyturn.dev",
    ]);
    plane.kubectl(&["apply", "--server-side", "-k", &dir("deploy")]);

    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "apps"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), "apps");
    support::create_set(
        &client,
        "apps",
        "auth",
        json!({"algorithm": "ES256", "rotation": {"interval": "720h", "prePublish": "1h", "overlap": "12h"}, "jwks": {}}),
    )
    .await;
    // The plane has no node: keyturn runs as a process here, in place of the Deployment's Pods.
    let mut operator = support::Operator::start_as("uninstall", "apps", plane.kubeconfig(), &[]);
    support::wait_condition(&sets, "auth", "Ready", "True", "KeysPublished").await;
    let set_uid = sets.get("auth").await.unwrap().metadata.uid;
    let before = keys_of(&client, "apps").await;
    assert!(
        before.contains_key("Secret/auth-signing-key")
            && before.contains_key("ConfigMap/auth-jwks"),
        "{:?}",
        before.keys()
    );

    // Uninstall: the Pods go (the process here), then `kubectl delete -k deploy/`, waiting until
    // every object of it is gone (keyturn-system deleted to the end by the namespace controller).
    operator.kill();
    plane.kubectl(&[
        "delete",
        "-k",
        &dir("deploy"),
        "--wait=true",
        "--timeout=180s",
    ]);
    let gone = plane.kubectl(&[
        "get",
        "namespace",
        "keyturn-system",
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    assert_eq!(gone.trim(), "", "keyturn-system is deleted");
    // The set is the same object, and its Secrets and ConfigMaps are untouched: the same uid,
    // resourceVersion and bytes (a CRD deleted with the install would have taken the set at
    // once, and its objects with it through their ownerReferences).
    assert_eq!(
        sets.get_opt("auth").await.unwrap().map(|s| s.metadata.uid),
        Some(set_uid.clone()),
        "the SigningKeySet survives the uninstall"
    );
    assert_eq!(
        keys_of(&client, "apps").await,
        before,
        "uninstall changed a key"
    );

    // Reinstall: keyturn adopts the set. Its first reconcile writes nothing: no new key, no
    // rotation, not one byte of a Secret or ConfigMap changed.
    plane.kubectl(&["apply", "--server-side", "-k", &dir("deploy")]);
    let after = chrono::Utc::now();
    let mut operator = support::Operator::start_as("uninstall", "apps", plane.kubeconfig(), &[]);
    operator
        .wait_reconciled_after("auth", after, Duration::from_secs(60))
        .await;
    support::wait_condition(&sets, "auth", "Ready", "True", "KeysPublished").await;
    assert_eq!(
        keys_of(&client, "apps").await,
        before,
        "the reinstall changed a key"
    );
    let st = sets.get("auth").await.unwrap().status.unwrap();
    assert_eq!(st.keys.len(), 1, "no new key: {:?}", st.keys);
    operator.assert_running();
}
