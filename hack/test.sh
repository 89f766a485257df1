#!/usr/bin/env bash
# hack/test.sh — keyturn's one test command, in stages.
#
#   hack/test.sh unit          fmt --check, clippy (all targets, -D warnings), cargo-deny, unit tests,
#                              hack/check-docs-test: no cluster, under 3 minutes on a warm machine
#   hack/test.sh it [FILTER...] the integration tests (tests/it, one binary) against a real plane
#                              (kube-apiserver, etcd, kube-controller-manager) started for them
#                              and stopped on exit; FILTERs are cargo test's (e.g. `obstruction::`)
#   hack/test.sh signer        tests/it/signer.rs: kube-apiserver signing through `keyturn
#                              signer`, two scenarios each on a plane of its own, side by side
#                              (~11 minutes, mostly waiting for a token to expire)
#   hack/test.sh docs          the alerts (promtool), krew packaging, and every block of
#                              README.md and docs/ (hack/check-docs) against a real plane
#   hack/test.sh node          the demo (hack/demo.sh), the real node end to end (hack/e2e-node:
#                              kubelet, containerd, runc, CNI, kube-proxy) and the node demo
#   hack/test.sh [all]         all of them, the signer's beside it and docs: what CI runs
#
# Test dependencies that are not Rust crates (the plane, npm/PyPI/Go/Maven packages, Helm,
# promtool) are installed by the scripts this one calls, and cached under ~/.cache/keyturn.
# A clone without target/ of its own shares the build cache of this machine's other clones
# (target/ links to ~/.cache/keyturn/target; this clone's own keyturn artifacts are removed
# from it on exit, so the cache holds the dependencies only). KEYTURN_SHARED_TARGET=0 opts out.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${KEYTURN_CACHE:-$HOME/.cache/keyturn}"
STAGE="${1:-all}"
FILTERS=("${@:2}")
case "$STAGE" in
  unit | it | signer | docs | node | all) ;;
  *) echo "usage: hack/test.sh [unit | it [FILTER...] | signer | docs | node | all]" >&2; exit 2 ;;
esac

# Each step says what it cost when the next one starts (and the total at the end).
CURRENT="" ; STARTED=$SECONDS
step() {
  [ -n "$CURRENT" ] && printf '    (%s: %ds)\n' "$CURRENT" $((SECONDS - STARTED))
  CURRENT="$*"; STARTED=$SECONDS
  printf '\n==> %s\n' "$*"
}

PLANE="$ROOT/.control-plane-test"
PLANE_UP=""
E2E_PID=""
SIGNER_PID=""
SHARED_TARGET=""
cleanup() {
  local rc=$?
  # The signer's tests run in a process group of their own (setsid): their plane's processes go too.
  if [ -n "$SIGNER_PID" ]; then kill -- -"$SIGNER_PID" 2>/dev/null || true; wait "$SIGNER_PID" 2>/dev/null || true; fi
  # hack/e2e-node stops its node on SIGTERM.
  if [ -n "$E2E_PID" ]; then kill "$E2E_PID" 2>/dev/null || true; wait "$E2E_PID" 2>/dev/null || true; fi
  if [ -n "$PLANE_UP" ]; then "$ROOT/hack/control-plane" stop "$PLANE" || true; fi
  if [ -n "$SHARED_TARGET" ]; then
    # This clone's own artifacts (keyturn's, keyed by this checkout's path) leave the shared cache.
    for args in "" "--release" "--release --target x86_64-unknown-linux-gnu"; do
      # shellcheck disable=SC2086
      cargo clean --quiet -p keyturn $args 2>/dev/null || true
    done
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ ! -e "$ROOT/target" ] && [ -z "${CARGO_TARGET_DIR:-}" ] && [ "${KEYTURN_SHARED_TARGET:-1}" != 0 ]; then
  mkdir -p "$CACHE/target"
  ln -s "$CACHE/target" "$ROOT/target"
  SHARED_TARGET=1
  echo "target/ -> $CACHE/target (the build cache shared by this machine's clones)"
fi

stage_unit() {
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

  step "hack/check-docs-test (the docs runner's own parsing and matching)"
  python3 "$ROOT/hack/check-docs-test"
}

# The plane the integration tests and the docs run against, with the API server's audit log
# (tests read who wrote what from it, not from keyturn's logs).
start_plane() {
  [ -n "$PLANE_UP" ] && return
  step "control plane"
  "$ROOT/hack/control-plane" stop "$PLANE" >/dev/null 2>&1 || true
  PLANE_UP=1
  KEYTURN_AUDIT=1 "$ROOT/hack/control-plane" start "$PLANE" >/dev/null
  export KEYTURN_TEST_KUBECONFIG="$PLANE/kubeconfig"
  KEYTURN_TEST_KUBECTL="$("$ROOT/hack/control-plane" bin-dir)/kubectl"
  export KEYTURN_TEST_KUBECTL
  export KEYTURN_TEST_LOG_DIR="$PLANE/test-logs"
  mkdir -p "$KEYTURN_TEST_LOG_DIR"
}

test_deps() {
  [ -n "${KEYTURN_TEST_VERIFIERS:-}" ] && return
  step "test packages: jose, mermaid, jsdom (npm), PyJWT (PyPI), go-jose, Helm, promtool, Prometheus Operator CRDs (Go proxy), Nimbus + Tink (Maven)"
  "$ROOT/hack/test-deps.sh" "$ROOT/.test-deps/verifiers"
  export KEYTURN_TEST_VERIFIERS="$ROOT/.test-deps/verifiers"
}

# tests/it/signer.rs starts a plane of its own; it runs in the background (mostly waiting for a
# 10-minute token to expire) while the other stages use the cores.
start_signer() {
  mkdir -p "$PLANE/test-logs"
  "$ROOT/hack/control-plane" build >/dev/null
  KEYTURN_TEST_KUBECTL="$("$ROOT/hack/control-plane" bin-dir)/kubectl"
  export KEYTURN_TEST_KUBECTL
  export KEYTURN_TEST_LOG_DIR="${KEYTURN_TEST_LOG_DIR:-$PLANE/test-logs}"
  cargo test --test it --no-run
  setsid cargo test --test it signer:: -- --nocapture >"$PLANE/signer-test.log" 2>&1 &
  SIGNER_PID=$!
}

finish_signer() {
  step "tests/it/signer.rs: the cluster's ServiceAccount tokens signed by keyturn signer through rotations, restarts and outages"
  if ! wait "$SIGNER_PID"; then SIGNER_PID=""; tail -n 100 "$PLANE/signer-test.log"; exit 1; fi
  SIGNER_PID=""
  grep -a -E "^\[ *[0-9.]+s\]|tokens issued|^test result" "$PLANE/signer-test.log"
}

stage_it() {
  start_plane
  test_deps
  step "integration tests (tests/it but node:: and signer::; real kube-apiserver + etcd + kube-controller-manager)${FILTERS[*]:+, filter ${FILTERS[*]}}"
  cargo test --test it -- "${FILTERS[@]}" --skip node:: --skip signer:: --test-threads 4
}

stage_docs() {
  start_plane
  test_deps
  step "alerts: promtool check rules and promtool test rules (tests/monitoring/alerts-test.yaml)"
  "$KEYTURN_TEST_VERIFIERS/bin/promtool" check rules charts/keyturn/files/alerts.yaml
  "$KEYTURN_TEST_VERIFIERS/bin/promtool" test rules tests/monitoring/alerts-test.yaml

  step "krew packaging of kubectl keyturn (hack/krew-manifest, with the debug build the tests use)"
  # Built as the tests build it (with the dev-dependencies' features): no second build.
  cargo test --quiet --test it --no-run
  KEYTURN_PLUGIN_BIN="$ROOT/target/debug/kubectl-keyturn" "$ROOT/hack/krew-manifest" v0.0.0-test http://127.0.0.1/krew >/dev/null
  local krew="$ROOT/target/krew" sha unpacked
  sha="$(sha256sum "$krew/kubectl-keyturn-v0.0.0-test-linux-amd64.tar.gz" | cut -d' ' -f1)"
  grep -q "sha256: $sha" "$krew/keyturn.yaml"
  grep -q "uri: http://127.0.0.1/krew/kubectl-keyturn-v0.0.0-test-linux-amd64.tar.gz" "$krew/keyturn.yaml"
  if grep -v '^#' "$krew/keyturn.yaml" | grep -E 'VERSION|BASE_URL|SHA256_'; then echo "krew: a placeholder is left in the manifest"; exit 1; fi
  unpacked="$(mktemp -d)"
  tar -xzf "$krew/kubectl-keyturn-v0.0.0-test-linux-amd64.tar.gz" -C "$unpacked"
  "$unpacked/kubectl-keyturn" --help | grep -q "verify"
  cmp "$unpacked/LICENSE" "$ROOT/LICENSE"
  rm -rf "$unpacked"
  echo "krew: archive and manifest agree (sha256 $sha)"

  step "docs: every command, manifest and code block of README.md and docs/ (hack/check-docs)"
  KUBECONFIG="$PLANE/kubeconfig" "$ROOT/hack/check-docs"
}

stage_node() {
  # The README's command with its default schedule (a rotation every 2 minutes, about 5 minutes
  # for two); KEYTURN_DEMO_ROTATIONS only makes it stop by itself instead of at Ctrl-C. Beside
  # it (both mostly wait for rotations; they share nothing), the end-to-end suite on a real
  # node. Its kubelet syncs every 10s (Kubernetes' default is 1m; hack/bench-node measures at
  # 1m): the suite's schedule follows it, so three rotations take ~2.5 minutes instead of ~7.
  mkdir -p "$PLANE/test-logs"
  if [ -n "$PLANE_UP" ]; then "$ROOT/hack/control-plane" stop "$PLANE" >/dev/null; PLANE_UP=""; fi
  step "demo: hack/demo.sh as the README runs it, until it has shown two rotations; beside it, the real node (kubelet, containerd, runc, kube-proxy: hack/control-plane start --node) with keyturn as Pods and workloads through 3 rotations (hack/e2e-node)"
  "$ROOT/hack/control-plane" build --node >"$PLANE/node-build.log" 2>&1 || { tail -n 40 "$PLANE/node-build.log"; exit 1; }
  KEYTURN_NODE_SYNC_FREQUENCY=10s KEYTURN_TEST_LOG_DIR="$PLANE/test-logs/node" "$ROOT/hack/e2e-node" >"$PLANE/e2e-node.log" 2>&1 &
  E2E_PID=$!
  KEYTURN_DEMO_ROTATIONS=2 timeout 900 "$ROOT/hack/demo.sh" >"$PLANE/demo.log" 2>&1 || { tail -n 40 "$PLANE/demo.log"; exit 1; }
  grep -a -q "rotation 2:" "$PLANE/demo.log"
  echo "demo: saw 2 rotations"
  if ! wait "$E2E_PID"; then E2E_PID=""; tail -n 100 "$PLANE/e2e-node.log"; exit 1; fi
  E2E_PID=""
  grep -a -E "^(install|service|rotation|handover|subPath|propagation|test result)" "$PLANE/e2e-node.log"

  # The README's node demo, on the same 10s kubelet sync, with a schedule sized to it.
  step "demo on the node: hack/demo.sh --node until the Pod's mounted jwks.json has changed through two rotations"
  KEYTURN_NODE_SYNC_FREQUENCY=10s KEYTURN_DEMO_INTERVAL=45s KEYTURN_DEMO_PREPUBLISH=30s KEYTURN_DEMO_OVERLAP=30s \
    KEYTURN_DEMO_ROTATIONS=2 timeout 900 "$ROOT"/hack/demo.sh --node >"$PLANE/demo-node.log" 2>&1 || { tail -n 40 "$PLANE/demo-node.log"; exit 1; }
  grep -a -q "rotation 2:" "$PLANE/demo-node.log"
  local changes
  changes="$(grep -a -c "jwks.json changed inside the Pod" "$PLANE/demo-node.log")"
  # The first key, then each of the two next keys published before it signs.
  [ "$changes" -ge 3 ] || { echo "the Pod's mounted jwks.json changed $changes times, not 3"; exit 1; }
  echo "demo --node: 2 rotations, the Pod's jwks.json changed $changes times"
}

case "$STAGE" in
  unit) stage_unit ;;
  it) stage_it ;;
  signer)
    step "tests/it/signer.rs"
    start_signer
    finish_signer
    ;;
  docs) stage_docs ;;
  node) stage_node ;;
  all)
    stage_unit
    start_plane
    test_deps
    step "build the integration tests; start tests/it/signer.rs on a plane of its own, beside the next steps"
    start_signer
    stage_it
    stage_docs
    finish_signer
    stage_node
    ;;
esac
printf '    (%s: %ds)\n\nhack/test.sh %s passed in %ds\n' "$CURRENT" $((SECONDS - STARTED)) "$STAGE" "$SECONDS"
