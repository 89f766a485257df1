#!/usr/bin/env bash
# hack/test-deps.sh DIR — installs what the tests need beyond crates into DIR: the independent
# verifiers (Node's jose from npm, Python's PyJWT from PyPI) and mermaid with jsdom for the docs'
# diagrams (hack/check-docs), versions pinned in tests/verifiers/, next to copies of the scripts
# that use them. Reuses DIR when the pins have not changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:?usage: hack/test-deps.sh DIR}"
mkdir -p "$DIR"
stamp="$(cat "$ROOT/tests/verifiers/package.json" "$ROOT/tests/verifiers/requirements.txt" | sha256sum | cut -c1-16)"
cp "$ROOT"/tests/verifiers/{package.json,verify.mjs,verify.py,mermaid-parse.mjs} "$DIR/"
if [ "$(cat "$DIR/.stamp" 2>/dev/null)" != "$stamp" ]; then
  command -v node >/dev/null || { echo "node is required for the jose verifier test" >&2; exit 1; }
  command -v npm >/dev/null || { echo "npm is required for the jose verifier test" >&2; exit 1; }
  echo "installing jose, mermaid, jsdom (npm) and PyJWT (PyPI) into $DIR"
  (cd "$DIR" && npm install --no-audit --no-fund --loglevel=error)
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --upgrade --target "$DIR/python" -r "$ROOT/tests/verifiers/requirements.txt"
  echo "$stamp" >"$DIR/.stamp"
fi
