#!/usr/bin/env bash
# hack/test.sh — keyturn's one test command.
#
#   1. cargo fmt --check, cargo clippy --all-targets -D warnings
#   2. unit tests (no cluster)
#   3. builds (first run) or reuses (later runs) the control plane, starts it, runs the
#      integration tests against it, and stops it on exit, failure or Ctrl-C.
#   4. test dependencies that are not Rust crates are installed by this script.
#   5. runs every block of README.md and docs/ (hack/check-docs), then the demo (hack/demo.sh).
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

step "unit tests"
cargo test --lib --bins

step "control plane"
PLANE="$ROOT/.control-plane-test"
cleanup() {
  local rc=$?
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

step "test packages: jose, mermaid, jsdom (npm), PyJWT (PyPI), go-jose (Go proxy), Nimbus + Tink (Maven)"
"$ROOT/hack/test-deps.sh" "$ROOT/.test-deps/verifiers"
export KEYTURN_TEST_VERIFIERS="$ROOT/.test-deps/verifiers"

step "integration tests (real kube-apiserver + etcd + kube-controller-manager)"
cargo test --test '*' -- --test-threads 4

step "docs: every command, manifest and code block of README.md and docs/ (hack/check-docs)"
KUBECONFIG="$PLANE/kubeconfig" "$ROOT/hack/check-docs"

# The README's command with its default schedule (a rotation every 2 minutes, about 5 minutes
# for two); KEYTURN_DEMO_ROTATIONS only makes it stop by itself instead of at Ctrl-C.
step "demo: hack/demo.sh as the README runs it, until it has shown two rotations"
KEYTURN_DEMO_ROTATIONS=2 timeout 900 "$ROOT/hack/demo.sh" >"$PLANE/demo.log" 2>&1 || { tail -n 40 "$PLANE/demo.log"; exit 1; }
grep -a -q "rotation 2:" "$PLANE/demo.log"
echo "demo: saw 2 rotations"
printf '    (%s: %ds)\n\nhack/test.sh passed in %ds\n' "$CURRENT" $((SECONDS - STARTED)) "$SECONDS"
