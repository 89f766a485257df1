//! The `keyturn` command line, run as a user would (no cluster needed).

use std::process::Command;

fn keyturn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

#[test]
fn version_and_help() {
    let v = keyturn(&["--version"]);
    assert!(v.status.success());
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("keyturn {}", env!("CARGO_PKG_VERSION"))
    );
    let h = keyturn(&["--help"]);
    let text = String::from_utf8_lossy(&h.stdout);
    assert!(h.status.success());
    assert!(
        text.contains("keyturn crd | kubectl apply -f -") && text.contains("run"),
        "{text}"
    );
    let r = keyturn(&["run", "--help"]);
    let text = String::from_utf8_lossy(&r.stdout);
    for flag in [
        "--namespace",
        "--http-addr",
        "--leader-elect",
        "--log-format",
        "KEYTURN_HTTP_ADDR",
    ] {
        assert!(text.contains(flag), "run --help lacks {flag}");
    }
}

#[test]
fn bad_flags_give_one_line_and_a_non_zero_exit() {
    for args in [
        &["run", "--bogus"][..],
        &["run", "--http-addr", "nope"],
        &["run", "--log-format", "xml"],
        &["frobnicate"],
    ] {
        let out = keyturn(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("keyturn: "), "{err}");
    }
}

#[test]
fn crd_prints_what_crds_holds() {
    let out = keyturn(&["crd"]);
    assert!(out.status.success());
    // Every file of crds/, one YAML document each.
    let on_disk: Vec<String> = ["signingkeyset.yaml", "signingkeysetgrant.yaml"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(format!("{}/crds/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        })
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), on_disk.join("---\n"));
}

#[test]
fn run_without_a_cluster_fails_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args([
            "run",
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keyturn:") && err.contains("Kubernetes"),
        "{err}"
    );
}
