//! JSON Web Key Sets: deterministic bytes, parsing, and the correctness rules every
//! published set must pass (RFC 7517, 7518, 7638, 8037; see DESIGN.md "JWKS correctness").

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use sha2::{Digest, Sha256};

/// The smallest RSA modulus a published key may have (RFC 7518 §3.3: 2048 bits).
pub const MIN_RSA_BITS: u32 = 2048;

/// Members that would reveal private key material (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
pub const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a JWKS or one of its keys breaks the rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    /// The document is not `{"keys":[...]}` JSON.
    #[error("not a JWKS document: {0}")]
    Shape(String),
    /// A key breaks a rule; `index` is its position in `keys`.
    #[error("key {index}: {why}")]
    Key {
        /// Position in `keys`.
        index: usize,
        /// The broken rule.
        why: String,
    },
}

/// Serializes public JWKs, in the given order, as compact `{"keys":[...]}` with sorted members.
/// The same keys in the same order always give the same bytes.
pub fn to_bytes(keys: &[Value]) -> Vec<u8> {
    let serialized: Vec<String> = keys.iter().map(serialize_key).collect();
    assemble(serialized.iter().map(String::as_str))
}

/// One public JWK as [`to_bytes`] writes it inside a document: compact, members sorted.
pub fn serialize_key(key: &Value) -> String {
    serde_json::to_string(key).expect("JSON values always serialize")
}

/// The document of keys already serialized by [`serialize_key`], in the given order: the
/// same bytes [`to_bytes`] writes for those keys.
pub fn assemble<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = b"{\"keys\":[".to_vec();
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(k.as_bytes());
    }
    out.extend_from_slice(b"]}\n");
    out
}

/// Parses a JWKS document into its keys, without validating them.
pub fn parse(bytes: &[u8]) -> Result<Vec<Value>, JwksError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| JwksError::Shape(e.to_string()))?;
    match v.get("keys") {
        Some(Value::Array(keys)) => Ok(keys.clone()),
        _ => Err(JwksError::Shape("missing \"keys\" array".into())),
    }
}

/// The `kid`s of a JWKS document, in order; keys without a string `kid` are skipped.
pub fn kids(bytes: &[u8]) -> Result<Vec<String>, JwksError> {
    Ok(parse(bytes)?
        .iter()
        .filter_map(|k| k.get("kid").and_then(Value::as_str).map(str::to_string))
        .collect())
}

/// A base64url (unpadded) member of a JWK, decoded; the error names the member, never its value.
pub(crate) fn b64_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string member {name:?}"))?;
    if s.contains('=') || s.contains('+') || s.contains('/') {
        return Err(format!("member {name:?} is not base64url without padding"));
    }
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| format!("member {name:?} is not base64url without padding"))
}

/// Checks one public JWK against every rule keyturn publishes by.
pub fn validate_key(jwk: &Value) -> Result<(), String> {
    let m = jwk.as_object().ok_or("not a JSON object")?;
    for p in PRIVATE_MEMBERS {
        if m.contains_key(p) {
            return Err(format!("private member {p:?} present"));
        }
    }
    let kty = m.get("kty").and_then(Value::as_str).ok_or("missing kty")?;
    let kid = m.get("kid").and_then(Value::as_str).ok_or("missing kid")?;
    if m.get("use").and_then(Value::as_str) != Some("sig") {
        return Err("use must be \"sig\"".into());
    }
    let alg = m.get("alg").and_then(Value::as_str).ok_or("missing alg")?;
    match kty {
        "RSA" => {
            if !matches!(
                alg,
                "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512"
            ) {
                return Err(format!("alg {alg} does not fit kty RSA"));
            }
            let n = b64_member(m, "n")?;
            if n.first() == Some(&0) {
                return Err("n has a leading zero octet".into());
            }
            if n.len() * 8 < MIN_RSA_BITS as usize {
                return Err(format!(
                    "n has {} bits; at least {MIN_RSA_BITS} required",
                    n.len() * 8
                ));
            }
            let e = b64_member(m, "e")?;
            if e.is_empty() || e.first() == Some(&0) {
                return Err("e is not minimal".into());
            }
        }
        "EC" => {
            let (want_crv, len) = match alg {
                "ES256" => ("P-256", 32),
                "ES384" => ("P-384", 48),
                _ => return Err(format!("alg {alg} does not fit kty EC")),
            };
            let crv = m.get("crv").and_then(Value::as_str).ok_or("missing crv")?;
            if crv != want_crv {
                return Err(format!("crv {crv} does not fit alg {alg}"));
            }
            for c in ["x", "y"] {
                let v = b64_member(m, c)?;
                if v.len() != len {
                    return Err(format!(
                        "{c} is {} bytes; {crv} needs exactly {len}",
                        v.len()
                    ));
                }
            }
        }
        "OKP" => {
            if alg != "EdDSA" {
                return Err(format!("alg {alg} does not fit kty OKP"));
            }
            if m.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                return Err("crv must be Ed25519".into());
            }
            if b64_member(m, "x")?.len() != 32 {
                return Err("x must be 32 bytes".into());
            }
        }
        other => return Err(format!("unsupported kty {other}")),
    }
    if kid.is_empty() {
        return Err("kid is empty".into());
    }
    Ok(())
}

/// [`validate_key`], plus keyturn's own contract for the keys it makes: the `kid` is the
/// key's RFC 7638 thumbprint. (A previous issuer's key published for verification keeps the
/// kid its tokens carry.)
pub fn validate_own_key(jwk: &Value) -> Result<(), String> {
    validate_key(jwk)?;
    let m = jwk.as_object().ok_or("not a JSON object")?;
    let tp = thumbprint(m).ok_or("cannot compute thumbprint")?;
    if m.get("kid").and_then(Value::as_str) != Some(tp.as_str()) {
        return Err("kid is not the RFC 7638 thumbprint of the key".into());
    }
    Ok(())
}

/// Checks a whole JWKS document: non-empty, unique kids, every key valid.
pub fn validate(bytes: &[u8]) -> Result<(), JwksError> {
    let keys = parse(bytes)?;
    if keys.is_empty() {
        return Err(JwksError::Shape("empty \"keys\" array".into()));
    }
    let mut seen = BTreeSet::new();
    for (index, k) in keys.iter().enumerate() {
        validate_key(k).map_err(|why| JwksError::Key { index, why })?;
        let kid = k["kid"].as_str().unwrap_or_default();
        if !seen.insert(kid.to_string()) {
            return Err(JwksError::Key {
                index,
                why: format!("duplicate kid {kid}"),
            });
        }
    }
    Ok(())
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) of a public JWK. Only the required members
/// of its `kty` take part; `None` when a required member is missing or `kty` is unknown.
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let kty = jwk.get("kty")?.as_str()?;
    let required: &[&str] = match kty {
        "RSA" => &["e", "kty", "n"],
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    // serde_json's Map is a BTreeMap (no `preserve_order`): members come out in
    // lexicographic order, compact, as RFC 7638 §3.3 requires.
    let mut canonical = Map::new();
    for name in required {
        canonical.insert(
            (*name).into(),
            Value::String(jwk.get(*name)?.as_str()?.to_string()),
        );
    }
    let bytes = serde_json::to_vec(&Value::Object(canonical)).ok()?;
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::crd::Algorithm;
    use crate::core::keys::KeyPair;
    use serde_json::json;

    /// How many keys per algorithm the property tests generate. EC coordinates have a
    /// leading zero byte in about 1 key in 128 (per coordinate), so thousands are needed
    /// to exercise that path.
    fn count(alg: Algorithm) -> usize {
        match alg {
            // RSA generation is ~50 ms a key even optimized; the RSA rules (n minimal, e
            // minimal) are checked on every key generated, 40 per algorithm.
            a if a.is_rsa() => 40,
            _ => 4000,
        }
    }

    #[test]
    fn thousands_of_generated_keys_obey_every_rule() {
        for alg in Algorithm::ALL {
            let mut leading_zero_coordinates = 0;
            let mut kids = BTreeSet::new();
            let mut batch = Vec::new();
            for _ in 0..count(alg) {
                let kp = KeyPair::generate(alg, None).unwrap();
                let jwk = kp.public_jwk();
                validate_own_key(&jwk).unwrap_or_else(|e| panic!("{alg}: {e}: {jwk}"));
                if let (Some(x), Some(y)) = (jwk.get("x"), jwk.get("y")) {
                    for c in [x, y] {
                        if URL_SAFE_NO_PAD.decode(c.as_str().unwrap()).unwrap()[0] == 0 {
                            leading_zero_coordinates += 1;
                        }
                    }
                }
                assert!(kids.insert(kp.kid().to_string()), "{alg}: duplicate kid");
                batch.push(jwk);
            }
            validate(&to_bytes(&batch)).unwrap();
            if matches!(alg, Algorithm::ES256 | Algorithm::ES384) {
                // 8000 coordinates, each zero-led with p = 1/256: expectation ~31; P(0) ~ e^-31.
                assert!(
                    leading_zero_coordinates > 0,
                    "{alg}: no zero-led coordinate seen; the test proves nothing"
                );
            }
        }
    }

    #[test]
    fn rsa_sizes_and_key_members() {
        for bits in [2048u32, 3072, 4096] {
            let kp = KeyPair::generate(Algorithm::PS256, Some(bits)).unwrap();
            let jwk = kp.public_jwk();
            validate_key(&jwk).unwrap();
            let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
            assert_eq!(n.len() * 8, bits as usize);
            assert_eq!(jwk["e"], "AQAB");
            assert_eq!(kp.rsa_bits(), Some(bits));
        }
    }

    #[test]
    fn rules_reject_bad_keys() {
        let good = KeyPair::generate(Algorithm::ES256, None)
            .unwrap()
            .public_jwk();
        validate_key(&good).unwrap();
        let mutate = |f: &dyn Fn(&mut Map<String, Value>)| {
            let mut k = good.as_object().unwrap().clone();
            f(&mut k);
            validate_key(&Value::Object(k))
        };
        assert!(
            mutate(&|k| {
                k.insert("d".into(), json!("AAAA"));
            })
            .unwrap_err()
            .contains("private")
        );
        assert!(
            mutate(&|k| {
                k.remove("use");
            })
            .is_err()
        );
        assert!(
            mutate(&|k| {
                k.insert("use".into(), json!("enc"));
            })
            .is_err()
        );
        assert!(
            mutate(&|k| {
                k.remove("alg");
            })
            .is_err()
        );
        assert!(
            mutate(&|k| {
                k.remove("kid");
            })
            .is_err()
        );
        // Another kid passes the publication rules (a previous issuer's key keeps its kid),
        // not keyturn's own-key contract.
        let mut other = good.clone();
        other["kid"] = json!("other");
        validate_key(&other).unwrap();
        assert!(validate_own_key(&other).unwrap_err().contains("thumbprint"));
        validate_own_key(&good).unwrap();
        assert!(
            mutate(&|k| {
                k.insert("kid".into(), json!(""));
            })
            .is_err()
        );
        assert!(
            mutate(&|k| {
                k.insert("alg".into(), json!("ES384"));
            })
            .is_err()
        );
        // A coordinate with its leading zero stripped (31 bytes) is rejected.
        assert!(
            mutate(&|k| {
                let x = URL_SAFE_NO_PAD.decode(k["x"].as_str().unwrap()).unwrap();
                k.insert("x".into(), json!(URL_SAFE_NO_PAD.encode(&x[1..])));
            })
            .unwrap_err()
            .contains("exactly 32")
        );
        // Padding is not base64url-without-padding.
        assert!(
            mutate(&|k| {
                let x = k["x"].as_str().unwrap().to_string();
                k.insert("x".into(), json!(format!("{x}=")));
            })
            .is_err()
        );

        let rsa = KeyPair::generate(Algorithm::RS256, None)
            .unwrap()
            .public_jwk();
        let mut k = rsa.as_object().unwrap().clone();
        let n = URL_SAFE_NO_PAD.decode(k["n"].as_str().unwrap()).unwrap();
        let mut padded = vec![0u8];
        padded.extend(&n);
        k.insert("n".into(), json!(URL_SAFE_NO_PAD.encode(&padded)));
        assert!(
            validate_key(&Value::Object(k))
                .unwrap_err()
                .contains("leading zero")
        );
    }

    #[test]
    fn documents_are_checked_whole() {
        assert!(validate(b"{\"keys\":[]}").is_err());
        assert!(validate(b"[]").is_err());
        assert!(validate(b"not json").is_err());
        let k = KeyPair::generate(Algorithm::EdDSA, None)
            .unwrap()
            .public_jwk();
        assert!(matches!(
            validate(&to_bytes(&[k.clone(), k.clone()])),
            Err(JwksError::Key { index: 1, .. })
        ));
        let bytes = to_bytes(std::slice::from_ref(&k));
        validate(&bytes).unwrap();
        assert_eq!(
            kids(&bytes).unwrap(),
            vec![k["kid"].as_str().unwrap().to_string()]
        );
    }

    #[test]
    fn bytes_are_deterministic_and_sorted() {
        let k = KeyPair::generate(Algorithm::ES256, None)
            .unwrap()
            .public_jwk();
        let a = to_bytes(std::slice::from_ref(&k));
        let reparsed = parse(&a).unwrap();
        assert_eq!(to_bytes(&reparsed), a, "parse → serialize is byte-stable");
        let s = String::from_utf8(a).unwrap();
        let order: Vec<usize> = [
            "\"alg\"", "\"crv\"", "\"kid\"", "\"kty\"", "\"use\"", "\"x\"", "\"y\"",
        ]
        .iter()
        .map(|m| s.find(m).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "members sorted: {s}");
    }

    #[test]
    fn assembled_documents_are_the_bytes_of_the_whole_value() {
        // Keys serialized one by one and joined (how the HTTP endpoint keeps them) must give
        // exactly the bytes serde_json writes for the whole document as one value.
        let keys: Vec<Value> = [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256]
            .into_iter()
            .map(|a| KeyPair::generate(a, None).unwrap().public_jwk())
            .collect();
        for n in 0..=keys.len() {
            let whole = serde_json::to_vec(&serde_json::json!({"keys": &keys[..n]})).unwrap();
            let mut expected = whole;
            expected.push(b'\n');
            assert_eq!(to_bytes(&keys[..n]), expected, "{n} keys");
            let one_by_one: Vec<String> = keys[..n].iter().map(serialize_key).collect();
            assert_eq!(assemble(one_by_one.iter().map(String::as_str)), expected);
        }
    }
}
