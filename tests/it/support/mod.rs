//! Shared integration-test support: a client for the harness's control plane, a fresh
//! namespace per test, the CRD, an operator process per test, and event-driven waits.

pub mod invariants;
pub mod plane;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use serde_json::json;
use tokio::sync::OnceCell;

/// Path of the kubeconfig the harness wrote. Panics with instructions when none is set:
/// integration tests never pass silently without a control plane.
pub fn kubeconfig_path() -> PathBuf {
    let path = std::env::var("KEYTURN_TEST_KUBECONFIG").unwrap_or_else(|_| {
        panic!(
            "no test control plane configured: KEYTURN_TEST_KUBECONFIG is not set.\n\
             Run `hack/test.sh`, or start one with `hack/control-plane start` and\n\
             `export KEYTURN_TEST_KUBECONFIG=$PWD/.control-plane/kubeconfig`."
        )
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "KEYTURN_TEST_KUBECONFIG={} does not exist; is the control plane running?",
        path.display()
    );
    path
}

/// The admin kube config of the harness (client certificate in `system:masters`).
pub async fn config() -> Config {
    let kc = Kubeconfig::read_from(kubeconfig_path()).expect("readable kubeconfig");
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig")
}

/// An admin client.
pub async fn client() -> Client {
    Client::try_from(config().await).expect("client from kubeconfig")
}

/// keyturn's cluster-wide ClusterRoles (`keyturn`, `keyturn-admin`/`-edit`/`-view`) are shared
/// by every test of this binary: the chart's install and uninstall hold this for writing (its
/// uninstall removes them), tests that rely on deploy/rbac-users.yaml's aggregation for reading.
pub static CLUSTER_ROLES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Makes the operator look at the set `name` now, whatever its retry says (an annotation
/// keyturn does not read); returns when it was written.
pub async fn poke(
    sets: &Api<keyturn::core::crd::SigningKeySet>,
    name: &str,
) -> chrono::DateTime<chrono::Utc> {
    let at = chrono::Utc::now();
    sets.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"test.keyturn.dev/poke": at.to_rfc3339()}}}),
        ),
    )
    .await
    .expect("poke the set");
    at
}

/// Waits until the wall clock is past `t` (an instant of the schedule), however far.
pub async fn wait_until(t: chrono::DateTime<chrono::Utc>) {
    if let Ok(d) = (t - chrono::Utc::now()).to_std() {
        tokio::time::sleep(d + Duration::from_millis(200)).await;
    }
}

/// Creates a fresh namespace for one test, `kt-<prefix>-<pid>-<n>`.
pub async fn fresh_namespace(client: &Client, prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 100_000;
    let name = format!("kt-{prefix}-{}-{n}-{nanos}", std::process::id());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
/// For conditions that no single watch can express; object conditions use [`wait_object`].
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits, with a watch (no polling), until the named object satisfies `cond`.
pub async fn wait_object<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl kube::runtime::wait::Condition<K>,
) -> Option<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("watch failed while waiting for {what}: {e}"),
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Waits until the named object is gone.
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, uid: &str, timeout: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    wait_object(
        api,
        name,
        &format!("{name} to be deleted"),
        timeout,
        conditions::is_deleted(uid),
    )
    .await;
}

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

static CRD: OnceCell<()> = OnceCell::const_new();

/// Installs the CRDs from `crds/` (server-side apply) and waits until they are established,
/// once per test binary.
pub async fn ensure_crd(client: &Client) {
    CRD.get_or_init(|| apply_crds(client)).await;
}

/// Applies the CRDs from `crds/` (server-side apply) and waits until they are established.
pub async fn apply_crds(client: &Client) {
    for file in ["signingkeyset.yaml", "signingkeysetgrant.yaml"] {
        let text = std::fs::read_to_string(root().join("crds").join(file))
            .unwrap_or_else(|e| panic!("crds/{file}: {e}"));
        let crd: CustomResourceDefinition = serde_norway::from_str(&text).expect("CRD YAML parses");
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("keyturn-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
        wait_object(
            &api,
            &name,
            "CRD established",
            Duration::from_secs(30),
            conditions::is_crd_established(),
        )
        .await;
    }
}

/// Consent: a SigningKeySetGrant in `in_ns` accepting JWKS copies from the set
/// `from_ns/name` (every set of `from_ns` when `name` is `None`). Returns the grant's name.
pub async fn grant(client: &Client, in_ns: &str, from_ns: &str, name: &str) -> String {
    let grant_name = format!("from-{from_ns}-{name}");
    let g: keyturn::core::crd::SigningKeySetGrant = serde_json::from_value(serde_json::json!({
        "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySetGrant",
        "metadata": {"name": grant_name},
        "spec": {"from": [{"namespace": from_ns, "name": name}]}
    }))
    .expect("a grant");
    Api::<keyturn::core::crd::SigningKeySetGrant>::namespaced(client.clone(), in_ns)
        .create(&PostParams::default(), &g)
        .await
        .expect("create SigningKeySetGrant");
    grant_name
}

/// A grant in `in_ns` for every SigningKeySet of `from_ns`, whose copies may take only
/// `copy_names` there.
pub async fn grant_all(client: &Client, in_ns: &str, from_ns: &str, copy_names: &[&str]) {
    let g: keyturn::core::crd::SigningKeySetGrant = serde_json::from_value(serde_json::json!({
        "apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySetGrant",
        "metadata": {"name": format!("from-{from_ns}-all")},
        "spec": {"from": [{"namespace": from_ns, "configMapNames": copy_names}]}
    }))
    .expect("a grant");
    Api::<keyturn::core::crd::SigningKeySetGrant>::namespaced(client.clone(), in_ns)
        .create(&PostParams::default(), &g)
        .await
        .expect("create SigningKeySetGrant");
}

/// A `keyturn run` process watching one namespace; killed (SIGKILL) on drop.
pub struct Operator {
    child: Option<Child>,
    /// Where its stderr (JSON logs) goes.
    pub log: PathBuf,
    namespace: String,
    extra: Vec<String>,
    /// Loopback port of its public HTTP endpoint.
    pub http_port: u16,
    /// Loopback port of its admin endpoint (/metrics, probes).
    pub metrics_port: u16,
    kubeconfig: PathBuf,
}

impl Operator {
    /// Starts the operator binary for `namespace`.
    pub fn start(namespace: &str) -> Operator {
        Self::start_with(namespace, &[])
    }

    /// Starts the operator with extra arguments.
    pub fn start_with(namespace: &str, extra: &[&str]) -> Operator {
        let dir = std::env::var("KEYTURN_TEST_LOG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("operator-{namespace}.log"));
        let mut op = Operator {
            child: None,
            log,
            namespace: namespace.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            http_port: 0,
            metrics_port: 0,
            kubeconfig: kubeconfig_path(),
        };
        op.spawn();
        op
    }

    fn spawn(&mut self) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let offset = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let child = Command::new(env!("CARGO_BIN_EXE_keyturn"))
            .args([
                "run",
                "--namespace",
                &self.namespace,
                "--log-format",
                "json",
            ])
            // Ports bound by keyturn itself (no port picked here and freed first, which another
            // process could take meanwhile) and read back from its log.
            .args([
                "--http-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(&self.extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,keyturn=debug,kube=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start keyturn");
        self.child = Some(child);
        self.read_ports(offset);
    }

    /// Reads the ports this start bound from its `HTTP endpoints listening` log line (after
    /// `offset` in the log), waiting for it while the process runs; a process that exits
    /// first (a test of a failed start) leaves them 0.
    fn read_ports(&mut self, offset: usize) {
        let port = |v: &serde_json::Value| {
            v.as_str()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or(0)
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let text = std::fs::read(&self.log).unwrap_or_default();
            let found = String::from_utf8_lossy(&text[offset.min(text.len())..])
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|l| l["fields"]["message"] == "HTTP endpoints listening");
            if let Some(l) = found {
                (self.http_port, self.metrics_port) =
                    (port(&l["fields"]["public"]), port(&l["fields"]["admin"]));
                return;
            }
            if let Some(c) = self.child.as_mut()
                && c.try_wait().unwrap().is_some()
            {
                (self.http_port, self.metrics_port) = (0, 0);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "keyturn did not say which ports it listens on within 60 s; log:\n{}",
            tail(&self.log, 40)
        );
    }

    /// Starts the operator with its own name (log file), kubeconfig and arguments.
    pub fn start_as(label: &str, namespace: &str, kubeconfig: PathBuf, extra: &[&str]) -> Operator {
        let dir = std::env::var("KEYTURN_TEST_LOG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        std::fs::create_dir_all(&dir).unwrap();
        let mut op = Operator {
            child: None,
            log: dir.join(format!("operator-{namespace}-{label}.log")),
            namespace: namespace.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            http_port: 0,
            metrics_port: 0,
            kubeconfig,
        };
        op.spawn();
        op
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// GETs a path on its public HTTP endpoint; `None` when it does not answer.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path)
    }

    /// GETs a path on its admin endpoint; `None` when it does not answer.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path)
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().unwrap()
    }

    /// True when its /metrics says it holds the Lease.
    pub fn is_leader(&self) -> bool {
        self.admin_get("/metrics")
            .is_some_and(|(_, body)| body.lines().any(|l| l.trim() == "keyturn_leader 1"))
    }

    /// SIGKILLs the operator (a crash) and waits for it to die.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again after [`Operator::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until this operator has finished a reconcile of the set `set` that it logged
    /// after `after` (its `reconciled` debug line): proof that it looked at the set again,
    /// where a sleep would pass just as well with the operator stuck.
    pub async fn wait_reconciled_after(
        &self,
        set: &str,
        after: chrono::DateTime<chrono::Utc>,
        timeout: Duration,
    ) {
        wait_for(
            &format!("the operator to reconcile {set} after {after}"),
            timeout,
            || async {
                self.log_text()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .any(|l| {
                        l["fields"]["message"] == "reconciled"
                            && l["fields"]["set"] == set
                            && l["timestamp"]
                                .as_str()
                                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                                .is_some_and(|t| t > after)
                    })
                    .then_some(())
            },
        )
        .await
    }

    /// Panics when the process has exited (a crash or a crash loop).
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait().unwrap()
        {
            panic!(
                "operator exited with {status}; log:\n{}",
                tail(&self.log, 40)
            );
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates ServiceAccount `sa` in `ns` (unless it exists) and writes a kubeconfig that authenticates with a
/// token of it (TokenRequest, one hour).
pub async fn token_kubeconfig(client: &Client, ns: &str, sa: &str, path: &std::path::Path) {
    token_kubeconfig_for(client, &kubeconfig_path(), ns, sa, path).await
}

/// [`token_kubeconfig`] on the plane whose admin kubeconfig is `admin` (its server and CA).
pub async fn token_kubeconfig_for(
    client: &Client,
    admin: &Path,
    ns: &str,
    sa: &str,
    path: &std::path::Path,
) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    // Created here, or (a chart's, an install's) there already.
    match sas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create ServiceAccount {ns}/{sa}: {e}"),
    }
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let tr: TokenRequest = sas
        .create_subresource("token", sa, &PostParams::default(), &tr)
        .await
        .expect("TokenRequest");
    let token = serde_json::to_value(&tr).unwrap()["status"]["token"]
        .as_str()
        .expect("a token")
        .to_string();
    let admin = std::fs::read_to_string(admin).unwrap();
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    let ca = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority: "))
        .unwrap()
        .to_string();
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {server}, certificate-authority: {ca}}}\nusers:\n- name: {sa}\n  user: {{token: {token}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {sa}}}\ncurrent-context: c\n"
    );
    std::fs::write(path, kc).unwrap();
}

/// A client with the identity of a ServiceAccount that has only the rights the test gives
/// it: an attacker's view of the cluster. Creates the ServiceAccount `sa` in `ns`.
pub async fn restricted_client(client: &Client, ns: &str, sa: &str) -> (Client, PathBuf) {
    let path = std::env::temp_dir().join(format!("{ns}-{sa}.kubeconfig"));
    token_kubeconfig(client, ns, sa, &path).await;
    let kc = Kubeconfig::read_from(&path).expect("readable kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    (Client::try_from(cfg).expect("client"), path)
}

/// [`restricted_client`] with `rules` (RBAC PolicyRules as JSON) as its only rights, in `ns`.
pub async fn restricted_with(
    client: &Client,
    ns: &str,
    sa: &str,
    rules: serde_json::Value,
) -> (Client, PathBuf) {
    let identity = restricted_client(client, ns, sa).await;
    allow(client, ns, sa, ns, sa, rules).await;
    identity
}

/// A tenant of `ns` who may do anything with SigningKeySets there and nothing else.
pub async fn set_writer(client: &Client, ns: &str) -> Client {
    restricted_with(
        client,
        ns,
        "tenant",
        serde_json::json!([{"apiGroups": ["keyturn.dev"], "resources": ["signingkeysets"], "verbs": ["*"]}]),
    )
    .await
    .0
}

/// Grants `rules` (RBAC PolicyRules as JSON) in namespace `in_ns` to ServiceAccount
/// `sa_ns/sa` with a Role and RoleBinding named `name`.
pub async fn allow(
    client: &Client,
    in_ns: &str,
    name: &str,
    sa_ns: &str,
    sa: &str,
    rules: serde_json::Value,
) {
    use k8s_openapi::api::rbac::v1::Role;
    let role: Role =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "rules": rules}))
            .unwrap();
    Api::<Role>::namespaced(client.clone(), in_ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("create Role");
    bind(client, in_ns, name, "Role", name, sa_ns, sa).await;
}

/// Binds ServiceAccount `sa_ns/sa` to the role `kind/role` in namespace `in_ns`.
pub async fn bind(
    client: &Client,
    in_ns: &str,
    name: &str,
    kind: &str,
    role: &str,
    sa_ns: &str,
    sa: &str,
) {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let rb: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), in_ns)
        .create(&PostParams::default(), &rb)
        .await
        .expect("create RoleBinding");
    granted(client, in_ns, kind, role, sa_ns, sa).await;
}

/// Returns once the API server's authorizer grants `sa_ns/sa` the first rule of role
/// `kind/role` in `in_ns`. The RBAC authorizer reads roles and bindings from its own watch
/// caches, so a request made right after the binding is created can still be refused; a
/// SubjectAccessReview goes through that same authorizer.
async fn granted(client: &Client, in_ns: &str, kind: &str, role: &str, sa_ns: &str, sa: &str) {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
    let rules: Vec<PolicyRule> = if kind == "ClusterRole" {
        Api::<ClusterRole>::all(client.clone())
            .get(role)
            .await
            .expect("the ClusterRole")
            .rules
    } else {
        Api::<Role>::namespaced(client.clone(), in_ns)
            .get(role)
            .await
            .expect("the Role")
            .rules
    }
    .unwrap_or_default();
    let Some(rule) = rules
        .iter()
        .find(|r| r.resources.as_ref().is_some_and(|v| !v.is_empty()))
    else {
        return;
    };
    // A rule's first group, resource, name and verb, verbatim: a `*` in the rule matches a
    // `*` in the review.
    let first = |v: &Option<Vec<String>>| v.as_ref().and_then(|v| v.first()).cloned();
    let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
        "spec": {
            "user": format!("system:serviceaccount:{sa_ns}:{sa}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_ns}"), "system:authenticated"],
            "resourceAttributes": {
                "namespace": in_ns,
                "group": first(&rule.api_groups).unwrap_or_default(),
                "resource": first(&rule.resources),
                "name": first(&rule.resource_names),
                "verb": rule.verbs.first(),
            }
        }
    }))
    .unwrap();
    let reviews = Api::<SubjectAccessReview>::all(client.clone());
    // Polled: the authorizer's caches report no event a client could wait for.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .expect("SubjectAccessReview");
        if answer.status.is_some_and(|s| s.allowed) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sa_ns}/{sa} not granted {kind}/{role} in {in_ns} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The condition `type_` of a set: (status, reason, message).
pub fn condition(
    s: &keyturn::core::crd::SigningKeySet,
    type_: &str,
) -> Option<(String, String, String)> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the set's condition `type_` has `status` and `reason`; returns its message.
pub async fn wait_condition(
    sets: &Api<keyturn::core::crd::SigningKeySet>,
    name: &str,
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
) -> String {
    wait_condition_within(sets, name, type_, status, reason, Duration::from_secs(60)).await
}

/// [`wait_condition`] with a timeout of the caller's: for a test that proves a change was
/// acted on before a retry would have acted anyway.
pub async fn wait_condition_within(
    sets: &Api<keyturn::core::crd::SigningKeySet>,
    name: &str,
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
    timeout: Duration,
) -> String {
    let s = wait_object(
        sets,
        name,
        &format!("{name}: {type_}={status} ({reason}) within {timeout:?}"),
        timeout,
        move |o: Option<&keyturn::core::crd::SigningKeySet>| {
            o.and_then(|s| condition(s, type_))
                .is_some_and(|(st, r, _)| st == status && r == reason)
        },
    )
    .await
    .unwrap();
    condition(&s, type_).unwrap().2
}

/// Starts a manual rotation of `name` (the `keyturn.dev/rotate` annotation set to `token`).
pub async fn rotate(sets: &Api<keyturn::core::crd::SigningKeySet>, name: &str, token: &str) {
    sets.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"keyturn.dev/rotate": token}}})),
    )
    .await
    .expect("annotate keyturn.dev/rotate");
}

/// A SigningKeySet manifest as JSON (untyped, so tests can send what the types cannot hold).
pub fn set_manifest(name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "keyturn.dev/v1alpha1", "kind": "SigningKeySet", "metadata": {"name": name}, "spec": spec})
}

/// Creates a SigningKeySet; the API server's answer, rejection included.
pub async fn try_create_set(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<keyturn::core::crd::SigningKeySet, kube::Error> {
    let api: Api<keyturn::core::crd::SigningKeySet> = Api::namespaced(client.clone(), ns);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(set_manifest(name, spec)).expect("a typed spec"),
    )
    .await
}

/// Creates a SigningKeySet that must be accepted.
pub async fn create_set(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> keyturn::core::crd::SigningKeySet {
    try_create_set(client, ns, name, spec)
        .await
        .expect("create SigningKeySet")
}

/// A small deterministic PRNG (xorshift), so a failing randomized test replays from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A pseudo-random element of `xs`.
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// GETs a path on a loopback port: (status, body); `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A parsed HTTP/1.1 response.
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Header lines, in order.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Resp {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses a complete HTTP/1.1 response; `None` when `buf` is not one.
pub fn parse_response(buf: &[u8]) -> Option<Resp> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Some(Resp {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    })
}

/// Sends raw request bytes (exactly as given: no path normalization) and reads the reply
/// until the server closes the connection (at most 10 s).
pub async fn raw_request(port: u16, request: &[u8]) -> std::io::Result<Resp> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(request).await?;
    let mut buf = vec![];
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("server answers within 10s")?;
    parse_response(&buf).ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
}

/// Panics when an operator's log shows a request its RBAC refused: the roles under test lack
/// a permission the code uses.
pub fn assert_no_forbidden(log: &str, roles: &str) {
    for bad in ["orbidden", "\"code\":403"] {
        if let Some(line) = log.lines().find(|l| l.contains(bad)) {
            panic!("{roles} lack a permission the code uses: {line}");
        }
    }
}

/// The kid a signing Secret holds.
pub fn signing_kid(s: &k8s_openapi::api::core::v1::Secret) -> String {
    String::from_utf8_lossy(&s.data.as_ref().expect("Secret data")["kid"].0).into_owned()
}

/// Waits for the signing Secret `name` to appear, then for one rotation (its kid changes).
/// Returns the first and the second kid.
pub async fn wait_first_key_then_rotation(
    secrets: &Api<k8s_openapi::api::core::v1::Secret>,
    name: &str,
) -> (String, String) {
    use k8s_openapi::api::core::v1::Secret;
    let first = wait_object(
        secrets,
        name,
        "first key",
        Duration::from_secs(60),
        |o: Option<&Secret>| o.is_some(),
    )
    .await
    .unwrap();
    let first = signing_kid(&first);
    let f = first.clone();
    let next = wait_object(
        secrets,
        name,
        "a rotation",
        Duration::from_secs(30),
        move |o: Option<&Secret>| o.is_some_and(|s| signing_kid(s) != f),
    )
    .await
    .unwrap();
    (first, signing_kid(&next))
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `kubectl` from the harness (same version as the API server), with the test kubeconfig.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let bin = std::env::var("KEYTURN_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut child = Command::new(bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

/// A copy of the test kubeconfig whose requests impersonate `user` (in `system:masters`, so
/// with every right): the API server's audit log then tells that client's requests apart.
pub fn impersonating_kubeconfig(user: &str) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig_path()).expect("read the kubeconfig");
    let mut added = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("client-key:") {
                added = true;
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{l}\n{indent}as: {user}\n{indent}as-groups: [\"system:masters\"]")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(
        added,
        "the test kubeconfig has no client-key to add impersonation to"
    );
    let path =
        std::env::temp_dir().join(format!("keyturn-{user}-{}.kubeconfig", std::process::id()));
    std::fs::write(&path, out.join("\n")).expect("write the kubeconfig");
    path
}

/// The writes (create, update, patch, delete) the API server's audit log records for
/// requests made as `user` (impersonated) since `since`. The plane must write the log:
/// `KEYTURN_AUDIT=1 hack/control-plane start` (hack/test.sh does).
pub fn audit_writes(user: &str, since: chrono::DateTime<chrono::Utc>) -> Vec<serde_json::Value> {
    let path = kubeconfig_path()
        .parent()
        .expect("the plane's directory")
        .join("audit.log");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: start the control plane with KEYTURN_AUDIT=1 (hack/test.sh does)",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete" && e["impersonatedUser"]["username"] == user)
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete" | "deletecollection")
            )
        })
        .filter(|e| {
            e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .is_some_and(|t| t >= since)
        })
        .collect()
}
