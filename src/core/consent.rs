//! Consent for fan-out (invariant I8): which namespaces other than its own a SigningKeySet's
//! JWKS copy may be written into. A namespace consents with a [`SigningKeySetGrant`] naming
//! the set (or every set of its namespace); nothing else counts: not the set's spec, not a
//! label on the namespace, not a ConfigMap anyone could write. Pure functions of (set,
//! observed namespaces, observed grants), unit-tested here; `reconcile` reads the objects.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::core::crd::{SetRef, SigningKeySet, SigningKeySetGrant};

/// Where a set's JWKS goes, and where it would go but may not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FanOut {
    /// Namespaces that get a copy: the set's own, and every requested one that consented.
    pub targets: BTreeSet<String>,
    /// Namespaces `spec.jwks.namespaces` names that did not consent (sorted): nothing is
    /// written there.
    pub denied: Vec<String>,
    /// How many namespaces only `spec.jwks.namespaceSelector` matched did not consent: a
    /// count, never their names (a selector must not tell a tenant which namespaces exist
    /// and how they are labelled).
    pub denied_selected: usize,
    /// Why `denied` is denied: [`Denial::NoGrant`] or, in namespace-only mode, [`Denial::Disabled`].
    pub denial: Denial,
}

/// Why requested namespaces get no copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Denial {
    /// No SigningKeySetGrant there accepts the set.
    #[default]
    NoGrant,
    /// The operator runs in namespace-only mode and writes nowhere else.
    Disabled,
}

/// True when the spec asks for copies outside the set's namespace.
pub fn requested(sks: &SigningKeySet) -> bool {
    !sks.spec.jwks.namespaces.is_empty() || sks.spec.jwks.namespace_selector.is_some()
}

/// The fan-out of `sks` (at `set`) given every namespace and every grant of the cluster.
/// Listed namespaces that do not exist and terminating namespaces are skipped (neither
/// targets nor denied). `Err` names a selector the API server would not accept.
pub fn fan_out(
    set: &SetRef,
    sks: &SigningKeySet,
    namespaces: &[Namespace],
    grants: &[SigningKeySetGrant],
) -> Result<FanOut, String> {
    let own = &set.namespace;
    let mut out = FanOut {
        targets: BTreeSet::from([own.clone()]),
        ..Default::default()
    };
    let jwks = &sks.spec.jwks;
    let selector = match &jwks.namespace_selector {
        None => None,
        Some(sel) => {
            check_label_syntax(sel).map_err(|e| format!("spec.jwks.namespaceSelector: {e}"))?;
            Some(
                Selector::try_from(sel.clone())
                    .map_err(|e| format!("spec.jwks.namespaceSelector: {e}"))?,
            )
        }
    };
    let consenting = consenting(set, sks, grants);
    let no_labels = BTreeMap::new();
    for n in namespaces {
        let ns = n.name_any();
        let active = n.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
            && n.metadata.deletion_timestamp.is_none();
        let chosen = jwks.namespaces.contains(&ns)
            || selector
                .as_ref()
                .is_some_and(|s| s.matches(n.metadata.labels.as_ref().unwrap_or(&no_labels)));
        if ns == *own || !active || !chosen {
            continue;
        }
        if consenting.contains(&ns) {
            out.targets.insert(ns);
        } else if jwks.namespaces.contains(&ns) {
            out.denied.push(ns);
        } else {
            out.denied_selected += 1;
        }
    }
    out.denied.sort();
    Ok(out)
}

/// The namespaces whose grants accept the copy of `sks` (at `set`) under its name (the set's
/// own namespace only if a grant there says so).
pub fn consenting(
    set: &SetRef,
    sks: &SigningKeySet,
    grants: &[SigningKeySetGrant],
) -> BTreeSet<String> {
    let copy = sks.config_map_name();
    grants
        .iter()
        .filter(|g| g.accepts(&set.namespace, &set.name, &copy))
        .filter_map(|g| g.namespace())
        .collect()
}

/// The label rules the API server applies to a selector (and the CRD schema cannot spell):
/// keys are `[prefix/]name`, values at most 63 characters; a selector that breaks them could
/// never match and would fan out to nothing without a word.
fn check_label_syntax(sel: &LabelSelector) -> Result<(), String> {
    // A name part: 1–63 alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
    let name_ok = |n: &str| {
        (1..=63).contains(&n.len())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let key_ok = |k: &str| match k.split_once('/') {
        None => name_ok(k),
        Some((prefix, name)) => {
            (1..=253).contains(&prefix.len())
                && prefix
                    .split('.')
                    .all(|l| name_ok(l) && !l.contains('_') && l == l.to_lowercase())
                && name_ok(name)
        }
    };
    let value_ok = |v: &str| v.is_empty() || name_ok(v);
    let mut keys: Vec<&str> = vec![];
    let mut values: Vec<&str> = vec![];
    for (k, v) in sel.match_labels.iter().flatten() {
        keys.push(k);
        values.push(v);
    }
    for e in sel.match_expressions.iter().flatten() {
        keys.push(&e.key);
        values.extend(e.values.iter().flatten().map(String::as_str));
    }
    // Every namespace event evaluates every selector: a selector's size is capped (the CRD
    // caps the number of labels and expressions; this caps their values too).
    if values.len() > MAX_SELECTOR_VALUES {
        return Err(format!(
            "has {} values; at most {MAX_SELECTOR_VALUES} are accepted",
            values.len()
        ));
    }
    if let Some(k) = keys.into_iter().find(|k| !key_ok(k)) {
        return Err(format!(
            "label key {k:?} is not valid (`[prefix/]name`, the name at most 63 characters of letters, digits, `-`, `_`, `.`)"
        ));
    }
    if let Some(v) = values.into_iter().find(|v| !value_ok(v)) {
        let shown: String = v.chars().take(70).collect();
        return Err(format!(
            "label value {shown:?} is not valid (at most 63 characters of letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// Namespace-only mode: the set's own namespace (`set`'s) only; every listed namespace (and
/// the selector, which cannot be evaluated without reading namespaces) is denied.
pub fn own_only(set: &SetRef, sks: &SigningKeySet) -> FanOut {
    let own = set.namespace.clone();
    let mut denied: Vec<String> = sks
        .spec
        .jwks
        .namespaces
        .iter()
        .filter(|n| **n != own)
        .cloned()
        .collect();
    if sks.spec.jwks.namespace_selector.is_some() {
        denied.push("(spec.jwks.namespaceSelector)".into());
    }
    denied.sort();
    denied.dedup();
    FanOut {
        targets: BTreeSet::from([own]),
        denied,
        denied_selected: 0,
        denial: Denial::Disabled,
    }
}

/// Most label values a namespace selector may hold, in its labels and expressions together.
pub const MAX_SELECTOR_VALUES: usize = 256;

/// How many denied namespaces a condition message names before "and N more".
const NAMED: usize = 10;

/// The `FanOut` condition of a set (`sks` at `set`) that asks for copies elsewhere: (status,
/// reason, message).
pub fn condition(
    set: &SetRef,
    sks: &SigningKeySet,
    f: &FanOut,
) -> (&'static str, &'static str, String) {
    if f.denied.is_empty() && f.denied_selected == 0 {
        return (
            "True",
            "Consented",
            format!(
                "every requested namespace consented; the JWKS goes to {} namespace(s)",
                f.targets.len()
            ),
        );
    }
    let mut names = f.denied[..f.denied.len().min(NAMED)].join(", ");
    if f.denied.len() > NAMED {
        names.push_str(&format!(" and {} more", f.denied.len() - NAMED));
    }
    if f.denied_selected > 0 {
        if !names.is_empty() {
            names.push_str(", and ");
        }
        names.push_str(&format!(
            "{} namespace(s) spec.jwks.namespaceSelector matches",
            f.denied_selected
        ));
    }
    match f.denial {
        Denial::NoGrant => (
            "False",
            "ConsentMissing",
            format!(
                "no SigningKeySetGrant accepts {set} as ConfigMap {} in: {names}; keyturn writes nothing there (see docs/security.md)",
                sks.config_map_name()
            ),
        ),
        Denial::Disabled => (
            "False",
            "FanOutDisabled",
            format!(
                "keyturn runs in namespace-only mode and writes nothing outside {}: {names} get no copy",
                set.namespace
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(spec: serde_json::Value) -> SigningKeySet {
        serde_json::from_value(json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
            "metadata": {"name": "auth", "namespace": "tenant-a"}, "spec": spec
        }))
        .unwrap()
    }

    fn at(s: &SigningKeySet) -> SetRef {
        SetRef::of(s).unwrap()
    }

    fn ns(name: &str, labels: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn grant(in_ns: &str, from: serde_json::Value) -> SigningKeySetGrant {
        serde_json::from_value(json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySetGrant",
            "metadata": {"name": "g", "namespace": in_ns}, "spec": {"from": from}
        }))
        .unwrap()
    }

    fn cluster() -> Vec<Namespace> {
        vec![
            ns("tenant-a", json!({})),
            ns("payments", json!({"jwks": "on"})),
            ns("kube-system", json!({"jwks": "on"})),
            ns("gateway", json!({})),
        ]
    }

    fn set_of(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn without_a_grant_nothing_outside_the_own_namespace() {
        let s = set(json!({"jwks": {"namespaces": ["payments", "kube-system"],
            "namespaceSelector": {"matchLabels": {"jwks": "on"}}}}));
        let f = fan_out(&at(&s), &s, &cluster(), &[]).unwrap();
        assert_eq!(f.targets, set_of(&["tenant-a"]));
        assert_eq!(f.denied, vec!["kube-system", "payments"]);
        let (status, reason, msg) = condition(&at(&s), &s, &f);
        assert_eq!((status, reason), ("False", "ConsentMissing"));
        assert!(msg.contains("tenant-a/auth") && msg.contains("kube-system, payments"));
    }

    #[test]
    fn a_grant_naming_the_set_or_its_namespace_consents() {
        let s = set(json!({"jwks": {"namespaces": ["payments", "gateway", "kube-system"]}}));
        let grants = [
            grant(
                "payments",
                json!([{"namespace": "tenant-a", "name": "auth"}]),
            ),
            grant(
                "gateway",
                json!([{"namespace": "tenant-a", "configMapNames": ["auth-jwks"]}]),
            ),
        ];
        let f = fan_out(&at(&s), &s, &cluster(), &grants).unwrap();
        assert_eq!(f.targets, set_of(&["tenant-a", "payments", "gateway"]));
        assert_eq!(f.denied, vec!["kube-system"]);
    }

    #[test]
    fn a_grant_for_another_set_or_namespace_does_not_consent() {
        let s = set(json!({"jwks": {"namespaces": ["payments", "gateway"]}}));
        let grants = [
            grant(
                "payments",
                json!([{"namespace": "tenant-a", "name": "other"}]),
            ),
            grant(
                "gateway",
                json!([{"namespace": "tenant-b", "configMapNames": ["auth-jwks"]}]),
            ),
            // A grant in the set's own namespace says nothing about payments.
            grant(
                "tenant-a",
                json!([{"namespace": "tenant-a", "configMapNames": ["auth-jwks"]}]),
            ),
        ];
        let f = fan_out(&at(&s), &s, &cluster(), &grants).unwrap();
        assert_eq!(f.targets, set_of(&["tenant-a"]));
        assert_eq!(f.denied, vec!["gateway", "payments"]);
    }

    /// Name squatting: a grant for every set of a namespace accepts only the copy names it
    /// lists (without a list, none); a grant naming the set accepts its chosen name unless
    /// it lists others.
    #[test]
    fn the_grant_decides_the_names_copies_may_take() {
        let default = set(json!({"jwks": {"namespaces": ["payments"]}}));
        let squatter =
            set(json!({"jwks": {"namespaces": ["payments"], "configMapName": "payments-jwks"}}));
        let consents = |s: &SigningKeySet, from: serde_json::Value| {
            let f = fan_out(&at(s), s, &cluster(), &[grant("payments", from)]).unwrap();
            f.targets.contains("payments")
        };
        // Every set of tenant-a, with no names listed: nothing is accepted.
        assert!(!consents(&default, json!([{"namespace": "tenant-a"}])));
        // With names: exactly those.
        let listed = json!([{"namespace": "tenant-a", "configMapNames": ["auth-jwks"]}]);
        assert!(consents(&default, listed.clone()));
        assert!(!consents(&squatter, listed));
        // A grant naming the set: the set's own choice, unless the grant lists names.
        assert!(consents(
            &squatter,
            json!([{"namespace": "tenant-a", "name": "auth"}])
        ));
        assert!(!consents(
            &squatter,
            json!([{"namespace": "tenant-a", "name": "auth", "configMapNames": ["auth-jwks"]}])
        ));
        // The refusal names the copy's name, so the grant's author can list it.
        let f = fan_out(&at(&squatter), &squatter, &cluster(), &[]).unwrap();
        let (_, reason, msg) = condition(&at(&squatter), &squatter, &f);
        assert_eq!(reason, "ConsentMissing");
        assert!(msg.contains("as ConfigMap payments-jwks"), "{msg}");
    }

    #[test]
    fn the_selector_needs_consent_too_and_skips_terminating_namespaces() {
        let s = set(json!({"jwks": {"namespaceSelector": {"matchLabels": {"jwks": "on"}}}}));
        let mut nss = cluster();
        let mut gone = ns("leaving", json!({"jwks": "on"}));
        gone.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
            phase: Some("Terminating".into()),
            ..Default::default()
        });
        nss.push(gone);
        let grants = [
            grant(
                "payments",
                json!([{"namespace": "tenant-a", "name": "auth"}]),
            ),
            grant(
                "leaving",
                json!([{"namespace": "tenant-a", "name": "auth"}]),
            ),
        ];
        let f = fan_out(&at(&s), &s, &nss, &grants).unwrap();
        assert_eq!(f.targets, set_of(&["tenant-a", "payments"]));
        // Only the selector chose kube-system: it is counted, never named.
        assert_eq!(f.denied, Vec::<String>::new());
        assert_eq!(f.denied_selected, 1);
        let (_, reason, msg) = condition(&at(&s), &s, &f);
        assert_eq!(reason, "ConsentMissing");
        assert!(!msg.contains("kube-system"), "{msg}");
        assert!(
            msg.contains("1 namespace(s) spec.jwks.namespaceSelector matches"),
            "{msg}"
        );
    }

    #[test]
    fn a_listed_namespace_is_named_and_a_selected_one_counted() {
        let s = set(json!({"jwks": {"namespaces": ["payments"],
            "namespaceSelector": {"matchLabels": {"jwks": "on"}}}}));
        let mut nss = cluster();
        nss.push(ns("hidden", json!({"jwks": "on"})));
        let f = fan_out(&at(&s), &s, &nss, &[]).unwrap();
        let msg = condition(&at(&s), &s, &f).2;
        assert!(msg.contains("payments"), "{msg}");
        assert!(
            !msg.contains("hidden") && !msg.contains("kube-system"),
            "{msg}"
        );
        assert!(msg.contains("2 namespace(s)"), "{msg}");
    }

    #[test]
    fn selector_labels_follow_the_api_servers_rules() {
        let ok = |sel: serde_json::Value| {
            let s = set(json!({"jwks": {"namespaceSelector": sel}}));
            fan_out(&at(&s), &s, &cluster(), &[]).map(|_| ())
        };
        for good in [
            json!({"matchLabels": {"team": "a".repeat(63)}}),
            json!({"matchLabels": {"example.com/team": "", "a_b.c-d": "X_y.z-1"}}),
            json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["payments"]}]}),
        ] {
            assert_eq!(ok(good.clone()), Ok(()), "{good}");
        }
        for bad in [
            json!({"matchLabels": {"team": "a".repeat(64)}}),
            json!({"matchLabels": {"team": "-x"}}),
            json!({"matchLabels": {"": "x"}}),
            json!({"matchLabels": {"Example.COM/team": "x"}}),
            json!({"matchLabels": {"a/b/c": "x"}}),
            json!({"matchExpressions": [{"key": "team", "operator": "In", "values": ["ok", "not ok"]}]}),
        ] {
            let e = ok(bad.clone()).unwrap_err();
            assert!(
                e.starts_with("spec.jwks.namespaceSelector: label"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_selector_with_too_many_values_is_refused() {
        let values: Vec<String> = (0..=MAX_SELECTOR_VALUES).map(|i| format!("v{i}")).collect();
        let s = set(json!({"jwks": {"namespaceSelector": {"matchExpressions": [
            {"key": "team", "operator": "In", "values": values}]}}}));
        let e = fan_out(&at(&s), &s, &cluster(), &[]).unwrap_err();
        assert!(
            e.starts_with("spec.jwks.namespaceSelector") && e.contains("257 values"),
            "{e}"
        );
        let fewer = set(json!({"jwks": {"namespaceSelector": {"matchExpressions": [
            {"key": "team", "operator": "In", "values": &values[..MAX_SELECTOR_VALUES]}]}}}));
        assert!(fan_out(&at(&fewer), &fewer, &cluster(), &[]).is_ok());
    }

    #[test]
    fn a_bad_selector_names_the_field() {
        let s = set(json!({"jwks": {"namespaceSelector": {"matchExpressions": [
            {"key": "a", "operator": "Sometimes", "values": ["x"]}]}}}));
        let e = fan_out(&at(&s), &s, &cluster(), &[]).unwrap_err();
        assert!(e.starts_with("spec.jwks.namespaceSelector"), "{e}");
    }

    #[test]
    fn full_consent_is_a_true_condition() {
        let s = set(json!({"jwks": {"namespaces": ["payments"]}}));
        let f = fan_out(
            &at(&s),
            &s,
            &cluster(),
            &[grant(
                "payments",
                json!([{"namespace": "tenant-a", "name": "auth"}]),
            )],
        )
        .unwrap();
        assert_eq!(condition(&at(&s), &s, &f).0, "True");
    }

    #[test]
    fn namespace_only_mode_denies_every_other_namespace() {
        let s = set(json!({"jwks": {"namespaces": ["payments", "tenant-a"],
            "namespaceSelector": {"matchLabels": {"jwks": "on"}}}}));
        let f = own_only(&at(&s), &s);
        assert_eq!(f.targets, set_of(&["tenant-a"]));
        assert_eq!(
            f.denied,
            vec![
                "(spec.jwks.namespaceSelector)".to_string(),
                "payments".into()
            ]
        );
        assert_eq!(condition(&at(&s), &s, &f).1, "FanOutDisabled");
    }

    #[test]
    fn long_denials_are_cut_in_the_message() {
        let names: Vec<String> = (0..25).map(|i| format!("n{i:02}")).collect();
        let s = set(json!({"jwks": {"namespaces": names}}));
        let nss: Vec<Namespace> = names.iter().map(|n| ns(n, json!({}))).collect();
        let f = fan_out(&at(&s), &s, &nss, &[]).unwrap();
        assert_eq!(f.denied.len(), 25);
        assert!(condition(&at(&s), &s, &f).2.contains("and 15 more"));
    }
}
