//! What `kubectl keyturn verify` decides (pure): a JWT checked against a set's published JWKS,
//! and the key's place in the set's lifecycle — which state it is in and until when tokens
//! signed with it verify. The binary (`src/bin/kubectl-keyturn.rs`) reads the objects and
//! prints this.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::core::crd::SigningKeySet;

/// The outcome of `verify`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// True when the signature verifies with the key the JWKS holds for the token's kid.
    pub valid: bool,
    /// The token's kid (empty when it has none).
    pub kid: String,
    /// The token's `alg`.
    pub alg: String,
    /// Why it does not verify, or the key's state when it does.
    pub detail: String,
    /// The key's state in the set (Pending, Active, Retired, VerificationOnly), when listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Until when tokens of this key verify (RFC 3339), as far as the schedule says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifies_until: Option<String>,
    /// True when `verifies_until` is a lower bound (the key has not retired yet).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub at_least: bool,
    /// The token's `exp` (RFC 3339), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Verifies `token` against `jwks` (the set's published JWKS) and places its key in `set`'s
/// lifecycle at `now`. Only the signature and the key are judged; `exp` is reported.
pub fn verify(token: &str, jwks: &[u8], set: &SigningKeySet, now: DateTime<Utc>) -> Verdict {
    let mut v = Verdict {
        valid: false,
        kid: String::new(),
        alg: String::new(),
        detail: String::new(),
        state: None,
        verifies_until: None,
        at_least: false,
        expires: None,
    };
    let header = match jsonwebtoken::decode_header(token.trim()) {
        Ok(h) => h,
        Err(e) => {
            v.detail = format!("not a JWT: {e}");
            return v;
        }
    };
    v.alg = format!("{:?}", header.alg);
    let Some(kid) = header.kid else {
        v.detail = "the token has no kid; keyturn's verifiers find the key by kid".into();
        return v;
    };
    v.kid = kid.clone();
    let set_jwks: jsonwebtoken::jwk::JwkSet = match serde_json::from_slice(jwks) {
        Ok(s) => s,
        Err(e) => {
            v.detail = format!("the published JWKS does not parse: {e}");
            return v;
        }
    };
    let Some(jwk) = set_jwks.find(&kid) else {
        v.detail = format!(
            "unknown kid: {kid} is not in the set's JWKS (never published by this set, or removed after its overlap)"
        );
        return v;
    };
    let key = match jsonwebtoken::DecodingKey::from_jwk(jwk) {
        Ok(k) => k,
        Err(e) => {
            v.detail = format!("the JWK for {kid} is unusable: {e}");
            return v;
        }
    };
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let claims = match jsonwebtoken::decode::<serde_json::Value>(token.trim(), &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            v.detail = format!("the signature does not verify with key {kid}: {e}");
            return v;
        }
    };
    v.valid = true;
    if let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_i64)
        && let Some(t) = DateTime::from_timestamp(exp, 0)
    {
        v.expires = Some(ts(t));
    }
    place(&mut v, set, now);
    v
}

/// The key's state and until when it verifies, from the set's status and schedule.
fn place(v: &mut Verdict, set: &SigningKeySet, now: DateTime<Utc>) {
    let status = set.status.clone().unwrap_or_default();
    let Some(k) = status.keys.iter().find(|k| k.kid == v.kid) else {
        v.detail = "the signature verifies; the set's status does not list the key yet".into();
        return;
    };
    v.state = Some(k.state.clone());
    let settings = crate::core::plan::validate(&set.spec, None).ok();
    let parse = |t: &Option<String>| t.as_ref().and_then(|t| t.parse::<DateTime<Utc>>().ok());
    let next = parse(&status.next_rotation_time);
    let (until, at_least) = match (k.state.as_str(), &settings) {
        ("Retired" | "VerificationOnly", _) => (parse(&k.remove_at), false),
        // It retires at the next rotation at the earliest, then stays for `overlap`.
        ("Active", Some(s)) => (next.map(|n| n + s.overlap), true),
        // It signs from the next rotation for `interval`, then stays for `overlap`.
        ("Pending", Some(s)) => (next.map(|n| n + s.interval + s.overlap), true),
        _ => (None, false),
    };
    v.verifies_until = until.map(ts);
    v.at_least = at_least && until.is_some();
    v.detail = match (&v.verifies_until, at_least) {
        (Some(u), true) => format!(
            "the signature verifies; key {} is {}; its tokens verify at least until {u} ({})",
            v.kid,
            k.state,
            crate::cli::view::relative(until.unwrap_or(now), now)
        ),
        (Some(u), false) => format!(
            "the signature verifies; key {} is {}; its tokens verify until {u} ({}), when it leaves the JWKS",
            v.kid,
            k.state,
            crate::cli::view::relative(until.unwrap_or(now), now)
        ),
        (None, _) => format!("the signature verifies; key {} is {}", v.kid, k.state),
    };
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::crd::Algorithm;
    use crate::core::keys::KeyPair;

    fn sign(kp: &KeyPair, kid: &str) -> String {
        let pem = kp.to_pkcs8_pem();
        let key = match kp.alg() {
            Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()),
            a if a.is_rsa() => jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()),
            _ => jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()),
        }
        .unwrap();
        let alg = format!("\"{}\"", kp.alg());
        let mut h = jsonwebtoken::Header::new(serde_json::from_str(&alg).unwrap());
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &json!({"sub": "x", "exp": 1_900_000_000}), &key).unwrap()
    }

    fn set_with(keys: serde_json::Value) -> SigningKeySet {
        serde_json::from_value(json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
            "metadata": {"name": "auth", "namespace": "identity"},
            "spec": {"rotation": {"interval": "10h", "prePublish": "1h", "overlap": "2h"}},
            "status": {"nextRotationTime": "2026-12-01T10:00:00Z", "keys": keys}
        }))
        .unwrap()
    }

    #[test]
    fn every_algorithm_verifies_and_is_placed_in_the_lifecycle() {
        let now: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
        for alg in Algorithm::ALL {
            let kp = KeyPair::generate(alg, None).unwrap();
            let jwks = crate::core::jwks::to_bytes(&[kp.public_jwk()]);
            let set =
                set_with(json!([{"kid": kp.kid(), "algorithm": alg.as_str(), "state": "Active"}]));
            let v = verify(&sign(&kp, kp.kid()), &jwks, &set, now);
            assert!(v.valid, "{alg}: {v:?}");
            assert_eq!(v.state.as_deref(), Some("Active"));
            // Next rotation at 10:00, then the overlap of 2h.
            assert_eq!(v.verifies_until.as_deref(), Some("2026-12-01T12:00:00Z"));
            assert!(v.at_least);
            assert_eq!(v.expires.as_deref(), Some("2030-03-17T17:46:40Z"));
        }
    }

    #[test]
    fn tampered_unknown_kid_and_retired_tokens() {
        let now: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
        let kp = KeyPair::generate(Algorithm::ES256, None).unwrap();
        let jwks = crate::core::jwks::to_bytes(&[kp.public_jwk()]);
        let set = set_with(
            json!([{"kid": kp.kid(), "algorithm": "ES256", "state": "Retired",
            "removeAt": "2026-12-01T03:00:00Z"}]),
        );
        let token = sign(&kp, kp.kid());

        let v = verify(&token, &jwks, &set, now);
        assert!(v.valid);
        assert_eq!(v.state.as_deref(), Some("Retired"));
        assert_eq!(v.verifies_until.as_deref(), Some("2026-12-01T03:00:00Z"));
        assert!(!v.at_least);
        assert!(v.detail.contains("when it leaves the JWKS"), "{}", v.detail);

        // The payload changed, the signature kept.
        let parts: Vec<&str> = token.split('.').collect();
        use base64::Engine;
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"admin","exp":1900000000}"#);
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        let v = verify(&tampered, &jwks, &set, now);
        assert!(!v.valid);
        assert!(
            v.detail.contains("signature does not verify"),
            "{}",
            v.detail
        );

        let other = KeyPair::generate(Algorithm::ES256, None).unwrap();
        let v = verify(&sign(&other, other.kid()), &jwks, &set, now);
        assert!(!v.valid);
        assert!(v.detail.starts_with("unknown kid"), "{}", v.detail);

        // Signed by another key under this key's kid.
        let v = verify(&sign(&other, kp.kid()), &jwks, &set, now);
        assert!(!v.valid);
        assert!(
            v.detail.contains("signature does not verify"),
            "{}",
            v.detail
        );

        let v = verify("not.a.jwt", &jwks, &set, now);
        assert!(
            !v.valid && v.detail.starts_with("not a JWT"),
            "{}",
            v.detail
        );
    }
}
