//! `kubectl keyturn`: a kubectl plugin for SigningKeySets (installed as `kubectl-keyturn` on
//! the PATH, or through krew with `deploy/krew/keyturn.yaml`).
//!
//! - `status NAME`: each key's state and timeline;
//! - `rotate NAME`: a manual rotation (the `keyturn.dev/rotate` annotation);
//! - `revoke NAME KID`: emergency revocation (`spec.revokedKeyIds`);
//! - `verify NAME TOKEN`: checks a JWT against the set's published JWKS and says which state
//!   its key is in and until when it verifies;
//! - `completion SHELL`: a completion script for bash, zsh, fish, elvish or PowerShell.
//!
//! Exit status: 0 done; 1 the answer is no (`verify`: the token does not verify; `rotate
//! --wait`: the new key did not sign within the timeout); 2 an error (bad arguments, the API
//! server unreachable or refusing, the set not found).

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use keyturn::cli::view::Format;
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
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The kubeconfig cluster to use.
    #[arg(long, global = true)]
    cluster: Option<String>,
    /// The kubeconfig user to use.
    #[arg(long, global = true)]
    user: Option<String>,
    /// Username to impersonate for the operation.
    #[arg(long = "as", global = true)]
    as_user: Option<String>,
    /// Group to impersonate for the operation (repeatable).
    #[arg(long = "as-group", global = true)]
    as_group: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Each key's state and timeline relative to now.
    Status {
        /// The SigningKeySet.
        name: String,
        /// Output format: text (80 columns), wide (full kids), json or yaml.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Start a manual rotation: a new key is published now and signs after prePublish.
    Rotate {
        /// The SigningKeySet.
        name: String,
        /// Wait until the new key signs (exit status 1 if it does not within --timeout).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 90s, 10m); default prePublish plus 2 minutes.
        #[arg(long, requires = "wait")]
        timeout: Option<String>,
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
        /// Output format: text, json or yaml.
        #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json", "yaml"])]
        output: String,
    },
    /// Print a shell completion script (e.g. `kubectl keyturn completion bash > /etc/bash_completion.d/kubectl-keyturn`).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
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

/// A client as kubectl would make one from the same flags.
async fn client(cli: &Cli) -> anyhow::Result<Client> {
    let kubeconfig = match &cli.kubeconfig {
        Some(path) => kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("reading {}", path.display()))?,
        None => kube::config::Kubeconfig::read().context("reading the kubeconfig")?,
    };
    let options = kube::config::KubeConfigOptions {
        context: cli.context.clone(),
        cluster: cli.cluster.clone(),
        user: cli.user.clone(),
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .context("loading the kubeconfig")?;
    if let Some(user) = &cli.as_user {
        config.auth_info.impersonate = Some(user.clone());
    }
    if !cli.as_group.is_empty() {
        config.auth_info.impersonate_groups = Some(cli.as_group.clone());
    }
    Client::try_from(config).context("connecting to the Kubernetes API")
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Completion { shell } = &cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(*shell, &mut cmd, "kubectl-keyturn", &mut std::io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    let client = client(&cli).await?;
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
            print!("{}", keyturn::cli::view::render(&set, now, output));
        }
        Command::Rotate {
            name,
            wait,
            timeout,
        } => {
            let set = get(name.clone()).await?;
            let before = set.status.as_ref().and_then(|s| s.active_key_id.clone());
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
            if wait {
                let limit = match &timeout {
                    Some(t) => keyturn::core::duration::parse(t)
                        .with_context(|| format!("--timeout {t}"))?,
                    None => {
                        keyturn::core::duration::parse(&set.spec.rotation.pre_publish)
                            .unwrap_or_default()
                            + chrono::Duration::minutes(2)
                    }
                };
                let limit = limit.to_std().unwrap_or_default();
                return wait_signing(&sets, &name, before, limit).await;
            }
        }
        Command::Completion { .. } => unreachable!("answered before connecting"),
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
            } else if output == "yaml" {
                print!("{}", serde_norway::to_string(&v)?);
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

/// Waits (on a watch of the set) until its status shows a new Active key (not `before`):
/// keyturn writes the status after the signing Secret holds that key. Exit status 1 when
/// `limit` passes first.
async fn wait_signing(
    sets: &Api<SigningKeySet>,
    name: &str,
    before: Option<String>,
    limit: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let before2 = before.clone();
    let signs = move |o: Option<&SigningKeySet>| {
        let active = o.and_then(|s| s.status.as_ref()?.active_key_id.clone());
        active.is_some() && active != before2
    };
    let waited = tokio::time::timeout(
        limit,
        kube::runtime::wait::await_condition(sets.clone(), name, signs),
    )
    .await;
    match waited {
        Ok(Ok(Some(set))) => {
            let kid = set.status.and_then(|s| s.active_key_id).unwrap_or_default();
            println!("{name}: {kid} signs now");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(None)) => bail!("SigningKeySet {name} was deleted while waiting"),
        Ok(Err(e)) => Err(e).context("watching the set"),
        Err(_) => {
            eprintln!(
                "{name}: the new key did not sign within {}s (Active: {}); see `kubectl keyturn status {name}`",
                limit.as_secs(),
                before.unwrap_or_else(|| "none".into())
            );
            Ok(ExitCode::from(1))
        }
    }
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
