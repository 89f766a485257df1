//! `kubectl keyturn`: a kubectl plugin for SigningKeySets (installed as `kubectl-keyturn` on
//! the PATH, or through krew with `deploy/krew/keyturn.yaml`).
//!
//! - `status NAME`: each key's state and timeline;
//! - `rotate NAME`: a manual rotation (the `keyturn.dev/rotate` annotation);
//! - `revoke NAME KID`: emergency revocation (`spec.revokedKeyIds`);
//! - `verify NAME TOKEN`: checks a JWT against the set's published JWKS and says which state
//!   its key is in and until when it verifies. Exit status 1 when it does not verify.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use keyturn::core::crd::{ROTATE_ANNOTATION, SigningKeySet};

#[derive(Parser)]
#[command(
    name = "kubectl-keyturn",
    bin_name = "kubectl keyturn",
    version,
    about = "Inspect, rotate, revoke and verify keyturn SigningKeySets."
)]
struct Cli {
    /// Namespace of the SigningKeySet (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Each key's state and timeline relative to now.
    Status {
        /// The SigningKeySet.
        name: String,
        /// Output format.
        #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Start a manual rotation: a new key is published now and signs after prePublish.
    Rotate {
        /// The SigningKeySet.
        name: String,
    },
    /// Emergency revocation: the key leaves every JWKS now and its private key is destroyed.
    Revoke {
        /// The SigningKeySet.
        name: String,
        /// The key id to revoke. A kid is base64url and may start with `-`: taken as is.
        #[arg(allow_hyphen_values = true)]
        kid: String,
        /// Revoke even when the set's status does not list the kid.
        #[arg(long)]
        force: bool,
    },
    /// Verify a JWT against the set's published JWKS (`-` reads it from stdin).
    Verify {
        /// The SigningKeySet.
        name: String,
        /// The token, or `-` for stdin.
        token: String,
        /// Check against the JWKS copy in this namespace instead of the set's own.
        #[arg(long)]
        copy: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let sets: Api<SigningKeySet> = Api::namespaced(client.clone(), &ns);
    let get = |name: String| {
        let sets = sets.clone();
        let ns = ns.clone();
        async move {
            sets.get_opt(&name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("SigningKeySet {ns}/{name} not found"))
        }
    };
    let now = chrono::Utc::now();
    match cli.command {
        Command::Status { name, output } => {
            let set = get(name).await?;
            print!(
                "{}",
                keyturn::cli::view::render(&set, now, output == "json")
            );
        }
        Command::Rotate { name } => {
            let set = get(name.clone()).await?;
            let token = now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            sets.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {ROTATE_ANNOTATION: token}}})),
            )
            .await?;
            println!(
                "{ns}/{name}: rotation requested; a new key is published now and signs after prePublish ({})",
                set.spec.rotation.pre_publish
            );
        }
        Command::Revoke { name, kid, force } => {
            let set = get(name.clone()).await?;
            if set.spec.revoked_key_ids.contains(&kid) {
                println!("{ns}/{name}: {kid} is already revoked");
                return Ok(ExitCode::SUCCESS);
            }
            let listed = set
                .status
                .as_ref()
                .and_then(|s| s.keys.iter().find(|k| k.kid == kid))
                .map(|k| k.state.clone());
            if listed.is_none() && !force {
                bail!(
                    "{kid} is not a key of {ns}/{name} (see `kubectl keyturn status {name}`); --force revokes it anyway"
                );
            }
            let mut ids = set.spec.revoked_key_ids.clone();
            ids.push(kid.clone());
            // The resourceVersion makes the patch fail if the set changed since it was read.
            sets.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": {"resourceVersion": set.resource_version()},
                    "spec": {"revokedKeyIds": ids}
                })),
            )
            .await?;
            println!("{ns}/{name}: {kid} revoked; it leaves every JWKS now");
            if listed.as_deref() == Some("Active") {
                println!(
                    "it was the Active key: a replacement signs at once, and verifiers with a cached JWKS reject the new key's tokens until they refetch"
                );
            }
        }
        Command::Verify {
            name,
            token,
            copy,
            output,
        } => {
            let token = if token == "-" {
                let mut t = String::new();
                std::io::stdin().read_to_string(&mut t)?;
                t
            } else {
                token
            };
            let set = get(name.clone()).await?;
            let in_ns = copy.unwrap_or_else(|| ns.clone());
            let cm_name = set.config_map_name();
            let cm = Api::<ConfigMap>::namespaced(client.clone(), &in_ns)
                .get_opt(&cm_name)
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "ConfigMap {in_ns}/{cm_name} not found: the JWKS is not published there"
                    )
                })?;
            let jwks = cm
                .data
                .as_ref()
                .and_then(|d| d.get(&set.jwks_key()))
                .ok_or_else(|| {
                    anyhow::anyhow!("ConfigMap {in_ns}/{cm_name} has no {}", set.jwks_key())
                })?;
            let v = keyturn::cli::plugin::verify(&token, jwks.as_bytes(), &set, now);
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", if v.valid { "valid" } else { "INVALID" });
                println!("{}", v.detail);
                if let Some(e) = &v.expires {
                    println!("token expires {e}");
                }
            }
            if !v.valid {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kid_that_starts_with_a_hyphen_is_a_kid_not_a_flag() {
        // One kid in 64 starts with `-` (RFC 7638 thumbprints are base64url).
        for args in [
            &["kubectl-keyturn", "revoke", "auth", "-1Xa_b", "-n", "ns"][..],
            &[
                "kubectl-keyturn",
                "-n",
                "ns",
                "revoke",
                "auth",
                "-1Xa_b",
                "--force",
            ][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.namespace.as_deref(), Some("ns"));
            match cli.command {
                Command::Revoke { name, kid, .. } => {
                    assert_eq!((name, kid), ("auth".into(), "-1Xa_b".into()))
                }
                _ => panic!("not revoke"),
            }
        }
    }
}
