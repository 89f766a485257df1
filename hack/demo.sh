#!/usr/bin/env bash
# hack/demo.sh — watch keyturn rotate a key on a local control plane, in one command.
#
# Builds what is missing (with progress), starts a local control plane (hack/control-plane),
# installs the CRD, starts the operator, applies a SigningKeySet with a fast schedule, and
# shows each rotation as it happens: `kubectl get sks`, the JWKS in the ConfigMap, the active
# kid in the Secret, and `keyturn status`. Ctrl-C stops everything it started.
#
# `hack/demo.sh --node`: the same on a real node (hack/control-plane start --node): the
# operator runs as two Pods from its image (deploy/ through tests/node/overlay), and a Pod
# mounting the JWKS ConfigMap as a directory shows its `jwks.json` changing at each rotation,
# after the kubelet's sync delay (syncFrequency KEYTURN_NODE_SYNC_FREQUENCY, default 1m).
#
# Environment: KEYTURN_DEMO_INTERVAL (2m; --node: 4m), KEYTURN_DEMO_PREPUBLISH (30s; --node:
# 100s, more than the kubelet's delay), KEYTURN_DEMO_OVERLAP (1m; --node: 100s),
# KEYTURN_DEMO_ROTATIONS (0 = until Ctrl-C; N = stop after N).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NODE=0
if [ "${1:-}" = --node ]; then NODE=1; fi
if [ "$NODE" = 1 ]; then
  DIR="$ROOT/.demo-node"
  INTERVAL="${KEYTURN_DEMO_INTERVAL:-4m}"
  PRE="${KEYTURN_DEMO_PREPUBLISH:-100s}"
  OVERLAP="${KEYTURN_DEMO_OVERLAP:-100s}"
else
  DIR="$ROOT/.demo"
  INTERVAL="${KEYTURN_DEMO_INTERVAL:-2m}"
  PRE="${KEYTURN_DEMO_PREPUBLISH:-30s}"
  OVERLAP="${KEYTURN_DEMO_OVERLAP:-1m}"
fi
STOP_AFTER="${KEYTURN_DEMO_ROTATIONS:-0}"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# in_plane CMD...: where the plane listens (inside its network namespace with --node).
in_plane() { if [ "$NODE" = 1 ]; then "$ROOT/hack/control-plane" exec "$DIR" -- "$@"; else "$@"; fi; }

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
export KUBECONFIG="$DIR/kubeconfig"
KUBECTL="$("$ROOT/hack/control-plane" bin-dir)/kubectl"
kc() { in_plane "$KUBECTL" "$@"; }
if [ "$NODE" = 1 ]; then
  say "with a real node: kubelet, containerd, runc, kube-proxy (the first run builds them: minutes)"
  "$ROOT/hack/control-plane" start --node "$DIR" >/dev/null
  say "building keyturn's image and a workload image, pushing them to the node's registry"
  "$ROOT/hack/node-images" "$DIR"
  say "installing keyturn as Pods: kubectl apply -k tests/node/overlay (crds/ and deploy/ with the local image)"
  kc apply --server-side -k "$ROOT/tests/node/overlay" >/dev/null
  kc -n keyturn-system rollout status deploy/keyturn --timeout 180s
  kc -n keyturn-system get pods -o wide
else
  "$ROOT/hack/control-plane" start "$DIR" >/dev/null

  say "installing the CRD"
  "$KEYTURN" crd | kc apply -f -
  kc wait --for condition=established crd/signingkeysets.keyturn.dev >/dev/null

  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  say "starting the operator (log: $DIR/keyturn.log; JWKS at http://127.0.0.1:$PORT/jwks/default/demo)"
  ADMIN_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  "$KEYTURN" run --http-addr "127.0.0.1:$PORT" --metrics-addr "127.0.0.1:$ADMIN_PORT" >"$DIR/keyturn.log" 2>&1 &
  op_pid=$!
fi

say "applying a SigningKeySet that rotates every $INTERVAL (prePublish $PRE, overlap $OVERLAP)"
cat <<YAML | tee /dev/stderr | kc apply -f -
apiVersion: keyturn.dev/v1alpha1
kind: SigningKeySet
metadata: {name: demo, namespace: default}
spec:
  algorithm: ES256
  rotation: {interval: $INTERVAL, prePublish: $PRE, overlap: $OVERLAP}
YAML

if [ "$NODE" = 1 ]; then
  say "starting a Pod that mounts the JWKS ConfigMap as a directory (docs/verifiers.md)"
  kc wait --for=create configmap/demo-jwks --timeout 60s >/dev/null
  cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: jwks-reader, namespace: default}
spec:
  containers:
  - name: reader
    image: 127.0.0.1:5000/keyturn-e2e:1
    args: [verifier]
    env: [{name: KEYTURN_JWKS, value: /etc/keyturn/jwks/jwks.json}]
    volumeMounts: [{name: jwks, mountPath: /etc/keyturn/jwks, readOnly: true}]
  volumes: [{name: jwks, configMap: {name: demo-jwks}}]
YAML
  kc wait --for=condition=Ready pod/jwks-reader --timeout 120s >/dev/null
  printf '\nPoke at it from another terminal:\n  hack/control-plane exec %s -- %s --kubeconfig %s get pods -A\n' \
    "$DIR" "$KUBECTL" "$KUBECONFIG"
else
  printf '\nPoke at it from another terminal:\n  export KUBECONFIG=%s\n  export PATH=%s:$PATH\n  kubectl get sks,secret,configmap\n  %s status default/demo\n' \
    "$KUBECONFIG" "$(dirname "$KUBECTL")" "$KEYTURN"
fi

kids_of() { python3 -c 'import json,sys; print(" ".join(k["kid"][:12]+"…" for k in json.load(sys.stdin)["keys"]))'; }
last_kid=""; last_jwks=""; last_file=""; rotations=0
while true; do
  if [ -n "$op_pid" ] && ! kill -0 "$op_pid" 2>/dev/null; then
    echo "the operator exited; last lines of its log:" >&2; tail -n 20 "$DIR/keyturn.log" >&2; exit 1
  fi
  kid="$(kc get secret demo-signing-key -o jsonpath='{.data.kid}' 2>/dev/null | base64 -d 2>/dev/null || true)"
  jwks="$(kc get configmap demo-jwks -o jsonpath='{.data.jwks\.json}' 2>/dev/null || true)"
  if [ -n "$jwks" ] && [ "$jwks" != "$last_jwks" ]; then
    say "$(date +%T) JWKS changed in the ConfigMap: $(printf '%s' "$jwks" | kids_of)"
    last_jwks="$jwks"
  fi
  if [ "$NODE" = 1 ]; then
    # What the Pod reads: its mounted file, after the kubelet's sync.
    file="$(kc exec jwks-reader -- /keyturn-e2e cat /etc/keyturn/jwks/jwks.json 2>/dev/null || true)"
    if [ -n "$file" ] && [ "$file" != "$last_file" ]; then
      say "$(date +%T) jwks.json changed inside the Pod jwks-reader: $(printf '%s' "$file" | kids_of)"
      last_file="$file"
    fi
  fi
  if [ -n "$kid" ] && [ "$kid" != "$last_kid" ]; then
    if [ -z "$last_kid" ]; then
      say "$(date +%T) first key signs: $kid"
    else
      rotations=$((rotations + 1))
      say "$(date +%T) rotation $rotations: $kid now signs (was $last_kid)"
    fi
    last_kid="$kid"
    kc get sks demo
    in_plane "$KEYTURN" status default/demo
    if [ "$STOP_AFTER" -gt 0 ] && [ "$rotations" -ge "$STOP_AFTER" ]; then
      say "saw $rotations rotations"
      exit 0
    fi
  fi
  sleep 1
done
