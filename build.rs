//! Generates the server side of the Kubernetes ExternalJWTSigner v1 gRPC service
//! (`k8s.io/externaljwt/apis/v1/api.proto`, package `v1`) for `keyturn signer`. The messages
//! are written by hand in src/signer/proto.rs; tonic-build's manual builder needs no protoc.

fn main() {
    let method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::signer::proto::{input}"))
            .output_type(format!("crate::signer::proto::{output}"))
            .codec_path("tonic_prost::ProstCodec")
            .build()
    };
    let service = tonic_build::manual::Service::builder()
        .name("ExternalJWTSigner")
        .package("v1")
        .method(method("sign", "Sign", "SignJwtRequest", "SignJwtResponse"))
        .method(method(
            "fetch_keys",
            "FetchKeys",
            "FetchKeysRequest",
            "FetchKeysResponse",
        ))
        .method(method(
            "metadata",
            "Metadata",
            "MetadataRequest",
            "MetadataResponse",
        ))
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[service]);
    println!("cargo:rerun-if-changed=build.rs");
}
