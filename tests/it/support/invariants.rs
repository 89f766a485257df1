//! An independent invariant checker: it reads only the objects workloads read (the JWKS
//! ConfigMap and the signing Secret), never the operator's status, and reports every I1 and
//! I2 violation, and every token that an independent JWT library fails to verify.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::json;

use keyturn::core::crd::Algorithm;

pub fn jwks_of(cm: &ConfigMap) -> Vec<u8> {
    cm.data
        .as_ref()
        .and_then(|d| d.get("jwks.json"))
        .unwrap_or_else(|| panic!("no jwks.json in ConfigMap {cm:?}"))
        .as_bytes()
        .to_vec()
}

pub fn kids_of(cm: &ConfigMap) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_slice(&jwks_of(cm)).expect("the JWKS is JSON");
    doc["keys"]
        .as_array()
        .expect("a JWKS has keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("every key has a kid").to_string())
        .collect()
}

/// The JWKS rules a verifier relies on, checked without keyturn's own code (keyturn's
/// `jwks::validate` is what is under test): JSON with a `keys` array, each key a public JWK
/// (no private member) with a unique `kid`, an `alg` and `use: sig`, that jsonwebtoken turns
/// into a verification key.
pub fn check_jwks(bytes: &[u8]) -> Result<(), String> {
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc["keys"].as_array().ok_or("no keys array")?;
    let mut kids = std::collections::BTreeSet::new();
    for k in keys {
        let o = k.as_object().ok_or("a key that is not an object")?;
        let kid = o
            .get("kid")
            .and_then(|v| v.as_str())
            .ok_or("a key without kid")?;
        if !kids.insert(kid.to_string()) {
            return Err(format!("kid {kid} twice"));
        }
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            if o.contains_key(private) {
                return Err(format!("{kid} carries the private member {private}"));
            }
        }
        if o.get("use").and_then(|v| v.as_str()) != Some("sig") || !o.contains_key("alg") {
            return Err(format!("{kid} lacks use=sig or alg"));
        }
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(k.clone()).map_err(|e| format!("{kid}: {e}"))?;
        jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| format!("{kid}: {e}"))?;
    }
    Ok(())
}

pub fn secret_str(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

pub fn jwt_alg(alg: Algorithm) -> jsonwebtoken::Algorithm {
    use jsonwebtoken::Algorithm as J;
    match alg {
        Algorithm::RS256 => J::RS256,
        Algorithm::RS384 => J::RS384,
        Algorithm::RS512 => J::RS512,
        Algorithm::PS256 => J::PS256,
        Algorithm::PS384 => J::PS384,
        Algorithm::PS512 => J::PS512,
        Algorithm::ES256 => J::ES256,
        Algorithm::ES384 => J::ES384,
        Algorithm::EdDSA => J::EdDSA,
    }
}

/// Signs a token with the signing Secret's `private.pem`, as an issuer would.
pub fn sign_with_secret(s: &Secret) -> (String, String) {
    let alg = Algorithm::parse(&secret_str(s, "alg")).unwrap();
    let kid = secret_str(s, "kid");
    let pem = secret_str(s, "private.pem");
    let key = match alg {
        a if a.is_rsa() => EncodingKey::from_rsa_pem(pem.as_bytes()),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => EncodingKey::from_ed_pem(pem.as_bytes()),
    }
    .expect("issuer can load private.pem");
    let mut header = Header::new(jwt_alg(alg));
    header.kid = Some(kid.clone());
    let exp = chrono::Utc::now().timestamp() + 3600;
    let token =
        jsonwebtoken::encode(&header, &json!({"sub": "test", "exp": exp}), &key).expect("sign");
    (token, kid)
}

/// Verifies a token against a JWKS document, as a verifier would: find the key by kid.
pub fn verify_with_jwks(token: &str, jwks: &[u8]) -> Result<(), String> {
    let set: JwkSet =
        serde_json::from_slice(jwks).map_err(|e| format!("JWKS does not parse: {e}"))?;
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("token has no kid")?;
    let jwk = set.find(&kid).ok_or(format!("kid {kid} not in JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK unusable: {e}"))?;
    let mut v = Validation::new(header.alg);
    v.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One observed write to a set's ConfigMap or signing Secret, ordered by the etcd revision
/// the API server gave it (resourceVersion), so that two watch streams need no clock.
#[derive(Clone)]
pub enum Seen {
    Jwks {
        rv: u64,
        at: Instant,
        kids: Vec<String>,
        bytes: Vec<u8>,
    },
    Signer {
        rv: u64,
        at: Instant,
        kid: String,
        token: String,
    },
}

impl Seen {
    /// The resourceVersion (etcd revision) of the write.
    pub fn rv(&self) -> u64 {
        match self {
            Seen::Jwks { rv, .. } | Seen::Signer { rv, .. } => *rv,
        }
    }
}

/// Watch-delivery jitter of arrival times on loopback. Ordering comes from resourceVersions;
/// only the durations (prePublish, overlap) are measured with arrival instants, which the
/// API server's watch cache delivers within milliseconds. 300 ms is 10% of the 3 s prePublish.
pub const JITTER: Duration = Duration::from_millis(300);

/// Gaps between consecutive activations (the signing Secret's kid changing), in revision
/// order: each at least the interval when no rotation is duplicated.
pub fn activation_gaps(seen: &[Seen]) -> Vec<Duration> {
    let mut s: Vec<(u64, Instant, &str)> = seen
        .iter()
        .filter_map(|e| match e {
            Seen::Signer { rv, at, kid, .. } => Some((*rv, *at, kid.as_str())),
            Seen::Jwks { .. } => None,
        })
        .collect();
    s.sort_by_key(|x| x.0);
    s.dedup_by(|next, prev| next.2 == prev.2);
    s.windows(2)
        .map(|w| w[1].1.saturating_duration_since(w[0].1))
        .collect()
}

/// Checks I1 and I2 and token verification over one set's observed history.
pub fn check_history(
    mut seen: Vec<Seen>,
    pre: Duration,
    overlap: Duration,
) -> (Vec<String>, usize, Vec<String>) {
    seen.sort_by_key(Seen::rv);
    let mut v = vec![];
    let mut published: Vec<String> = vec![];
    let mut jwks: Vec<u8> = vec![];
    let mut first_published: BTreeMap<String, Instant> = BTreeMap::new();
    let mut signer: Option<String> = None;
    let mut signers: Vec<String> = vec![];
    let mut stopped: BTreeMap<String, Instant> = BTreeMap::new();
    let mut tokens: Vec<(String, String)> = vec![];
    let mut verified = 0;
    let t0 = seen
        .iter()
        .map(|e| match e {
            Seen::Jwks { at, .. } | Seen::Signer { at, .. } => *at,
        })
        .min();
    let mut timeline: Vec<String> = vec![];
    for ev in seen {
        let before = v.len();
        let line = match &ev {
            Seen::Jwks { rv, at, kids, .. } => format!(
                "  +{:.3}s rv {rv}: JWKS [{}]",
                (*at - t0.unwrap()).as_secs_f64(),
                kids.iter().map(|k| &k[..8]).collect::<Vec<_>>().join(", ")
            ),
            Seen::Signer { rv, at, kid, .. } => {
                format!(
                    "  +{:.3}s rv {rv}: signer {}",
                    (*at - t0.unwrap()).as_secs_f64(),
                    &kid[..8]
                )
            }
        };
        timeline.push(line);
        match ev {
            Seen::Jwks {
                at, kids, bytes, ..
            } => {
                if let Err(e) = check_jwks(&bytes) {
                    v.push(format!("I3/JWKS rules: {e}"));
                }
                for k in &kids {
                    first_published.entry(k.clone()).or_insert(at);
                }
                for gone in published.iter().filter(|k| !kids.contains(k)) {
                    match stopped.get(gone) {
                        Some(stop) if at + JITTER >= *stop + overlap => {}
                        Some(stop) => v.push(format!(
                            "I2: {gone} removed {:?} after it stopped signing",
                            at - *stop
                        )),
                        None => v.push(format!("I2: {gone} removed but it never stopped signing")),
                    }
                }
                if let Some(s) = &signer
                    && !kids.contains(s)
                {
                    v.push(format!("I1: JWKS lost the signer {s}"));
                }
                for (token, kid) in &tokens {
                    if kids.contains(kid)
                        && let Err(e) = verify_with_jwks(token, &bytes)
                    {
                        v.push(format!("token of {kid} fails against a later JWKS: {e}"));
                    }
                }
                published = kids;
                jwks = bytes;
            }
            Seen::Signer { at, kid, token, .. } => {
                if signer.as_deref() == Some(kid.as_str()) {
                    continue;
                }
                match first_published.get(&kid) {
                    None => v.push(format!("I1: {kid} signs but was never published before")),
                    Some(p) if !signers.is_empty() && at + JITTER < *p + pre => {
                        v.push(format!("I1: {kid} signs {:?} after publication", at - *p))
                    }
                    _ => {}
                }
                if !published.contains(&kid) {
                    v.push(format!("I1: {kid} signs but is not in the current JWKS"));
                }
                match verify_with_jwks(&token, &jwks) {
                    Ok(()) => verified += 1,
                    Err(e) => v.push(format!("token of new signer {kid} fails: {e}")),
                }
                if let Some(prev) = signer.replace(kid.clone()) {
                    stopped.insert(prev, at);
                }
                signers.push(kid.clone());
                tokens.push((token, kid));
            }
        }
        // Each violation carries the timeline around it.
        for msg in v.iter_mut().skip(before) {
            let from = timeline.len().saturating_sub(6);
            msg.push_str(&format!("\n{}", timeline[from..].join("\n")));
        }
    }
    (v, verified, signers)
}

pub fn rv_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .unwrap()
        .parse()
        .expect("etcd3 resourceVersions are revisions")
}

/// One observed write: the set, the namespace of a JWKS copy (`None` for the signing
/// Secret), and what was seen.
pub type Observation = (String, Option<String>, Seen);

/// Watches the JWKS ConfigMaps `cms_cfg` selects and the signing Secrets in `secrets`.
/// Returns once both watches have listed, so every later write is in the stream.
pub async fn observe(
    cms: kube::Api<ConfigMap>,
    cms_cfg: kube::runtime::watcher::Config,
    secrets: kube::Api<Secret>,
) -> futures::stream::BoxStream<'static, Observation> {
    use futures::{StreamExt, TryStreamExt};
    use kube::ResourceExt;
    use kube::runtime::watcher::{self, Event};
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=keyturn");
    let mut events = futures::stream::select(
        watcher::watcher(cms, cms_cfg)
            .map_ok(either::Either::Left)
            .boxed(),
        watcher::watcher(secrets, owned)
            .map_ok(either::Either::Right)
            .boxed(),
    );
    let mut listed = 0;
    while listed < 2 {
        if let Some(Ok(
            either::Either::Left(Event::InitDone) | either::Either::Right(Event::InitDone),
        )) = events.next().await
        {
            listed += 1;
        }
    }
    events
        .filter_map(|ev| async move {
            let at = Instant::now();
            match ev {
                Ok(either::Either::Left(Event::Apply(cm))) => {
                    let set = cm.labels()["keyturn.dev/signing-key-set"].clone();
                    let seen = Seen::Jwks {
                        rv: rv_of(&cm.metadata),
                        at,
                        kids: kids_of(&cm),
                        bytes: jwks_of(&cm),
                    };
                    Some((set, cm.namespace(), seen))
                }
                Ok(either::Either::Right(Event::Apply(s)))
                    if !s.name_any().ends_with("-keyturn-keys") =>
                {
                    let set = s.labels()["keyturn.dev/signing-key-set"].clone();
                    let (token, kid) = sign_with_secret(&s);
                    Some((
                        set,
                        None,
                        Seen::Signer {
                            rv: rv_of(&s.metadata),
                            at,
                            kid,
                            token,
                        },
                    ))
                }
                _ => None,
            }
        })
        .boxed()
}
