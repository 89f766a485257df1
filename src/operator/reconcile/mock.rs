//! The pipeline's orchestration against a fake API server (tower-test): the exact requests a
//! reconcile makes for a new set, a steady one, a refused one and a refused write, with the
//! guards every write carries.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};

use super::fixtures::{at, set, t0};
use super::{Context, reconcile};
use crate::runtime::metrics::Metrics;

/// One request the fake answered.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    query: String,
    body: Option<Value>,
    code: u16,
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// True when `labels` has every `k=v` of a label selector.
fn selected(labels: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        labels[k] == v
    })
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// An in-memory API server: objects by path, resourceVersions, server-side apply with the
/// resourceVersion precondition enforced (409 on a stale one), and a switch to refuse
/// creates of one kind (422, as an admission policy would).
#[derive(Default)]
struct Fake {
    objects: BTreeMap<String, Value>,
    rv: u64,
    calls: Vec<Call>,
    refuse_creates_under: Option<String>,
    /// What the API server's watch cache shows for a path, where it lags the objects
    /// (`None`: not there yet); a GET with `resourceVersion=0` is answered from it.
    lagging: BTreeMap<String, Option<Value>>,
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{reason} (fake)"), "reason": reason, "code": code})
}

impl Fake {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn answer(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        merge_patch: bool,
        body: Option<&Value>,
    ) -> (u16, Value) {
        match (method, body) {
            ("GET", _) if LISTS.iter().any(|(p, _)| *p == path) => {
                let (_, kind) = LISTS.iter().find(|(p, _)| *p == path).unwrap();
                let selector = query
                    .split('&')
                    .find_map(|q| q.strip_prefix("labelSelector="))
                    .map(|s| {
                        s.replace("%3D", "=")
                            .replace("%2C", ",")
                            .replace("%2F", "/")
                    })
                    .unwrap_or_default();
                let items: Vec<Value> = self
                    .objects
                    .values()
                    .filter(|o| o["kind"] == kind.trim_end_matches("List"))
                    .filter(|o| selected(&o["metadata"]["labels"], &selector))
                    .cloned()
                    .collect();
                let list = json!({"kind": kind, "apiVersion": "v1",
                    "metadata": {"resourceVersion": self.rv.to_string()}, "items": items});
                (200, list)
            }
            ("GET", _)
                if query.split('&').any(|q| q == "resourceVersion=0")
                    && self.lagging.contains_key(path) =>
            {
                match &self.lagging[path] {
                    Some(o) => (200, o.clone()),
                    None => (404, status(404, "NotFound")),
                }
            }
            ("GET", _) => match self.objects.get(path) {
                Some(o) => (200, o.clone()),
                None => (404, status(404, "NotFound")),
            },
            ("DELETE", _) => match self.objects.remove(path) {
                Some(o) => (200, o),
                None => (404, status(404, "NotFound")),
            },
            ("POST", Some(b)) => {
                if self
                    .refuse_creates_under
                    .as_deref()
                    .is_some_and(|p| path.ends_with(p))
                {
                    return (422, status(422, "Invalid"));
                }
                let mut o = b.clone();
                let name = o["metadata"]["name"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("generated-{}", self.rv));
                let key = format!("{path}/{name}");
                if self.objects.contains_key(&key) {
                    return (409, status(409, "AlreadyExists"));
                }
                o["metadata"]["name"] = json!(name);
                o["metadata"]["resourceVersion"] = json!(self.next_rv());
                o["metadata"]["uid"] = json!(format!("uid-{name}"));
                self.objects.insert(key, o.clone());
                (201, o)
            }
            ("PATCH", Some(b)) if path.ends_with("/status") => {
                let key = path.trim_end_matches("/status").to_string();
                let Some(mut o) = self.objects.get(&key).cloned() else {
                    return (404, status(404, "NotFound"));
                };
                o["status"] = b["status"].clone();
                o["metadata"]["resourceVersion"] = json!(self.next_rv());
                self.objects.insert(key, o.clone());
                (200, o)
            }
            ("PATCH", Some(b)) => {
                let Some(cur) = self.objects.get(path).cloned() else {
                    return (404, status(404, "NotFound"));
                };
                if b["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"] {
                    return (409, status(409, "Conflict"));
                }
                let mut o = if merge_patch {
                    let mut o = cur.clone();
                    merge(&mut o, b);
                    o
                } else {
                    b.clone()
                };
                o["metadata"]["uid"] = cur["metadata"]["uid"].clone();
                o["metadata"]["resourceVersion"] = json!(self.next_rv());
                self.objects.insert(path.to_string(), o.clone());
                (200, o)
            }
            _ => (405, status(405, "MethodNotAllowed")),
        }
    }
}

const SET_PATH: &str = "/apis/keyturn.dev/v1alpha1/namespaces/identity/signingkeysets/auth";
const SECRETS: &str = "/api/v1/namespaces/identity/secrets";
const CONFIGMAPS: &str = "/api/v1/namespaces/identity/configmaps";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/identity/events";
const GRANTS: &str = "/apis/keyturn.dev/v1alpha1/namespaces/payments/signingkeysetgrants";
const COPY: &str = "/api/v1/namespaces/payments/configmaps/auth-jwks";
/// The cluster-wide lists the fake answers, with their list kinds (a set's deletion lists its
/// copies; namespaces, grants and copies otherwise come from the controller's watch caches:
/// a LIST of them is not answered).
const LISTS: [(&str, &str); 1] = [("/api/v1/configmaps", "ConfigMapList")];

/// A Context whose client talks to `fake`, with the clock at `t0`.
fn context(fake: Arc<Mutex<Fake>>) -> Arc<Context> {
    let namespaces = cache(&fake, "/api/v1/namespaces/", |o| {
        let n: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(o).ok()?;
        Some(kube::core::PartialObjectMeta {
            metadata: n.metadata,
            ..Default::default()
        })
    });
    let grants = cache(&fake, "/signingkeysetgrants/", |o| {
        serde_json::from_value(o).ok()
    });
    let copies = cache(&fake, "/configmaps/", |o| {
        let c: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(o).ok()?;
        let mut m = kube::core::PartialObjectMeta {
            metadata: c.metadata,
            ..Default::default()
        };
        crate::operator::controller::slim_copy(&mut m);
        crate::core::objects::is_copy_elsewhere(&m.metadata).then_some(m)
    });
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body: Option<Value> = serde_json::from_slice(&bytes).ok();
            let (method, path) = (parts.method.to_string(), parts.uri.path().to_string());
            let query = parts.uri.query().unwrap_or_default().to_string();
            let merge_patch = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/merge-patch"));
            let mut f = fake.lock().unwrap();
            let (code, answer) = f.answer(&method, &path, &query, merge_patch, body.as_ref());
            f.calls.push(Call {
                method,
                path,
                query,
                body,
                code,
            });
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    let client = kube::Client::new(service, "identity");
    Arc::new(Context {
        reporter: Reporter {
            controller: "keyturn".into(),
            instance: None,
        },
        client,
        clock: Arc::new(t0),
        metrics: Arc::new(Metrics::new()),
        scope: super::Scope::Cluster(super::ClusterCaches {
            namespaces,
            grants,
            copies,
        }),
        sets: None,
        policy: Default::default(),
        memory: Default::default(),
    })
}

/// A filled watch cache of the fake's objects whose path contains `marker`, as the
/// controller's caches are when the reconcile reads them (later changes to the fake are not
/// seen: a test that changes them makes a new context).
fn cache<K>(
    fake: &Arc<Mutex<Fake>>,
    marker: &str,
    parse: impl Fn(Value) -> Option<K>,
) -> super::Cache<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    use kube::runtime::watcher::Event;
    let (store, mut writer) = kube::runtime::reflector::store();
    writer.apply_watcher_event(&Event::Init);
    for (path, o) in &fake.lock().unwrap().objects {
        if let Some(rest) = path.split_once(marker).map(|(_, r)| r)
            && !rest.contains('/')
            && let Some(k) = parse(o.clone())
        {
            writer.apply_watcher_event(&Event::InitApply(k));
        }
    }
    writer.apply_watcher_event(&Event::InitDone);
    super::Cache::new(store, tokio::sync::watch::channel(true).1)
}

/// The set as the fake holds it (with whatever status was written).
fn stored_set(fake: &Arc<Mutex<Fake>>) -> crate::core::crd::SigningKeySet {
    serde_json::from_value(fake.lock().unwrap().objects[SET_PATH].clone()).unwrap()
}

fn with_set(spec: Value) -> Arc<Mutex<Fake>> {
    let mut f = Fake::default();
    let mut s = serde_json::to_value(set(spec)).unwrap();
    s["metadata"]["resourceVersion"] = json!(f.next_rv());
    f.objects.insert(SET_PATH.into(), s);
    Arc::new(Mutex::new(f))
}

/// A set whose JWKS ConfigMap name is taken by someone else's ConfigMap.
fn with_foreign_jwks() -> Arc<Mutex<Fake>> {
    let fake = with_set(json!({}));
    fake.lock().unwrap().objects.insert(
        format!("{CONFIGMAPS}/auth-jwks"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "auth-jwks", "namespace": "identity", "resourceVersion": "1"},
               "data": {"jwks.json": "theirs"}}),
    );
    fake
}

fn calls(fake: &Arc<Mutex<Fake>>) -> Vec<Call> {
    std::mem::take(&mut fake.lock().unwrap().calls)
}

/// The writes, events apart, as "METHOD path".
fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method != "GET" && !c.path.starts_with(EVENTS))
        .map(Call::line)
        .collect()
}

fn event_reasons(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.path.starts_with(EVENTS))
        .map(|c| {
            c.body.as_ref().unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn ready(s: &crate::core::crd::SigningKeySet) -> (String, String) {
    let c = &s.status.as_ref().unwrap().conditions[0];
    assert_eq!(c.type_, "Ready");
    (c.status.clone(), c.reason.clone())
}

#[tokio::test]
async fn a_new_set_reads_three_objects_then_writes_each_step_once_in_crash_safe_order() {
    let fake = with_set(json!({"algorithm": "ES256"}));
    let ctx = context(fake.clone());
    reconcile(Arc::new(stored_set(&fake)), ctx).await.unwrap();
    let calls = calls(&fake);
    let reads: Vec<String> = calls.iter().take(3).map(Call::line).collect();
    assert_eq!(
        reads,
        [
            format!("GET {SECRETS}/auth-keyturn-keys"),
            format!("GET {SECRETS}/auth-signing-key"),
            format!("GET {CONFIGMAPS}/auth-jwks"),
        ]
    );
    assert!(
        calls[..3]
            .iter()
            .all(|c| c.query.split('&').any(|q| q == "resourceVersion=0")),
        "the three reads come from the API server's watch cache: {:#?}",
        &calls[..3]
    );
    assert_eq!(
        calls.iter().filter(|c| c.method == "GET").count(),
        3,
        "no other read: the internal Secret this reconcile created is known current"
    );
    // The key is stored before it is published, published before it signs, and the
    // signing Secret holds it before one write records its publication and activation (I6:
    // a crash between any two leaves a state the planner continues from; a first key signs
    // at once, I1).
    assert_eq!(
        writes(&calls),
        [
            format!("POST {SECRETS}"),
            format!("POST {CONFIGMAPS}"),
            format!("POST {SECRETS}"),
            format!("PATCH {SECRETS}/auth-keyturn-keys"),
            format!("PATCH {SET_PATH}/status"),
        ]
    );
    let created: Vec<&str> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path == SECRETS)
        .map(|c| {
            c.body.as_ref().unwrap()["metadata"]["name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(created, ["auth-keyturn-keys", "auth-signing-key"]);
    for c in calls
        .iter()
        .filter(|c| c.method != "GET" && !c.path.starts_with(EVENTS))
    {
        assert!(
            c.query.contains("fieldManager=keyturn"),
            "unguarded write: {c:?}"
        );
        assert!(c.code < 300, "refused: {c:?}");
    }
    let patch = calls
        .iter()
        .find(|c| c.method == "PATCH" && c.path.starts_with(SECRETS))
        .unwrap();
    assert!(
        patch.body.as_ref().unwrap()["metadata"]["resourceVersion"].is_string(),
        "a write over an existing object carries its resourceVersion"
    );
    let cm = calls.iter().find(|c| c.path == CONFIGMAPS).unwrap();
    let text = serde_json::to_string(&cm.body).unwrap();
    assert!(
        !text.contains("PRIVATE") && !text.contains("\\\"d\\\""),
        "{text}"
    );
    assert_eq!(
        event_reasons(&calls),
        ["KeyActivated"],
        "one Event for a key published and activated in one write"
    );
    assert_eq!(
        ready(&stored_set(&fake)),
        ("True".into(), "KeysPublished".into())
    );
}

#[tokio::test]
async fn a_steady_set_is_read_and_nothing_is_written() {
    let fake = with_set(json!({}));
    let ctx = context(fake.clone());
    reconcile(Arc::new(stored_set(&fake)), ctx.clone())
        .await
        .unwrap();
    calls(&fake);
    reconcile(Arc::new(stored_set(&fake)), ctx).await.unwrap();
    let calls = calls(&fake);
    assert!(calls.iter().all(|c| c.method == "GET"), "{:#?}", calls);
    assert_eq!(calls.len(), 3);
}

/// The controller's cache lags keyturn's own status patch: the echo of a Secret write can
/// start a reconcile while the cache still holds the set as it was before. That reconcile
/// decides from the status keyturn wrote: it reads, and writes nothing (not the same status
/// again with a new `lastTransitionTime`).
#[tokio::test]
async fn a_reconcile_from_a_cache_that_has_not_seen_the_status_patch_writes_nothing() {
    let fake = with_set(json!({}));
    let ctx = context(fake.clone());
    let before = Arc::new(stored_set(&fake));
    reconcile(before.clone(), ctx.clone()).await.unwrap();
    calls(&fake);
    reconcile(before.clone(), ctx.clone()).await.unwrap();
    let calls = calls(&fake);
    assert!(calls.iter().all(|c| c.method == "GET"), "{:#?}", calls);
    // Once the cache holds a newer version, the set is read from it again.
    let after = Arc::new(stored_set(&fake));
    assert_ne!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert!(Arc::ptr_eq(
        &ctx.memory.written.latest(&at(&after), after.clone()),
        &after
    ));
    assert!(
        Arc::ptr_eq(
            &ctx.memory.written.latest(&at(&before), before.clone()),
            &before
        ),
        "record dropped"
    );
}

/// The same for a refusal: its Event is sent once, not again from the stale copy.
#[tokio::test]
async fn a_refusal_from_a_stale_cache_is_not_announced_twice() {
    let fake = with_foreign_jwks();
    let ctx = context(fake.clone());
    let before = Arc::new(stored_set(&fake));
    reconcile(before.clone(), ctx.clone()).await.unwrap();
    assert_eq!(event_reasons(&calls(&fake)), ["ForeignObject"]);
    reconcile(before, ctx).await.unwrap();
    let calls = calls(&fake);
    assert!(calls.iter().all(|c| c.method == "GET"), "{:#?}", calls);
}

/// A refused set's series (the Ready=False gauge an alert fires on) leave once it is being
/// deleted: it is going away, not broken.
#[tokio::test]
async fn a_set_being_deleted_keeps_no_series_an_alert_could_fire_on() {
    let fake = with_foreign_jwks();
    let ctx = context(fake.clone());
    reconcile(Arc::new(stored_set(&fake)), ctx.clone())
        .await
        .unwrap();
    let refused = "condition=\"Ready\",status=\"False\"} 1";
    assert!(ctx.metrics.encode().contains(refused));
    let mut deleting = stored_set(&fake);
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let _ = reconcile(Arc::new(deleting), ctx.clone()).await;
    let text = ctx.metrics.encode();
    assert!(!text.contains("keyturn_set_condition{"), "{text}");
}

#[tokio::test]
async fn a_foreign_configmap_is_refused_with_a_condition_and_an_event_and_never_written() {
    let fake = with_foreign_jwks();
    let ctx = context(fake.clone());
    let action = reconcile(Arc::new(stored_set(&fake)), ctx).await.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(super::Reason::ForeignObject.retry().unwrap())
    );
    let calls = calls(&fake);
    assert_eq!(writes(&calls), [format!("PATCH {SET_PATH}/status")]);
    assert_eq!(event_reasons(&calls), ["ForeignObject"]);
    assert_eq!(
        ready(&stored_set(&fake)),
        ("False".into(), "ForeignObject".into())
    );
}

#[tokio::test]
async fn a_write_the_api_server_refuses_becomes_write_rejected_and_a_retry() {
    let fake = with_set(json!({}));
    fake.lock().unwrap().refuse_creates_under = Some("/secrets".into());
    let ctx = context(fake.clone());
    let action = reconcile(Arc::new(stored_set(&fake)), ctx).await.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(super::Reason::WriteRejected.retry().unwrap())
    );
    let calls = calls(&fake);
    assert_eq!(
        writes(&calls),
        [
            format!("POST {SECRETS}"),
            format!("PATCH {SET_PATH}/status")
        ]
    );
    assert_eq!(event_reasons(&calls), ["WriteRejected"]);
    let s = stored_set(&fake);
    assert_eq!(ready(&s), ("False".into(), "WriteRejected".into()));
    let msg = &s.status.as_ref().unwrap().conditions[0].message;
    assert!(
        msg.contains("Secret auth-keyturn-keys") && msg.contains("(422 Invalid)"),
        "{msg}"
    );
}

/// A set asking for a copy in `payments`, which consents (a grant from `identity`).
fn with_consented_copy() -> Arc<Mutex<Fake>> {
    let fake = with_set(json!({"jwks": {"namespaces": ["payments"]}}));
    {
        let mut f = fake.lock().unwrap();
        for ns in ["identity", "payments"] {
            f.objects.insert(
                format!("/api/v1/namespaces/{ns}"),
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            );
        }
        f.objects.insert(
            format!("{GRANTS}/from-identity"),
            json!({"apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySetGrant",
                   "metadata": {"name": "from-identity", "namespace": "payments"},
                   "spec": {"from": [{"namespace": "identity", "configMapNames": ["auth-jwks"]}]}}),
        );
    }
    fake
}

/// The fan-out stage: the finalizer before any copy, the copy in the consenting namespace,
/// and, once the grant is withdrawn, the copy deleted and the finalizer released.
#[tokio::test]
async fn fan_out_holds_a_finalizer_before_any_copy_and_removes_the_copy_when_consent_goes() {
    let fake = with_consented_copy();
    let ctx = context(fake.clone());
    reconcile(Arc::new(stored_set(&fake)), ctx.clone())
        .await
        .unwrap();
    let calls1 = calls(&fake);
    let w = writes(&calls1);
    assert_eq!(
        w[0],
        format!("PATCH {SET_PATH}"),
        "the finalizer comes first: {w:#?}"
    );
    assert_eq!(
        calls1
            .iter()
            .find(|c| c.path == SET_PATH && c.method == "PATCH")
            .unwrap()
            .body
            .as_ref()
            .unwrap()["metadata"]["finalizers"],
        json!([super::FINALIZER])
    );
    assert!(
        w.contains(&"POST /api/v1/namespaces/payments/configmaps".to_string()),
        "{w:#?}"
    );
    let s = stored_set(&fake);
    assert_eq!(
        s.status.as_ref().unwrap().published_namespaces,
        ["identity", "payments"]
    );
    let copy = fake.lock().unwrap().objects[COPY].clone();
    let own = fake.lock().unwrap().objects[&format!("{CONFIGMAPS}/auth-jwks")].clone();
    assert_eq!(copy["data"], own["data"], "the copy is identical");

    // Consent withdrawn: the copy goes, the set says why, and nothing else is written there.
    fake.lock()
        .unwrap()
        .objects
        .remove(&format!("{GRANTS}/from-identity"));
    // (The controller's grant cache would have dropped it too: a context with current caches.)
    let ctx = context(fake.clone());
    reconcile(Arc::new(stored_set(&fake)), ctx).await.unwrap();
    let calls2 = calls(&fake);
    assert_eq!(
        writes(&calls2),
        [format!("DELETE {COPY}"), format!("PATCH {SET_PATH}/status")],
    );
    assert!(!fake.lock().unwrap().objects.contains_key(COPY));
    assert_eq!(event_reasons(&calls2), ["ConsentMissing"]);
    let s = stored_set(&fake);
    let fan_out = s
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == super::FAN_OUT_CONDITION)
        .unwrap();
    assert_eq!(
        (fan_out.status.as_str(), fan_out.reason.as_str()),
        ("False", "ConsentMissing")
    );
    assert_eq!(
        s.status.as_ref().unwrap().published_namespaces,
        ["identity"]
    );
}

/// A copy changed after the cache was filled (here: by a tenant of the target namespace):
/// the write decided from the cache fails its resourceVersion precondition, the reconcile
/// ends as `Stale` (no status, no Event, no alarm), and the next one, from a current cache,
/// repairs the copy.
#[tokio::test]
async fn a_copy_changed_behind_the_cache_fails_the_precondition_and_is_repaired_next_time() {
    let fake = with_consented_copy();
    reconcile(Arc::new(stored_set(&fake)), context(fake.clone()))
        .await
        .unwrap();
    let tamper = |fake: &Arc<Mutex<Fake>>, jwks: &str| {
        let mut f = fake.lock().unwrap();
        let rv = f.next_rv();
        let c = f.objects.get_mut(COPY).unwrap();
        c["data"]["jwks.json"] = json!(jwks);
        c["metadata"]["resourceVersion"] = json!(rv);
    };
    tamper(&fake, r#"{"keys":[]}"#);
    let ctx = context(fake.clone()); // its cache holds the first edit
    // ... and so does the copies' data it read then (the copies' watch is metadata only; the
    // data of the version it reports was read once and kept).
    let first: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(fake.lock().unwrap().objects[COPY].clone()).unwrap();
    ctx.memory.copy_data.put(&first);
    tamper(&fake, r#"{"keys":[{"kty":"oct"}]}"#); // a second edit it has not seen
    calls(&fake);
    let err = reconcile(Arc::new(stored_set(&fake)), ctx)
        .await
        .expect_err("the stale write must fail");
    assert!(matches!(err, super::Error::Stale(_)), "{err}");
    let c = calls(&fake);
    assert_eq!(
        writes(&c),
        [format!("PATCH {COPY}")],
        "only the guarded write"
    );
    assert_eq!(c.last().unwrap().code, 409);
    assert!(event_reasons(&c).is_empty(), "no Event for a lagging cache");

    reconcile(Arc::new(stored_set(&fake)), context(fake.clone()))
        .await
        .unwrap();
    let f = fake.lock().unwrap();
    let own = &f.objects[&format!("{CONFIGMAPS}/auth-jwks")];
    assert_eq!(f.objects[COPY]["data"], own["data"], "the copy is repaired");
}

/// Another replica (or a reconcile the cache has not caught up with) moved the set to a newer
/// key; the API server's watch cache still shows the older internal Secret, but the signing
/// Secret and the JWKS as they are now. The reconcile decided from that read would put the
/// older key back into the signing Secret: it checks the internal Secret's resourceVersion
/// first, ends as `Stale` without writing anything or sending an Event, and the next
/// reconcile, from a current cache, finds nothing to do.
#[tokio::test]
async fn an_internal_secret_behind_the_cache_never_puts_an_older_key_back() {
    use super::fixtures::{active_state, written};
    let fake = with_set(json!({"algorithm": "EdDSA"}));
    let sks = stored_set(&fake);
    let as_stored = |o: Value, kind: &str, rv: &str| {
        let mut v = o;
        v["apiVersion"] = json!("v1");
        v["kind"] = json!(kind);
        v["metadata"]["resourceVersion"] = json!(rv);
        v
    };
    let (older, newer) = (active_state(), active_state());
    let (old_objs, new_objs) = (written(&sks, &older), written(&sks, &newer));
    {
        let mut f = fake.lock().unwrap();
        let internal = format!("{SECRETS}/auth-keyturn-keys");
        f.objects.insert(
            internal.clone(),
            as_stored(json!(new_objs.internal), "Secret", "20"),
        );
        f.objects.insert(
            format!("{SECRETS}/auth-signing-key"),
            as_stored(json!(new_objs.signing), "Secret", "21"),
        );
        f.objects.insert(
            format!("{CONFIGMAPS}/auth-jwks"),
            as_stored(json!(new_objs.jwks), "ConfigMap", "22"),
        );
        f.lagging.insert(
            internal,
            Some(as_stored(json!(old_objs.internal), "Secret", "10")),
        );
        f.rv = 30;
    }
    let err = reconcile(Arc::new(sks.clone()), context(fake.clone()))
        .await
        .expect_err("a reconcile from the older internal Secret must not go on");
    assert!(matches!(err, super::Error::Stale(_)), "{err}");
    let c = calls(&fake);
    assert!(writes(&c).is_empty(), "nothing written: {:#?}", writes(&c));
    assert!(event_reasons(&c).is_empty(), "no Event for a lagging cache");
    assert_eq!(
        c.last().map(Call::line),
        Some(format!("GET {SECRETS}/auth-keyturn-keys")),
        "the check is a read of the internal Secret from etcd"
    );
    assert_eq!(c.last().unwrap().query, "", "not from the cache");

    fake.lock().unwrap().lagging.clear();
    reconcile(Arc::new(stored_set(&fake)), context(fake.clone()))
        .await
        .unwrap();
    let c = calls(&fake);
    assert_eq!(
        writes(&c),
        [format!("PATCH {SET_PATH}/status")],
        "only the status: the newer key stays"
    );
    let signing = &fake.lock().unwrap().objects[&format!("{SECRETS}/auth-signing-key")];
    assert_eq!(signing, &as_stored(json!(new_objs.signing), "Secret", "21"));
}

/// The API server's watch cache still shows a ConfigMap in the way of the set's JWKS that its
/// owner has just deleted: the refusal decided from it is not reported (no condition, no
/// Event, no one-minute wait) once a read from etcd shows the object gone; the reconcile ends
/// as `Stale`, and the next one publishes.
#[tokio::test]
async fn a_refusal_decided_from_a_lagging_cache_is_not_reported() {
    let fake = with_set(json!({}));
    fake.lock().unwrap().lagging.insert(
        format!("{CONFIGMAPS}/auth-jwks"),
        Some(json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "auth-jwks", "namespace": "identity", "resourceVersion": "1"},
               "data": {"jwks.json": "theirs"}})),
    );
    let err = reconcile(Arc::new(stored_set(&fake)), context(fake.clone()))
        .await
        .expect_err("the refusal is not reported");
    assert!(
        matches!(err, super::Error::Stale(ref m) if m == "auth-jwks"),
        "{err}"
    );
    let c = calls(&fake);
    assert!(writes(&c).is_empty(), "{:#?}", writes(&c));
    assert!(event_reasons(&c).is_empty(), "no Event for a lagging cache");

    fake.lock().unwrap().lagging.clear();
    reconcile(Arc::new(stored_set(&fake)), context(fake.clone()))
        .await
        .unwrap();
    assert_eq!(
        ready(&stored_set(&fake)),
        ("True".into(), "KeysPublished".into())
    );
}
