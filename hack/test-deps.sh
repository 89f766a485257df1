#!/usr/bin/env bash
# hack/test-deps.sh DIR — installs what the tests need beyond crates into DIR, versions pinned in
# tests/verifiers/, next to copies of the scripts that use them:
#   - Node: jose (the independent verifier of tests/http.rs and docs/verifiers.md, and the Node
#     column of the interop matrix), mermaid with jsdom (hack/check-docs parses the diagrams);
#   - Python: PyJWT with cryptography (verifier, and the Python column of the matrix);
#   - Go: tests/verifiers/interop/go built with go-jose from the Go module proxy (DIR/interop-go);
#   - Java: Nimbus JOSE+JWT and Tink from Maven Central (DIR/java/lib), Interop.java compiled
#     against them (DIR/java/classes).
# Each part is reinstalled only when its own pins or sources changed (a stamp per part).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:?usage: hack/test-deps.sh DIR}"
V="$ROOT/tests/verifiers"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
cp "$V"/{package.json,verify.mjs,verify.py,mermaid-parse.mjs,argocd-health.mjs} "$V"/interop/{interop.mjs,interop.py} "$DIR/"

# fresh NAME FILE... — true when the part NAME must be (re)installed; `installed NAME` records it.
stamp_of() { shift; cat "$@" | sha256sum | cut -c1-16; }
fresh() { [ "$(cat "$DIR/.stamp-$1" 2>/dev/null)" != "$(stamp_of "$@")" ]; }
installed() { stamp_of "$@" >"$DIR/.stamp-$1"; }
need() { command -v "$1" >/dev/null || { echo "hack/test-deps.sh: $1 is required ($2)" >&2; exit 1; }; }

js=(js "$V/package.json" "$V/requirements.txt")
if fresh "${js[@]}"; then
  need node "jose verifier, interop matrix"; need npm "jose, mermaid"; need python3 "PyJWT"
  echo "installing jose, mermaid, jsdom, fengari (npm) and PyJWT (PyPI) into $DIR"
  (cd "$DIR" && npm install --no-audit --no-fund --loglevel=error)
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --upgrade --target "$DIR/python" -r "$V/requirements.txt"
  installed "${js[@]}"
fi

go=(go "$V"/interop/go/{go.mod,go.sum,main.go})
if fresh "${go[@]}" || [ ! -x "$DIR/interop-go" ]; then
  need go "the Go column of the interop matrix"
  echo "building the Go interop program (go-jose from the Go module proxy) into $DIR/interop-go"
  (cd "$V/interop/go" && go build -trimpath -o "$DIR/interop-go" .)
  installed "${go[@]}"
fi

java=(java "$V"/interop/java/{pom.xml,Interop.java})
if fresh "${java[@]}"; then
  need mvn "Nimbus JOSE+JWT for the Java column of the interop matrix"; need javac "Interop.java"
  echo "fetching Nimbus JOSE+JWT and Tink (Maven Central) into $DIR/java/lib, compiling Interop.java"
  rm -rf "$DIR/java" && mkdir -p "$DIR/java/classes"
  mvn -q -B -Dstyle.color=never -f "$V/interop/java/pom.xml" dependency:copy-dependencies -DoutputDirectory="$DIR/java/lib"
  javac -d "$DIR/java/classes" -cp "$DIR/java/lib/*" "$V/interop/java/Interop.java"
  installed "${java[@]}"
fi

# Go tools, built from the Go module proxy into ~/.cache/keyturn/bin (kept across checkouts)
# and linked into DIR/bin: Helm (tests/chart.rs: lint, template, install, upgrade, push),
# promtool (hack/test.sh: the alerts' unit tests), and the Prometheus Operator's CRDs
# (ServiceMonitor, PrometheusRule) for the chart's server-side dry run (DIR/monitoring-crds).
. "$V/go-tools.env"
CACHE_BIN="$HOME/.cache/keyturn/bin"
mkdir -p "$CACHE_BIN" "$DIR/bin" "$DIR/monitoring-crds"
go_tool() { # NAME PACKAGE VERSION [BUILD TAGS]
  local name="$1" pkg="$2" version="$3" tags="${4:-}" out="$CACHE_BIN/$1-$3"
  if [ ! -x "$out" ]; then
    need go "$name"
    echo "building $name $version (Go module proxy) into $out (first time: minutes on 2 cores)"
    local tmp; tmp="$(mktemp -d)"
    (cd "$tmp" && GOTOOLCHAIN=local GOBIN="$tmp/bin" go install -trimpath -tags "$tags" -ldflags "-s -w" "$pkg@$version")
    mv "$tmp/bin/$name" "$out"
    rm -rf "$tmp"
  fi
  ln -sf "$out" "$DIR/bin/$name"
}
go_tool helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION"
# Without Prometheus' service-discovery plugins (cloud SDKs promtool's rule tests never use):
# a much smaller build.
go_tool promtool github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_VERSION" remove_all_sd
if [ ! -s "$DIR/monitoring-crds/.version" ] || [ "$(cat "$DIR/monitoring-crds/.version")" != "$PROMETHEUS_OPERATOR_VERSION" ]; then
  need go "the Prometheus Operator's CRDs"
  src="$(cd "$(mktemp -d)" && GOTOOLCHAIN=local go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  cp "$src"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules}.yaml "$DIR/monitoring-crds/"
  echo "$PROMETHEUS_OPERATOR_VERSION" > "$DIR/monitoring-crds/.version"
fi
mkdir -p "$DIR/gateway-crds"
if [ ! -s "$DIR/gateway-crds/.version" ] || [ "$(cat "$DIR/gateway-crds/.version")" != "$GATEWAY_API_VERSION" ]; then
  need go "the Gateway API's CRDs"
  src="$(cd "$(mktemp -d)" && GOTOOLCHAIN=local go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  cp "$src"/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml "$DIR/gateway-crds/"
  echo "$GATEWAY_API_VERSION" > "$DIR/gateway-crds/.version"
fi
