#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Node.js and npm from
# Debian if missing, the npm and PyPI fixtures into a cache dir), then runs every test.
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "test: installing nodejs and npm (apt-get)" >&2
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
  echo "test: installing python3-venv (apt-get)" >&2
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
CORRAL_FIXTURES=$(scripts/fixtures.sh | tail -n 1)
export CORRAL_FIXTURES
exec cargo test --workspace --locked "$@"
