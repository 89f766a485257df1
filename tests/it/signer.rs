//! keyturn as the kube-apiserver's external ServiceAccount token signer (`keyturn signer`,
//! docs/cluster-signer.md), each scenario on a control plane of its own, side by side:
//! - rotations: the migration from the plane's key file, three scheduled rotations and a
//!   manual one, the signer and the API server restarted mid-rotation, with an independent
//!   checker polling TokenReview and the cluster's OIDC discovery (`/openid/v1/jwks`) the
//!   whole time, until the first rotation's last token expires;
//! - guard: a tenant's forgery, the signer down and back, its secrecy and its credential's
//!   reach, and an older state put back.

use crate::support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::plane::Plane;
use keyturn::core::crd::SigningKeySet;

const NS: &str = "kube-system";
const SET: &str = "service-accounts";
/// FetchKeys' refresh hint: the API server fetches the keys at least this often.
const REFRESH_HINT: &str = "5s";
/// The set's schedule: a key signs 40 s; the next is published 15 s before (3× the refresh
/// hint); a retired key stays 12 minutes, the 10-minute token lifetime plus the 2-minute margin.
const INTERVAL: &str = "40s";
const PRE_PUBLISH: &str = "15s";

/// `keyturn signer` as a process of the test's.
struct Signer {
    child: Option<Child>,
    args: Vec<String>,
    kubeconfig: PathBuf,
    log: PathBuf,
    socket: PathBuf,
}

impl Signer {
    fn start(plane: &Plane, kubeconfig: PathBuf) -> Signer {
        let dir = std::env::var("KEYTURN_TEST_LOG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        std::fs::create_dir_all(&dir).unwrap();
        let socket = plane.dir.join("keyturn-signer.sock");
        let mut s = Signer {
            child: None,
            args: vec![
                "signer".into(),
                "--set".into(),
                format!("{NS}/{SET}"),
                "--socket".into(),
                socket.display().to_string(),
                "--state-file".into(),
                plane
                    .dir
                    .join("keyturn-signer-state.json")
                    .display()
                    .to_string(),
                "--refresh-hint".into(),
                REFRESH_HINT.into(),
                // Bound by the signer itself; its log says where (see `metrics`).
                "--metrics-addr".into(),
                "127.0.0.1:0".into(),
                "--log-format".into(),
                "json".into(),
            ],
            kubeconfig,
            log: dir.join(format!(
                "signer-{}.log",
                plane.dir.file_name().unwrap().to_string_lossy()
            )),
            socket,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_keyturn"))
                .args(&self.args)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .stdout(Stdio::null())
                .stderr(file)
                .spawn()
                .expect("start keyturn signer"),
        );
    }

    fn metrics(&self) -> String {
        // The port the running process bound: the last `metrics listening` line of the log
        // (each start appends one; until the newest has, the fetch fails and callers wait).
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let Some(port) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["fields"]["message"] == "metrics listening")
            .filter_map(|l| {
                l["fields"]["addr"]
                    .as_str()?
                    .rsplit(':')
                    .next()?
                    .parse::<u16>()
                    .ok()
            })
            .next_back()
        else {
            return String::new();
        };
        support::http_get(port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        c.wait().unwrap()
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One token the API server issued, with what the checker knew when it was requested.
#[derive(Clone)]
struct Issued {
    n: usize,
    token: String,
    kid: String,
    exp: i64,
    how: &'static str,
}

#[derive(Default)]
struct Shared {
    /// The latest `/openid/v1/jwks`.
    jwks: Arc<Vec<u8>>,
    tokens: Vec<Issued>,
    /// What went wrong, with when.
    failures: Vec<String>,
    /// Token requests may fail now (the signer or the API server is down on purpose).
    outage: bool,
    /// Token requests that failed during outages, with the error.
    outage_errors: Vec<String>,
    polls: usize,
    /// Bumped when an outage starts: a gap between polls across one is not the checker's.
    outage_epoch: usize,
    /// The longest time between two polls with no outage between them.
    max_gap: Duration,
    reviews: usize,
}

/// The API server's issuer: its tokens' `iss` and (by default) their audience.
static ISSUER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Verifies a token as an OIDC relying party would, with one JWKS and no refetch: the key
/// by kid, the signature, `exp`, `iss` and `aud` (the API server's default audience).
fn verify_with_jwks(token: &str, jwks: &[u8]) -> Result<(), String> {
    use jsonwebtoken::jwk::JwkSet;
    let set: JwkSet =
        serde_json::from_slice(jwks).map_err(|e| format!("JWKS does not parse: {e}"))?;
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("token has no kid")?;
    let jwk = set.find(&kid).ok_or(format!("kid {kid} not in the JWKS"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK unusable: {e}"))?;
    let issuer = ISSUER.get().expect("issuer known");
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.set_issuer(&[issuer]);
    v.set_audience(&[issuer]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .unwrap()
        .kid
        .unwrap_or_default()
}

fn exp_of(token: &str) -> i64 {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["exp"].as_i64().unwrap()
}

async fn oidc_jwks(client: &Client) -> Result<Vec<u8>, kube::Error> {
    let req = http::Request::get("/openid/v1/jwks")
        .body(Vec::new())
        .unwrap();
    client.request_text(req).await.map(String::into_bytes)
}

async fn token_request(
    client: &Client,
    ns: &str,
    sa: &str,
    seconds: i64,
) -> Result<String, String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": seconds}})).unwrap();
    api.create_token_request(sa, &PostParams::default(), &tr)
        .await
        .map_err(|e| e.to_string())
        .and_then(|t| {
            t.status
                .and_then(|s| s.token)
                .ok_or_else(|| "TokenRequest without a token".to_string())
        })
}

fn kubectl_token(kubeconfig: &std::path::Path, ns: &str, sa: &str) -> Result<String, String> {
    let bin = std::env::var("KEYTURN_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = Command::new(bin)
        .args([
            "create",
            "token",
            sa,
            "-n",
            ns,
            "--duration",
            "10m",
            "--request-timeout",
            "20s",
        ])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// TokenReview: Ok(authenticated user) / Ok(None) when refused / Err when not answered.
async fn review(client: &Client, token: &str) -> Result<Option<String>, kube::Error> {
    let tr: TokenReview = serde_json::from_value(json!({"spec": {"token": token}})).unwrap();
    let r = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &tr)
        .await?;
    let st = r.status.unwrap_or_default();
    Ok(st
        .authenticated
        .unwrap_or(false)
        .then(|| st.user.and_then(|u| u.username).unwrap_or_default()))
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The checker: every 250 ms, the cluster's OIDC JWKS (kept for the issuer), every unexpired
/// token verified against it with no refetch, and TokenReview of the legacy token, the last
/// token of each kid, and the newest token. Answers that do not come (an API server restarting)
/// are skipped; a refusal is a failure.
async fn checker(
    client: Client,
    shared: Arc<Mutex<Shared>>,
    legacy: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut last: Option<(Instant, usize)> = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let at = started.elapsed().as_secs_f64();
        let Ok(jwks) = oidc_jwks(&client).await else {
            continue;
        };
        let jwks = Arc::new(jwks);
        // Leave 5 s before exp (clock granularity); jsonwebtoken adds 60 s of leeway after.
        let live: Vec<Issued> = {
            let mut s = shared.lock().unwrap();
            s.jwks = jwks.clone();
            s.polls += 1;
            let now = (Instant::now(), s.outage_epoch);
            if let Some((t, epoch)) = last
                && epoch == now.1
                && !s.outage
            {
                s.max_gap = s.max_gap.max(now.0 - t);
            }
            last = Some(now);
            s.tokens
                .iter()
                .filter(|t| t.exp > now_secs() + 5)
                .cloned()
                .collect()
        };
        let mut failures = Vec::new();
        if let Err(e) = verify_with_jwks(&legacy, &jwks) {
            failures.push(format!(
                "{at:.1}s: the key-file token does not verify with the OIDC JWKS: {e}"
            ));
        }
        for t in &live {
            if let Err(e) = verify_with_jwks(&t.token, &jwks) {
                failures.push(format!(
                    "{at:.1}s: token #{} ({}, kid {}) does not verify with the OIDC JWKS: {e}",
                    t.n, t.how, t.kid
                ));
            }
        }
        // Whom to review: the legacy token, the last token of every kid, the newest token.
        let mut to_review: Vec<(String, String)> =
            vec![("the key-file token".into(), legacy.clone())];
        let mut last_of_kid: Vec<&Issued> = Vec::new();
        for t in &live {
            match last_of_kid.iter_mut().find(|x| x.kid == t.kid) {
                Some(x) => *x = t,
                None => last_of_kid.push(t),
            }
        }
        to_review.extend(
            last_of_kid
                .iter()
                .map(|t| (format!("token #{} (kid {})", t.n, t.kid), t.token.clone())),
        );
        let mut reviews = 0;
        for (what, token) in &to_review {
            match review(&client, token).await {
                Ok(Some(_)) => reviews += 1,
                Ok(None) => failures.push(format!("{at:.1}s: TokenReview refused {what}")),
                Err(_) => {} // the API server is not answering (restarting): nothing was refused
            }
        }
        let mut s = shared.lock().unwrap();
        s.reviews += reviews;
        s.failures.extend(failures);
    }
}

/// The issuer: a token every 500 ms (every fifth through `kubectl create token`, the others
/// through the TokenRequest API), each checked against the OIDC JWKS fetched *before* it was
/// requested: a key that signed before the cluster's discovery published it fails here.
async fn issuer(
    kubeconfig: PathBuf,
    client: Client,
    shared: Arc<Mutex<Shared>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        n += 1;
        let (jwks_before, outage_at_start) = {
            let s = shared.lock().unwrap();
            (s.jwks.clone(), s.outage)
        };
        let (how, got) = if n.is_multiple_of(5) {
            let kc = kubeconfig.clone();
            let r = tokio::task::spawn_blocking(move || kubectl_token(&kc, "workload", "app"))
                .await
                .unwrap();
            ("kubectl create token", r)
        } else {
            // Bounded: with the signer down the API server holds a token request for a long
            // time (measured below); the issuer must go on once the signer is back.
            let r = tokio::time::timeout(
                Duration::from_secs(20),
                token_request(&client, "workload", "app", 600),
            )
            .await
            .unwrap_or_else(|_| Err("no answer within 20 s".into()));
            ("TokenRequest", r)
        };
        let mut s = shared.lock().unwrap();
        match got {
            Ok(token) => {
                let kid = kid_of(&token);
                if let Err(e) = verify_with_jwks(&token, &jwks_before) {
                    s.failures.push(format!("token #{n} ({how}, kid {kid}) does not verify with the OIDC JWKS from before it was requested: {e}"));
                }
                let exp = exp_of(&token);
                s.tokens.push(Issued {
                    n,
                    token,
                    kid,
                    exp,
                    how,
                });
            }
            Err(e) if s.outage || outage_at_start => s.outage_errors.push(format!("{how}: {e}")),
            Err(e) => s.failures.push(format!(
                "token #{n} ({how}) was not issued outside an outage: {e}"
            )),
        }
    }
}

/// The kids that signed, in order, from the issued tokens.
fn signing_kids(shared: &Mutex<Shared>) -> Vec<String> {
    let s = shared.lock().unwrap();
    let mut kids: Vec<String> = Vec::new();
    for t in &s.tokens {
        if kids.last() != Some(&t.kid) {
            kids.push(t.kid.clone());
        }
    }
    kids
}

async fn wait_kids(shared: &Arc<Mutex<Shared>>, what: &str, count: usize, timeout: Duration) {
    let sh = shared.clone();
    support::wait_for(what, timeout, || {
        let sh = sh.clone();
        async move { (signing_kids(&sh).len() >= count).then_some(()) }
    })
    .await;
}

/// Waits until the set has a Pending key: the middle of a rotation.
async fn wait_pending(sets: &Api<SigningKeySet>) {
    support::wait_object(
        sets,
        SET,
        "a Pending key (mid-rotation)",
        Duration::from_secs(90),
        |o: Option<&SigningKeySet>| {
            o.and_then(|s| s.status.as_ref())
                .is_some_and(|st| st.keys.iter().any(|k| k.state == "Pending"))
        },
    )
    .await;
}

fn set_outage(shared: &Mutex<Shared>, on: bool) {
    let mut s = shared.lock().unwrap();
    s.outage = on;
    s.outage_epoch += 1;
}

/// The signer's own identity: a client certificate (never a ServiceAccount token: those are
/// what it signs) for the user `keyturn-signer`, bound to a Role that reads the one set and its
/// internal Secret, as docs/cluster-signer.md sets it up. Returns its kubeconfig.
async fn signer_identity(plane: &Plane, client: &Client) -> PathBuf {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "keyturn-signer"},
        "rules": [
            {"apiGroups": ["keyturn.dev"], "resources": ["signingkeysets"], "resourceNames": [SET], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [keyturn::core::crd::internal_secret_name(SET)], "verbs": ["get", "list", "watch"]}
        ]
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "keyturn-signer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "keyturn-signer"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "keyturn-signer"}]
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    plane.run("client-cert", &["keyturn-signer"]);
    plane.dir.join("keyturn-signer.kubeconfig")
}

/// As a ServiceAccount with every right in namespace "workload" (and none elsewhere), creates
/// a SigningKeySet named like the cluster's and its internal Secret with a forged state whose
/// Active key is the tenant's. Returns that key's kid.
async fn tenant_forges(plane: &Plane, admin: &Client) -> String {
    use keyturn::core::keys::KeyPair;
    use keyturn::core::state::{KeyRecord, Sensitive, SetState};
    let path = plane.dir.join("tenant.kubeconfig");
    support::token_kubeconfig_for(admin, &plane.kubeconfig(), "workload", "tenant", &path).await;
    support::bind(
        admin,
        "workload",
        "tenant-admin",
        "ClusterRole",
        "admin",
        "workload",
        "tenant",
    )
    .await;
    support::allow(
        admin,
        "workload",
        "tenant-sets",
        "workload",
        "tenant",
        json!([
            {"apiGroups": ["keyturn.dev"], "resources": ["signingkeysets"], "verbs": ["*"]}
        ]),
    )
    .await;
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let tenant = Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let kp = KeyPair::generate(keyturn::core::crd::Algorithm::RS256, None).unwrap();
    let now = chrono::Utc::now();
    let state = SetState {
        keys: vec![KeyRecord {
            kid: kp.kid().into(),
            alg: kp.alg(),
            public_jwk: kp.public_jwk(),
            private_pem: Some(Sensitive::new(kp.to_pkcs8_pem())),
            created_at: now,
            published_at: Some(now),
            activated_at: Some(now),
            retired_at: None,
            manual: false,
            verify_until: None,
        }],
        ..SetState::new()
    };
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": keyturn::core::crd::internal_secret_name(SET)},
        "stringData": {"state.json": String::from_utf8(state.to_bytes()).unwrap()}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(tenant.clone(), "workload")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    support::try_create_set(
        &tenant,
        "workload",
        SET,
        json!({
            "algorithm": "RS256", "maxTokenLifetime": "10m",
            "rotation": {"interval": "1h", "prePublish": "5m", "overlap": "15m"}, "jwks": {}
        }),
    )
    .await
    .unwrap();
    // The tenant may not touch kube-system.
    let theirs: Api<SigningKeySet> = Api::namespaced(tenant, NS);
    match theirs.get(SET).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("the tenant reads kube-system's set: {other:?}"),
    }
    kp.kid().to_string()
}

/// Waits until a token can be issued again.
async fn wait_token(client: &Client) -> Duration {
    let started = Instant::now();
    support::wait_for(
        "a token from the API server again",
        Duration::from_secs(90),
        || async { token_request(client, "workload", "app", 600).await.ok() },
    )
    .await;
    started.elapsed()
}

/// A plane of the test's own with CRDs, namespace "workload" and its ServiceAccount "app".
async fn plane_with_workload(name: &str) -> (Plane, Client) {
    let plane = Plane::start(name);
    let client = plane.client().await;
    plane.install_crds(&client).await;
    let nsobj: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "workload"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &nsobj)
        .await
        .unwrap();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), "workload")
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    (plane, client)
}

/// keyturn signer first (it serves once it has the set's state, which must exist), then the
/// API server restarted to sign through it. Returns the signer and its kubeconfig.
async fn switch_to_signer(plane: &Plane, client: &Client) -> (Signer, PathBuf) {
    let signer_kubeconfig = signer_identity(plane, client).await;
    let signer = Signer::start(plane, signer_kubeconfig.clone());
    let sock = signer.socket.clone();
    support::wait_for("the signer's socket", Duration::from_secs(60), || {
        let sock = sock.clone();
        async move { std::fs::metadata(&sock).ok().map(|_| ()) }
    })
    .await;
    plane.run("use-signer", &[signer.socket.to_str().unwrap()]);
    let args = std::fs::read_to_string(plane.dir.join("kube-apiserver.cmd")).unwrap();
    assert!(
        args.contains("--service-account-signing-endpoint")
            && !args.contains("--service-account-signing-key-file"),
        "{args}"
    );
    (signer, signer_kubeconfig)
}

/// The rotation scenario: the migration from the plane's key file, three scheduled rotations,
/// the signer and the API server SIGKILLed mid-rotation, a manual rotation, and the token
/// issued before the first rotation verifying until it expires (about 11 minutes: the API
/// server's shortest token lifetime is 10), with the checker and the issuer running throughout.
#[tokio::test]
async fn the_api_server_signs_every_service_account_token_through_keyturn_across_rotations() {
    let (plane, client) = plane_with_workload("signer").await;

    // Before: the plane signs with its key file (--service-account-signing-key-file).
    let discovery = client
        .request_text(
            http::Request::get("/.well-known/openid-configuration")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let discovery: serde_json::Value = serde_json::from_str(&discovery).unwrap();
    ISSUER
        .set(discovery["issuer"].as_str().unwrap().to_string())
        .unwrap();
    let legacy = token_request(&client, "workload", "app", 3600)
        .await
        .unwrap();
    let legacy_kid = kid_of(&legacy);
    let legacy_jwks = oidc_jwks(&client).await.unwrap();
    verify_with_jwks(&legacy, &legacy_jwks).unwrap();

    // The migration: the key file's public key, from the cluster's own discovery with the kid
    // its tokens carry, published verification-only until the last such token has expired.
    let until = chrono::DateTime::from_timestamp(exp_of(&legacy) + 120, 0).unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "legacy-sa-keys", "annotations": {"keyturn.dev/verification-for": SET}},
        "data": {"jwks.json": String::from_utf8(legacy_jwks.clone()).unwrap()}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), NS);
    support::create_set(&client, NS, SET, json!({
        "algorithm": "RS256",
        "rotation": {"interval": INTERVAL, "prePublish": PRE_PUBLISH, "overlap": "12m"},
        "maxTokenLifetime": "10m",
        "jwks": {},
        "verificationKeys": [{"configMapName": "legacy-sa-keys", "key": "jwks.json", "until": until.to_rfc3339()}]
    }))
    .await;
    let mut operator = support::Operator::start_as("signer", NS, plane.kubeconfig(), &[]);
    support::wait_condition(&sets, SET, "Ready", "True", "KeysPublished").await;
    let (mut signer, _) = switch_to_signer(&plane, &client).await;

    // The key-file token still verifies through the API server (FetchKeys serves its key).
    assert!(
        review(&client, &legacy).await.unwrap().is_some(),
        "the key-file token after the switch"
    );
    let first = token_request(&client, "workload", "app", 600)
        .await
        .unwrap();
    assert_ne!(
        kid_of(&first),
        legacy_kid,
        "a token after the switch is signed by keyturn's key"
    );

    let shared = Arc::new(Mutex::new(Shared {
        jwks: Arc::new(oidc_jwks(&client).await.unwrap()),
        ..Shared::default()
    }));
    // A watch, not a Notify: a task busy with a request when the test ends still sees it.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let check = tokio::spawn(checker(
        client.clone(),
        shared.clone(),
        legacy.clone(),
        stop.clone(),
    ));
    let issue = tokio::spawn(issuer(
        plane.kubeconfig(),
        client.clone(),
        shared.clone(),
        stop.clone(),
    ));
    let started = Instant::now();

    // Three scheduled rotations.
    wait_kids(
        &shared,
        "three scheduled rotations",
        4,
        Duration::from_secs(240),
    )
    .await;
    // The token issued last before the first rotation: it must verify until it expires.
    let canary = {
        let kids = signing_kids(&shared);
        let s = shared.lock().unwrap();
        s.tokens
            .iter()
            .rev()
            .find(|t| t.kid == kids[0])
            .cloned()
            .unwrap()
    };
    eprintln!(
        "[{:>5.1}s] 3 rotations: kids {:?}",
        started.elapsed().as_secs_f64(),
        signing_kids(&shared)
    );

    // The signer crashes mid-rotation (a Pending key published) and restarts from its file.
    wait_pending(&sets).await;
    set_outage(&shared, true);
    signer.kill();
    signer.spawn();
    let back = wait_token(&client).await;
    set_outage(&shared, false);
    eprintln!(
        "[{:>5.1}s] signer SIGKILLed mid-rotation and restarted: tokens again after {back:?}",
        started.elapsed().as_secs_f64()
    );

    // The API server restarts mid-rotation.
    wait_pending(&sets).await;
    set_outage(&shared, true);
    plane.component("kill-component", "kube-apiserver");
    plane.component("start-component", "kube-apiserver");
    let back = wait_token(&client).await;
    set_outage(&shared, false);
    eprintln!(
        "[{:>5.1}s] kube-apiserver SIGKILLed mid-rotation and restarted: tokens again after {back:?}",
        started.elapsed().as_secs_f64()
    );

    // A manual rotation, with the schedule moved out of the way so that only it rotates.
    sets.patch(
        SET,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"rotation": {"interval": "24h"}}})),
    )
    .await
    .unwrap();
    let generation = sets.get(SET).await.unwrap().metadata.generation;
    support::wait_object(
        &sets,
        SET,
        // The operator's watches may still be in their backoff from the API server's restart.
        "the 24h interval observed",
        Duration::from_secs(120),
        move |o: Option<&SigningKeySet>| {
            o.and_then(|s| s.status.as_ref())
                .is_some_and(|st| st.observed_generation == generation)
        },
    )
    .await;
    let before_manual = signing_kids(&shared).len();
    support::rotate(&sets, SET, "manual-1").await;
    wait_kids(
        &shared,
        "the manual rotation",
        before_manual + 1,
        Duration::from_secs(120),
    )
    .await;
    assert_manual_key_signs(&client, signing_kids(&shared).last().unwrap()).await;
    eprintln!(
        "[{:>5.1}s] manual rotation: kids {:?}",
        started.elapsed().as_secs_f64(),
        signing_kids(&shared)
    );

    // The token issued just before the first rotation keeps verifying until it expires, its
    // key retired long before: the checker polls until then.
    let wait = (canary.exp - now_secs() + 2).max(0) as u64;
    eprintln!(
        "[{:>5.1}s] waiting {wait}s for token #{} (kid {}) to expire",
        started.elapsed().as_secs_f64(),
        canary.n,
        canary.kid
    );
    let sh = shared.clone();
    support::wait_for(
        "the first rotation's last token to expire",
        Duration::from_secs(wait + 30),
        || {
            let sh = sh.clone();
            let exp = canary.exp;
            async move { (now_secs() > exp && sh.lock().unwrap().polls > 0).then_some(()) }
        },
    )
    .await;
    stop_tx.send_replace(true);
    check.await.unwrap();
    issue.await.unwrap();

    {
        let s = shared.lock().unwrap();
        let kids = {
            let mut k: Vec<String> = Vec::new();
            for t in &s.tokens {
                if k.last() != Some(&t.kid) {
                    k.push(t.kid.clone());
                }
            }
            k
        };
        eprintln!(
            "{} tokens issued ({} by kubectl), {} JWKS polls (longest gap {:?}), {} TokenReviews accepted, {} kids {:?}; {} requests failed during the outages",
            s.tokens.len(),
            s.tokens
                .iter()
                .filter(|t| t.how == "kubectl create token")
                .count(),
            s.polls,
            s.max_gap,
            s.reviews,
            kids.len(),
            kids,
            s.outage_errors.len()
        );
        assert!(
            s.failures.is_empty(),
            "{} failures:\n{}",
            s.failures.len(),
            s.failures.join("\n")
        );
        assert!(
            kids.len() >= 5,
            "3 scheduled rotations and a manual one: {kids:?}"
        );
        assert!(
            !kids.contains(&legacy_kid),
            "no token after the switch is signed by the key file"
        );
        assert!(s.tokens.iter().any(|t| t.how == "kubectl create token"));
        // Every instant: no two polls more than 10 s apart outside the outages (prePublish is 15 s,
        // so each step of every rotation was seen), each with at least one TokenReview.
        assert!(
            s.max_gap < Duration::from_secs(10) && s.polls > 300 && s.reviews > s.polls,
            "the checker ran: {} polls, longest gap {:?}, {} reviews",
            s.polls,
            s.max_gap,
            s.reviews
        );
        // The canary's key was retired (not signing) and still served when the token expired.
        assert!(kids.iter().position(|k| *k == canary.kid) < Some(kids.len() - 1));
    }

    let metrics = signer.metrics();
    assert!(
        metrics.contains("keyturn_signer_requests_total{method=\"Sign\",code=\"Ok\"}"),
        "{metrics}"
    );
    operator.assert_running();
}

/// The key that signs now is the manual rotation's (its record says so), not the schedule's.
async fn assert_manual_key_signs(client: &Client, newest_kid: &str) {
    let state = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS)
        .get(&keyturn::core::crd::internal_secret_name(SET))
        .await
        .unwrap();
    let state =
        keyturn::core::state::SetState::from_bytes(&state.data.unwrap()["state.json"].0).unwrap();
    assert_eq!(state.rotate_token.as_deref(), Some("manual-1"));
    let rec = state.keys.iter().find(|r| r.kid == newest_kid).unwrap();
    assert!(
        rec.manual,
        "the key {newest_kid} activated by the manual rotation"
    );
}

/// The guard scenario, on a plane of its own beside the rotation scenario (a few minutes, no
/// token has to expire): a tenant's forged set and state in its own namespace never reach the
/// signer; the signer down refuses tokens while verification goes on; its log and metrics hold
/// no private key; its stolen credential reads nothing else; an older state put back (a
/// restored backup) is refused and the newer key keeps signing.
#[tokio::test]
async fn the_signer_serves_only_its_own_set_and_never_an_older_state() {
    let (plane, client) = plane_with_workload("signer-guard").await;
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), NS);
    support::create_set(
        &client,
        NS,
        SET,
        json!({
            "algorithm": "RS256",
            "rotation": {"interval": "24h", "prePublish": PRE_PUBLISH, "overlap": "12m"},
            "maxTokenLifetime": "10m",
            "jwks": {}
        }),
    )
    .await;
    let mut operator = support::Operator::start_as("signer-guard", NS, plane.kubeconfig(), &[]);
    support::wait_condition(&sets, SET, "Ready", "True", "KeysPublished").await;
    // The internal Secret's first state, base64: an old version someone could restore later.
    let first_state = {
        use base64::Engine as _;
        let s = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS)
            .get(&keyturn::core::crd::internal_secret_name(SET))
            .await
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(&s.data.unwrap()["state.json"].0)
    };
    let (mut signer, signer_kubeconfig) = switch_to_signer(&plane, &client).await;
    let first = token_request(&client, "workload", "app", 600)
        .await
        .unwrap();
    let started = Instant::now();

    // A tenant who owns namespace "workload" forges the signer's objects there: a set of the
    // same name and an internal Secret holding its own Active key. The signer reads kube-system
    // only; after the manual rotation below it must serve neither the key nor its kid.
    let forged_kid = tenant_forges(&plane, &client).await;
    support::rotate(&sets, SET, "manual-1").await;
    let first_kid = kid_of(&first);
    let c = client.clone();
    let newest = support::wait_for(
        "a token signed by the manual rotation's key",
        Duration::from_secs(120),
        || {
            let (c, first_kid) = (c.clone(), first_kid.clone());
            async move {
                let t = token_request(&c, "workload", "app", 600).await.ok()?;
                (kid_of(&t) != first_kid).then_some(kid_of(&t))
            }
        },
    )
    .await;
    assert_manual_key_signs(&client, &newest).await;
    assert_ne!(newest, forged_kid);
    let discovery_now = String::from_utf8(oidc_jwks(&client).await.unwrap()).unwrap();
    assert!(
        !discovery_now.contains(&forged_kid),
        "the tenant's forged key reached the cluster's discovery"
    );

    // The signer down: how the API server answers a token request, and that it recovers.
    let status = signer.terminate();
    assert!(
        status.success(),
        "keyturn signer exits cleanly on SIGTERM: {status:?}"
    );
    // `kubectl create token` as a user runs it (no client timeout), bounded at 3 minutes here.
    let t = Instant::now();
    let bin = std::env::var("KEYTURN_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let kc = plane.kubeconfig();
    let down = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["180", &bin, "create", "token", "app", "-n", "workload"])
            .env("KUBECONFIG", kc)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&down.stderr).trim().to_string();
    eprintln!(
        "[{:>5.1}s] signer down: kubectl create token exited {:?} after {took:?}: {err}",
        started.elapsed().as_secs_f64(),
        down.status.code()
    );
    assert!(!down.status.success(), "a token while the signer is down");
    assert!(down.stdout.is_empty(), "no token while the signer is down");
    // Verification does not need the signer: a token it signed earlier still passes.
    assert!(review(&client, &first).await.unwrap().is_some());
    signer.spawn();
    let back = wait_token(&client).await;
    eprintln!(
        "[{:>5.1}s] signer back: tokens again after {back:?}",
        started.elapsed().as_secs_f64()
    );

    // The signer's metrics counted the calls; its log and metrics hold no private key.
    let metrics = signer.metrics();
    assert!(
        metrics.contains("keyturn_signer_requests_total{method=\"Sign\",code=\"Ok\"}"),
        "{metrics}"
    );
    let state = std::fs::read_to_string(plane.dir.join("keyturn-signer-state.json")).unwrap();
    assert!(
        state.contains("PRIVATE KEY"),
        "the state file holds the keys"
    );
    let log = std::fs::read_to_string(&signer.log).unwrap();
    for text in [&log, &metrics] {
        assert!(
            !text.contains("PRIVATE KEY"),
            "private key material in the signer's output"
        );
    }
    operator.assert_running();

    // The signer's credential, if stolen, reads the one set and its Secret and nothing else.
    let kc = kube::config::Kubeconfig::read_from(&signer_kubeconfig).unwrap();
    let as_signer = Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("the signer's identity {what}: {other:?}"),
    };
    let their_secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(as_signer.clone(), NS);
    forbidden(
        their_secrets.list(&Default::default()).await.map(|_| ()),
        "lists kube-system's Secrets",
    );
    forbidden(
        their_secrets.get(SET).await.map(|_| ()),
        "reads another Secret",
    );
    forbidden(
        Api::<ConfigMap>::namespaced(as_signer.clone(), NS)
            .get("legacy-sa-keys")
            .await
            .map(|_| ()),
        "reads a ConfigMap",
    );
    forbidden(
        their_secrets
            .patch(
                &keyturn::core::crd::internal_secret_name(SET),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await
            .map(|_| ()),
        "writes the internal Secret",
    );
    forbidden(
        Api::<SigningKeySet>::namespaced(as_signer, "workload")
            .get(SET)
            .await
            .map(|_| ()),
        "reads a set elsewhere",
    );

    // Someone who may write kube-system's Secrets puts an older state back (a restored backup):
    // the signer refuses it and keeps signing with the newer key.
    operator.kill();
    let internal: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    let refused_before = metric(&signer.metrics(), "keyturn_signer_refused_states_total");
    let old_state = first_state.clone();
    internal
        .patch(
            &keyturn::core::crd::internal_secret_name(SET),
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"state.json": old_state}})),
        )
        .await
        .unwrap();
    let sg = &signer;
    support::wait_for(
        "the signer to refuse the older state",
        Duration::from_secs(30),
        || async move {
            (metric(&sg.metrics(), "keyturn_signer_refused_states_total") > refused_before)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        kid_of(
            &token_request(&client, "workload", "app", 600)
                .await
                .unwrap()
        ),
        newest
    );
}

/// The value of one unlabelled metric.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}
