//! The routes: the JWKS, discovery, `/readyz`, `/metrics`, and how a set is looked up.

use super::*;

/// Media type of a JWK Set (RFC 7517 §8.5).
pub const JWKS_CONTENT_TYPE: &str = "application/jwk-set+json";

pub(super) fn public_router(state: AppState) -> Router {
    Router::new()
        .route("/jwks/{namespace}/{name}", get(jwks))
        .route(
            "/{namespace}/{name}/.well-known/openid-configuration",
            get(discovery),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            measured,
        ))
        .with_state(state)
}

/// The route a public request's path names, for the metrics: a fixed set of labels whatever
/// the path (a path that names nothing is `other`).
pub(super) fn route_of(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["jwks", _, _] => "jwks",
        [_, _, ".well-known", "openid-configuration"] => "discovery",
        ["healthz"] => "healthz",
        ["readyz"] => "readyz",
        _ => "other",
    }
}

/// Counts and times every request the public router answers, by route and status code (what
/// the server's own limits answer before routing, a 408 or a refused connection, is not counted).
async fn measured(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = route_of(req.uri().path());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .http(route, resp.status().as_u16(), started.elapsed());
    resp
}

pub(super) fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
}

pub(super) fn error(code: StatusCode, msg: &str) -> Response {
    let mut r = (code, axum::Json(json!({"error": msg}))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("..")
}

/// A refusal: status code and message.
pub(super) type Refusal = (StatusCode, &'static str);

/// What the endpoint serves for one set at `now`.
pub(super) struct Served {
    pub(super) set: Arc<SetView>,
    pub(super) bytes: Vec<u8>,
    pub(super) max_age: i64,
}

pub(super) fn lookup(
    state: &AppState,
    ns: &str,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Served, Refusal> {
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
pub(super) fn jwks_document(
    public: &PublicState,
    s: &plan::Settings,
    now: DateTime<Utc>,
) -> Option<Vec<u8>> {
    let keys: Vec<&str> = plan::published_order(&public.state, s, now)
        .into_iter()
        .filter(|r| r.published_at.is_some())
        .filter_map(|r| public.jwk(r))
        .collect();
    (!keys.is_empty()).then(|| crate::core::jwks::assemble(keys))
}

pub(super) async fn jwks(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
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

pub(super) async fn discovery(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
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
        // REQUIRED by OpenID Connect Discovery 1.0 §3; the values Kubernetes' own issuer
        // discovery serves (keyturn publishes keys, not an authorization endpoint).
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    });
    (
        [(header::CACHE_CONTROL, cache_control(served.max_age))],
        axum::Json(doc),
    )
        .into_response()
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.unready() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
