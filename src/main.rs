//! The `keyturn` binary: `keyturn run`, `keyturn signer`, `keyturn crd`, `keyturn status`,
//! `keyturn --version`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// keyturn rotates JWT signing keys in Kubernetes and publishes their JWKS.
#[derive(Parser)]
#[command(
    name = "keyturn",
    version,
    about,
    long_about = "keyturn rotates JWT signing keys in Kubernetes and publishes their JWKS.\n\n\
A SigningKeySet (keyturn.dev/v1alpha1) names an algorithm and a schedule; keyturn keeps the\n\
signing key in a Secret for issuers to mount, the public keys in a ConfigMap (and over HTTP)\n\
for verifiers, publishes each new key before it signs and keeps old keys for an overlap.\n\n\
Start here:\n  keyturn crd | kubectl apply -f -     install the CRDs\n  keyturn run                           run the operator with your KUBECONFIG\n\n\
Every flag of `run` can also be set by the environment variable shown in `keyturn run --help`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster in KUBECONFIG (or the in-cluster config).
    Run(RunArgs),
    /// Print the CustomResourceDefinitions (SigningKeySet, SigningKeySetGrant) as YAML.
    Crd {
        /// Write one file per CRD into this directory (as `crds/` holds them) instead.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
    /// Serve a SigningKeySet's keys to kube-apiserver as its external ServiceAccount token
    /// signer (`--service-account-signing-endpoint`): docs/cluster-signer.md.
    Signer(SignerArgs),
    /// Show one SigningKeySet: each key's state and its timeline relative to now.
    Status {
        /// The set, as NAMESPACE/NAME.
        target: String,
        /// Output format: text (80 columns), wide (full kids), json or yaml.
        #[arg(short = 'o', long, value_enum, default_value_t = keyturn::cli::view::Format::Text)]
        output: keyturn::cli::view::Format,
    },
}

#[derive(clap::Args)]
struct SignerArgs {
    /// The SigningKeySet whose keys sign ServiceAccount tokens, as NAMESPACE/NAME. Its
    /// algorithm must be RS256, ES256 or ES384 and it must set spec.maxTokenLifetime (>= 10m).
    #[arg(long, env = "KEYTURN_SIGNER_SET")]
    set: String,
    /// The Unix socket to serve on; give the same path to kube-apiserver's
    /// --service-account-signing-endpoint. Created with mode 0600.
    #[arg(long, env = "KEYTURN_SIGNER_SOCKET")]
    socket: std::path::PathBuf,
    /// The local copy of the set's state (private keys: mode 0600). Served from at start, so
    /// the signer works while the API server is down; kept current from the API server.
    #[arg(long, env = "KEYTURN_SIGNER_STATE_FILE")]
    state_file: std::path::PathBuf,
    /// kubeconfig to read the set and its internal Secret with (default: KUBECONFIG or the
    /// in-cluster config).
    #[arg(long, env = "KEYTURN_SIGNER_KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// How soon kube-apiserver fetches the keys again (FetchKeys refresh_hint_seconds). The
    /// set's rotation.prePublish must be longer (docs/cluster-signer.md).
    #[arg(long, env = "KEYTURN_SIGNER_REFRESH_HINT", default_value = "10s", value_parser = parse_duration)]
    refresh_hint: std::time::Duration,
    /// Address of /metrics and /healthz (loopback by default).
    #[arg(
        long,
        env = "KEYTURN_SIGNER_METRICS_ADDR",
        default_value = "127.0.0.1:9871"
    )]
    metrics_addr: std::net::SocketAddr,
    /// Log format.
    #[arg(long, env = "KEYTURN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace's SigningKeySets (default: every namespace).
    #[arg(long, env = "KEYTURN_NAMESPACE")]
    namespace: Option<String>,
    /// Log format.
    #[arg(long, env = "KEYTURN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// This replica's name, for Events and the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// Address of the public HTTP endpoint: /jwks/{namespace}/{name}, discovery, /healthz, /readyz.
    #[arg(long, env = "KEYTURN_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: std::net::SocketAddr,
    /// Address of the admin endpoint: /metrics, /healthz, /readyz. Keep it off the public Service.
    #[arg(long, env = "KEYTURN_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: std::net::SocketAddr,
    /// Base URL clients use to reach the public endpoint, for `jwks_uri` in discovery documents.
    /// Without it discovery answers 503: keyturn never builds URLs from request headers.
    #[arg(long, env = "KEYTURN_PUBLIC_URL", value_parser = parse_public_url)]
    public_url: Option<String>,
    /// NAMESPACE/NAME=URL: the issuer URL one set may claim in its discovery document (a set
    /// served at an origin of its own behind an Ingress or Gateway). Every other set may claim
    /// only `{public-url}/{namespace}/{name}`, the URL it is served under. Repeatable.
    #[arg(long = "issuer", env = "KEYTURN_ISSUERS", value_delimiter = ',')]
    issuers: Vec<String>,
    /// Namespace-only mode (needs --namespace): read and write nothing outside that namespace;
    /// no fan-out, no cluster-scoped access. For the namespaced install (deploy-namespaced).
    #[arg(long, env = "KEYTURN_NAMESPACE_ONLY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", requires = "namespace")]
    namespace_only: bool,
    /// HTTP: time a client has to send a request's headers (also the keep-alive idle time).
    #[arg(long, env = "KEYTURN_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    http_header_timeout: std::time::Duration,
    /// HTTP: time within which a request is answered, else 408.
    #[arg(long, env = "KEYTURN_HTTP_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    http_request_timeout: std::time::Duration,
    /// HTTP: open connections per port; more wait in the kernel's backlog.
    #[arg(long, env = "KEYTURN_HTTP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    http_max_connections: u64,
    /// HTTP: requests handled at once per port.
    #[arg(long, env = "KEYTURN_HTTP_MAX_CONCURRENT_REQUESTS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    http_max_concurrent_requests: u64,
    /// Elect a leader among replicas with a coordination.k8s.io Lease; only the leader writes.
    #[arg(long, env = "KEYTURN_LEADER_ELECT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// Namespace of the Lease (default: the Pod's namespace, else keyturn-system).
    #[arg(long, env = "POD_NAMESPACE", default_value = "keyturn-system")]
    lease_namespace: String,
    /// Seconds a Lease is valid without renewal; a dead leader is replaced within this time.
    #[arg(long, env = "KEYTURN_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    lease_seconds: u64,
    /// Floor under every set's spec.rotation.interval (a set below it is refused,
    /// InvalidSpec). Default: none.
    #[arg(long, env = "KEYTURN_MIN_INTERVAL", value_parser = parse_duration)]
    min_interval: Option<std::time::Duration>,
    /// Floor under every set's spec.rotation.prePublish. Default: none.
    #[arg(long, env = "KEYTURN_MIN_PRE_PUBLISH", value_parser = parse_duration)]
    min_pre_publish: Option<std::time::Duration>,
    /// Floor under every set's spec.rotation.overlap. Default: none.
    #[arg(long, env = "KEYTURN_MIN_OVERLAP", value_parser = parse_duration)]
    min_overlap: Option<std::time::Duration>,
    /// Most SigningKeySets served per namespace: the oldest; the others are refused
    /// (QuotaExceeded). Default: no quota.
    #[arg(long, env = "KEYTURN_MAX_SETS_PER_NAMESPACE", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_sets_per_namespace: Option<u64>,
}

impl RunArgs {
    /// The cluster admin's floors and quota, from the flags.
    fn floors(&self) -> keyturn::operator::reconcile::Floors {
        let d = |d: Option<std::time::Duration>| d.and_then(|d| chrono::Duration::from_std(d).ok());
        keyturn::operator::reconcile::Floors {
            min_interval: d(self.min_interval),
            min_pre_publish: d(self.min_pre_publish),
            min_overlap: d(self.min_overlap),
            max_sets_per_namespace: self.max_sets_per_namespace.map(|n| n as usize),
        }
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    keyturn::core::duration::parse(s)
        .map_err(|e| e.to_string())
        .and_then(|d| d.to_std().map_err(|e| e.to_string()))
        .and_then(|d| {
            if d.is_zero() {
                Err("must be greater than 0".to_string())
            } else {
                Ok(d)
            }
        })
}

fn parse_public_url(s: &str) -> Result<String, String> {
    let ok = (s.starts_with("https://") || s.starts_with("http://"))
        && !s.contains(['?', '#', ' ', '"', '<', '>', '\\'])
        && s.len() <= 2048;
    if ok {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Err("must be an http(s) URL without query or fragment".into())
    }
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

/// glibc's malloc gives each thread that allocates under contention an arena of its own, up to
/// 8 per core, and an arena keeps what a burst freed: after 10,000 new sets the leader held 130
/// MB from the system for 85 MB in use (docs/benchmarks.md). keyturn's threads allocate small,
/// short-lived objects, so two arenas serve them; `MALLOC_ARENA_MAX` in the environment, when
/// set, is glibc's and wins.
fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any other thread
        // starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            e.exit()
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            // One line, not clap's screenful: what is wrong and where to look.
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("keyturn: {first} (see keyturn --help)");
            return ExitCode::from(2);
        }
    };
    few_malloc_arenas();
    // Key generation runs on blocking threads (CPU-bound; RSA takes up to seconds): 8 are
    // plenty with 48 reconciles at once (tokio's default allows 512). Its effect on memory
    // was within the noise of docs/benchmarks.md's runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyturn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crd { out_dir: None } => {
            print!("{}", keyturn::crd_yaml());
            Ok(())
        }
        Command::Crd { out_dir: Some(dir) } => {
            for (file, yaml) in keyturn::crd_files() {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Signer(a) => {
            init_logging(&a.log_format);
            let (namespace, name) = a
                .set
                .split_once('/')
                .filter(|(n, m)| !n.is_empty() && !m.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!("--set: expected NAMESPACE/NAME, got {:?}", a.set)
                })?;
            // Building the client reads the kubeconfig only: the API server may be down.
            let config = match &a.kubeconfig {
                Some(path) => {
                    let kc = kube::config::Kubeconfig::read_from(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
                }
                None => kube::Config::infer().await?,
            };
            let client = kube::Client::try_from(config).context("building the API client")?;
            let metrics = tokio::net::TcpListener::bind(a.metrics_addr)
                .await
                .with_context(|| format!("binding /metrics to {}", a.metrics_addr))?;
            tracing::info!(addr = %metrics.local_addr()?, "metrics listening");
            let opts = keyturn::signer::Options {
                namespace: namespace.into(),
                name: name.into(),
                socket: a.socket,
                state_file: a.state_file,
                refresh_hint: a.refresh_hint,
            };
            keyturn::signer::run(
                client,
                opts,
                Some(metrics),
                keyturn::runtime::shutdown::Shutdown::on_signals(),
            )
            .await?;
            tracing::info!("keyturn signer stopped");
            Ok(())
        }
        Command::Status { target, output } => {
            let (ns, name) = target
                .split_once('/')
                .filter(|(n, m)| !n.is_empty() && !m.is_empty())
                .ok_or_else(|| anyhow::anyhow!("expected NAMESPACE/NAME, got {target:?}"))?;
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            let api: kube::Api<keyturn::core::crd::SigningKeySet> =
                kube::Api::namespaced(client, ns);
            let set = api
                .get_opt(name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("SigningKeySet {ns}/{name} not found"))?;
            print!(
                "{}",
                keyturn::cli::view::render(&set, chrono::Utc::now(), output)
            );
            Ok(())
        }
        Command::Run(a) => {
            init_logging(&a.log_format);
            let floors = a.floors();
            let issuers = Arc::new(
                keyturn::core::issuer::Issuers::new(a.public_url.clone(), a.issuers.clone())
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            keyturn::operator::controller::preflight(
                &client,
                a.namespace.as_deref(),
                a.namespace_only,
            )
            .await?;
            let instance = a
                .instance
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "keyturn".into());
            let metrics = Arc::new(keyturn::runtime::metrics::Metrics::new());
            let health = Arc::new(keyturn::endpoint::Health::default());
            let shutdown = keyturn::runtime::shutdown::Shutdown::on_signals();
            let public = tokio::net::TcpListener::bind(a.http_addr)
                .await
                .with_context(|| format!("binding the HTTP endpoint to {}", a.http_addr))?;
            let admin = tokio::net::TcpListener::bind(a.metrics_addr)
                .await
                .with_context(|| format!("binding the admin endpoint to {}", a.metrics_addr))?;
            let http = keyturn::endpoint::serve(
                public,
                admin,
                shutdown.clone().wait(),
                client.clone(),
                keyturn::endpoint::Config {
                    namespace: a.namespace.clone(),
                    issuers: issuers.clone(),
                    limits: keyturn::endpoint::Limits {
                        header_timeout: a.http_header_timeout,
                        request_timeout: a.http_request_timeout,
                        max_connections: a.http_max_connections as usize,
                        max_concurrent_requests: a.http_max_concurrent_requests as usize,
                    },
                },
                metrics.clone(),
                health.clone(),
            );
            let election = a.leader_elect.then(|| keyturn::operator::leader::Election {
                namespace: a.lease_namespace.clone(),
                identity: instance.clone(),
                duration_secs: a.lease_seconds,
            });
            let (ns, inst, m, c) = (a.namespace, instance, metrics.clone(), client.clone());
            let namespace_only = a.namespace_only;
            let h = health.clone();
            let controller = keyturn::operator::leader::run_as_leader(
                client,
                election,
                shutdown.clone(),
                metrics,
                move |why| h.fail(why),
                move |stop| {
                    let opts = keyturn::operator::controller::Options {
                        namespace: ns.clone(),
                        instance: inst.clone(),
                        namespace_only,
                        floors: floors.clone(),
                        issuers: issuers.clone(),
                    };
                    let clock: keyturn::operator::reconcile::Clock = Arc::new(chrono::Utc::now);
                    let (m, c) = (m.clone(), c.clone());
                    keyturn::operator::controller::run(c, opts, clock, m, stop)
                },
            );
            // Whichever part ends first ends the process: a replica that cannot elect or
            // serve must not look healthy while doing nothing.
            tokio::pin!(http, controller);
            tokio::select! {
                h = &mut http => {
                    shutdown.request();
                    controller.await.context("leader election")?;
                    h.context("serving HTTP")?;
                }
                l = &mut controller => {
                    if let Err(e) = &l {
                        health.fail(e.to_string());
                        tracing::error!(error = %e, "stopping: this replica cannot take part in leader election");
                    }
                    shutdown.request();
                    http.await.context("serving HTTP")?;
                    l.context("leader election")?;
                }
            }
            tracing::info!("keyturn stopped");
            Ok(())
        }
    }
}
