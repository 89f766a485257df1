//! Smoke tests proving the test control plane is a real Kubernetes API server with real
//! controllers behind it.

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

#[tokio::test]
async fn client_connects_over_tls_with_a_client_certificate() {
    let cfg = support::config().await;
    assert_eq!(
        cfg.cluster_url.scheme_str(),
        Some("https"),
        "the API server is reached over TLS"
    );
    assert!(
        cfg.root_cert.is_some(),
        "the generated CA verifies the server"
    );
    let client = Client::try_from(cfg).unwrap();
    let v = client.apiserver_version().await.expect("version over TLS");
    assert_eq!(v.major, "1");
    assert!(
        v.minor.parse::<u32>().unwrap() >= 33,
        "a recent 1.3x release, got {}.{}",
        v.major,
        v.minor
    );
}

#[tokio::test]
async fn namespaced_object_round_trips() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "smoke").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "round-trip", "labels": {"a": "b"}},
        "data": {"k": "v\u{1F511}"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let back = api.get("round-trip").await.unwrap();
    assert_eq!(back.data.as_ref().unwrap()["k"], "v\u{1F511}");
    assert_eq!(back.labels()["a"], "b");
    assert!(back.metadata.uid.is_some() && back.metadata.resource_version.is_some());
    let listed = api
        .list(&ListParams::default().labels("a=b"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
}

#[tokio::test]
async fn garbage_collector_deletes_children_of_a_deleted_owner() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let child: Secret = serde_json::from_value(json!({
        "metadata": {"name": "child", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap()
        }]},
        "stringData": {"x": "y"}
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let child = secrets
        .create(&PostParams::default(), &child)
        .await
        .unwrap();
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    // The garbage collector reacts to the owner's deletion event; its discovery resync
    // is 30s, so 90s is a wide margin on a loaded 2-core machine.
    support::wait_deleted(
        &secrets,
        "child",
        &child.uid().unwrap(),
        Duration::from_secs(90),
    )
    .await;
}

#[tokio::test]
async fn rbac_denies_a_user_with_no_role() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "rbac").await;
    let mut cfg = support::config().await;
    cfg.auth_info.impersonate = Some("keyturn-test-nobody".into());
    let nobody = Client::try_from(cfg).unwrap();
    let err = Api::<Secret>::namespaced(nobody, &ns)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(s.message.contains("keyturn-test-nobody"), "{}", s.message);
        }
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
    // The admin still can: the denial is authorization, not a broken server.
    Api::<Secret>::namespaced(client, &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn namespace_controller_finalizes_deleted_namespaces() {
    use k8s_openapi::api::core::v1::Namespace;
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "nsdel").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
    )
    .await
    .unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    let uid = nss.get(&ns).await.unwrap().uid().unwrap();
    nss.delete(&ns, &DeleteParams::default()).await.unwrap();
    // Only the namespace controller (kube-controller-manager) empties and removes it.
    support::wait_deleted(&nss, &ns, &uid, Duration::from_secs(90)).await;
}
