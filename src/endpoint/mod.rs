//! The HTTP endpoints.
//!
//! The public port serves `GET /jwks/{namespace}/{name}` and, for sets with `spec.issuer`,
//! `/{namespace}/{name}/.well-known/openid-configuration`, plus `/healthz` and `/readyz`.
//! The admin port serves `/metrics`, `/healthz` and `/readyz`; it is never behind the public
//! `keyturn-jwks` Service.
//!
//! What the public port serves for a set is derived here from keyturn's own state (I9): the
//! set's internal Secret (owned by the set's uid), whose public-state annotation is read
//! through a metadata-only watch (no private key ever reaches the endpoint), ordered
//! by the planner's [`plan::published_order`] and limited to keys every copy has confirmed.
//! No ConfigMap is read: whoever can write ConfigMaps can tamper with mounted copies, never
//! with this endpoint. Every document is checked against the JWKS rules on the way out.
//! Discovery URLs come from `--public-url`, never from a request header.
//!
//! Every replica serves from its own watch caches, so leaders and followers answer alike.
//! Connections are bounded in number, header reading and request time are bounded, and so
//! are concurrent requests and request bodies ([`Limits`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::core::crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, SET_LABEL, SigningKeySet};
use crate::core::objects::PUBLIC_STATE_ANNOTATION;
use crate::core::plan;
use crate::core::state::{PublicState, SetState};
use crate::runtime::metrics::Metrics;

/// Media type of a JWK Set (RFC 7517 §8.5).
pub const JWKS_CONTENT_TYPE: &str = "application/jwk-set+json";

/// Bounds on what one client, or all of them together, can hold of the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A client must send a request's headers within this time (also the idle keep-alive
    /// time): a slow or silent client is disconnected.
    pub header_timeout: Duration,
    /// A request must be answered within this time, or it gets `408`.
    pub request_timeout: Duration,
    /// Open connections per port; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Requests handled at once per port; more wait for a slot.
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_concurrent_requests: 64,
        }
    }
}

/// Largest request header block accepted (then `431`).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest request body accepted (every route is a GET; then `413`).
const MAX_BODY_BYTES: usize = 1024;

/// Readiness of the process, shared by both ports: the watch caches have synced, and
/// nothing fatal (a leader election that cannot start) has happened.
#[derive(Default)]
pub struct Health {
    synced: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Health {
    /// Marks the process unready for good, with the reason `/readyz` shows.
    pub fn fail(&self, why: String) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// True once the caches have synced.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    fn unready(&self) -> Option<String> {
        if let Some(f) = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Some(f);
        }
        (!self.synced()).then(|| "watch caches not synced".to_string())
    }
}

/// A set's internal state as the endpoint keeps it: public keys only.
struct Published {
    /// uids in the Secret's ownerReferences: the state counts only for the set it names.
    owners: Vec<String>,
    /// The public state, or why it could not be read.
    state: Result<PublicState, String>,
}

/// What the routes need of a set, kept instead of the whole object: its uid, its spec as
/// the planner reads it (or the fact that it is invalid) and its issuer. At 10,000 sets a
/// cache of whole SigningKeySets (metadata, spec) held several KiB per set in every replica.
struct SetView {
    /// The set's uid: its internal Secret counts only if owned by it.
    uid: String,
    /// The validated spec; `None` when the spec is invalid (the routes answer 503).
    settings: Option<plan::Settings>,
    /// `spec.issuer`, for discovery.
    issuer: Option<String>,
}

impl SetView {
    fn of(sks: &SigningKeySet) -> Self {
        SetView {
            uid: sks.meta().uid.clone().unwrap_or_default(),
            settings: plan::validate(&sks.spec, None).ok(),
            issuer: sks.spec.issuer.clone(),
        }
    }
}

/// A watch cache of one view per object, by (namespace, name).
type Views<V> = Arc<RwLock<HashMap<(String, String), Arc<V>>>>;
type States = Views<Published>;
type Sets = Views<SetView>;

/// What the handlers read.
#[derive(Clone)]
struct AppState {
    sets: Sets,
    states: States,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    issuers: Arc<crate::core::issuer::Issuers>,
}

/// Everything [`serve`] needs.
pub struct Config {
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// The issuer URL each set may claim, and the public port's base URL as clients reach
    /// it (`jwks_uri` in discovery).
    pub issuers: Arc<crate::core::issuer::Issuers>,
    /// Server limits, per port.
    pub limits: Limits,
}

/// Starts the watch caches and serves the public and admin ports until `shutdown` resolves.
pub async fn serve(
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    client: Client,
    cfg: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let sets_api: Api<SigningKeySet> = crate::runtime::scoped(&client, cfg.namespace.as_deref());
    let secrets_api: Api<PartialObjectMeta<Secret>> =
        crate::runtime::scoped(&client, cfg.namespace.as_deref());
    let sets: Sets = Arc::default();
    let states: States = Arc::default();
    let (sets_synced, mut sets_rx) = tokio::sync::watch::channel(false);
    // A set created or recreated after its internal Secret was seen: that Secret was not kept
    // (no live set owned it then) and is read again, metadata only.
    let (missing_tx, missing_rx) = tokio::sync::mpsc::unbounded_channel();
    let applied = {
        let states = states.clone();
        move |s: &SigningKeySet| {
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            let uid = s.meta().uid.clone().unwrap_or_default();
            let held = states
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .is_some_and(|p| p.owners.contains(&uid));
            if !held {
                let _ = missing_tx.send(key);
            }
        }
    };
    tokio::spawn(follow(
        watcher(sets_api, watcher::Config::default()),
        sets.clone(),
        sets_synced,
        |s: &SigningKeySet| Some((s.namespace().unwrap_or_default(), s.name_any())),
        |s| Some(SetView::of(s)),
        applied,
        "SigningKeySets",
    ));
    tokio::spawn(read_missing(
        client.clone(),
        missing_rx,
        sets.clone(),
        states.clone(),
    ));
    let (states_synced, mut states_rx) = tokio::sync::watch::channel(false);
    // Only keyturn's Secrets, metadata only: no private key (signing Secret or internal state)
    // ever reaches the endpoint (I3); each internal Secret's public state is in an
    // annotation. Started once the sets are listed: a Secret is kept only for a live set that
    // owns it, so that objects merely carrying keyturn's labels cost nothing (I11).
    let owned =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    {
        let (sets, states) = (sets.clone(), states.clone());
        let mut sets_rx = sets_rx.clone();
        tokio::spawn(async move {
            if sets_rx.wait_for(|s| *s).await.is_err() {
                return;
            }
            follow(
                watcher(secrets_api, owned),
                states,
                states_synced,
                state_key,
                move |s| published(s, &sets),
                |_| {},
                "keyturn's Secrets",
            )
            .await
        });
    }
    {
        let health = health.clone();
        tokio::spawn(async move {
            if sets_rx.wait_for(|s| *s).await.is_ok() && states_rx.wait_for(|s| *s).await.is_ok() {
                health.synced.store(true, Ordering::SeqCst);
            }
        });
    }
    let state = AppState {
        sets,
        states,
        metrics,
        health,
        issuers: cfg.issuers,
    };
    tracing::info!(public = %public.local_addr()?, admin = %admin.local_addr()?, "HTTP endpoints listening");
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (p, a) = tokio::join!(
        serve_with_limits(
            public,
            public_router(state.clone()),
            cfg.limits,
            stopped(rx.clone())
        ),
        serve_with_limits(admin, admin_router(state), cfg.limits, stopped(rx)),
    );
    p.and(a)
}

/// Keeps `views` equal to `view` of every object `events` reports that `key` names (an
/// object without a key, or whose view is `None`, is not kept); `synced` turns true after the
/// first full list; `applied` is told of each object changed after it (once its view is in).
/// Only the views are held, never the objects.
async fn follow<K, V>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    views: Views<V>,
    synced: tokio::sync::watch::Sender<bool>,
    key: impl Fn(&K) -> Option<(String, String)>,
    view: impl Fn(&K) -> Option<V>,
    applied: impl Fn(&K),
    what: &'static str,
) where
    K: Clone + std::fmt::Debug + Send + 'static,
{
    let mut events = std::pin::pin!(events.default_backoff());
    let mut relist: Option<HashMap<(String, String), Arc<V>>> = None;
    let put = |map: &mut HashMap<_, _>, o: &K| {
        if let Some(k) = key(o) {
            match view(o) {
                Some(v) => map.insert(k, Arc::new(v)),
                None => map.remove(&k),
            };
        }
    };
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => relist = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(m) = relist.as_mut() {
                    put(m, &s);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(m) = relist.take() {
                    *views.write().unwrap_or_else(|e| e.into_inner()) = m;
                }
                let _ = synced.send(true);
            }
            Ok(watcher::Event::Apply(o)) => {
                put(&mut views.write().unwrap_or_else(|e| e.into_inner()), &o);
                applied(&o);
            }
            Ok(watcher::Event::Delete(o)) => {
                if let Some(k) = key(&o) {
                    views.write().unwrap_or_else(|e| e.into_inner()).remove(&k);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, what, "watching for the HTTP endpoint")
            }
        }
    }
}

/// Reads again, metadata only, the internal Secret of each set `missing` names (created or
/// recreated after its Secret's event went by) and keeps it when the set owns it, unless the
/// watch has meanwhile brought one.
async fn read_missing(
    client: Client,
    mut missing: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    sets: Sets,
    states: States,
) {
    while let Some((ns, name)) = missing.recv().await {
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let meta = match api
            .get_metadata_opt(&crate::core::crd::internal_secret_name(&name))
            .await
        {
            Ok(Some(m)) => m,
            Ok(None) => continue, // not written yet: its watch event will come
            Err(e) => {
                tracing::warn!(error = %e, namespace = %ns, set = %name, "reading an internal Secret for the HTTP endpoint");
                continue;
            }
        };
        if state_key(&meta) != Some((ns.clone(), name.clone())) {
            continue;
        }
        let Some(p) = published(&meta, &sets) else {
            continue;
        };
        let mut m = states.write().unwrap_or_else(|e| e.into_inner());
        let held = m
            .get(&(ns.clone(), name.clone()))
            .is_some_and(|old| old.owners.iter().any(|o| p.owners.contains(o)));
        if !held {
            m.insert((ns, name), Arc::new(p));
        }
    }
}

/// (namespace, set) when `s` is the internal Secret of a set: keyturn's label naming the
/// set and the internal Secret's name for it.
fn state_key(s: &PartialObjectMeta<Secret>) -> Option<(String, String)> {
    let labels = s.labels();
    let set = labels.get(SET_LABEL)?;
    (labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
        && s.name_any() == crate::core::crd::internal_secret_name(set))
    .then(|| (s.namespace().unwrap_or_default(), set.clone()))
}

/// The public part of an internal Secret (its public-state annotation) when a live set it
/// names owns it; `None` for any other Secret, and for one no live set owns (such an object
/// costs nothing however large its annotations, I11).
fn published(s: &PartialObjectMeta<Secret>, sets: &Sets) -> Option<Published> {
    let key = state_key(s)?;
    let owners: Vec<String> = s.owner_references().iter().map(|o| o.uid.clone()).collect();
    let uid = sets
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .map(|v| v.uid.clone())?;
    if !owners.contains(&uid) {
        return None;
    }
    let state = s
        .annotations()
        .get(PUBLIC_STATE_ANNOTATION)
        .ok_or_else(|| "no public state".to_string())
        .and_then(|b| PublicState::from_bytes(b.as_bytes()).map_err(|e| e.to_string()));
    Some(Published { owners, state })
}

fn public_router(state: AppState) -> Router {
    Router::new()
        .route("/jwks/{namespace}/{name}", get(jwks))
        .route(
            "/{namespace}/{name}/.well-known/openid-configuration",
            get(discovery),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
}

fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
}

/// Serves `router` on `listener` within `limits` until `stop` resolves, then lets open
/// requests finish (at most 10 s).
async fn serve_with_limits(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let router = router
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_requests,
        ));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            _ = &mut stop => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(MAX_HEADER_BYTES)
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(router.clone()),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open HTTP connections did not finish within 10 s");
    }
    Ok(())
}

fn error(code: StatusCode, msg: &str) -> Response {
    let mut r = (code, axum::Json(json!({"error": msg}))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("..")
}

/// A refusal: status code and message.
type Refusal = (StatusCode, &'static str);

/// What the endpoint serves for one set at `now`.
struct Served {
    set: Arc<SetView>,
    bytes: Vec<u8>,
    max_age: i64,
}

fn lookup(state: &AppState, ns: &str, name: &str, now: DateTime<Utc>) -> Result<Served, Refusal> {
    if !valid_name(ns) || !valid_name(name) {
        return Err((
            StatusCode::BAD_REQUEST,
            "namespace and name must be DNS-1123 names",
        ));
    }
    let key = (ns.to_string(), name.to_string());
    let set = state
        .sets
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned()
        .ok_or((StatusCode::NOT_FOUND, "no such SigningKeySet"))?;
    let published = state
        .states
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned()
        .ok_or((StatusCode::NOT_FOUND, "JWKS not published yet"))?;
    if !published.owners.contains(&set.uid) {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "this SigningKeySet's key state is not owned by it; nothing is served",
        ));
    }
    let public = published.state.as_ref().map_err(|_| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "keyturn cannot read this SigningKeySet's key state; see its Ready condition",
        )
    })?;
    let settings = set.settings.as_ref().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "this SigningKeySet's spec is invalid; see its Ready condition",
    ))?;
    let bytes = jwks_document(public, settings, now)
        .ok_or((StatusCode::NOT_FOUND, "JWKS not published yet"))?;
    if let Err(e) = crate::core::jwks::validate(&bytes) {
        // Cannot happen for a state keyturn wrote; never serve what breaks the rules.
        tracing::error!(namespace = ns, name, error = %e, "refusing to serve a JWKS that breaks the rules");
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the JWKS breaks the publication rules; nothing is served",
        ));
    }
    let max_age = spread_max_age(
        max_age(&public.state, settings, now),
        // The OS RNG; should it fail, no spread (the full bound is still correct).
        getrandom::u32().unwrap_or(0),
    );
    Ok(Served {
        set,
        bytes,
        max_age,
    })
}

/// The JWKS of a set as every copy holds it: the planner's published order, limited to keys
/// whose publication every copy confirmed. `None` before the first key is published.
fn jwks_document(public: &PublicState, s: &plan::Settings, now: DateTime<Utc>) -> Option<Vec<u8>> {
    let keys: Vec<&str> = plan::published_order(&public.state, s, now)
        .into_iter()
        .filter(|r| r.published_at.is_some())
        .filter_map(|r| public.jwk(r))
        .collect();
    (!keys.is_empty()).then(|| crate::core::jwks::assemble(keys))
}

/// `max-age` in seconds: at most `prePublish`, and never past the planner's next transition
/// (publication of the next key, activation, removal of a retired key).
pub fn max_age(state: &SetState, s: &plan::Settings, now: DateTime<Utc>) -> i64 {
    let pre = s.pre_publish.num_seconds();
    let until_change = plan::next_transition(state, s, now).map(|t| (t - now).num_seconds());
    pre.min(until_change.unwrap_or(pre)).max(0)
}

/// `max-age` with a spread: up to a tenth of `bound` taken off at random (`random`), so the
/// caches of verifiers that fetched in the same second do not all expire in the same second.
/// Never longer than `bound`, so never past the next change.
pub fn spread_max_age(bound: i64, random: u32) -> i64 {
    bound - i64::from(random) % (bound / 10 + 1)
}

fn etag(bytes: &[u8]) -> String {
    format!(
        "\"{}\"",
        URL_SAFE_NO_PAD.encode(&Sha256::digest(bytes)[..18])
    )
}

fn if_none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().trim_start_matches("W/"))
        .any(|v| v == tag || v == "*")
}

fn cache_control(max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("public, max-age={max_age}")).expect("ascii")
}

async fn jwks(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    state.metrics.http("jwks");
    let served = match lookup(&state, &ns, &name, Utc::now()) {
        Ok(x) => x,
        Err((code, msg)) => return error(code, msg),
    };
    let tag = etag(&served.bytes);
    let mut h = HeaderMap::new();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&tag).expect("base64url is a valid header"),
    );
    h.insert(header::CACHE_CONTROL, cache_control(served.max_age));
    if if_none_match(&headers, &tag) {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JWKS_CONTENT_TYPE),
    );
    (StatusCode::OK, h, served.bytes).into_response()
}

async fn discovery(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    state.metrics.http("discovery");
    let served = match lookup(&state, &ns, &name, Utc::now()) {
        Ok(x) => x,
        Err((code, msg)) => return error(code, msg),
    };
    let Some(issuer) = served.set.issuer.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this SigningKeySet has no spec.issuer",
        );
    };
    let base = match state.issuers.check(&ns, &name, &issuer) {
        Ok(()) => state.issuers.public_url().unwrap_or_default(),
        // 503: the endpoint is not configured for discovery at all.
        Err(r @ crate::core::issuer::Refusal::NoPublicUrl) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, &r.message(&issuer));
        }
        // 404: this set has no document here (its issuer is not the URL it is served under).
        Err(r) => return error(StatusCode::NOT_FOUND, &r.message(&issuer)),
    };
    let mut algs: Vec<String> = crate::core::jwks::parse(&served.bytes)
        .unwrap_or_default()
        .iter()
        .filter_map(|k| k.get("alg").and_then(|a| a.as_str()).map(str::to_string))
        .collect();
    algs.sort();
    algs.dedup();
    let doc = json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/jwks/{ns}/{name}"),
        "id_token_signing_alg_values_supported": algs,
    });
    (
        [(header::CACHE_CONTROL, cache_control(served.max_age))],
        axum::Json(doc),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.unready() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::crd::Algorithm;
    use crate::core::keys::KeyPair;
    use crate::core::state::KeyRecord;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "identity", "auth-jwks", "a.b"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "A",
            "-a",
            "a-",
            "a..b",
            "%2e%2e",
            &"a".repeat(254),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    fn settings(pre: &str) -> plan::Settings {
        let spec: crate::core::crd::SigningKeySetSpec = serde_json::from_value(
            json!({"rotation": {"interval": "720h", "prePublish": pre, "overlap": "24h"}}),
        )
        .unwrap();
        plan::validate(&spec, None).unwrap()
    }

    fn record(t: &str, published: bool) -> KeyRecord {
        let kp = KeyPair::generate(Algorithm::ES256, None).unwrap();
        let t: DateTime<Utc> = t.parse().unwrap();
        KeyRecord {
            kid: kp.kid().to_string(),
            alg: kp.alg(),
            public_jwk: kp.public_jwk(),
            private_pem: None,
            created_at: t,
            published_at: published.then_some(t),
            activated_at: None,
            retired_at: None,
            manual: false,
            verify_until: None,
        }
    }

    #[test]
    fn the_spread_takes_at_most_a_tenth_off_and_never_adds() {
        let seen: std::collections::BTreeSet<i64> =
            (0..10_000u32).map(|r| spread_max_age(3600, r)).collect();
        assert_eq!(
            (seen.first(), seen.last()),
            (Some(&3240), Some(&3600)),
            "every value of [0.9 x bound, bound], none outside"
        );
        assert_eq!(seen.len(), 361);
        assert_eq!(
            spread_max_age(3600, u32::MAX),
            3600 - (u32::MAX % 361) as i64
        );
        // Bounds under 10 s are not spread; 0 stays 0.
        assert!((0..100u32).all(|r| spread_max_age(9, r) == 9 && spread_max_age(0, r) == 0));
    }

    #[test]
    fn max_age_never_exceeds_pre_publish_nor_the_next_transition() {
        let s = settings("1h");
        let mut active = record("2026-01-01T00:00:00Z", true);
        active.activated_at = active.published_at;
        let mut state = SetState::new();
        state.keys.push(active);
        let now: DateTime<Utc> = "2026-01-02T00:00:00Z".parse().unwrap();
        assert_eq!(max_age(&state, &s, now), 3600);
        // 10 minutes before the next key is generated and published (720h - 1h after
        // activation): max-age 600.
        let soon: DateTime<Utc> = "2026-01-30T22:50:00Z".parse().unwrap();
        assert_eq!(max_age(&state, &s, soon), 600);
        // A retired key leaves in 90 s (24h overlap).
        let mut retired = record("2025-12-01T00:00:00Z", true);
        retired.activated_at = retired.published_at;
        retired.retired_at = Some("2026-01-01T00:01:30Z".parse().unwrap());
        state.keys.push(retired);
        let t: DateTime<Utc> = "2026-01-02T00:00:00Z".parse().unwrap();
        assert_eq!(max_age(&state, &s, t), 90);
    }

    fn public(state: &SetState) -> PublicState {
        PublicState::from_bytes(&state.to_bytes()).unwrap()
    }

    #[test]
    fn only_keys_every_copy_confirmed_are_served() {
        let s = settings("1h");
        let mut state = SetState::new();
        assert_eq!(
            jwks_document(&public(&state), &s, Utc::now()),
            None,
            "nothing yet"
        );
        let pending = record("2026-01-01T00:00:00Z", false);
        state.keys.push(pending.clone());
        assert_eq!(
            jwks_document(&public(&state), &s, Utc::now()),
            None,
            "stored but not yet published everywhere"
        );
        state.keys[0].published_at = Some(pending.created_at);
        let doc = jwks_document(&public(&state), &s, Utc::now()).unwrap();
        assert_eq!(
            crate::core::jwks::kids(&doc).unwrap(),
            vec![pending.kid.clone()]
        );
        crate::core::jwks::validate(&doc).unwrap();
    }

    #[test]
    fn the_endpoint_serves_the_bytes_of_the_config_maps() {
        // The endpoint keeps JWKs serialized; its document must be byte for byte the one the
        // ConfigMaps hold for the same keys, in the planner's order (Active, Pending, Retired).
        let s = settings("1h");
        let mut state = SetState::new();
        let mut retired = record("2026-01-01T00:00:00Z", true);
        retired.activated_at = retired.published_at;
        retired.retired_at = Some("2026-01-10T00:00:00Z".parse().unwrap());
        let mut active = record("2026-01-09T00:00:00Z", true);
        active.activated_at = Some("2026-01-10T00:00:00Z".parse().unwrap());
        let pending = record("2026-01-10T12:00:00Z", true);
        state.keys = vec![retired.clone(), active.clone(), pending.clone()];
        let now: DateTime<Utc> = "2026-01-10T13:00:00Z".parse().unwrap();
        let kids = [active.kid, pending.kid, retired.kid];
        let doc = jwks_document(&public(&state), &s, now).unwrap();
        assert_eq!(crate::core::jwks::kids(&doc).unwrap(), kids);
        assert_eq!(Some(doc), crate::core::objects::jwks_bytes(&state, &kids));
        // Nothing private is kept: the records lost their private keys and parsed trees.
        let mut signing = state.clone();
        signing.keys[1].private_pem = Some(crate::core::state::Sensitive::new(
            KeyPair::generate(Algorithm::ES256, None)
                .unwrap()
                .to_pkcs8_pem(),
        ));
        let kept = public(&signing);
        assert!(
            kept.state
                .keys
                .iter()
                .all(|r| r.private_pem.is_none() && r.public_jwk.is_null())
        );
        // A private key kept would show in the Debug output as `<redacted>`.
        assert!(!format!("{kept:?}").contains("<redacted>"));
        assert!(format!("{signing:?}").contains("<redacted>"));
    }

    #[test]
    fn conditional_get_matching() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(if_none_match(&h, "\"abc\""));
        assert!(!if_none_match(&h, "\"abd\""));
        assert!(!if_none_match(&HeaderMap::new(), "\"abc\""));
    }
}
