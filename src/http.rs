//! The HTTP endpoint: `GET /jwks/{namespace}/{name}` serves the same bytes as the set's
//! JWKS ConfigMap, with `ETag`, conditional GET and a `Cache-Control: max-age` that never
//! exceeds `prePublish` nor outlives the next key change; `/{namespace}/{name}/.well-known/
//! openid-configuration` serves a discovery document when `spec.issuer` is set. Also
//! `/healthz`, `/readyz` and `/metrics`.
//!
//! Every replica serves from its own watch caches (label-filtered), so the endpoint works
//! on leaders and followers alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, SET_LABEL, SigningKeySet};
use crate::metrics::Metrics;

/// Media type of a JWK Set (RFC 7517 §8.5).
pub const JWKS_CONTENT_TYPE: &str = "application/jwk-set+json";

/// What the handlers read.
#[derive(Clone)]
struct AppState {
    sets: Store<SigningKeySet>,
    cms: Store<ConfigMap>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    public_url: Option<String>,
}

/// Starts the watch caches and serves HTTP on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    public_url: Option<String>,
) -> std::io::Result<()> {
    let sets_api: Api<SigningKeySet> = crate::controller::scoped(&client, namespace.as_deref());
    let cms_api: Api<ConfigMap> = crate::controller::scoped(&client, namespace.as_deref());
    let (sets, sets_writer) = reflector::store();
    let (cms, cms_writer) = reflector::store();
    let owned =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    tokio::spawn(
        reflector::reflector(sets_writer, watcher(sets_api, watcher::Config::default()))
            .default_backoff()
            .for_each(|_| async {}),
    );
    tokio::spawn(
        reflector::reflector(cms_writer, watcher(cms_api, owned.clone()))
            .default_backoff()
            .for_each(|_| async {}),
    );
    let ready = Arc::new(AtomicBool::new(false));
    {
        let (sets, cms, ready) = (sets.clone(), cms.clone(), ready.clone());
        tokio::spawn(async move {
            if sets.wait_until_ready().await.is_ok() && cms.wait_until_ready().await.is_ok() {
                ready.store(true, Ordering::SeqCst);
            }
        });
    }
    let state = AppState {
        sets,
        cms,
        metrics,
        ready,
        public_url,
    };
    tracing::info!(addr = %listener.local_addr()?, "HTTP endpoint listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The routes over the given state.
fn router(state: AppState) -> Router {
    Router::new()
        .route("/jwks/{namespace}/{name}", get(jwks))
        .route(
            "/{namespace}/{name}/.well-known/openid-configuration",
            get(discovery),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
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

/// The set and the exact bytes of its JWKS ConfigMap in its own namespace.
/// A refusal: status code and message.
type Refusal = (StatusCode, &'static str);

fn lookup(
    state: &AppState,
    ns: &str,
    name: &str,
) -> Result<(Arc<SigningKeySet>, Vec<u8>), Refusal> {
    if !valid_name(ns) || !valid_name(name) {
        return Err((
            StatusCode::BAD_REQUEST,
            "namespace and name must be DNS-1123 names",
        ));
    }
    let not_found = (StatusCode::NOT_FOUND, "no such SigningKeySet");
    let unpublished = (StatusCode::NOT_FOUND, "JWKS not published yet");
    let set = state
        .sets
        .get(&ObjectRef::new(name).within(ns))
        .ok_or(not_found)?;
    let cm = state
        .cms
        .get(&ObjectRef::new(&set.config_map_name()).within(ns))
        .filter(|cm| cm.labels().get(SET_LABEL) == Some(&set.name_any()))
        .ok_or(unpublished)?;
    let bytes = cm
        .data
        .as_ref()
        .and_then(|d| d.get(&set.jwks_key()))
        .ok_or(unpublished)?;
    Ok((set, bytes.as_bytes().to_vec()))
}

/// `max-age` in seconds: at most `prePublish`, and never past the next planned change of
/// the JWKS (publication of the next key, activation, removal of a retired key).
pub fn max_age(set: &SigningKeySet, now: DateTime<Utc>) -> i64 {
    let pre = crate::duration::parse(&set.spec.rotation.pre_publish)
        .map(|d| d.num_seconds())
        .unwrap_or(0);
    let mut next: Vec<DateTime<Utc>> = vec![];
    if let Some(st) = &set.status {
        let parse = |s: &String| s.parse::<DateTime<Utc>>().ok();
        if let Some(r) = st.next_rotation_time.as_ref().and_then(parse) {
            next.push(r);
            if let Ok(p) = crate::duration::parse(&set.spec.rotation.pre_publish) {
                next.push(r - p);
            }
        }
        next.extend(
            st.keys
                .iter()
                .filter_map(|k| k.remove_at.as_ref())
                .filter_map(parse),
        );
    }
    let until_change = next
        .into_iter()
        .filter(|t| *t > now)
        .min()
        .map(|t| (t - now).num_seconds());
    pre.min(until_change.unwrap_or(pre)).max(0)
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

async fn jwks(
    State(state): State<AppState>,
    method: Method,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    state.metrics.http("jwks");
    let (set, bytes) = match lookup(&state, &ns, &name) {
        Ok(x) => x,
        Err((code, msg)) => return error(code, msg),
    };
    let tag = etag(&bytes);
    let cache = format!("public, max-age={}", max_age(&set, Utc::now()));
    let mut h = HeaderMap::new();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&tag).expect("base64url is a valid header"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&cache).expect("ascii"),
    );
    if if_none_match(&headers, &tag) {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JWKS_CONTENT_TYPE),
    );
    if method == Method::HEAD {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        return (StatusCode::OK, h).into_response();
    }
    (StatusCode::OK, h, bytes).into_response()
}

async fn discovery(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    state.metrics.http("discovery");
    let (set, bytes) = match lookup(&state, &ns, &name) {
        Ok(x) => x,
        Err((code, msg)) => return error(code, msg),
    };
    let Some(issuer) = set.spec.issuer.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this SigningKeySet has no spec.issuer",
        );
    };
    let base = match &state.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    let mut algs: Vec<String> = crate::jwks::parse(&bytes)
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
    let cache = format!("public, max-age={}", max_age(&set, Utc::now()));
    ([(header::CACHE_CONTROL, cache)], axum::Json(doc)).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "watch caches not synced\n").into_response()
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

    #[test]
    fn max_age_never_exceeds_pre_publish_nor_the_next_change() {
        let mut set: SigningKeySet = serde_json::from_value(json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
            "metadata": {"name": "a", "namespace": "b"},
            "spec": {"rotation": {"interval": "720h", "prePublish": "1h", "overlap": "24h"}}
        }))
        .unwrap();
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(max_age(&set, now), 3600, "no status: prePublish");
        set.status = Some(crate::crd::SigningKeySetStatus {
            next_rotation_time: Some("2026-01-10T00:00:00Z".into()),
            ..Default::default()
        });
        assert_eq!(max_age(&set, now), 3600);
        // 10 minutes before the next key is published: max-age 600.
        let soon: DateTime<Utc> = "2026-01-09T22:50:00Z".parse().unwrap();
        assert_eq!(max_age(&set, soon), 600);
        // A retired key leaves in 90 s.
        set.status
            .as_mut()
            .unwrap()
            .keys
            .push(crate::crd::KeyStatus {
                remove_at: Some("2026-01-01T00:01:30Z".into()),
                ..Default::default()
            });
        assert_eq!(max_age(&set, now), 90);
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
