//! The `SigningKeySet` custom resource (`keyturn.dev/v1alpha1`).
//!
//! The CRD YAML in `crds/` is generated from these types (`keyturn crd`); a test fails when
//! the two drift apart. Doc comments on fields are what `kubectl explain` shows.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation whose change to any new value starts a manual rotation.
pub const ROTATE_ANNOTATION: &str = "keyturn.dev/rotate";
/// Label on every object keyturn creates: `app.kubernetes.io/managed-by: keyturn`.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "keyturn";
/// The RSA modulus sizes keyturn generates (`spec.rsaKeySize`); the first is the default.
pub const RSA_KEY_SIZES: [u32; 3] = [2048, 3072, 4096];

/// [`RSA_KEY_SIZES`] as a reader sees them: "2048, 3072 or 4096".
pub fn rsa_key_sizes_text() -> String {
    let all: Vec<String> = RSA_KEY_SIZES.iter().map(u32::to_string).collect();
    let (last, rest) = all.split_last().expect("sizes");
    format!("{} or {last}", rest.join(", "))
}

/// Label naming the SigningKeySet an object belongs to.
pub const SET_LABEL: &str = "keyturn.dev/signing-key-set";
/// Annotation on a user's Secret that lets the SigningKeySet it names import its key
/// (`spec.import`): the consent of whoever may write that Secret.
pub const IMPORT_ANNOTATION: &str = "keyturn.dev/import-into";
/// Annotation on a ConfigMap or Secret that lets the SigningKeySets it names (comma-separated)
/// read it as a `spec.verificationKeys` source: the consent of whoever may write it.
pub const VERIFICATION_ANNOTATION: &str = "keyturn.dev/verification-for";
/// What `spec.rotation.overlap` must exceed `spec.maxTokenLifetime` by: the kubelet's
/// propagation of the signing Secret to the issuer (the old key may sign this long after it
/// retires: measured up to 82 s at the kubelet's defaults, docs/benchmarks.md) plus clock skew.
/// The CRD's CEL rule spells the same value.
pub const TOKEN_LIFETIME_MARGIN: &str = "2m";
/// Field manager for every server-side apply keyturn makes.
pub const FIELD_MANAGER: &str = "keyturn";

/// A set of JWT signing keys that keyturn generates, publishes as a JWKS, and rotates.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keyturn.dev",
    version = "v1alpha1",
    kind = "SigningKeySet",
    namespaced,
    shortname = "sks",
    status = "SigningKeySetStatus",
    printcolumn = r#"{"name":"Algorithm","type":"string","jsonPath":".spec.algorithm"}"#,
    printcolumn = r#"{"name":"Active kid","type":"string","jsonPath":".status.activeKeyId"}"#,
    printcolumn = r#"{"name":"Keys","type":"integer","jsonPath":".status.keyCount"}"#,
    printcolumn = r#"{"name":"Next rotation","type":"string","jsonPath":".status.nextRotationTime"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Published","type":"string","priority":1,"jsonPath":".status.publishedNamespaces"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    category = "keyturn",
    doc = "A set of JWT signing keys that keyturn generates into a Secret, publishes as a JSON Web Key Set in ConfigMaps (and over HTTP), rotates on schedule with the next key published before it signs, and removes only after an overlap window. `kubectl explain signingkeyset.spec` describes each field; docs/lifecycle.md the key lifecycle.",
    // The name is the value of the keyturn.dev/signing-key-set label on every object keyturn
    // writes, and label values are at most 63 characters.
    validation = kube::core::Rule::new("size(self.metadata.name) <= 63").message("metadata.name: a SigningKeySet's name must be at most 63 characters (it is a label value on every object keyturn writes)")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.rsaKeySize) || self.algorithm.startsWith('RS') || self.algorithm.startsWith('PS')",
        "message": "spec.rsaKeySize may only be set when spec.algorithm is RS256, RS384, RS512, PS256, PS384 or PS512",
        "fieldPath": ".rsaKeySize",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "!has(self.maxTokenLifetime) || duration(self.rotation.overlap) >= duration(self.maxTokenLifetime) + duration('2m')",
        "message": "spec.rotation.overlap must be at least spec.maxTokenLifetime plus 2m (the kubelet's propagation of the signing Secret and clock skew): a token signed just before its key retires must verify until it expires",
        "fieldPath": ".rotation.overlap"
    }
]))]
pub struct SigningKeySetSpec {
    /// JWS algorithm of new keys: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA.
    /// A change applies to the next key, through the normal pre-publication.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// RSA modulus size in bits for RS*/PS* algorithms: 2048, 3072 or 4096 (default 2048).
    /// Must not be set for other algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = RSA_KEY_SIZES, "format" = "int32"))]
    pub rsa_key_size: Option<u32>,
    /// When keys rotate: how long each signs, how early the next is published, how long a
    /// replaced key stays published.
    #[serde(default)]
    pub rotation: RotationSpec,
    /// Name of the Secret that holds the Active private key for issuers to mount.
    /// Default: `<name>-signing-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 253, "pattern" = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub secret_name: Option<String>,
    /// Where the public JSON Web Key Set is published.
    #[serde(default)]
    pub jwks: JwksSpec,
    /// Emergency revocation: key ids listed here leave every JWKS at once and their private
    /// keys are destroyed; if the Active key is listed, a replacement becomes Active
    /// immediately.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = 64, "items" = {"type": "string", "maxLength": 128}))]
    pub revoked_key_ids: Vec<String>,
    /// Optional issuer URL; when set, an OpenID discovery document is also served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 2048, "pattern" = "^https?://"))]
    pub issuer: Option<String>,
    /// The longest lifetime of a token signed with this set's keys (a duration, e.g. `1h`).
    /// When set, `rotation.overlap` must be at least this plus 2m, so a token signed just
    /// before its key retires verifies until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 32, "pattern" = DURATION_PATTERN))]
    pub max_token_lifetime: Option<String>,
    /// Take the set's first key from an existing Secret instead of generating it, so tokens
    /// already signed with it keep verifying. Read once, when the set has no key yet; the
    /// Secret is never modified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportSpec>,
    /// Public keys of a previous issuer, published in the JWKS beside keyturn's own until a
    /// time, so its tokens keep verifying during a migration. keyturn reads the sources when
    /// the spec changes (or a source was missing or refused), not when the sources change,
    /// and only a source annotated `keyturn.dev/verification-for: <this set's name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = 16))]
    pub verification_keys: Vec<VerificationKeySource>,
}

/// Where the set's first key comes from when it is imported.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportSpec {
    /// Secret in the set's namespace holding the private key. It must carry the annotation
    /// `keyturn.dev/import-into: <this set's name>`.
    #[schemars(extend("maxLength" = 253, "pattern" = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub secret_name: String,
    /// Data key holding the key: PEM (PKCS#8, PKCS#1 RSA or SEC1 EC) or a private JWK.
    /// Default: `private.pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 253, "pattern" = "^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
    /// The kid the key must have (its RFC 7638 thumbprint); a key with another is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 128))]
    pub key_id: Option<String>,
}

/// Public keys published for verification only, until a time.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.configMapName) != has(self.secretName)",
        "message": "exactly one of configMapName and secretName must be set"
    }
]))]
pub struct VerificationKeySource {
    /// ConfigMap in the set's namespace holding the keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 253, "pattern" = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub config_map_name: Option<String>,
    /// Secret in the set's namespace holding the keys (public keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 253, "pattern" = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub secret_name: Option<String>,
    /// Data key holding a JWKS, one JWK, or PEM public keys (SPKI or PKCS#1 RSA).
    #[schemars(extend("maxLength" = 253, "pattern" = "^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// When these keys leave the JWKS (RFC 3339).
    pub until: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Algorithm of keys that name none (PEM RSA keys, JWKs without `alg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
}

/// Rotation schedule. Durations use the Kubernetes/Go form: `90s`, `15m`, `1h30m`, `720h`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.interval) > duration('0s')",
        "message": "spec.rotation.interval must be greater than 0",
        "fieldPath": ".interval"
    },
    {
        "rule": "duration(self.prePublish) > duration('0s')",
        "message": "spec.rotation.prePublish must be greater than 0",
        "fieldPath": ".prePublish"
    },
    {
        "rule": "duration(self.overlap) > duration('0s')",
        "message": "spec.rotation.overlap must be greater than 0",
        "fieldPath": ".overlap"
    },
    {
        "rule": "duration(self.prePublish) < duration(self.interval)",
        "message": "spec.rotation.prePublish must be shorter than spec.rotation.interval",
        "fieldPath": ".prePublish"
    }
]))]
pub struct RotationSpec {
    /// How long each key signs before the next one takes over (default 720h).
    #[serde(default = "default_interval")]
    #[schemars(extend("maxLength" = 32, "pattern" = DURATION_PATTERN))]
    pub interval: String,
    /// How long a new key is in the JWKS before it starts signing (default 1h). Must exceed
    /// the slowest verifier's JWKS refresh plus the kubelet's ConfigMap sync.
    #[serde(default = "default_pre_publish")]
    #[schemars(extend("maxLength" = 32, "pattern" = DURATION_PATTERN))]
    pub pre_publish: String,
    /// How long a replaced key stays in the JWKS after it stops signing (default 24h). Must
    /// exceed the longest token lifetime plus verifier cache time.
    #[serde(default = "default_overlap")]
    #[schemars(extend("maxLength" = 32, "pattern" = DURATION_PATTERN))]
    pub overlap: String,
}

/// Go duration syntax as Kubernetes CEL's `duration()` accepts it.
const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

fn default_interval() -> String {
    "720h".into()
}
fn default_pre_publish() -> String {
    "1h".into()
}
fn default_overlap() -> String {
    "24h".into()
}

impl Default for RotationSpec {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            pre_publish: default_pre_publish(),
            overlap: default_overlap(),
        }
    }
}

/// Where and how the public JWKS is published.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.namespaceSelector) || !has(self.namespaceSelector.matchLabels) || size(self.namespaceSelector.matchLabels) <= 32",
        "message": "spec.jwks.namespaceSelector.matchLabels: at most 32 labels",
        "fieldPath": ".namespaceSelector.matchLabels"
    },
    {
        "rule": "!has(self.namespaceSelector) || !has(self.namespaceSelector.matchExpressions) || size(self.namespaceSelector.matchExpressions) <= 16",
        "message": "spec.jwks.namespaceSelector.matchExpressions: at most 16 expressions",
        "fieldPath": ".namespaceSelector.matchExpressions"
    }
]))]
pub struct JwksSpec {
    /// Name of the JWKS ConfigMap. Default: `<name>-jwks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 253, "pattern" = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub config_map_name: Option<String>,
    /// Data key of the JWKS in the ConfigMap. Default: `jwks.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 253, "pattern" = "^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
    /// Extra namespaces that get an identical copy of the JWKS ConfigMap (each one only with a
    /// SigningKeySetGrant there accepting this set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = 1000, "items" = {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}))]
    pub namespaces: Vec<String>,
    /// Namespaces selected by label also get a copy; new matching namespaces are picked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// A JWS signing algorithm keyturn can generate keys for.
#[derive(
    Deserialize,
    Serialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    JsonSchema,
    PartialOrd,
    Ord,
)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    #[default]
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519 (RFC 8037).
    EdDSA,
}

impl Algorithm {
    /// Every algorithm, in a fixed order.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Parses a JWS `alg` name.
    pub fn parse(s: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// True for the RSA families (RS*, PS*).
    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        )
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a SigningKeySet, derived from the operator's Secrets.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeySetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Key id (RFC 7638 thumbprint) of the key that signs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_id: Option<String>,
    /// When the next key becomes Active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<String>,
    /// Number of keys in the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_count: Option<i32>,
    /// Every key in the JWKS, with its state and lifecycle times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// Namespaces whose JWKS ConfigMap holds the current key set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published_namespaces: Vec<String>,
    /// Standard conditions: `Ready` (published and signing), `Stalled` (a refusal that needs
    /// someone to act) and `Reconciling` (the first key is being made), the last two present
    /// only while true (kstatus), `FanOut` (consent of the namespaces asked for) and `Revoked`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One key of the set as shown in the status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub kid: String,
    /// JWS algorithm of this key.
    pub algorithm: String,
    /// Pending (published, not signing), Active (the signer), Retired (stopped signing) or
    /// VerificationOnly (a previous issuer's key from `spec.verificationKeys`).
    pub state: String,
    /// When the key first appeared in the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
    /// When the key started signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<String>,
    /// When the key stopped signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
    /// When the key leaves the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_at: Option<String>,
}

/// Name of the operator-internal Secret of the SigningKeySet `set`: `<set>-keyturn-keys`.
pub fn internal_secret_name(set: &str) -> String {
    format!("{set}-keyturn-keys")
}

impl SigningKeySet {
    /// Name of the signing Secret (`spec.secretName`, default `<name>-signing-key`).
    pub fn secret_name(&self) -> String {
        self.spec
            .secret_name
            .clone()
            .unwrap_or_else(|| format!("{}-signing-key", self.name_or_empty()))
    }

    /// Name of the operator-internal Secret holding every key's state and pending private keys.
    pub fn internal_secret_name(&self) -> String {
        internal_secret_name(self.name_or_empty())
    }

    /// Name of the JWKS ConfigMap (`spec.jwks.configMapName`, default `<name>-jwks`).
    pub fn config_map_name(&self) -> String {
        self.spec
            .jwks
            .config_map_name
            .clone()
            .unwrap_or_else(|| format!("{}-jwks", self.name_or_empty()))
    }

    /// Data key of the JWKS in the ConfigMap (default `jwks.json`).
    pub fn jwks_key(&self) -> String {
        self.spec
            .jwks
            .key
            .clone()
            .unwrap_or_else(|| "jwks.json".into())
    }

    fn name_or_empty(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}

/// Where a SigningKeySet is: its namespace and name, both present. A reconcile takes it once
/// from the set ([`SetRef::of`]) and hands it to every stage, which therefore never meets a
/// set without a namespace; the controller's per-set memory is keyed by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetRef {
    /// The set's namespace (where its Secrets and JWKS ConfigMap live).
    pub namespace: String,
    /// The set's name.
    pub name: String,
}

impl SetRef {
    /// The namespace and name of `sks`; `None` when either is missing (an object not read
    /// from the API server, which gives every SigningKeySet both). The one home of that rule.
    pub fn of(sks: &SigningKeySet) -> Option<SetRef> {
        Some(SetRef {
            namespace: sks.metadata.namespace.clone()?,
            name: sks.metadata.name.clone()?,
        })
    }
}

/// `namespace/name`, as the set is named in messages.
impl fmt::Display for SetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Consent, written in a target namespace, for SigningKeySets elsewhere to publish a copy of
/// their JWKS ConfigMap here (`spec.jwks.namespaces` / `namespaceSelector`). Without a grant
/// keyturn writes nothing into a namespace other than the set's own. Only those who may create
/// SigningKeySetGrants in this namespace (its administrators, or the cluster admin) can consent.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keyturn.dev",
    version = "v1alpha1",
    kind = "SigningKeySetGrant",
    namespaced,
    shortname = "sksgrant",
    category = "keyturn",
    doc = "Consent, written in a target namespace, for SigningKeySets in other namespaces to publish a copy of their JWKS ConfigMap here, under the names it lists. Without a grant keyturn writes nothing into a namespace other than a set's own.",
    printcolumn = r#"{"name":"From","type":"string","jsonPath":".spec.from[*].namespace"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeySetGrantSpec {
    /// The SigningKeySets whose JWKS copies this namespace accepts.
    #[schemars(extend("minItems" = 1, "maxItems" = 64))]
    pub from: Vec<GrantSource>,
}

/// One source of JWKS copies a namespace accepts.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.name) || has(self.configMapNames)",
        "message": "configMapNames: a grant for every SigningKeySet of a namespace (no name) must list the ConfigMap names its copies may take here"
    }
]))]
pub struct GrantSource {
    /// Namespace of the SigningKeySet.
    #[schemars(extend("maxLength" = 63, "pattern" = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: String,
    /// Name of the SigningKeySet; omit it to accept every SigningKeySet in `namespace` (then
    /// `configMapNames` is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 253, "pattern" = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: Option<String>,
    /// The names the copies may take in this namespace. Omitted (only with `name`): the
    /// named set's own `spec.jwks.configMapName`. A copy under any other name is refused, so
    /// a source cannot take a name this namespace's own sets or workloads will want.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minItems" = 1, "maxItems" = 16, "items" = {
        "type": "string", "maxLength": 253, "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    }))]
    pub config_map_names: Option<Vec<String>>,
}

impl GrantSource {
    /// True when this entry accepts the copy `copy_name` of the SigningKeySet `namespace/name`.
    pub fn accepts(&self, namespace: &str, name: &str, copy_name: &str) -> bool {
        let set_ok = self.namespace == namespace && self.name.as_deref().is_none_or(|n| n == name);
        let name_ok = match &self.config_map_names {
            Some(names) => names.iter().any(|n| n == copy_name),
            // Without a list, only a grant that names the set accepts (its chosen name).
            None => self.name.is_some(),
        };
        set_ok && name_ok
    }
}

impl SigningKeySetGrant {
    /// True when this grant accepts the copy `copy_name` from the SigningKeySet `namespace/name`.
    pub fn accepts(&self, namespace: &str, name: &str, copy_name: &str) -> bool {
        self.spec
            .from
            .iter()
            .any(|f| f.accepts(namespace, name, copy_name))
    }
}

/// keyturn's finalizer on a SigningKeySet with copies in other namespaces (ownerReferences
/// cannot cross namespaces): it removes them before the set goes.
pub const FINALIZER: &str = "keyturn.dev/jwks-copies";

/// True when `sks` carries keyturn's finalizer.
pub fn has_finalizer(sks: &SigningKeySet) -> bool {
    use kube::ResourceExt;
    sks.finalizers().iter().any(|f| f == FINALIZER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(metadata: serde_json::Value) -> SigningKeySet {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet",
            "metadata": metadata, "spec": {}
        }))
        .unwrap()
    }

    #[test]
    fn a_set_ref_needs_both_namespace_and_name() {
        let r = SetRef::of(&set(
            serde_json::json!({"name": "auth", "namespace": "identity"}),
        ));
        assert_eq!(
            r,
            Some(SetRef {
                namespace: "identity".into(),
                name: "auth".into()
            })
        );
        assert_eq!(r.unwrap().to_string(), "identity/auth");
        assert_eq!(SetRef::of(&set(serde_json::json!({"name": "auth"}))), None);
        assert_eq!(
            SetRef::of(&set(serde_json::json!({"namespace": "identity"}))),
            None
        );
    }
}
