//! The operator's source of truth: every key's record, kept in the internal Secret.
//!
//! Status and ConfigMaps are derived from this state (I7); the signing Secret is derived
//! from its Active record. Private material lives only in [`Sensitive`] values, whose
//! `Debug` redacts.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::core::crd::Algorithm;

/// Data key of the state document in the internal Secret.
pub const STATE_KEY: &str = "state.json";
/// Version of the state document layout.
pub const STATE_VERSION: u32 = 1;

/// A secret string (PKCS#8 PEM). `Debug` redacts; the memory is wiped on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sensitive(Zeroizing<String>);

impl Sensitive {
    /// Wraps a secret string.
    pub fn new(s: Zeroizing<String>) -> Self {
        Sensitive(s)
    }
    /// The secret text, for writing into an owned Secret only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Lifecycle state of a key, derived from its timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyState {
    /// Generated and stored; published or about to be; not signing.
    Pending,
    /// The one signer.
    Active,
    /// Stopped signing; published for verification until removal.
    Retired,
    /// A previous issuer's public key (`spec.verificationKeys`): published until its time,
    /// never signs.
    Verification,
}

impl KeyState {
    /// Every state, in lifecycle order.
    pub const ALL: [KeyState; 4] = [
        KeyState::Pending,
        KeyState::Active,
        KeyState::Retired,
        KeyState::Verification,
    ];

    /// Name as shown in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "Pending",
            KeyState::Active => "Active",
            KeyState::Retired => "Retired",
            KeyState::Verification => "VerificationOnly",
        }
    }
}

/// One key and its lifecycle times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// JWS algorithm.
    pub alg: Algorithm,
    /// Public JWK exactly as published.
    pub public_jwk: Value,
    /// PKCS#8 PEM; present for Pending and Active keys, destroyed at retirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_pem: Option<Sensitive>,
    /// When the key was generated and stored.
    pub created_at: DateTime<Utc>,
    /// When the operator saw the key in the published JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<DateTime<Utc>>,
    /// When the key started signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<DateTime<Utc>>,
    /// When the key stopped signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<DateTime<Utc>>,
    /// Manual rotation: activate `prePublish` after publication instead of on schedule.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
    /// A verification-only key (`spec.verificationKeys`): when it leaves the JWKS. Such a
    /// record has no private key and never signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_until: Option<DateTime<Utc>>,
}

impl KeyRecord {
    /// The lifecycle state.
    pub fn state(&self) -> KeyState {
        if self.verify_until.is_some() {
            return KeyState::Verification;
        }
        match (self.activated_at, self.retired_at) {
            (_, Some(_)) => KeyState::Retired,
            (Some(_), None) => KeyState::Active,
            (None, None) => KeyState::Pending,
        }
    }
}

/// Everything the operator knows about one SigningKeySet's keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetState {
    /// Layout version.
    pub version: u32,
    /// Every key not yet removed, in creation order.
    pub keys: Vec<KeyRecord>,
    /// The `keyturn.dev/rotate` annotation value last acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_token: Option<String>,
    /// The set's `metadata.generation` whose `spec.verificationKeys` the verification-only
    /// records were read for; the sources are read again only for another generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_generation: Option<i64>,
}

/// Only the verification generation of a stored state, read cheaply (no key is parsed).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationOnly {
    #[serde(default)]
    verification_generation: Option<i64>,
}

/// The generation a stored state read its verification keys for (`None` when never, or when
/// the bytes do not parse: the full read reports that).
pub fn verification_generation(bytes: &[u8]) -> Option<i64> {
    serde_json::from_slice::<GenerationOnly>(bytes)
        .ok()?
        .verification_generation
}

/// Why the internal Secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `state.json` is missing.
    #[error("internal Secret has no {STATE_KEY}")]
    Missing,
    /// The document does not parse; the parser's position, never the content, is reported.
    #[error("internal Secret {STATE_KEY} is not valid: {0}")]
    Parse(String),
    /// The layout version is unknown.
    #[error("internal Secret layout version {0} is not supported by this keyturn")]
    Version(u32),
    /// A record is internally inconsistent.
    #[error("internal Secret key {kid}: {why}")]
    Record {
        /// The record's kid (public).
        kid: String,
        /// What is wrong.
        why: String,
    },
}

impl SetState {
    /// An empty state.
    pub fn new() -> Self {
        SetState {
            version: STATE_VERSION,
            keys: Vec::new(),
            rotate_token: None,
            verification_generation: None,
        }
    }

    /// Deterministic bytes for the internal Secret.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("state serializes")
    }

    /// The same document without any private key: what readers that never sign are given
    /// (the internal Secret's public-state annotation, read by the HTTP endpoint through a
    /// metadata-only watch); [`PublicState::from_bytes`] reads it.
    pub fn public_bytes(&self) -> Vec<u8> {
        let mut public = self.clone();
        for r in &mut public.keys {
            r.private_pem = None;
        }
        public.to_bytes()
    }

    /// Parses and checks the internal Secret's document: every record's private key must
    /// parse, match its kid and algorithm, and agree with the public JWK.
    pub fn from_bytes(bytes: &[u8]) -> Result<SetState, StateError> {
        parse(bytes, Mode::Full)
    }
}

/// How much of a stored state a reader takes: all of it (the operator), or its public part
/// (readers that never sign: every private key dropped and wiped as it is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Full,
    Public,
}

/// The one parser of the state document, for both readers: the same syntax errors (position
/// and category, never content), the same layout version, the same rules for every record's
/// public part; the private keys are checked in [`Mode::Full`] and dropped in
/// [`Mode::Public`].
fn parse(bytes: &[u8], mode: Mode) -> Result<SetState, StateError> {
    let mut state: SetState = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json errors quote no input, only line/column and a category.
        StateError::Parse(format!(
            "{} at line {} column {}",
            classify(&e),
            e.line(),
            e.column()
        ))
    })?;
    if state.version != STATE_VERSION {
        return Err(StateError::Version(state.version));
    }
    for r in &mut state.keys {
        if mode == Mode::Public {
            r.private_pem = None;
        }
        check_record(r, mode)?;
    }
    Ok(state)
}

/// The rules one stored record must meet; the private key's only in [`Mode::Full`].
fn check_record(r: &KeyRecord, mode: Mode) -> Result<(), StateError> {
    let bad = |why: &str| StateError::Record {
        kid: r.kid.clone(),
        why: why.into(),
    };
    let rules = match r.state() {
        KeyState::Verification => crate::core::jwks::validate_key,
        _ => crate::core::jwks::validate_own_key,
    };
    rules(&r.public_jwk).map_err(|e| bad(&format!("public JWK: {e}")))?;
    if r.public_jwk.get("kid").and_then(Value::as_str) != Some(r.kid.as_str()) {
        return Err(bad("public JWK kid differs from record kid"));
    }
    if r.public_jwk.get("alg").and_then(Value::as_str) != Some(r.alg.as_str()) {
        return Err(bad("public JWK alg differs from record alg"));
    }
    if r.state() == KeyState::Verification
        && (r.private_pem.is_some() || r.activated_at.is_some() || r.retired_at.is_some())
    {
        return Err(bad("a verification-only key has a private key or signed"));
    }
    if mode == Mode::Full {
        match (&r.private_pem, r.state()) {
            (Some(pem), _) => {
                let kp = crate::core::keys::KeyPair::from_pkcs8_pem(r.alg, pem.expose())
                    .map_err(|e| bad(&e.to_string()))?;
                if kp.kid() != r.kid {
                    return Err(bad("private key does not match kid"));
                }
            }
            (None, KeyState::Pending | KeyState::Active) => {
                return Err(bad("private key missing for a Pending or Active key"));
            }
            (None, KeyState::Retired | KeyState::Verification) => {}
        }
    }
    Ok(())
}

/// The public part of a stored state, kept compact by readers that serve keys and never sign
/// (the HTTP endpoint holds one per set): the records without private keys, and each public
/// JWK as the bytes it is published as rather than a parsed tree.
#[derive(Clone, Debug, PartialEq)]
pub struct PublicState {
    /// Every record, its private key dropped and its `public_jwk` left `null`: the JWK is in
    /// `jwks`, at the same index.
    pub state: SetState,
    /// Each record's public JWK, serialized by [`crate::core::jwks::serialize_key`].
    pub jwks: Vec<Box<str>>,
}

impl PublicState {
    /// Parses a stored state's public part: every record without its private key (dropped
    /// and wiped here), each public JWK checked and then kept serialized.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicState, StateError> {
        let mut state = parse(bytes, Mode::Public)?;
        let jwks = state
            .keys
            .iter_mut()
            .map(|r| crate::core::jwks::serialize_key(&r.public_jwk.take()).into_boxed_str())
            .collect();
        // Held for as long as the set lives, once per set: no spare capacity.
        state.keys.shrink_to_fit();
        Ok(PublicState { state, jwks })
    }

    /// The serialized public JWK of `record`, a record of this state; `None` for any other.
    pub fn jwk(&self, record: &KeyRecord) -> Option<&str> {
        let i = self
            .state
            .keys
            .iter()
            .position(|k| std::ptr::eq(k, record))?;
        self.jwks.get(i).map(|j| &**j)
    }
}

impl Default for SetState {
    fn default() -> Self {
        Self::new()
    }
}

fn classify(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "I/O error",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected data",
        Category::Eof => "truncated document",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::crd::Algorithm;
    use crate::core::keys::KeyPair;

    fn record(kp: &KeyPair, active: bool) -> KeyRecord {
        let t = chrono::Utc::now();
        KeyRecord {
            kid: kp.kid().into(),
            alg: kp.alg(),
            public_jwk: kp.public_jwk(),
            private_pem: Some(Sensitive::new(kp.to_pkcs8_pem())),
            created_at: t,
            published_at: Some(t),
            activated_at: active.then_some(t),
            retired_at: None,
            manual: false,
            verify_until: None,
        }
    }

    fn state(records: Vec<KeyRecord>) -> SetState {
        let mut s = SetState::new();
        s.keys = records;
        s
    }

    /// Both readers apply the same rules to a record's public part: a public JWK whose alg
    /// is not the record's (an RSA key published as RS256, recorded as PS256: each valid for
    /// the key) is refused by each (the public reader used to let it through).
    #[test]
    fn both_readers_refuse_a_record_whose_jwk_alg_differs() {
        let kp = KeyPair::generate(Algorithm::RS256, Some(2048)).unwrap();
        let mut r = record(&kp, true);
        r.alg = Algorithm::PS256;
        let s = state(vec![r]);
        for e in [
            SetState::from_bytes(&s.to_bytes()).unwrap_err(),
            PublicState::from_bytes(&s.public_bytes()).unwrap_err(),
        ] {
            assert!(e.to_string().contains("alg differs"), "{e}");
        }
    }

    /// The public reader never keeps a private key, even from a full document, and needs none;
    /// the full reader requires one for a key that may sign.
    #[test]
    fn the_public_reader_drops_private_keys_and_the_full_one_requires_them() {
        let kp = KeyPair::generate(Algorithm::EdDSA, None).unwrap();
        let s = state(vec![record(&kp, true)]);
        let public = PublicState::from_bytes(&s.to_bytes()).unwrap();
        assert!(public.state.keys.iter().all(|r| r.private_pem.is_none()));
        assert_eq!(public.jwks.len(), 1);
        assert!(public.jwks[0].contains(kp.kid()));
        assert!(!format!("{public:?}").contains("PRIVATE"));
        let e = SetState::from_bytes(&s.public_bytes()).unwrap_err();
        assert!(e.to_string().contains("private key missing"), "{e}");
        assert_eq!(SetState::from_bytes(&s.to_bytes()).unwrap(), s);
    }

    /// Both readers report a syntax error by position and category, never by content, and
    /// refuse an unknown layout.
    #[test]
    fn both_readers_report_errors_alike_and_refuse_other_layouts() {
        let kp = KeyPair::generate(Algorithm::ES256, None).unwrap();
        let s = state(vec![record(&kp, true)]);
        let mut doc = serde_json::to_value(&s).unwrap();
        doc["version"] = serde_json::json!(kp.to_pkcs8_pem().as_str());
        let bytes = serde_json::to_vec(&doc).unwrap();
        let full = SetState::from_bytes(&bytes).unwrap_err().to_string();
        let public = PublicState::from_bytes(&bytes).unwrap_err().to_string();
        assert_eq!(full, public);
        assert!(full.contains("unexpected data at line 1 column"), "{full}");
        assert!(!full.contains("PRIVATE"), "{full}");
        doc["version"] = serde_json::json!(STATE_VERSION + 1);
        let newer = serde_json::to_vec(&doc).unwrap();
        assert!(matches!(
            SetState::from_bytes(&newer),
            Err(StateError::Version(_))
        ));
        assert!(matches!(
            PublicState::from_bytes(&newer),
            Err(StateError::Version(_))
        ));
    }

    /// A record whose private key is another key's is refused by the full reader.
    #[test]
    fn a_private_key_that_is_not_the_records_is_refused() {
        let (a, b) = (
            KeyPair::generate(Algorithm::ES256, None).unwrap(),
            KeyPair::generate(Algorithm::ES256, None).unwrap(),
        );
        let mut r = record(&a, true);
        r.private_pem = Some(Sensitive::new(b.to_pkcs8_pem()));
        let e = SetState::from_bytes(&state(vec![r]).to_bytes()).unwrap_err();
        assert!(e.to_string().contains("does not match kid"), "{e}");
    }
}
