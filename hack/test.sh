#!/usr/bin/env bash
# hack/test.sh — keyturn's one test command.
#
#   1. cargo fmt --check, cargo clippy --all-targets -D warnings, cargo deny check bans licenses
#   2. unit tests (no cluster)
#   3. builds (first run) or reuses (later runs) the control plane, starts it, runs the
#      integration tests against it, and stops it on exit, failure or Ctrl-C; beside them,
#      tests/signer.rs on a plane of its own (kube-apiserver signing through `keyturn signer`).
#   4. test dependencies that are not Rust crates are installed by this script.
#   5. runs every block of README.md and docs/ (hack/check-docs), then the demo (hack/demo.sh).
#   6. builds and starts a real node (kubelet, containerd, runc, CNI, kube-proxy) and runs the
#      end-to-end suite on it (hack/e2e-node: keyturn as Pods, workloads mounting its objects).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# Each step says what it cost when the next one starts (and the total at the end).
CURRENT="" ; STARTED=$SECONDS
step() {
  [ -n "$CURRENT" ] && printf '    (%s: %ds)\n' "$CURRENT" $((SECONDS - STARTED))
  CURRENT="$*"; STARTED=$SECONDS
  printf '\n==> %s\n' "$*"
}

step "toolchain"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
cargo --version

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo deny check bans licenses (deny.toml: one version of each crypto crate, permissive licenses)"
"$ROOT/hack/cargo-deny" check bans licenses

step "unit tests"
cargo test --lib --bins

step "control plane"
PLANE="$ROOT/.control-plane-test"
E2E_PID=""
SIGNER_PID=""
cleanup() {
  local rc=$?
  # tests/signer.rs runs in a process group of its own (setsid): its plane's processes go too.
  if [ -n "$SIGNER_PID" ]; then kill -- -"$SIGNER_PID" 2>/dev/null || true; wait "$SIGNER_PID" 2>/dev/null || true; fi
  # hack/e2e-node stops its node on SIGTERM.
  if [ -n "$E2E_PID" ]; then kill "$E2E_PID" 2>/dev/null || true; wait "$E2E_PID" 2>/dev/null || true; fi
  "$ROOT/hack/control-plane" stop "$PLANE" || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$ROOT/hack/control-plane" stop "$PLANE" >/dev/null 2>&1 || true
# With the API server's audit log: tests read who wrote what from it, not from keyturn's logs.
KEYTURN_AUDIT=1 "$ROOT/hack/control-plane" start "$PLANE" >/dev/null
export KEYTURN_TEST_KUBECONFIG="$PLANE/kubeconfig"
export KEYTURN_TEST_KUBECTL="$("$ROOT/hack/control-plane" bin-dir)/kubectl"
export KEYTURN_TEST_LOG_DIR="$PLANE/test-logs"
mkdir -p "$KEYTURN_TEST_LOG_DIR"

step "test packages: jose, mermaid, jsdom (npm), PyJWT (PyPI), go-jose, Helm, promtool, Prometheus Operator CRDs (Go proxy), Nimbus + Tink (Maven)"
"$ROOT/hack/test-deps.sh" "$ROOT/.test-deps/verifiers"
export KEYTURN_TEST_VERIFIERS="$ROOT/.test-deps/verifiers"

step "alerts: promtool check rules and promtool test rules (tests/monitoring/alerts-test.yaml)"
"$KEYTURN_TEST_VERIFIERS/bin/promtool" check rules charts/keyturn/files/alerts.yaml
"$KEYTURN_TEST_VERIFIERS/bin/promtool" test rules tests/monitoring/alerts-test.yaml

step "integration tests (real kube-apiserver + etcd + kube-controller-manager); beside them and the next two steps, tests/signer.rs on a plane of its own"
# Every tests/*.rs but node.rs, which needs the node's plane (the last step runs it), and
# signer.rs: kube-apiserver signing through `keyturn signer` for ~12 minutes (a 10-minute
# token is watched until it expires), mostly waiting, so it runs beside the others.
targets=()
for t in tests/*.rs; do
  t="$(basename "$t" .rs)"
  case "$t" in node|signer) ;; *) targets+=(--test "$t") ;; esac
done
cargo test --no-run "${targets[@]}" --test signer
setsid cargo test --test signer -- --nocapture >"$PLANE/signer-test.log" 2>&1 &
SIGNER_PID=$!
cargo test "${targets[@]}" -- --test-threads 4

step "krew packaging of kubectl keyturn (hack/krew-manifest, with the debug build the tests ran)"
KEYTURN_PLUGIN_BIN="$ROOT/target/debug/kubectl-keyturn" "$ROOT/hack/krew-manifest" v0.0.0-test http://127.0.0.1/krew >/dev/null
krew="$ROOT/target/krew"
sha="$(sha256sum "$krew/kubectl-keyturn-v0.0.0-test-linux-amd64.tar.gz" | cut -d' ' -f1)"
grep -q "sha256: $sha" "$krew/keyturn.yaml"
grep -q "uri: http://127.0.0.1/krew/kubectl-keyturn-v0.0.0-test-linux-amd64.tar.gz" "$krew/keyturn.yaml"
if grep -v '^#' "$krew/keyturn.yaml" | grep -E 'VERSION|BASE_URL|SHA256_'; then echo "krew: a placeholder is left in the manifest"; exit 1; fi
unpacked="$(mktemp -d)"
tar -xzf "$krew/kubectl-keyturn-v0.0.0-test-linux-amd64.tar.gz" -C "$unpacked"
"$unpacked/kubectl-keyturn" --help | grep -q "verify"
rm -rf "$unpacked"
echo "krew: archive and manifest agree (sha256 $sha)"

step "docs: every command, manifest and code block of README.md and docs/ (hack/check-docs)"
KUBECONFIG="$PLANE/kubeconfig" "$ROOT/hack/check-docs"

step "tests/signer.rs (started with the integration tests): the cluster's ServiceAccount tokens signed by keyturn signer through rotations, restarts and outages"
if ! wait "$SIGNER_PID"; then SIGNER_PID=""; tail -n 100 "$PLANE/signer-test.log"; exit 1; fi
SIGNER_PID=""
grep -a -E "^\[ *[0-9.]+s\]|tokens issued|^test result" "$PLANE/signer-test.log"

# The README's command with its default schedule (a rotation every 2 minutes, about 5 minutes
# for two); KEYTURN_DEMO_ROTATIONS only makes it stop by itself instead of at Ctrl-C.
# Beside it (both mostly wait for rotations; they share nothing), the end-to-end suite on a real
# node. Its kubelet syncs every 10s (Kubernetes' default is 1m; hack/bench-node measures at 1m):
# the suite's schedule follows it, so three rotations take ~2.5 minutes instead of ~7.
step "demo: hack/demo.sh as the README runs it, until it has shown two rotations; beside it, the real node (kubelet, containerd, runc, kube-proxy: hack/control-plane start --node) with keyturn as Pods and workloads through 3 rotations (hack/e2e-node)"
"$ROOT/hack/control-plane" build --node >"$PLANE/node-build.log" 2>&1 || { tail -n 40 "$PLANE/node-build.log"; exit 1; }
KEYTURN_NODE_SYNC_FREQUENCY=10s KEYTURN_TEST_LOG_DIR="$PLANE/test-logs/node" "$ROOT/hack/e2e-node" >"$PLANE/e2e-node.log" 2>&1 &
E2E_PID=$!
KEYTURN_DEMO_ROTATIONS=2 timeout 900 "$ROOT/hack/demo.sh" >"$PLANE/demo.log" 2>&1 || { tail -n 40 "$PLANE/demo.log"; exit 1; }
grep -a -q "rotation 2:" "$PLANE/demo.log"
echo "demo: saw 2 rotations"
"$ROOT/hack/control-plane" stop "$PLANE" >/dev/null
if ! wait "$E2E_PID"; then E2E_PID=""; tail -n 100 "$PLANE/e2e-node.log"; exit 1; fi
E2E_PID=""
grep -a -E "^(install|service|rotation|handover|subPath|propagation|test result)" "$PLANE/e2e-node.log"

# The README's node demo, on the same 10s kubelet sync, with a schedule sized to it.
step "demo on the node: hack/demo.sh --node until the Pod's mounted jwks.json has changed through two rotations"
KEYTURN_NODE_SYNC_FREQUENCY=10s KEYTURN_DEMO_INTERVAL=45s KEYTURN_DEMO_PREPUBLISH=30s KEYTURN_DEMO_OVERLAP=30s \
  KEYTURN_DEMO_ROTATIONS=2 timeout 900 "$ROOT"/hack/demo.sh --node >"$PLANE/demo-node.log" 2>&1 || { tail -n 40 "$PLANE/demo-node.log"; exit 1; }
grep -a -q "rotation 2:" "$PLANE/demo-node.log"
changes="$(grep -a -c "jwks.json changed inside the Pod" "$PLANE/demo-node.log")"
# The first key, then each of the two next keys published before it signs.
[ "$changes" -ge 3 ] || { echo "the Pod's mounted jwks.json changed $changes times, not 3"; exit 1; }
echo "demo --node: 2 rotations, the Pod's jwks.json changed $changes times"
printf '    (%s: %ds)\n\nhack/test.sh passed in %ds\n' "$CURRENT" $((SECONDS - STARTED)) "$SECONDS"
