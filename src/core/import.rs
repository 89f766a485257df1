//! Keys from outside keyturn: a private key a set takes as its first key (`spec.import`), and
//! the public keys of a previous issuer published beside keyturn's own for a while
//! (`spec.verificationKeys`).
//!
//! Both are read in every form issuers keep keys in (PEM: PKCS#8, PKCS#1, SEC1, SPKI; JWK and
//! JWKS) and come out in the one encoding keyturn publishes, so the JWKS rules hold for them
//! as for keyturn's own keys. Nothing here quotes key bytes: errors name the form, the family
//! and the rule, never the content.

use ed25519_dalek::pkcs8::DecodePublicKey as _;
use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::core::crd::Algorithm;
use crate::core::jwks::thumbprint;
use crate::core::keys::{Inner, KeyPair, Public, public_members, public_of};

/// Why a private key could not be imported. Messages never contain key bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    /// Neither PEM nor a private JWK.
    #[error(
        "is neither a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) nor a private JWK (JSON with \"d\")"
    )]
    NotAKey,
    /// An encrypted PEM.
    #[error(
        "is an encrypted private key; keyturn imports unencrypted keys only (decrypt it with `openssl pkey`)"
    )]
    Encrypted,
    /// A PEM whose label is not a private key keyturn reads (the label is not quoted: a
    /// refusal never repeats what the source holds).
    #[error(
        "holds a PEM block that is not a private key keyturn reads (PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY)"
    )]
    Label,
    /// More than one key.
    #[error("holds more than one key; import one key per set")]
    Several,
    /// The key's family does not fit `spec.algorithm`.
    #[error("holds {found} key; spec.algorithm {alg} needs {need}")]
    WrongFamily {
        /// What the key is.
        found: String,
        /// The set's algorithm.
        alg: Algorithm,
        /// What the algorithm needs.
        need: &'static str,
    },
    /// The JWK's `alg` differs from the set's (not quoted).
    #[error("its JWK alg differs from spec.algorithm {alg}")]
    AlgMismatch {
        /// The set's algorithm.
        alg: Algorithm,
    },
    /// A kid was given and it is not the key's thumbprint.
    #[error(
        "the kid given in {given_in} is not the key's RFC 7638 thumbprint {thumbprint}; keyturn's kids are thumbprints (publish the old kid as a verification key if tokens carry it)"
    )]
    KidMismatch {
        /// Where the kid was given.
        given_in: &'static str,
        /// The key's thumbprint.
        thumbprint: String,
    },
    /// The key does not parse or breaks a rule (size, consistency).
    #[error("{0}")]
    Invalid(String),
}

/// Names what `alg` needs, for messages.
fn need(alg: Algorithm) -> &'static str {
    match alg {
        a if a.is_rsa() => "an RSA key",
        Algorithm::ES256 => "an EC P-256 key",
        Algorithm::ES384 => "an EC P-384 key",
        _ => "an Ed25519 key",
    }
}

/// One PEM block: its label and whether its headers say it is encrypted.
struct Block<'a> {
    label: &'a str,
    text: &'a str,
    encrypted: bool,
}

/// The PEM blocks in `text`, in order (text between blocks is ignored, as OpenSSL does).
fn pem_blocks(text: &str) -> Vec<Block<'_>> {
    let mut out = vec![];
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = &after[..label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = rest[start..].find(&end_marker) else {
            break;
        };
        let block = &rest[start..start + end + end_marker.len()];
        out.push(Block {
            label,
            text: block,
            encrypted: label.contains("ENCRYPTED") || block.contains("Proc-Type: 4,ENCRYPTED"),
        });
        rest = &rest[start + end + end_marker.len()..];
    }
    out
}

/// What family a PKCS#8 private key is, for the message when it is not `alg`'s.
fn pkcs8_family(pem: &str) -> Option<&'static str> {
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    if rsa::PrivateKey::from_pkcs8_pem(pem).is_ok() {
        Some("an RSA")
    } else if p256::SecretKey::from_pkcs8_pem(pem).is_ok() {
        Some("an EC P-256")
    } else if p384::SecretKey::from_pkcs8_pem(pem).is_ok() {
        Some("an EC P-384")
    } else if ed25519_dalek::SigningKey::from_pkcs8_pem(pem).is_ok() {
        Some("an Ed25519")
    } else {
        None
    }
}

fn wrong(found: &str, alg: Algorithm) -> ImportError {
    ImportError::WrongFamily {
        found: found.to_string(),
        alg,
        need: need(alg),
    }
}

/// A private key from a user's Secret, for `alg`: PEM (PKCS#8, PKCS#1 RSA, SEC1 EC) or a
/// private JWK. The kid is the key's RFC 7638 thumbprint; a JWK's own `kid`, and `expected`
/// (`spec.import.keyId`), must equal it.
pub fn private_key(
    alg: Algorithm,
    bytes: &[u8],
    expected: Option<&str>,
) -> Result<KeyPair, ImportError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ImportError::NotAKey)?;
    let trimmed = text.trim_start();
    let kp = if trimmed.starts_with('{') {
        // (serde_json's values cannot be wiped; the decoded private members are, below.)
        let jwk: Value = serde_json::from_str(trimmed).map_err(|_| ImportError::NotAKey)?;
        let kp = private_jwk(alg, jwk.as_object().ok_or(ImportError::NotAKey)?)?;
        if let Some(kid) = jwk.get("kid")
            && kid.as_str() != Some(kp.kid())
        {
            return Err(ImportError::KidMismatch {
                given_in: "the JWK's \"kid\"",
                thumbprint: kp.kid().to_string(),
            });
        }
        kp
    } else {
        let blocks = pem_blocks(text);
        let block = match blocks.as_slice() {
            [] => return Err(ImportError::NotAKey),
            [b] => b,
            _ => return Err(ImportError::Several),
        };
        private_pem(alg, block)?
    };
    if let Some(e) = expected
        && e != kp.kid()
    {
        return Err(ImportError::KidMismatch {
            given_in: "spec.import.keyId",
            thumbprint: kp.kid().to_string(),
        });
    }
    Ok(kp)
}

fn private_pem(alg: Algorithm, block: &Block<'_>) -> Result<KeyPair, ImportError> {
    if block.encrypted {
        return Err(ImportError::Encrypted);
    }
    let invalid = |form: &str| ImportError::Invalid(format!("is not a valid {form} private key"));
    let inner = match block.label {
        "PRIVATE KEY" => {
            return KeyPair::from_pkcs8_pem(alg, block.text).map_err(|e| match e {
                crate::core::keys::KeyError::BadPem { .. } => match pkcs8_family(block.text) {
                    Some(found) => wrong(found, alg),
                    None => invalid("PKCS#8"),
                },
                other => ImportError::Invalid(other.to_string()),
            });
        }
        "RSA PRIVATE KEY" => {
            if !alg.is_rsa() {
                return Err(wrong("an RSA", alg));
            }
            let k =
                rsa::PrivateKey::from_pkcs1_pem(block.text).map_err(|_| invalid("PKCS#1 RSA"))?;
            Inner::Rsa(Box::new(k))
        }
        "EC PRIVATE KEY" => match alg {
            Algorithm::ES256 => {
                Inner::P256(p256::SecretKey::from_sec1_pem(block.text).map_err(|_| {
                    match p384::SecretKey::from_sec1_pem(block.text) {
                        Ok(_) => wrong("an EC P-384", alg),
                        Err(_) => invalid("SEC1 EC P-256"),
                    }
                })?)
            }
            Algorithm::ES384 => {
                Inner::P384(p384::SecretKey::from_sec1_pem(block.text).map_err(|_| {
                    match p256::SecretKey::from_sec1_pem(block.text) {
                        Ok(_) => wrong("an EC P-256", alg),
                        Err(_) => invalid("SEC1 EC P-384"),
                    }
                })?)
            }
            _ => return Err(wrong("an EC", alg)),
        },
        _ => return Err(ImportError::Label),
    };
    finish(alg, inner)
}

/// Checks an RSA key's size and consistency (one rule with keyturn's own keys), then makes
/// the pair.
fn finish(alg: Algorithm, inner: Inner) -> Result<KeyPair, ImportError> {
    let inner = match inner {
        Inner::Rsa(k) => {
            crate::core::keys::checked_rsa(*k).map_err(|e| ImportError::Invalid(e.to_string()))?
        }
        other => other,
    };
    Ok(KeyPair::from_inner(alg, inner))
}

/// base64url member `name` of a private JWK, decoded; wiped on drop.
fn member(m: &Map<String, Value>, name: &str) -> Result<Zeroizing<Vec<u8>>, ImportError> {
    crate::core::jwks::b64_member(m, name)
        .map(Zeroizing::new)
        .map_err(|why| ImportError::Invalid(format!("its JWK: {why}")))
}

fn uint(m: &Map<String, Value>, name: &str) -> Result<rsa::BoxedUint, ImportError> {
    Ok(rsa::BoxedUint::from_be_slice_vartime(&member(m, name)?))
}

fn private_jwk(alg: Algorithm, m: &Map<String, Value>) -> Result<KeyPair, ImportError> {
    if !m.contains_key("d") {
        return Err(ImportError::Invalid(
            "its JWK has no private member \"d\" (a public key cannot sign)".into(),
        ));
    }
    if let Some(a) = m.get("alg")
        && a.as_str() != Some(alg.as_str())
    {
        return Err(ImportError::AlgMismatch { alg });
    }
    let kty = m.get("kty").and_then(Value::as_str).unwrap_or_default();
    let crv = m.get("crv").and_then(Value::as_str).unwrap_or_default();
    let inner = match (kty, crv) {
        ("RSA", _) => {
            if !alg.is_rsa() {
                return Err(wrong("an RSA", alg));
            }
            // p and q when given; without them the primes are recovered from n, e and d.
            let primes = match (m.contains_key("p"), m.contains_key("q")) {
                (true, true) => vec![uint(m, "p")?, uint(m, "q")?],
                _ => vec![],
            };
            let k = rsa::PrivateKey::from_components(
                uint(m, "n")?,
                uint(m, "e")?,
                uint(m, "d")?,
                primes,
            )
            .map_err(|_| ImportError::Invalid("its RSA JWK is not a consistent key".into()))?;
            Inner::Rsa(Box::new(k))
        }
        ("EC", "P-256") if alg == Algorithm::ES256 => Inner::P256(
            p256::SecretKey::from_slice(&member(m, "d")?)
                .map_err(|_| ImportError::Invalid("its EC JWK \"d\" is not a P-256 key".into()))?,
        ),
        ("EC", "P-384") if alg == Algorithm::ES384 => Inner::P384(
            p384::SecretKey::from_slice(&member(m, "d")?)
                .map_err(|_| ImportError::Invalid("its EC JWK \"d\" is not a P-384 key".into()))?,
        ),
        ("OKP", "Ed25519") if alg == Algorithm::EdDSA => {
            let d = member(m, "d")?;
            let seed: Zeroizing<[u8; 32]> =
                Zeroizing::new(d.as_slice().try_into().map_err(|_| {
                    ImportError::Invalid("its Ed25519 JWK \"d\" is not 32 bytes".into())
                })?);
            Inner::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
        }
        // The curve is named only when it is one keyturn knows: a refusal never repeats
        // what the source holds.
        ("EC", c @ ("P-256" | "P-384")) => return Err(wrong(&format!("an EC {c}"), alg)),
        ("OKP", "Ed25519") => return Err(wrong("an OKP Ed25519", alg)),
        ("EC" | "OKP", _) => {
            return Err(ImportError::Invalid(
                "its JWK is on a curve keyturn does not use (P-256, P-384, Ed25519)".into(),
            ));
        }
        _ => {
            return Err(ImportError::Invalid(
                "its JWK kty is not RSA, EC or OKP".into(),
            ));
        }
    };
    // The public members given must be the private key's.
    let derived = public_members(&public_of(&inner));
    for (name, value) in &derived {
        if m.get(name) != Some(value) && name != "kty" {
            return Err(ImportError::Invalid(format!(
                "its JWK member {name:?} does not match its private key"
            )));
        }
    }
    finish(alg, inner)
}

/// A public key of a previous issuer, as keyturn publishes it.
#[derive(Clone, Debug, PartialEq)]
pub struct VerificationKey {
    /// Its kid: the JWK's own, or (PEM, JWK without one) the RFC 7638 thumbprint.
    pub kid: String,
    /// Its algorithm.
    pub alg: Algorithm,
    /// The public JWK: the key members in keyturn's encoding, `kid`, `alg`, `use: "sig"`.
    pub jwk: Value,
}

/// Longest kid keyturn republishes.
const MAX_KID_LEN: usize = 128;

/// The public keys in a source (a JWKS, one JWK, or PEM public keys — SPKI `PUBLIC KEY` or
/// PKCS#1 `RSA PUBLIC KEY`), each loaded through its crypto library (a point not on its curve,
/// a short modulus, private members: refused, with the reason and the key's position).
/// `hint` is the algorithm of keys that do not name one (PEM RSA keys, JWKs without `alg`).
pub fn public_keys(bytes: &[u8], hint: Option<Algorithm>) -> Result<Vec<VerificationKey>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let v: Value = serde_json::from_str(trimmed).map_err(|e| {
            format!(
                "is not valid JSON (line {} column {})",
                e.line(),
                e.column()
            )
        })?;
        let jwks: Vec<&Value> = match v.get("keys") {
            Some(Value::Array(keys)) => keys.iter().collect(),
            Some(_) => return Err("its \"keys\" is not an array".into()),
            None => vec![&v],
        };
        if jwks.is_empty() {
            return Err("holds no keys".into());
        }
        return jwks
            .iter()
            .enumerate()
            .map(|(i, k)| public_jwk(k, hint).map_err(|why| format!("key {i}: {why}")))
            .collect();
    }
    let blocks = pem_blocks(text);
    if blocks.is_empty() {
        return Err("is neither a JWKS, a JWK nor PEM public keys".into());
    }
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| public_pem(b, hint).map_err(|why| format!("key {i}: {why}")))
        .collect()
}

fn public_pem(block: &Block<'_>, hint: Option<Algorithm>) -> Result<VerificationKey, String> {
    let key = match block.label {
        "PUBLIC KEY" => {
            if let Ok(k) = rsa::PublicKey::from_public_key_pem(block.text) {
                Public::Rsa(Box::new(k))
            } else if let Ok(k) = p256::PublicKey::from_public_key_pem(block.text) {
                Public::P256(k)
            } else if let Ok(k) = p384::PublicKey::from_public_key_pem(block.text) {
                Public::P384(k)
            } else if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(block.text) {
                Public::Ed25519(k)
            } else {
                return Err(
                    "is not an RSA (2048-4096 bits), EC P-256, EC P-384 or Ed25519 public key"
                        .into(),
                );
            }
        }
        "RSA PUBLIC KEY" => Public::Rsa(Box::new(
            rsa::PublicKey::from_pkcs1_pem(block.text)
                .map_err(|_| "is not a valid PKCS#1 RSA public key (2048-4096 bits)".to_string())?,
        )),
        l if l.contains("PRIVATE KEY") => {
            return Err("is a private key; list public keys only".into());
        }
        _ => return Err("is a PEM block that is not a public key".into()),
    };
    finish_public(key, None, None, hint)
}

fn public_jwk(v: &Value, hint: Option<Algorithm>) -> Result<VerificationKey, String> {
    let m = v.as_object().ok_or("is not a JSON object")?;
    for p in crate::core::jwks::PRIVATE_MEMBERS {
        if m.contains_key(p) {
            return Err(format!(
                "has the private member {p:?}; list public keys only"
            ));
        }
    }
    if let Some(u) = m.get("use")
        && u.as_str() != Some("sig")
    {
        return Err("its \"use\" is not \"sig\"".into());
    }
    let key = crate::core::keys::public_from_jwk(m)?;
    let given: Map<String, Value> = public_members(&key);
    for (name, value) in &given {
        if m.get(name) != Some(value) {
            return Err(format!(
                "its member {name:?} is not in the minimal encoding (RFC 7518)"
            ));
        }
    }
    let kid = match m.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("its \"kid\" is not a string".into()),
    };
    let alg = match m.get("alg") {
        None => None,
        Some(a) => Some(
            a.as_str()
                .and_then(Algorithm::parse)
                .ok_or("its \"alg\" is not one keyturn publishes")?,
        ),
    };
    finish_public(key, kid, alg, hint)
}

/// The JWK keyturn publishes for `key`: the algorithm its own (checked against the family),
/// else the hint, else the one its curve implies.
fn finish_public(
    key: Public,
    kid: Option<String>,
    alg: Option<Algorithm>,
    hint: Option<Algorithm>,
) -> Result<VerificationKey, String> {
    let implied = match &key {
        Public::Rsa(_) => None,
        Public::P256(_) => Some(Algorithm::ES256),
        Public::P384(_) => Some(Algorithm::ES384),
        Public::Ed25519(_) => Some(Algorithm::EdDSA),
    };
    let alg = alg
        .or(hint.filter(|h| key.fits(*h)))
        .or(implied)
        .ok_or("is an RSA key that names no algorithm: set spec.verificationKeys[].algorithm")?;
    if !key.fits(alg) {
        return Err(format!("is {} key, which {alg} does not use", key.family()));
    }
    let mut m = public_members(&key);
    let kid = match kid {
        Some(k) if k.is_empty() || k.len() > MAX_KID_LEN || k.chars().any(char::is_control) => {
            return Err(format!(
                "its \"kid\" must be 1 to {MAX_KID_LEN} printable characters"
            ));
        }
        Some(k) => k,
        None => thumbprint(&m).ok_or("has no thumbprint")?,
    };
    m.insert("kid".into(), json!(kid));
    m.insert("alg".into(), json!(alg.as_str()));
    m.insert("use".into(), json!("sig"));
    let jwk = Value::Object(m);
    crate::core::jwks::validate_key(&jwk)?;
    Ok(VerificationKey { kid, alg, jwk })
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::pkcs8::EncodePublicKey as _;
    use p256::elliptic_curve::Generate as _;
    use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};
    use serde_json::json;

    use super::*;

    const LF: pkcs8::LineEnding = pkcs8::LineEnding::LF;

    fn key(alg: Algorithm) -> KeyPair {
        KeyPair::generate(alg, None).unwrap()
    }

    #[test]
    fn every_algorithm_imports_from_pkcs8_and_from_a_private_jwk_with_its_thumbprint() {
        for alg in Algorithm::ALL {
            let kp = key(alg);
            let from_pem = private_key(alg, kp.to_pkcs8_pem().as_bytes(), None).unwrap();
            assert_eq!(from_pem.kid(), kp.kid(), "{alg} PEM");
            assert_eq!(*from_pem.to_pkcs8_pem(), *kp.to_pkcs8_pem(), "{alg}");
            let jwk = kp.private_jwk_json();
            let from_jwk = private_key(alg, jwk.as_bytes(), Some(kp.kid())).unwrap();
            assert_eq!(from_jwk.kid(), kp.kid(), "{alg} JWK");
            assert_eq!(from_jwk.public_jwk(), kp.public_jwk());
        }
    }

    #[test]
    fn pkcs1_rsa_and_sec1_ec_pems_import() {
        let rsa = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let pem = rsa.to_pkcs1_pem(LF).unwrap();
        assert_eq!(pem_blocks(&pem)[0].label, "RSA PRIVATE KEY");
        let kp = private_key(Algorithm::PS384, pem.as_bytes(), None).unwrap();
        assert_eq!(kp.alg(), Algorithm::PS384);
        assert_eq!(kp.rsa_bits(), Some(2048));

        let ec = p256::SecretKey::try_generate_from_rng(&mut getrandom::SysRng).unwrap();
        let pem = ec.to_sec1_pem(LF).unwrap();
        assert_eq!(pem_blocks(&pem)[0].label, "EC PRIVATE KEY");
        let kp = private_key(Algorithm::ES256, pem.as_bytes(), None).unwrap();
        assert_eq!(kp.alg(), Algorithm::ES256);
        assert_eq!(
            private_key(Algorithm::ES384, pem.as_bytes(), None).unwrap_err(),
            ImportError::WrongFamily {
                found: "an EC P-256".into(),
                alg: Algorithm::ES384,
                need: "an EC P-384 key"
            }
        );
    }

    #[test]
    fn a_key_of_another_family_is_refused_naming_both() {
        let ec = key(Algorithm::ES256);
        let e = private_key(Algorithm::RS256, ec.to_pkcs8_pem().as_bytes(), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "holds an EC P-256 key; spec.algorithm RS256 needs an RSA key"
        );
        let ed = key(Algorithm::EdDSA);
        let e = private_key(Algorithm::ES384, ed.private_jwk_json().as_bytes(), None).unwrap_err();
        assert!(e.to_string().contains("spec.algorithm ES384"), "{e}");
        // A JWK naming another algorithm of the same family.
        let rsa = key(Algorithm::RS256);
        let e = private_key(Algorithm::PS256, rsa.private_jwk_json().as_bytes(), None).unwrap_err();
        assert_eq!(
            e,
            ImportError::AlgMismatch {
                alg: Algorithm::PS256
            }
        );
    }

    #[test]
    fn a_kid_that_is_not_the_thumbprint_is_refused() {
        let kp = key(Algorithm::ES256);
        let mut jwk: Value = serde_json::from_str(&kp.private_jwk_json()).unwrap();
        jwk["kid"] = json!("key-1");
        let e = private_key(Algorithm::ES256, jwk.to_string().as_bytes(), None).unwrap_err();
        assert!(
            matches!(&e, ImportError::KidMismatch { thumbprint, .. } if thumbprint == kp.kid()),
            "{e}"
        );
        let e = private_key(
            Algorithm::ES256,
            kp.to_pkcs8_pem().as_bytes(),
            Some("key-1"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("spec.import.keyId"), "{e}");
    }

    #[test]
    fn unreadable_input_is_refused_without_quoting_it() {
        let kp = key(Algorithm::EdDSA);
        let pem = kp.to_pkcs8_pem();
        let encrypted = pem.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY");
        let two = format!("{}{}", *pem, *key(Algorithm::EdDSA).to_pkcs8_pem());
        let mut inconsistent: Value = serde_json::from_str(&kp.private_jwk_json()).unwrap();
        inconsistent["x"] = key(Algorithm::EdDSA).public_jwk()["x"].clone();
        let public_only = kp.public_jwk().to_string();
        for (input, want) in [
            ("not a key".to_string(), ImportError::NotAKey),
            (encrypted, ImportError::Encrypted),
            (two, ImportError::Several),
            (
                // A block of another label (made here, not a stored key).
                pem.replace("PRIVATE KEY", "CERTIFICATE"),
                ImportError::Label,
            ),
        ] {
            assert_eq!(
                private_key(Algorithm::EdDSA, input.as_bytes(), None).unwrap_err(),
                want
            );
        }
        for input in [inconsistent.to_string(), public_only] {
            let e = private_key(Algorithm::EdDSA, input.as_bytes(), None).unwrap_err();
            assert!(matches!(e, ImportError::Invalid(_)), "{e}");
        }
        let d: Value = serde_json::from_str(&kp.private_jwk_json()).unwrap();
        let mut bad = d.clone();
        bad["x"] = json!("AAAA");
        let e = private_key(Algorithm::EdDSA, bad.to_string().as_bytes(), None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains(d["d"].as_str().unwrap()), "{e}");
    }

    /// Whoever wrote a source chooses its labels, `kty`, `crv` and `alg`; a refusal goes to a
    /// set's author who may not read that source, so it never repeats any of them.
    #[test]
    fn refusals_never_repeat_a_string_the_source_chose() {
        const MARK: &str = "SECRETMARK";
        let kp = key(Algorithm::ES256);
        let pem = kp.to_pkcs8_pem();
        let mut jwk: Value = serde_json::from_str(&kp.private_jwk_json()).unwrap();
        let public = kp.public_jwk();
        let with = |v: &Value, k: &str| {
            let mut v = v.clone();
            v[k] = json!(MARK);
            v.to_string()
        };
        let private_inputs = [
            pem.replace("PRIVATE KEY", MARK),
            with(&jwk, "kty"),
            with(&jwk, "crv"),
            with(&jwk, "alg"),
        ];
        for input in &private_inputs {
            let e = private_key(Algorithm::ES256, input.as_bytes(), None)
                .unwrap_err()
                .to_string();
            assert!(!e.contains(MARK), "{e}");
        }
        jwk["crv"] = json!("P-521");
        let e = private_key(Algorithm::ES256, jwk.to_string().as_bytes(), None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("P-521"), "{e}");
        let public_inputs = [
            format!("-----BEGIN {MARK}-----\nAAAA\n-----END {MARK}-----\n"),
            with(&public, "kty"),
            with(&public, "crv"),
            json!({"keys": [serde_json::from_str::<Value>(&with(&public, "crv")).unwrap()]})
                .to_string(),
        ];
        for input in &public_inputs {
            let e = public_keys(input.as_bytes(), None).unwrap_err();
            assert!(!e.contains(MARK), "{e}");
        }
    }

    #[test]
    fn public_keys_come_from_a_jwks_a_jwk_or_pems_in_keyturns_encoding() {
        let es = key(Algorithm::ES256);
        let rs = key(Algorithm::PS256);
        let mut legacy = es.public_jwk();
        legacy["kid"] = json!("legacy-1");
        legacy
            .as_object_mut()
            .unwrap()
            .insert("x5t".into(), json!("ignored"));
        let doc = json!({"keys": [legacy, rs.public_jwk()]}).to_string();
        let keys = public_keys(doc.as_bytes(), None).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].kid, "legacy-1");
        assert_eq!(keys[0].alg, Algorithm::ES256);
        assert!(
            keys[0].jwk.get("x5t").is_none(),
            "only the members keyturn publishes"
        );
        assert_eq!(keys[1].jwk, rs.public_jwk());
        // One JWK without kid or alg: the thumbprint, the curve's algorithm.
        let mut bare = es.public_jwk();
        bare.as_object_mut().unwrap().remove("kid");
        bare.as_object_mut().unwrap().remove("alg");
        let keys = public_keys(bare.to_string().as_bytes(), None).unwrap();
        assert_eq!(keys[0].kid, es.kid());
        assert_eq!(keys[0].jwk, es.public_jwk());

        // PEMs: SPKI of every family, PKCS#1 RSA; RSA needs the algorithm named.
        let ed = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let p384 = p384::SecretKey::try_generate_from_rng(&mut getrandom::SysRng).unwrap();
        let rsa = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let pems = format!(
            "{}\n{}{}",
            ed.verifying_key().to_public_key_pem(LF).unwrap(),
            p384.public_key().to_public_key_pem(LF).unwrap(),
            rsa.to_public_key().to_pkcs1_pem(LF).unwrap()
        );
        let e = public_keys(pems.as_bytes(), None).unwrap_err();
        assert!(
            e.starts_with("key 2: is an RSA key that names no algorithm"),
            "{e}"
        );
        let keys = public_keys(pems.as_bytes(), Some(Algorithm::RS512)).unwrap();
        let algs: Vec<Algorithm> = keys.iter().map(|k| k.alg).collect();
        assert_eq!(algs, [Algorithm::EdDSA, Algorithm::ES384, Algorithm::RS512]);
        for k in &keys {
            assert_eq!(Some(k.kid.clone()), thumbprint(k.jwk.as_object().unwrap()));
            crate::core::jwks::validate_key(&k.jwk).unwrap();
        }
    }

    #[test]
    fn public_keys_that_break_the_jwks_rules_are_refused_with_the_reason() {
        let es = key(Algorithm::ES256);
        let with = |name: &str, v: Value| {
            let mut j = es.public_jwk();
            j[name] = v;
            json!({"keys": [es.public_jwk(), j]}).to_string()
        };
        let small = rsa::PrivateKey::new(&mut getrandom::SysRng, 1024).unwrap();
        let small_pem = small.to_public_key().to_pkcs1_pem(LF).unwrap();
        let private = serde_json::from_str::<Value>(&es.private_jwk_json()).unwrap();
        let mut off_curve = es.public_jwk();
        off_curve["y"] = off_curve["x"].clone();
        for (input, want) in [
            (
                with("use", json!("enc")),
                "key 1: its \"use\" is not \"sig\"",
            ),
            (
                with("alg", json!("ES384")),
                "key 1: is EC P-256 key, which ES384 does not use",
            ),
            (
                with("alg", json!("HS256")),
                "key 1: its \"alg\" is not one keyturn publishes",
            ),
            (
                with("kty", json!("oct")),
                "key 1: its kty and crv are not a key keyturn publishes",
            ),
            (with("kid", json!("")), "key 1: its \"kid\" must be"),
            (private.to_string(), "key 0: has the private member \"d\""),
            (off_curve.to_string(), "key 0: is not a point on P-256"),
            (small_pem.to_string(), "key 0: "),
            (
                es.to_pkcs8_pem().to_string(),
                "key 0: is a private key; list public keys only",
            ),
            (json!({"keys": []}).to_string(), "holds no keys"),
            ("garbage".into(), "is neither a JWKS"),
        ] {
            let e = public_keys(input.as_bytes(), Some(Algorithm::RS256)).unwrap_err();
            assert!(e.starts_with(want), "{want} → {e}");
        }
        let e = public_keys(small_pem.as_bytes(), Some(Algorithm::RS256)).unwrap_err();
        assert!(e.contains("2048"), "{e}");
    }
}
