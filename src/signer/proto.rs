//! The messages of the Kubernetes ExternalJWTSigner v1 API (`k8s.io/externaljwt/apis/v1`,
//! `api.proto`, package `v1`), written out as prost structs (same field numbers and types),
//! and the server side tonic-build generates for the service (build.rs).

/// `SignJWTRequest`: the base64url (unpadded) JSON claims to sign.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignJwtRequest {
    /// Base64url-encoded claims (no padding).
    #[prost(string, tag = "1")]
    pub claims: String,
}

/// `SignJWTResponse`: the JWS header and signature, each base64url without padding.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignJwtResponse {
    /// Base64url JSON header: `alg`, `kid` and `typ` only.
    #[prost(string, tag = "1")]
    pub header: String,
    /// Base64url signature over `header + "." + claims`.
    #[prost(string, tag = "2")]
    pub signature: String,
}

/// `FetchKeysRequest` (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchKeysRequest {}

/// `FetchKeysResponse`: every key a token may be verified with.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchKeysResponse {
    /// The public keys.
    #[prost(message, repeated, tag = "1")]
    pub keys: Vec<Key>,
    /// When the key data last changed.
    #[prost(message, optional, tag = "2")]
    pub data_timestamp: Option<prost_types::Timestamp>,
    /// How long the caller may wait before fetching again.
    #[prost(int64, tag = "3")]
    pub refresh_hint_seconds: i64,
}

/// `Key`: one public key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Key {
    /// The kid tokens carry in their header.
    #[prost(string, tag = "1")]
    pub key_id: String,
    /// DER `SubjectPublicKeyInfo`.
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// Keep the key out of the API server's OIDC discovery document.
    #[prost(bool, tag = "3")]
    pub exclude_from_oidc_discovery: bool,
}

/// `MetadataRequest` (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataRequest {}

/// `MetadataResponse`: the longest token lifetime the signer supports.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataResponse {
    /// Seconds; the API server caps every token's expiration at this.
    #[prost(int64, tag = "1")]
    pub max_token_expiration_seconds: i64,
}

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/v1.ExternalJWTSigner.rs"));
}
pub use generated::external_j_w_t_signer_server::{ExternalJWTSigner, ExternalJWTSignerServer};
