//! Which issuer URL each SigningKeySet may claim in its discovery document: the one it is
//! served under. A set's `spec.issuer` is its author's word; the URL clients reach is the
//! cluster admin's (`--public-url`, and `--issuer` for a set served at an origin of its own
//! behind an Ingress or Gateway). Discovery serves a set's document only when the two agree,
//! so no set can claim another set's issuer. Pure: the endpoint and the status both ask here.

use std::collections::BTreeMap;

/// The cluster admin's issuer URLs: `{public-url}/{namespace}/{name}` for every set, or the
/// URL `--issuer NAMESPACE/NAME=URL` gives one set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Issuers {
    public_url: Option<String>,
    pinned: BTreeMap<(String, String), String>,
}

/// Why a set's discovery document is not served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `--public-url`: keyturn does not know the URL clients reach it at.
    NoPublicUrl,
    /// `spec.issuer` is not the URL the set is served under.
    Mismatch {
        /// The issuer the set may claim.
        expected: String,
    },
}

impl Refusal {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoPublicUrl => "NoPublicUrl",
            Refusal::Mismatch { .. } => "IssuerMismatch",
        }
    }

    /// What an operator of the set reads.
    pub fn message(&self, issuer: &str) -> String {
        match self {
            Refusal::NoPublicUrl => "discovery needs the operator's --public-url (the URL clients reach this endpoint at); keyturn never builds URLs from request headers".into(),
            Refusal::Mismatch { expected } => format!(
                "spec.issuer {issuer:?} is not the URL this set's discovery document is served under ({expected}); set spec.issuer to it, or ask the cluster admin for `--issuer NAMESPACE/NAME={issuer}` (a set served at an origin of its own): no set claims another's issuer"
            ),
        }
    }
}

/// A `--issuer` value that is not `NAMESPACE/NAME=URL`, or names a URL twice.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--issuer {0}")]
pub struct BadIssuer(String);

impl Issuers {
    /// From `--public-url` (without its trailing `/`) and the `--issuer` pins.
    pub fn new(
        public_url: Option<String>,
        pins: impl IntoIterator<Item = String>,
    ) -> Result<Self, BadIssuer> {
        let mut pinned = BTreeMap::new();
        for pin in pins {
            let (set, url) = pin
                .split_once('=')
                .ok_or_else(|| BadIssuer(format!("{pin:?}: expected NAMESPACE/NAME=URL")))?;
            let (ns, name) = set
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                .ok_or_else(|| BadIssuer(format!("{pin:?}: expected NAMESPACE/NAME=URL")))?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(BadIssuer(format!("{pin:?}: the URL must be http(s)")));
            }
            let url = url.trim_end_matches('/').to_string();
            if pinned.values().any(|u| *u == url) {
                return Err(BadIssuer(format!("{pin:?}: {url} is given to two sets")));
            }
            pinned.insert((ns.to_string(), name.to_string()), url);
        }
        Ok(Issuers {
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
            pinned,
        })
    }

    /// The base URL of the public port as clients reach it (`--public-url`).
    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref()
    }

    /// The issuer URL the set `namespace/name` may claim.
    pub fn expected(&self, namespace: &str, name: &str) -> Option<String> {
        if let Some(u) = self.pinned.get(&(namespace.to_string(), name.to_string())) {
            return Some(u.clone());
        }
        let base = self.public_url.as_deref()?;
        Some(format!("{base}/{namespace}/{name}"))
    }

    /// `Ok` when `issuer` (the set's `spec.issuer`) may be served for `namespace/name`.
    /// Compared without a trailing `/`, as relying parties compare issuers.
    /// Without `--public-url` nothing is served: `jwks_uri` is built from it.
    pub fn check(&self, namespace: &str, name: &str, issuer: &str) -> Result<(), Refusal> {
        if self.public_url.is_none() {
            return Err(Refusal::NoPublicUrl);
        }
        let expected = self.expected(namespace, name).ok_or(Refusal::NoPublicUrl)?;
        if issuer.trim_end_matches('/') == expected {
            Ok(())
        } else {
            Err(Refusal::Mismatch { expected })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuers(pins: &[&str]) -> Issuers {
        Issuers::new(
            Some("https://keys.example.com/".into()),
            pins.iter().map(|p| p.to_string()),
        )
        .unwrap()
    }

    #[test]
    fn a_set_claims_only_the_url_it_is_served_under() {
        let i = issuers(&[]);
        assert_eq!(
            i.check("identity", "auth", "https://keys.example.com/identity/auth"),
            Ok(())
        );
        assert_eq!(
            i.check(
                "identity",
                "auth",
                "https://keys.example.com/identity/auth/"
            ),
            Ok(())
        );
        // Another set's issuer, or an origin of its own the admin did not give it.
        for claimed in [
            "https://keys.example.com/payments/auth",
            "https://auth.example.com",
            "https://keys.example.com/identity/auth/x",
        ] {
            let r = i.check("identity", "auth", claimed).unwrap_err();
            assert_eq!(r.reason(), "IssuerMismatch");
            assert!(
                r.message(claimed)
                    .contains("(https://keys.example.com/identity/auth)"),
                "{}",
                r.message(claimed)
            );
        }
    }

    #[test]
    fn the_admin_gives_one_set_an_origin_of_its_own() {
        let i = issuers(&["identity/auth=https://auth.example.com/"]);
        assert_eq!(
            i.check("identity", "auth", "https://auth.example.com"),
            Ok(())
        );
        // The pinned set no longer claims the default URL; no other set claims the origin.
        assert!(
            i.check("identity", "auth", "https://keys.example.com/identity/auth")
                .is_err()
        );
        assert!(
            i.check("other", "auth", "https://auth.example.com")
                .is_err()
        );
    }

    #[test]
    fn without_a_public_url_nothing_is_served() {
        let i = Issuers::new(None, ["a/b=https://b.example.com".to_string()]).unwrap();
        assert_eq!(
            i.check("a", "b", "https://b.example.com"),
            Err(Refusal::NoPublicUrl)
        );
    }

    #[test]
    fn bad_pins_are_refused_naming_the_flag() {
        for bad in [
            "auth=https://a.example.com",
            "/auth=https://a.example.com",
            "identity/auth",
            "identity/auth=ftp://a.example.com",
        ] {
            let e = Issuers::new(None, [bad.to_string()]).unwrap_err();
            assert!(e.to_string().starts_with("--issuer "), "{e}");
        }
        let twice = Issuers::new(
            None,
            [
                "a/b=https://x.example.com".to_string(),
                "c/d=https://x.example.com/".to_string(),
            ],
        )
        .unwrap_err();
        assert!(twice.to_string().contains("given to two sets"), "{twice}");
    }
}
