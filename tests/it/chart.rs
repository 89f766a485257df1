//! The Helm chart (`charts/keyturn`) against the real control plane, with Helm built from the
//! Go module proxy (`hack/test-deps.sh`):
//!
//! - `helm lint`, and the rendered objects equal to `deploy/` (and, in namespace-only mode, to
//!   `deploy-namespaced/`) object by object, Helm's own labels aside;
//! - every option rendered (ServiceMonitor, PrometheusRule, dashboard) is accepted by the API
//!   server (`--dry-run=server`, with the Prometheus Operator's CRDs installed);
//! - `helm install` (adopting CRDs and roles an earlier `kubectl apply` made), then keyturn run
//!   with the token of the chart's ServiceAccount rotates a set; `helm upgrade`, and it rotates
//!   again; `helm uninstall` keeps the CRDs and the sets;
//! - `hack/chart-publish` pushes the chart to an OCI registry it is then installed from.

use crate::support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tools() -> PathBuf {
    PathBuf::from(std::env::var("KEYTURN_TEST_VERIFIERS").unwrap_or_else(|_| {
        panic!("KEYTURN_TEST_VERIFIERS is not set: run hack/test.sh, or hack/test-deps.sh DIR and export it")
    }))
}

/// `helm ARGS` against the test plane, with Helm's caches in a temporary directory.
fn helm(args: &[&str]) -> Output {
    let home = std::env::temp_dir().join("keyturn-helm-home");
    Command::new(tools().join("bin/helm"))
        .args(args)
        .env("KUBECONFIG", support::kubeconfig_path())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm")
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The objects of a YAML stream, as JSON.
fn objects(yaml: &str) -> Vec<Value> {
    yaml.split("\n---")
        .filter_map(|doc| serde_norway::from_str::<Option<Value>>(doc).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn chart() -> String {
    root().join("charts/keyturn").display().to_string()
}

/// `helm template` of the chart into `ns` with `sets`, as objects.
fn template(ns: &str, sets: &[&str]) -> Vec<Value> {
    let c = chart();
    // deploy/'s image name (an overlay's `images:` replaces it); the chart has no default.
    let mut args = vec![
        "template",
        "keyturn",
        c.as_str(),
        "-n",
        ns,
        "--set",
        "image.repository=keyturn",
    ];
    for s in sets {
        args.extend(["--set", *s]);
    }
    objects(&ok(helm(&args), "helm template"))
}

/// `kubectl kustomize DIR`, as objects.
fn kustomize(dir: &str) -> Vec<Value> {
    objects(&ok(
        support::kubectl(&["kustomize", root().join(dir).to_str().unwrap()], None),
        "kubectl kustomize",
    ))
}

/// An object without what only Helm adds (its labels, the keep annotation) and without
/// comments' traces (empty maps), keyed by kind/namespace/name.
fn normalized(objs: Vec<Value>) -> BTreeMap<String, Value> {
    fn strip(meta: &mut Value) {
        for (field, keys) in [
            (
                "labels",
                &[
                    "app.kubernetes.io/instance",
                    "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/version",
                    "helm.sh/chart",
                ][..],
            ),
            ("annotations", &["helm.sh/resource-policy"][..]),
        ] {
            if let Some(m) = meta.get_mut(field).and_then(Value::as_object_mut) {
                for k in keys {
                    m.remove(*k);
                }
                if m.is_empty() {
                    meta.as_object_mut().unwrap().remove(field);
                }
            }
        }
    }
    objs.into_iter()
        .map(|mut o| {
            strip(&mut o["metadata"]);
            if o["kind"] == "Deployment" {
                strip(&mut o["spec"]["template"]["metadata"]);
            }
            let key = format!(
                "{}/{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap()
            );
            (key, o)
        })
        .collect()
}

/// The chart with `sets` in `keyturn-system` renders exactly `crds/` and `dir` (its Namespace
/// aside: the release namespace is Helm's, `--create-namespace`).
fn assert_renders(dir: &str, sets: &[&str]) {
    let chart = normalized(template("keyturn-system", sets));
    let mut deploy = normalized([kustomize("crds"), kustomize(dir)].concat());
    let ns = deploy
        .remove("Namespace//keyturn-system")
        .expect("deploy/ makes its namespace");
    assert_eq!(ns["metadata"]["name"], "keyturn-system");
    let (a, b): (Vec<&String>, Vec<&String>) = (chart.keys().collect(), deploy.keys().collect());
    assert_eq!(
        a, b,
        "the chart ({sets:?}) and {dir} make different objects"
    );
    for (k, want) in &deploy {
        assert_eq!(
            &chart[k], want,
            "{k}: the chart ({sets:?}) differs from {dir}"
        );
    }
}

#[test]
fn the_chart_lints_and_renders_what_deploy_installs() {
    for (what, sets) in [
        ("helm lint", "image.repository=keyturn"),
        (
            "helm lint (every option)",
            "image.repository=keyturn,namespaceOnly=true,serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true",
        ),
    ] {
        ok(helm(&["lint", "--strict", &chart(), "--set", sets]), what);
    }
    assert_renders("deploy", &[]);
    assert_renders("deploy-namespaced", &["namespaceOnly=true"]);
}

/// The chart has no image to fall back on (keyturn is in no public registry): without
/// `image.repository` lint, template and install are refused, naming the value, instead of an
/// install that "succeeds" into ImagePullBackOff. Bad image values are refused the same way.
#[test]
fn the_chart_refuses_to_install_without_an_image() {
    let c = chart();
    for (sets, field) in [
        ("replicas=2", "/image/repository"),
        ("image.repository=", "/image/repository"),
        ("image.repository=k,image.digest=latest", "/image/digest"),
        (
            "image.repository=k,image.pullPolicy=Sometimes",
            "/image/pullPolicy",
        ),
        ("image.repository=k,replicas=0", "/replicas"),
    ] {
        for verb in ["lint", "template"] {
            let args: Vec<&str> = if verb == "lint" {
                vec!["lint", &c, "--set", sets]
            } else {
                vec!["template", "keyturn", &c, "--set", sets]
            };
            let out = helm(&args);
            let err = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "helm {verb} --set {sets} accepted: {err}"
            );
            assert!(
                err.contains(field),
                "helm {verb} --set {sets}: the error does not name {field}: {err}"
            );
        }
    }
    // With an image, a digest pins it (the tag is ignored) and pull secrets are rendered.
    let digest = format!("sha256:{}", "a".repeat(64));
    let sets = format!(
        "image.repository=k,image.registry=mirror.example,image.digest={digest},image.pullSecrets[0].name=regcred"
    );
    let objs = objects(&ok(
        helm(&["template", "keyturn", &c, "--set", &sets]),
        "helm template",
    ));
    let dep = objs.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["image"],
        format!("mirror.example/k@{digest}")
    );
    assert_eq!(pod["imagePullSecrets"][0]["name"], "regcred");
    // One replica: no PodDisruptionBudget (minAvailable 1 would block every drain); two: one.
    for (replicas, pdbs) in [(1, 0), (2, 1)] {
        let objs = objects(&ok(
            helm(&[
                "template",
                "keyturn",
                &c,
                "--set",
                &format!("image.repository=k,replicas={replicas}"),
            ]),
            "helm template",
        ));
        assert_eq!(
            objs.iter()
                .filter(|o| o["kind"] == "PodDisruptionBudget")
                .count(),
            pdbs,
            "replicas={replicas}"
        );
    }
}

/// Every object of the chart with every option on is accepted by the API server, the
/// Prometheus Operator's CRDs installed.
#[tokio::test]
async fn every_option_is_accepted_by_the_api_server() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    for crd in ["servicemonitors", "prometheusrules"] {
        let path = tools().join(format!("monitoring-crds/monitoring.coreos.com_{crd}.yaml"));
        ok(
            support::kubectl(
                &["apply", "--server-side", "-f", path.to_str().unwrap()],
                None,
            ),
            "install the Prometheus Operator's CRDs",
        );
    }
    ok(
        support::kubectl(
            &[
                "wait",
                "--for=condition=established",
                "crd/servicemonitors.monitoring.coreos.com",
                "crd/prometheusrules.monitoring.coreos.com",
            ],
            None,
        ),
        "CRDs established",
    );
    let ns = support::fresh_namespace(&client, "chart-dry").await;
    for sets in [
        "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true",
        "namespaceOnly=true,crds.install=false,aggregatedRoles=false",
    ] {
        let c = chart();
        let rendered = ok(
            helm(&[
                "template",
                "keyturn",
                &c,
                "-n",
                &ns,
                "--set",
                "image.repository=keyturn",
                "--set",
                sets,
            ]),
            "helm template",
        );
        let kinds: Vec<String> = objects(&rendered)
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_string())
            .collect();
        if sets.starts_with("serviceMonitor") {
            for k in ["ServiceMonitor", "PrometheusRule", "ConfigMap"] {
                assert!(
                    kinds.contains(&k.to_string()),
                    "{k} not rendered: {kinds:?}"
                );
            }
        }
        let out = support::kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
        assert!(
            out.status.success(),
            "{sets}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `helm install keyturn` of the chart into `release` with `sets`.
fn install(release: &str, sets: &str) {
    let c = chart();
    ok(
        helm(&["install", "keyturn", &c, "-n", release, "--set", sets]),
        &format!("helm install ({sets})"),
    );
}

/// Marks an object an earlier `kubectl apply` made as the release's, the way Helm adopts
/// objects (label and annotations), when it exists.
fn adopt(kind: &str, name: &str, release_ns: &str) {
    let exists = support::kubectl(&["get", kind, name], None)
        .status
        .success();
    if exists {
        ok(
            support::kubectl(
                &[
                    "label",
                    "--overwrite",
                    kind,
                    name,
                    "app.kubernetes.io/managed-by=Helm",
                ],
                None,
            ),
            "label for adoption",
        );
        ok(
            support::kubectl(
                &[
                    "annotate",
                    "--overwrite",
                    kind,
                    name,
                    "meta.helm.sh/release-name=keyturn",
                    &format!("meta.helm.sh/release-namespace={release_ns}"),
                ],
                None,
            ),
            "annotate for adoption",
        );
    }
}

/// keyturn as the chart's Deployment runs it, with the token of the chart's ServiceAccount
/// (the plane has no node for the Deployment's Pods), watching `watch`.
async fn operator_as_the_chart(
    client: &kube::Client,
    release_ns: &str,
    watch: &str,
    label: &str,
    extra: &[&str],
) -> support::Operator {
    let kc = std::env::temp_dir().join(format!("{release_ns}-{label}.kubeconfig"));
    support::token_kubeconfig(client, release_ns, "keyturn", &kc).await;
    let mut args = vec![
        "--leader-elect",
        "--lease-namespace",
        release_ns,
        "--lease-seconds",
        "10",
        "--instance",
        label,
    ];
    args.extend_from_slice(extra);
    support::Operator::start_as(label, watch, kc, &args)
}

#[tokio::test]
async fn helm_install_and_upgrade_rotate_under_the_charts_rbac_and_uninstall_keeps_the_crds() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    // Its uninstall removes the cluster-wide roles other tests of this binary rely on.
    let _roles = support::CLUSTER_ROLES.write().await;
    let release = support::fresh_namespace(&client, "chart-rel").await;
    let sets_ns = support::fresh_namespace(&client, "chart-sets").await;
    for (kind, name) in [
        ("crd", "signingkeysets.keyturn.dev"),
        ("crd", "signingkeysetgrants.keyturn.dev"),
        ("clusterrole", "keyturn"),
        ("clusterrolebinding", "keyturn"),
        ("clusterrole", "keyturn-admin"),
        ("clusterrole", "keyturn-edit"),
        ("clusterrole", "keyturn-view"),
    ] {
        adopt(kind, name, &release);
    }
    // The admission policy is cluster-wide: on this plane, shared with tests that write as
    // tenants, it is left out here (tests/it/obstruction.rs attacks it with a binding of its own).
    install(
        &release,
        "image.repository=keyturn.test/keyturn,admissionPolicy.enabled=false",
    );
    let c = chart();

    // A rotation under the chart's RBAC.
    let mut op = operator_as_the_chart(&client, &release, &sets_ns, "install", &[]).await;
    support::create_set(
        &client,
        &sets_ns,
        "auth",
        json!({"rotation": {"interval": "6s", "prePublish": "2s", "overlap": "2s"}}),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &sets_ns);
    let (_, second) = support::wait_first_key_then_rotation(&secrets, "auth-signing-key").await;
    op.assert_running();
    let log = op.log_text();
    support::assert_no_forbidden(&log, "the chart's roles");
    assert!(
        log.contains("acquired leadership"),
        "led with the chart's Lease Role"
    );
    op.terminate(Duration::from_secs(20));

    // Upgrade (a changed value), then another rotation under the upgraded release.
    ok(
        helm(&[
            "upgrade",
            "keyturn",
            &c,
            "-n",
            &release,
            "--set",
            "image.repository=keyturn.test/keyturn,replicas=3,admissionPolicy.enabled=false",
        ]),
        "helm upgrade",
    );
    let deployed = ok(
        support::kubectl(
            &[
                "-n",
                &release,
                "get",
                "deployment",
                "keyturn",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
            None,
        ),
        "the upgraded Deployment",
    );
    assert_eq!(deployed, "3");
    let mut op = operator_as_the_chart(&client, &release, &sets_ns, "upgrade", &[]).await;
    let s = second.clone();
    support::wait_object(
        &secrets,
        "auth-signing-key",
        "a rotation after the upgrade",
        Duration::from_secs(30),
        move |o: Option<&Secret>| o.is_some_and(|x| support::signing_kid(x) != s),
    )
    .await
    .unwrap();
    op.assert_running();
    support::assert_no_forbidden(&op.log_text(), "the upgraded chart's roles");
    op.terminate(Duration::from_secs(20));

    // Uninstall: the CRDs (and so the set and its keys) stay; the operator's roles go.
    ok(
        helm(&["uninstall", "keyturn", "-n", &release]),
        "helm uninstall",
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        "signingkeysets.keyturn.dev",
        "signingkeysetgrants.keyturn.dev",
    ] {
        let got = crds.get_opt(crd).await.unwrap();
        assert!(
            got.is_some_and(|c| c.metadata.deletion_timestamp.is_none()),
            "{crd} kept"
        );
    }
    let sets: Api<keyturn::core::crd::SigningKeySet> = Api::namespaced(client.clone(), &sets_ns);
    assert!(
        sets.get_opt("auth").await.unwrap().is_some(),
        "the set survives"
    );
    assert!(
        !support::kubectl(&["get", "clusterrole", "keyturn"], None)
            .status
            .success(),
        "the operator's ClusterRole is removed"
    );
    // The CRDs stay owned by nobody: a later install (or `kubectl apply`) takes them again.
    for crd in [
        "signingkeysets.keyturn.dev",
        "signingkeysetgrants.keyturn.dev",
    ] {
        crds.patch(
            crd,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"meta.helm.sh/release-name": null, "meta.helm.sh/release-namespace": null}}})),
        )
        .await
        .unwrap();
    }
}

/// A namespace-only release (CRDs and user roles left to the cluster admin): keyturn with the
/// release's token rotates a set in the release namespace, and may read nothing outside it.
#[tokio::test]
async fn a_namespace_only_release_rotates_in_its_namespace_and_reads_nothing_else() {
    let client = support::client().await;
    support::ensure_crd(&client).await;
    let release = support::fresh_namespace(&client, "chart-nso").await;
    let elsewhere = support::fresh_namespace(&client, "chart-other").await;
    install(
        &release,
        "image.repository=keyturn.test/keyturn,namespaceOnly=true,crds.install=false,aggregatedRoles=false",
    );
    let mut op =
        operator_as_the_chart(&client, &release, &release, "nso", &["--namespace-only"]).await;
    let kc = std::env::temp_dir().join(format!("{release}-nso.kubeconfig"));
    support::create_set(
        &client,
        &release,
        "auth",
        json!({"rotation": {"interval": "6s", "prePublish": "2s", "overlap": "2s"}}),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &release);
    support::wait_first_key_then_rotation(&secrets, "auth-signing-key").await;
    op.assert_running();
    support::assert_no_forbidden(&op.log_text(), "the namespace-only release's roles");
    // The release's identity reads nothing outside its namespace.
    let kubeconfig = kube::config::Kubeconfig::read_from(&kc).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let as_release = kube::Client::try_from(cfg).unwrap();
    let other: Api<Secret> = Api::namespaced(as_release.clone(), &elsewhere);
    assert!(
        matches!(other.list(&Default::default()).await, Err(kube::Error::Api(e)) if e.code == 403),
        "the namespace-only release lists Secrets elsewhere"
    );
    let all: Api<Secret> = Api::all(as_release);
    assert!(
        matches!(all.list(&Default::default()).await, Err(kube::Error::Api(e)) if e.code == 403),
        "the namespace-only release lists Secrets cluster-wide"
    );
    op.terminate(Duration::from_secs(20));
    ok(
        helm(&["uninstall", "keyturn", "-n", &release]),
        "helm uninstall",
    );
}

/// `hack/chart-publish` to a local OCI registry; the chart is then rendered from it.
#[test]
fn the_chart_is_published_as_an_oci_artifact() {
    let crane = String::from_utf8(
        Command::new(root().join("hack/image"))
            .arg("--crane")
            .stderr(Stdio::inherit())
            .output()
            .expect("hack/image --crane")
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    // The registry binds a port of its own choosing (`:0`) and says which on stderr.
    let disk = std::env::temp_dir().join(format!(
        "keyturn-chart-registry-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&disk).unwrap();
    let said = disk.with_extension("log");
    let mut registry = Command::new(&crane)
        .args([
            "registry",
            "serve",
            "--address",
            "127.0.0.1:0",
            "--disk",
            disk.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&said).unwrap())
        .spawn()
        .expect("crane registry serve");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let port = loop {
        let text = std::fs::read_to_string(&said).unwrap_or_default();
        if let Some(p) = text
            .split("serving on port ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse::<u16>().ok())
        {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the registry did not say its port: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let addr = format!("127.0.0.1:{port}");
    let home = std::env::temp_dir().join("keyturn-helm-home");
    let publish = Command::new(root().join("hack/chart-publish"))
        .args([&addr, "--plain-http"])
        .env("HELM", tools().join("bin/helm"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap();
    let version = std::fs::read_to_string(root().join("charts/keyturn/Chart.yaml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("version: ").map(str::to_string))
        .unwrap();
    let shown = helm(&[
        "show",
        "chart",
        &format!("oci://{addr}/charts/keyturn"),
        "--version",
        &version,
        "--plain-http",
    ]);
    let remote = helm(&[
        "template",
        "keyturn",
        &format!("oci://{addr}/charts/keyturn"),
        "--version",
        &version,
        "--plain-http",
        "-n",
        "keyturn-system",
        "--set",
        "image.repository=keyturn",
    ]);
    let _ = registry.kill();
    let _ = registry.wait();
    let _ = std::fs::remove_dir_all(&disk);
    ok(publish, "hack/chart-publish");
    assert!(ok(shown, "helm show chart").contains("name: keyturn"));
    assert_eq!(
        normalized(objects(&ok(remote, "helm template from the registry"))),
        normalized(template("keyturn-system", &[])),
        "the published chart renders as the source"
    );
}
