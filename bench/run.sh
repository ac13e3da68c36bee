#!/usr/bin/env bash
# Corral vs direct stdio vs peer gateways, side by side in one run of the shared harness.
#   bench/run.sh [mcpbench args…]      e.g. bench/run.sh --reps 3
# Writes bench/results/report.md. Peers install (npm, pip) into ~/.cache/corral-bench.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${CORRAL_BENCH_HARNESS:-$ROOT/../shared/bench}
WORK=${CORRAL_BENCH_DIR:-$HOME/.cache/corral-bench}
[ -f "$SHARED/mcpbench.py" ] || { echo "bench: harness not found at $SHARED (set CORRAL_BENCH_HARNESS)" >&2; exit 2; }
mkdir -p "$WORK"
# The harness puts peers beside itself; link it into a writable directory.
for f in mcpbench.py echo_server.py setup_peers.sh launchers; do ln -sfn "$SHARED/$f" "$WORK/$f"; done
[ -f "$WORK/.peers/stamp" ] || { bash "$WORK/setup_peers.sh" --no-contextforge && touch "$WORK/.peers/stamp"; }
cd "$ROOT"
CARGO_TARGET_DIR="$ROOT/target" cargo build --release --locked -p mcp-corral
mkdir -p bench/results
exec python3 "$WORK/mcpbench.py" --targets bench/targets.toml --out-dir bench/results --report bench/results/report.md "$@"
