#!/usr/bin/env bash
# hack/demo.sh — watch keyturn rotate a key on a local control plane, in one command.
#
# Builds what is missing (with progress), starts a local control plane (hack/control-plane),
# installs the CRD, starts the operator, applies a SigningKeySet with a fast schedule, and
# shows each rotation as it happens: `kubectl get sks`, the JWKS in the ConfigMap, the active
# kid in the Secret, and `keyturn status`. Ctrl-C stops everything it started.
#
# Environment: KEYTURN_DEMO_INTERVAL (2m), KEYTURN_DEMO_PREPUBLISH (30s),
# KEYTURN_DEMO_OVERLAP (1m), KEYTURN_DEMO_ROTATIONS (0 = until Ctrl-C; N = stop after N).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR="$ROOT/.demo"
INTERVAL="${KEYTURN_DEMO_INTERVAL:-2m}"
PRE="${KEYTURN_DEMO_PREPUBLISH:-30s}"
OVERLAP="${KEYTURN_DEMO_OVERLAP:-1m}"
STOP_AFTER="${KEYTURN_DEMO_ROTATIONS:-0}"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building keyturn (cargo build; the first build takes a few minutes)"
cargo build --bin keyturn
KEYTURN="$ROOT/target/debug/keyturn"

say "starting a local control plane (the first run builds Kubernetes from source: many minutes)"
op_pid=""
cleanup() {
  trap - INT TERM EXIT
  say "stopping what the demo started"
  [ -n "$op_pid" ] && kill "$op_pid" 2>/dev/null && wait "$op_pid" 2>/dev/null || true
  "$ROOT/hack/control-plane" stop "$DIR" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$ROOT/hack/control-plane" stop "$DIR" >/dev/null 2>&1 || true
"$ROOT/hack/control-plane" start "$DIR" >/dev/null
export KUBECONFIG="$DIR/kubeconfig"
KUBECTL="$("$ROOT/hack/control-plane" bin-dir)/kubectl"

say "installing the CRD"
"$KEYTURN" crd | "$KUBECTL" apply -f -
"$KUBECTL" wait --for condition=established crd/signingkeysets.keyturn.dev >/dev/null

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
say "starting the operator (log: $DIR/keyturn.log; JWKS at http://127.0.0.1:$PORT/jwks/default/demo)"
ADMIN_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$KEYTURN" run --http-addr "127.0.0.1:$PORT" --metrics-addr "127.0.0.1:$ADMIN_PORT" >"$DIR/keyturn.log" 2>&1 &
op_pid=$!

say "applying a SigningKeySet that rotates every $INTERVAL (prePublish $PRE, overlap $OVERLAP)"
cat <<YAML | tee /dev/stderr | "$KUBECTL" apply -f -
apiVersion: keyturn.dev/v1alpha1
kind: SigningKeySet
metadata: {name: demo, namespace: default}
spec:
  algorithm: ES256
  rotation: {interval: $INTERVAL, prePublish: $PRE, overlap: $OVERLAP}
YAML

printf '\nPoke at it from another terminal:\n  export KUBECONFIG=%s\n  export PATH=%s:$PATH\n  kubectl get sks,secret,configmap\n  %s status default/demo\n' \
  "$KUBECONFIG" "$(dirname "$KUBECTL")" "$KEYTURN"

last_kid=""; last_jwks=""; rotations=0
while true; do
  if ! kill -0 "$op_pid" 2>/dev/null; then
    echo "the operator exited; last lines of its log:" >&2; tail -n 20 "$DIR/keyturn.log" >&2; exit 1
  fi
  kid="$("$KUBECTL" get secret demo-signing-key -o jsonpath='{.data.kid}' 2>/dev/null | base64 -d 2>/dev/null || true)"
  jwks="$("$KUBECTL" get configmap demo-jwks -o jsonpath='{.data.jwks\.json}' 2>/dev/null || true)"
  if [ -n "$jwks" ] && [ "$jwks" != "$last_jwks" ]; then
    kids="$(printf '%s' "$jwks" | python3 -c 'import json,sys; print(" ".join(k["kid"][:12]+"…" for k in json.load(sys.stdin)["keys"]))')"
    say "$(date +%T) JWKS changed: $kids"
    last_jwks="$jwks"
  fi
  if [ -n "$kid" ] && [ "$kid" != "$last_kid" ]; then
    if [ -z "$last_kid" ]; then
      say "$(date +%T) first key signs: $kid"
    else
      rotations=$((rotations + 1))
      say "$(date +%T) rotation $rotations: $kid now signs (was $last_kid)"
    fi
    last_kid="$kid"
    "$KUBECTL" get sks demo
    "$KEYTURN" status default/demo
    if [ "$STOP_AFTER" -gt 0 ] && [ "$rotations" -ge "$STOP_AFTER" ]; then
      say "saw $rotations rotations"
      exit 0
    fi
  fi
  sleep 1
done
