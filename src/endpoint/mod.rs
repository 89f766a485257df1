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

use crate::core::crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, SET_LABEL, SetRef, SigningKeySet};
use crate::core::objects::PUBLIC_STATE_ANNOTATION;
use crate::core::plan;
use crate::core::state::{PublicState, SetState};
use crate::runtime::metrics::Metrics;

mod caching;
mod index;
mod routes;
mod server;

use caching::*;
pub use caching::{max_age, spread_max_age};
use index::*;
pub use routes::JWKS_CONTENT_TYPE;
use routes::*;
use server::*;
pub use server::{Health, Limits};

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

/// The key of a set's view, (namespace, name), as [`SetRef::of`] gives them: a set without
/// both is not kept.
fn set_key(s: &SigningKeySet) -> Option<(String, String)> {
    SetRef::of(s).map(|r| (r.namespace, r.name))
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
            let Some(key) = set_key(s) else { return };
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
        set_key,
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
