//! The `keyturn` binary: `keyturn run`, `keyturn crd`.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// keyturn: rotates JWT signing keys in Kubernetes and publishes their JWKS.
#[derive(Parser)]
#[command(name = "keyturn", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster in KUBECONFIG or the in-cluster config.
    Run {
        /// Watch only this namespace (default: every namespace).
        #[arg(long, env = "KEYTURN_NAMESPACE")]
        namespace: Option<String>,
        /// Log format: text or json.
        #[arg(long, env = "KEYTURN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Instance name reported on Events (defaults to the host name).
        #[arg(long, env = "POD_NAME")]
        instance: Option<String>,
        /// Address of the HTTP endpoint (JWKS, discovery, /metrics, /healthz, /readyz).
        #[arg(long, env = "KEYTURN_HTTP_ADDR", default_value = "0.0.0.0:8080")]
        http_addr: std::net::SocketAddr,
        /// Base URL clients use to reach the HTTP endpoint, for `jwks_uri` in discovery
        /// documents (default: http://<Host header>).
        #[arg(long, env = "KEYTURN_PUBLIC_URL")]
        public_url: Option<String>,
    },
    /// Print the SigningKeySet CustomResourceDefinition as YAML.
    Crd,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", keyturn::crd_yaml());
            Ok(())
        }
        Command::Run {
            namespace,
            log_format,
            instance,
            http_addr,
            public_url,
        } => {
            init_logging(&log_format);
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            let instance = instance
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "keyturn".into());
            let clock: keyturn::reconcile::Clock = Arc::new(chrono::Utc::now);
            let metrics = Arc::new(keyturn::metrics::Metrics::new());
            let http = keyturn::http::serve(
                http_addr,
                client.clone(),
                namespace.clone(),
                metrics.clone(),
                public_url,
            );
            let controller = keyturn::controller::run(
                client,
                keyturn::controller::Options {
                    namespace,
                    instance,
                },
                clock,
                metrics,
            );
            tokio::select! {
                r = http => r.with_context(|| format!("serving HTTP on {http_addr}"))?,
                r = controller => r.context("running the controller")?,
            }
            Ok(())
        }
    }
}
