//! What the signer serves: a [`Snapshot`] built from one state.

use chrono::{DateTime, Utc};

use super::{MIN_TOKEN_LIFETIME_SECONDS, SIGNER_ALGORITHMS, SignerError, file, proto};
use crate::core::keys::KeyPair;
use crate::core::state::{KeyState, SetState};

/// What the signer serves, built from one state: the Active key and every public key.
pub struct Snapshot {
    /// NAMESPACE/NAME of the set.
    pub set: String,
    /// The signing key, if the set has an Active key.
    pub(super) active: Option<KeyPair>,
    /// Every key, SPKI DER, in the state's order.
    pub(super) keys: Vec<proto::Key>,
    /// When the state last changed (its newest lifecycle time).
    pub data_timestamp: DateTime<Utc>,
    /// Seconds; `Metadata`'s answer.
    pub max_token_lifetime_seconds: i64,
    /// Keys per lifecycle state, for the metrics.
    pub(super) counts: [(KeyState, i64); 4],
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("set", &self.set)
            .field("active", &self.active.as_ref().map(KeyPair::kid))
            .field(
                "keys",
                &self.keys.iter().map(|k| &k.key_id).collect::<Vec<_>>(),
            )
            .field("data_timestamp", &self.data_timestamp)
            .finish()
    }
}

impl Snapshot {
    /// Builds what to serve from a parsed state. Refused: an Active key of an algorithm the
    /// API server does not accept, a lifetime under 10 minutes.
    pub fn new(
        set: &str,
        state: &SetState,
        max_token_lifetime_seconds: i64,
    ) -> Result<Snapshot, SignerError> {
        if max_token_lifetime_seconds < MIN_TOKEN_LIFETIME_SECONDS {
            return Err(SignerError::Set {
                set: set.into(),
                why: format!(
                    "spec.maxTokenLifetime is {max_token_lifetime_seconds}s; the API server needs at least {MIN_TOKEN_LIFETIME_SECONDS}s (10m)"
                ),
            });
        }
        let mut active = None;
        let mut keys = Vec::with_capacity(state.keys.len());
        let mut counts = KeyState::ALL.map(|s| (s, 0i64));
        for r in &state.keys {
            let bad = |why: String| SignerError::Key {
                kid: r.kid.clone(),
                why,
            };
            let m = r
                .public_jwk
                .as_object()
                .ok_or_else(|| bad("public JWK is not an object".into()))?;
            let public = crate::core::keys::public_from_jwk(m)
                .map_err(|e| bad(format!("public JWK {e}")))?;
            keys.push(proto::Key {
                key_id: r.kid.clone(),
                key: crate::core::keys::spki_der(&public),
                exclude_from_oidc_discovery: false,
            });
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == r.state()) {
                c.1 += 1;
            }
            if r.state() == KeyState::Active {
                if !SIGNER_ALGORITHMS.contains(&r.alg) {
                    return Err(SignerError::Set {
                        set: set.into(),
                        why: format!(
                            "its Active key is {}; the API server accepts RS256, ES256 and ES384 only",
                            r.alg
                        ),
                    });
                }
                let pem = r
                    .private_pem
                    .as_ref()
                    .ok_or_else(|| bad("the Active key has no private key".into()))?;
                active = Some(
                    KeyPair::from_pkcs8_pem(r.alg, pem.expose()).map_err(|e| bad(e.to_string()))?,
                );
            }
        }
        Ok(Snapshot {
            set: set.into(),
            active,
            keys,
            data_timestamp: file::newest_time(state).unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
            max_token_lifetime_seconds,
            counts,
        })
    }

    /// The kid of the signing key.
    pub fn active_kid(&self) -> Option<&str> {
        self.active.as_ref().map(KeyPair::kid)
    }

    /// Every key's kid, in the state's order.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.key_id.as_str()).collect()
    }
}
