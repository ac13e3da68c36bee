#!/usr/bin/env bash
# The id-hygiene scenario as a benchmark: 16 HTTP clients x 64 calls in flight against 3 servers
# while one is SIGKILLed every 1.5 s. Prints the CHAOS line (calls, errors, kills, calls/s).
#   bench/chaos.sh [SECONDS]        (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
CORRAL_CHAOS_SECS=${1:-30} CARGO_TARGET_DIR="$PWD/target" \
  cargo test --release --locked -p mcp-corral --test chaos -- --nocapture 2>&1 | grep -E '^CHAOS|test result'
