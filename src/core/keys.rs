//! Key material: generation from the OS RNG, PKCS#8 PEM and JWK encodings, RFC 7638 kids.
//!
//! Nothing in this module prints private material: [`KeyPair`]'s `Debug` shows the
//! algorithm and kid only, and errors never quote key bytes.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use p256::elliptic_curve::Generate as _;
use p256::elliptic_curve::sec1::ToSec1Point as _;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::core::crd::Algorithm;
use crate::core::jwks::thumbprint;

/// Default RSA modulus size.
pub const DEFAULT_RSA_BITS: u32 = crate::core::crd::RSA_KEY_SIZES[0];

/// Why key material could not be made or read. Messages never contain key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The RSA size is not one keyturn generates.
    #[error("unsupported RSA key size {0}: use {sizes}", sizes = crate::core::crd::rsa_key_sizes_text())]
    RsaSize(u32),
    /// The PEM could not be parsed as a PKCS#8 private key of the expected algorithm.
    #[error("stored private key is not a valid PKCS#8 {alg} key")]
    BadPem {
        /// The algorithm the key was expected to be.
        alg: Algorithm,
    },
    /// The RSA key is smaller than the JWKS rules allow.
    #[error("stored RSA key has {0} bits; at least {min} are required", min = crate::core::jwks::MIN_RSA_BITS)]
    RsaTooSmall(usize),
    /// The RSA key's parts do not agree (a corrupt or forged key).
    #[error("the RSA key is not internally consistent")]
    RsaInconsistent,
    /// The crypto library failed to generate a key.
    #[error("key generation failed for {0}")]
    Generate(Algorithm),
    /// keyturn does not sign with this algorithm (`keyturn signer` signs what the Kubernetes
    /// API server accepts from an external signer).
    #[error("keyturn signs with RS256, ES256 and ES384 only, not {0}")]
    CannotSign(Algorithm),
    /// The crypto library failed to sign.
    #[error("signing with {0} failed")]
    Sign(Algorithm),
}

/// Text from outside keyturn (an API server's or an admission policy's message) made safe for
/// a condition, an Event, a log line or a metric: withheld whole when it may quote encoded key
/// material: a PEM armor line, a run of 40 or more base64 characters with a capital, or a run
/// of 20 or more that mixes capitals with digits or `+ / _ -` (Kubernetes names are lower
/// case, Go type names have no digits; base64 of key bytes has both, nearly always).
pub fn redact_encoded(text: &str) -> std::borrow::Cow<'_, str> {
    let b64 = |c: char| c.is_ascii_alphanumeric() || "+/=_-".contains(c);
    let suspicious = |run: &str| {
        let n = run.chars().count();
        let capital = run.chars().any(|c| c.is_ascii_uppercase());
        capital
            && (n >= 40
                || (n >= 20
                    && run
                        .chars()
                        .any(|c| c.is_ascii_digit() || "+/_-".contains(c))))
    };
    if text.contains("-----BEGIN") || text.split(|c: char| !b64(c)).any(suspicious) {
        "(message withheld: it may quote encoded key material; the API server's audit log has it)"
            .into()
    } else {
        text.into()
    }
}

/// A private key of one of keyturn's key families.
pub(crate) enum Inner {
    Rsa(Box<rsa::PrivateKey>),
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A private key with its JWS algorithm. `Debug` redacts the private part.
pub struct KeyPair {
    alg: Algorithm,
    inner: Inner,
    kid: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("private", &"<redacted>")
            .finish()
    }
}

/// Test access to key internals.
#[cfg(test)]
pub(crate) mod tests_support {
    /// The Ed25519 seed of `kp`.
    pub fn ed25519_seed(kp: &super::KeyPair) -> [u8; 32] {
        match &kp.inner {
            super::Inner::Ed25519(k) => k.to_bytes(),
            _ => panic!("not an Ed25519 key"),
        }
    }
}

/// RFC 8410 §7: `PrivateKeyInfo { version 0, id-Ed25519, OCTET STRING { OCTET STRING seed } }`.
fn ed25519_pkcs8_v1(
    k: &ed25519_dalek::SigningKey,
    le: pkcs8::LineEnding,
) -> pkcs8::Result<Zeroizing<String>> {
    use pkcs8::der::pem::PemLabel;
    // CurvePrivateKey ::= OCTET STRING (tag 0x04, length 32, the seed).
    let mut inner = Zeroizing::new([0u8; 34]);
    inner[0] = 0x04;
    inner[1] = 0x20;
    inner[2..].copy_from_slice(k.as_bytes());
    let info = pkcs8::PrivateKeyInfoRef::new(
        ed25519_dalek::pkcs8::ALGORITHM_ID,
        pkcs8::der::asn1::OctetStringRef::new(&inner[..])?,
    );
    Ok(pkcs8::der::SecretDocument::try_from(&info)?
        .to_pem(pkcs8::PrivateKeyInfoRef::PEM_LABEL, le)?)
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7518 §2 `Base64urlUInt`: the minimum number of octets, so no leading zero octet
/// (crypto-bigint's integers are limb-wide; `e` = 65537 would otherwise be 8 octets).
fn b64_uint(n: &rsa::BoxedUint) -> String {
    let bytes = Zeroizing::new(n.to_be_bytes());
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    b64(&bytes[first..])
}

impl KeyPair {
    /// Generates a new key for `alg` from the OS RNG. `rsa_bits` applies to RS*/PS* only.
    pub fn generate(alg: Algorithm, rsa_bits: Option<u32>) -> Result<KeyPair, KeyError> {
        let inner = match alg {
            a if a.is_rsa() => {
                let bits = rsa_bits.unwrap_or(DEFAULT_RSA_BITS);
                if !crate::core::crd::RSA_KEY_SIZES.contains(&bits) {
                    return Err(KeyError::RsaSize(bits));
                }
                let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits as usize)
                    .map_err(|_| KeyError::Generate(alg))?;
                Inner::Rsa(Box::new(key))
            }
            Algorithm::ES256 => Inner::P256(
                p256::SecretKey::try_generate_from_rng(&mut getrandom::SysRng)
                    .map_err(|_| KeyError::Generate(alg))?,
            ),
            Algorithm::ES384 => Inner::P384(
                p384::SecretKey::try_generate_from_rng(&mut getrandom::SysRng)
                    .map_err(|_| KeyError::Generate(alg))?,
            ),
            Algorithm::EdDSA => {
                // RFC 8032 §5.1.5: the private key is 32 random octets.
                let mut seed = Zeroizing::new([0u8; 32]);
                getrandom::fill(&mut seed[..]).map_err(|_| KeyError::Generate(alg))?;
                Inner::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
            _ => unreachable!("every RSA algorithm is matched above"),
        };
        Ok(Self::from_inner(alg, inner))
    }

    pub(crate) fn from_inner(alg: Algorithm, inner: Inner) -> KeyPair {
        let kid = thumbprint(&public_members(&public_of(&inner)))
            .expect("keyturn's own JWKs always have the thumbprint members");
        KeyPair { alg, inner, kid }
    }

    /// Reads a PKCS#8 PEM private key that must be of the family `alg` uses.
    pub fn from_pkcs8_pem(alg: Algorithm, pem: &str) -> Result<KeyPair, KeyError> {
        let bad = || KeyError::BadPem { alg };
        let inner = match alg {
            a if a.is_rsa() => {
                let key = rsa::PrivateKey::from_pkcs8_pem(pem).map_err(|_| bad())?;
                checked_rsa(key).map_err(|e| match e {
                    KeyError::RsaInconsistent => bad(),
                    other => other,
                })?
            }
            Algorithm::ES256 => {
                Inner::P256(p256::SecretKey::from_pkcs8_pem(pem).map_err(|_| bad())?)
            }
            Algorithm::ES384 => {
                Inner::P384(p384::SecretKey::from_pkcs8_pem(pem).map_err(|_| bad())?)
            }
            Algorithm::EdDSA => {
                Inner::Ed25519(ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|_| bad())?)
            }
            _ => unreachable!("every RSA algorithm is matched above"),
        };
        Ok(Self::from_inner(alg, inner))
    }

    /// The JWS algorithm.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The key id: RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// RSA modulus size in bits, for RSA keys.
    pub fn rsa_bits(&self) -> Option<u32> {
        match &self.inner {
            Inner::Rsa(k) => Some((k.size() * 8) as u32),
            _ => None,
        }
    }

    /// The private key as PKCS#8 **v1** PEM: RFC 5208 `PrivateKeyInfo` without the RFC 5958
    /// public-key field, the form `openssl genpkey` writes (64-column base64, LF, trailing
    /// newline). OpenSSL 3.0, Node and Python `cryptography` reject the v2 form for Ed25519,
    /// which is what ed25519-dalek writes, so Ed25519 is encoded here from its seed.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let le = pkcs8::LineEnding::LF;
        let pem = match &self.inner {
            Inner::Rsa(k) => rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(k.as_ref(), le),
            Inner::P256(k) => k.to_pkcs8_pem(le),
            Inner::P384(k) => k.to_pkcs8_pem(le),
            Inner::Ed25519(k) => ed25519_pkcs8_v1(k, le),
        };
        pem.expect("encoding an in-memory private key as PKCS#8 cannot fail")
    }

    /// The JWS signature (RFC 7515 §5.1, RFC 7518 §3) of `signing_input` (the ASCII
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`): RSASSA-PKCS1-v1_5 with SHA-256 for
    /// RS256 (blinded, from the OS RNG), the fixed-width `R || S` for ES256 and ES384
    /// (deterministic, RFC 6979). Other algorithms are refused: `keyturn signer` signs only
    /// what the Kubernetes API server accepts from an external signer.
    pub fn sign_jws(&self, signing_input: &[u8]) -> Result<Vec<u8>, KeyError> {
        use p256::ecdsa::signature::Signer as _;
        match (&self.inner, self.alg) {
            (Inner::Rsa(k), Algorithm::RS256) => k
                .sign_with_rng(
                    &mut getrandom::SysRng,
                    rsa::pkcs1v15::Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(signing_input),
                )
                .map_err(|_| KeyError::Sign(self.alg)),
            (Inner::P256(k), Algorithm::ES256) => {
                let sig: p256::ecdsa::Signature =
                    p256::ecdsa::SigningKey::from(k).sign(signing_input);
                Ok(sig.to_bytes().to_vec())
            }
            (Inner::P384(k), Algorithm::ES384) => {
                let sig: p384::ecdsa::Signature =
                    p384::ecdsa::SigningKey::from(k).sign(signing_input);
                Ok(sig.to_bytes().to_vec())
            }
            (_, alg) => Err(KeyError::CannotSign(alg)),
        }
    }

    /// The public JWK: `kty`, key members, `kid`, `alg`, `use: "sig"`. No private members.
    pub fn public_jwk(&self) -> Value {
        let mut m = public_members(&public_of(&self.inner));
        m.insert("kid".into(), json!(self.kid));
        m.insert("alg".into(), json!(self.alg.as_str()));
        m.insert("use".into(), json!("sig"));
        Value::Object(m)
    }

    /// The private JWK (public JWK plus the private members) as compact JSON.
    pub fn private_jwk_json(&self) -> Zeroizing<String> {
        let Value::Object(mut m) = self.public_jwk() else {
            unreachable!("public_jwk is an object")
        };
        match &self.inner {
            Inner::Rsa(k) => {
                let primes = k.primes();
                m.insert("d".into(), json!(b64_uint(k.d())));
                m.insert("p".into(), json!(b64_uint(&primes[0])));
                m.insert("q".into(), json!(b64_uint(&primes[1])));
                if let Some(dp) = k.dp() {
                    m.insert("dp".into(), json!(b64_uint(dp)));
                }
                if let Some(dq) = k.dq() {
                    m.insert("dq".into(), json!(b64_uint(dq)));
                }
                if let Some(qi) = k.crt_coefficient() {
                    m.insert("qi".into(), json!(b64_uint(&qi)));
                }
            }
            Inner::P256(k) => {
                m.insert(
                    "d".into(),
                    json!(b64(&Zeroizing::new(k.to_bytes().to_vec()))),
                );
            }
            Inner::P384(k) => {
                m.insert(
                    "d".into(),
                    json!(b64(&Zeroizing::new(k.to_bytes().to_vec()))),
                );
            }
            Inner::Ed25519(k) => {
                m.insert(
                    "d".into(),
                    json!(b64(&Zeroizing::new(k.to_bytes().to_vec()))),
                );
            }
        }
        Zeroizing::new(serde_json::to_string(&Value::Object(m)).expect("JSON of strings"))
    }
}

/// An RSA private key keyturn accepts, however it was read: at least
/// [`crate::core::jwks::MIN_RSA_BITS`] and internally consistent.
pub(crate) fn checked_rsa(key: rsa::PrivateKey) -> Result<Inner, KeyError> {
    let bits = key.size() * 8;
    if bits < crate::core::jwks::MIN_RSA_BITS as usize {
        return Err(KeyError::RsaTooSmall(bits));
    }
    key.validate().map_err(|_| KeyError::RsaInconsistent)?;
    Ok(Inner::Rsa(Box::new(key)))
}

/// A public key of one of keyturn's key families.
pub(crate) enum Public {
    Rsa(Box<rsa::PublicKey>),
    P256(p256::PublicKey),
    P384(p384::PublicKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl Public {
    /// Whether `alg` signs with keys of this family (and curve).
    pub(crate) fn fits(&self, alg: Algorithm) -> bool {
        match self {
            Public::Rsa(_) => alg.is_rsa(),
            Public::P256(_) => alg == Algorithm::ES256,
            Public::P384(_) => alg == Algorithm::ES384,
            Public::Ed25519(_) => alg == Algorithm::EdDSA,
        }
    }

    /// The family as a reader says it: "RSA", "EC P-256", "EC P-384", "Ed25519".
    pub(crate) fn family(&self) -> &'static str {
        match self {
            Public::Rsa(_) => "RSA",
            Public::P256(_) => "EC P-256",
            Public::P384(_) => "EC P-384",
            Public::Ed25519(_) => "Ed25519",
        }
    }
}

/// The key members of a public JWK loaded through its crypto library: RSA (`n` without a
/// leading zero octet, `e`), EC P-256/P-384 (a point on the curve), OKP Ed25519.
pub(crate) fn public_from_jwk(m: &Map<String, Value>) -> Result<Public, String> {
    let member = |name: &str| crate::core::jwks::b64_member(m, name);
    let kty = m.get("kty").and_then(Value::as_str).unwrap_or_default();
    let crv = m.get("crv").and_then(Value::as_str).unwrap_or_default();
    let point = |x: Vec<u8>, y: Vec<u8>| [&[4u8][..], &x, &y].concat();
    Ok(match (kty, crv) {
        ("RSA", _) => {
            let n = member("n")?;
            if n.first() == Some(&0) {
                return Err("its \"n\" has a leading zero octet".into());
            }
            let k = rsa::PublicKey::new(
                rsa::BoxedUint::from_be_slice_vartime(&n),
                rsa::BoxedUint::from_be_slice_vartime(&member("e")?),
            )
            .map_err(|_| "is not a valid RSA public key (2048-4096 bits)".to_string())?;
            Public::Rsa(Box::new(k))
        }
        ("EC", "P-256") => Public::P256(
            p256::PublicKey::from_sec1_bytes(&point(member("x")?, member("y")?))
                .map_err(|_| "is not a point on P-256".to_string())?,
        ),
        ("EC", "P-384") => Public::P384(
            p384::PublicKey::from_sec1_bytes(&point(member("x")?, member("y")?))
                .map_err(|_| "is not a point on P-384".to_string())?,
        ),
        ("OKP", "Ed25519") => {
            let x: [u8; 32] = member("x")?
                .as_slice()
                .try_into()
                .map_err(|_| "its \"x\" is not 32 bytes".to_string())?;
            Public::Ed25519(
                ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map_err(|_| "is not an Ed25519 public key".to_string())?,
            )
        }
        _ => {
            // kty and crv are not quoted: a refusal never repeats what the source holds.
            return Err(
                "its kty and crv are not a key keyturn publishes (RSA, EC P-256, EC P-384, OKP Ed25519)"
                    .into(),
            );
        }
    })
}

/// The DER `SubjectPublicKeyInfo` (RFC 5280) of a public key: the form the Kubernetes API
/// server's external-signer client parses (`x509.ParsePKIXPublicKey`).
pub(crate) fn spki_der(key: &Public) -> Vec<u8> {
    use pkcs8::EncodePublicKey as _;
    let der = match key {
        Public::Rsa(k) => k.as_ref().to_public_key_der(),
        Public::P256(k) => k.to_public_key_der(),
        Public::P384(k) => k.to_public_key_der(),
        Public::Ed25519(k) => k.to_public_key_der(),
    };
    der.expect("encoding an in-memory public key cannot fail")
        .into_vec()
}

/// The public half of a private key.
pub(crate) fn public_of(inner: &Inner) -> Public {
    match inner {
        Inner::Rsa(k) => Public::Rsa(Box::new(k.to_public_key())),
        Inner::P256(k) => Public::P256(k.public_key()),
        Inner::P384(k) => Public::P384(k.public_key()),
        Inner::Ed25519(k) => Public::Ed25519(k.verifying_key()),
    }
}

/// The key members of a public JWK (`kty` and the family's members), the one encoding of
/// every JWK keyturn publishes.
pub(crate) fn public_members(key: &Public) -> Map<String, Value> {
    let mut m = Map::new();
    match key {
        Public::Rsa(k) => {
            m.insert("kty".into(), json!("RSA"));
            // Minimal octets: no leading zero octet (RFC 7518 §6.3.1.1).
            m.insert("n".into(), json!(b64_uint(k.n())));
            m.insert("e".into(), json!(b64_uint(k.e())));
        }
        Public::P256(k) => {
            let p = k.to_sec1_point(false);
            m.insert("kty".into(), json!("EC"));
            m.insert("crv".into(), json!("P-256"));
            // Fixed-width field elements: leading zeros kept (RFC 7518 §6.2.1.2).
            m.insert("x".into(), json!(b64(p.x().expect("uncompressed point"))));
            m.insert("y".into(), json!(b64(p.y().expect("uncompressed point"))));
        }
        Public::P384(k) => {
            let p = k.to_sec1_point(false);
            m.insert("kty".into(), json!("EC"));
            m.insert("crv".into(), json!("P-384"));
            m.insert("x".into(), json!(b64(p.x().expect("uncompressed point"))));
            m.insert("y".into(), json!(b64(p.y().expect("uncompressed point"))));
        }
        Public::Ed25519(k) => {
            m.insert("kty".into(), json!("OKP"));
            m.insert("crv".into(), json!("Ed25519"));
            m.insert("x".into(), json!(b64(k.as_bytes())));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_quoting_key_material_are_withheld() {
        for kp in [
            KeyPair::generate(Algorithm::EdDSA, None).unwrap(),
            KeyPair::generate(Algorithm::ES256, None).unwrap(),
        ] {
            let pem = kp.to_pkcs8_pem();
            let jwk = kp.private_jwk_json();
            let d: Value = serde_json::from_str(&jwk).unwrap();
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            for quoted in [
                pem.to_string(),
                jwk.to_string(),
                serde_json::to_string(&*pem).unwrap(),
                body.clone(),
                d["d"].as_str().unwrap().to_string(),
                base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()),
            ] {
                let msg = format!("admission webhook \"policy\" denied the request: {quoted}");
                let out = redact_encoded(&msg);
                assert!(out.starts_with("(message withheld"), "{msg} → {out}");
            }
        }
        for clean in [
            "Secret \"a-keyturn-keys\" is invalid: metadata.labels: Invalid value: \"a-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789-abcdefghijklmnopqrstuvwxyz\": must be no more than 63 characters",
            "ValidatingAdmissionPolicy 'no-keys-in-payments' with binding 'no-keys-in-payments-binding' denied request: signing keys are not allowed here",
            "secrets \"auth-signing-key\" is forbidden: User \"system:serviceaccount:keyturn:keyturn\" cannot update resource \"secrets\" in API group \"\" in the namespace \"identity\"",
            "unable to create new content in namespace payments because it is being terminated",
        ] {
            assert_eq!(redact_encoded(clean), clean);
        }
    }

    use super::*;

    #[test]
    fn rfc7638_section_3_1_vector() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(jwk.as_object().unwrap()).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn rfc8037_a3_vector_and_key_derivation() {
        // RFC 8037 A.1: the private seed d derives the public x of A.2, whose thumbprint is A.3.
        let d = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let sk = ed25519_dalek::SigningKey::from_bytes(&d.try_into().unwrap());
        let kp = KeyPair::from_inner(Algorithm::EdDSA, Inner::Ed25519(sk));
        let jwk = kp.public_jwk();
        assert_eq!(jwk["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(kp.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn thumbprint_needs_required_members() {
        assert!(
            thumbprint(
                json!({"kty":"EC","crv":"P-256","x":"AA"})
                    .as_object()
                    .unwrap()
            )
            .is_none()
        );
        assert!(thumbprint(json!({"kty":"oct","k":"AA"}).as_object().unwrap()).is_none());
        assert!(thumbprint(json!({"x":"AA"}).as_object().unwrap()).is_none());
    }

    use pkcs8::der::pem::PemLabel;

    /// The DER of a PEM document.
    fn der_of(pem: &str) -> Vec<u8> {
        pkcs8::der::pem::decode_vec(pem.as_bytes()).unwrap().1
    }

    #[test]
    fn private_pem_is_pkcs8_v1_as_openssl_writes_it() {
        for alg in Algorithm::ALL {
            let n = if alg == Algorithm::EdDSA { 200 } else { 3 };
            for _ in 0..n {
                let kp = KeyPair::generate(alg, None).unwrap();
                let pem = kp.to_pkcs8_pem();
                assert!(pem.ends_with("-----\n"), "{alg}: trailing newline");
                assert!(pem.lines().all(|l| l.len() <= 64), "{alg}: 64-column lines");
                let der = der_of(&pem);
                let info = pkcs8::PrivateKeyInfoRef::try_from(der.as_slice()).unwrap();
                assert_eq!(info.version(), pkcs8::Version::V1, "{alg}: PKCS#8 v1");
                assert!(info.public_key.is_none(), "{alg}: no RFC 5958 public key");
                if alg == Algorithm::EdDSA {
                    // RFC 8410 §10.3's example layout: 48 bytes, this fixed prefix.
                    assert_eq!(der.len(), 48);
                    assert_eq!(
                        der[..16],
                        [
                            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70,
                            0x04, 0x22, 0x04, 0x20
                        ]
                    );
                }
                let back = KeyPair::from_pkcs8_pem(alg, &pem).unwrap();
                assert_eq!(back.kid(), kp.kid(), "{alg}: same key back");
            }
        }
    }

    const PKCS8_LABEL: &str = pkcs8::PrivateKeyInfoRef::PEM_LABEL;

    #[test]
    fn pem_round_trip_every_algorithm() {
        for alg in Algorithm::ALL {
            let kp = KeyPair::generate(alg, None).unwrap();
            let pem = kp.to_pkcs8_pem();
            // The PKCS#8 label, read from the encoded key rather than spelled out here.
            let label = pkcs8::der::pem::decode_label(pem.as_bytes()).unwrap();
            assert_eq!(label, PKCS8_LABEL, "{alg}: PKCS#8 PEM");
            let back = KeyPair::from_pkcs8_pem(alg, &pem).unwrap();
            assert_eq!(back.kid(), kp.kid(), "{alg}: kid survives PEM round trip");
            assert_eq!(back.public_jwk(), kp.public_jwk());
        }
    }

    #[test]
    fn pem_of_wrong_family_is_rejected_without_quoting_it() {
        let ec = KeyPair::generate(Algorithm::ES256, None).unwrap();
        let pem = ec.to_pkcs8_pem();
        let err = KeyPair::from_pkcs8_pem(Algorithm::EdDSA, &pem).unwrap_err();
        let msg = err.to_string();
        assert!(
            !msg.contains(PKCS8_LABEL) && !msg.contains(&pem[40..60]),
            "{msg}"
        );
        assert!(KeyPair::from_pkcs8_pem(Algorithm::ES384, &pem).is_err());
        assert!(KeyPair::from_pkcs8_pem(Algorithm::RS256, &pem).is_err());
        assert!(KeyPair::from_pkcs8_pem(Algorithm::ES256, &pem[..pem.len() / 2]).is_err());
    }

    #[test]
    fn unsupported_rsa_size_is_an_error() {
        assert!(matches!(
            KeyPair::generate(Algorithm::RS256, Some(1024)),
            Err(KeyError::RsaSize(1024))
        ));
    }

    #[test]
    fn debug_redacts_private_material() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256] {
            let kp = KeyPair::generate(alg, None).unwrap();
            let dbg = format!("{kp:?}");
            let private: Value = serde_json::from_str(&kp.private_jwk_json()).unwrap();
            let d = private["d"].as_str().unwrap();
            assert!(dbg.contains("<redacted>") && !dbg.contains(d), "{dbg}");
        }
    }

    #[test]
    fn private_jwk_has_private_members_and_matching_public_part() {
        for alg in Algorithm::ALL {
            let kp = KeyPair::generate(alg, None).unwrap();
            let private: Value = serde_json::from_str(&kp.private_jwk_json()).unwrap();
            assert!(private.get("d").is_some(), "{alg}");
            for (k, v) in kp.public_jwk().as_object().unwrap() {
                assert_eq!(&private[k], v, "{alg}: member {k}");
            }
            if alg.is_rsa() {
                for m in ["p", "q", "dp", "dq", "qi"] {
                    assert!(private.get(m).is_some(), "{alg}: {m}");
                }
            }
        }
    }
}
