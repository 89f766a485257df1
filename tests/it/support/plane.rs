//! A control plane of one test's own (`hack/control-plane start DIR`), for tests that stop
//! or reconfigure its components while the other tests keep the shared one. Stopped on drop.

use std::path::PathBuf;
use std::process::Command;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A plane in a directory of its own.
pub struct Plane {
    /// Its state directory (kubeconfig, pki, logs, saved commands).
    pub dir: PathBuf,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/control-plane")
}

impl Plane {
    /// Starts a plane in `$TMPDIR/keyturn-<name>-<pid>`.
    pub fn start(name: &str) -> Plane {
        let dir = std::env::temp_dir().join(format!("keyturn-{name}-{}", std::process::id()));
        let out = Command::new(script())
            .arg("start")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "starting a plane of this test's own: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Plane { dir }
    }

    /// Runs `hack/control-plane VERB DIR ARGS...`, which must succeed.
    pub fn run(&self, verb: &str, args: &[&str]) {
        let out = Command::new(script())
            .arg(verb)
            .arg(&self.dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hack/control-plane {verb} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl ARGS` as its admin, which must succeed; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let bin = std::env::var("KEYTURN_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let out = Command::new(bin)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `kill-component` / `start-component` of etcd or kube-apiserver.
    pub fn component(&self, verb: &str, name: &str) {
        self.run(verb, &[name]);
    }

    /// Its admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// An admin client.
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(self.kubeconfig()).unwrap();
        Client::try_from(
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .unwrap(),
        )
        .unwrap()
    }

    /// Installs keyturn's CRDs from crds/ and waits until they are established.
    pub async fn install_crds(&self, client: &Client) {
        super::apply_crds(client).await;
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).output();
    }
}
