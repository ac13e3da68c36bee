#!/usr/bin/env bash
# HTTP throughput at 64 connections with a native load generator: Corral vs the Streamable HTTP
# peers, each fronting the same echo server, interleaved over several rounds.
#   bench/wrk.sh [ROUNDS] [SECONDS]      (needs wrk: apt-get install wrk; peers from bench/run.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${CORRAL_BENCH_HARNESS:-$ROOT/../shared/bench}
WORK=${CORRAL_BENCH_DIR:-$HOME/.cache/corral-bench}
PEERS=$WORK/.peers
ROUNDS=${1:-3}
SECS=${2:-5}
ECHO="python3 -u $SHARED/echo_server.py"
command -v wrk >/dev/null || { echo "wrk: apt-get install wrk" >&2; exit 2; }
[ -d "$PEERS/npm/node_modules/supergateway" ] || { echo "peers missing: run bench/run.sh once" >&2; exit 2; }
cd "$ROOT"
CARGO_TARGET_DIR="$ROOT/target" cargo build --release --locked -p mcp-corral >&2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cat > "$TMP/corral.toml" <<TOML
stateDir = "$TMP/state"
[servers.bench]
command = "python3"
args = ["-u", "$SHARED/echo_server.py"]
autoStart = true
TOML

start() {  # name port -> sets PID, TOOL
  case "$1" in
    corral) setsid target/release/corral serve --listen "127.0.0.1:$2" --config "$TMP/corral.toml" --log-level warn & PID=$!; TOOL=bench__echo ;;
    supergateway) setsid node "$PEERS/npm/node_modules/supergateway/dist/index.js" --stdio "$ECHO" --outputTransport streamableHttp --stateful --port "$2" --logLevel none >/dev/null 2>&1 & PID=$!; TOOL=echo ;;
    mcp-proxy-ts) setsid node "$PEERS/npm/node_modules/mcp-proxy/dist/bin/mcp-proxy.mjs" --port "$2" --server stream -- python3 -u "$SHARED/echo_server.py" >/dev/null 2>&1 & PID=$!; TOOL=echo ;;
  esac
}

session() {  # port -> prints a session id after initialize + initialized (empty if none)
  local url="http://127.0.0.1:$1/mcp" sid
  for _ in $(seq 200); do
    sid=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
      -d '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"wrk","version":"1"}}}' \
      "$url" 2>/dev/null | tr -d '\r' | awk 'tolower($1)=="mcp-session-id:"{print $2}') && [ -n "$sid" ] && break
    sleep 0.05
  done
  curl -s -o /dev/null -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' -H "Mcp-Session-Id: $sid" \
    -d '{"jsonrpc":"2.0","method":"notifications/initialized"}' "$url"
  echo "$sid"
}

for round in $(seq "$ROUNDS"); do
  for name in corral supergateway mcp-proxy-ts; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    start "$name" "$port"
    sid=$(session "$port")
    # Warm up, then measure.
    SESSION=$sid TOOL=$TOOL wrk -t2 -c64 -d1s -s bench/wrk_call.lua "http://127.0.0.1:$port/mcp" >/dev/null 2>&1 || true
    line=$(SESSION=$sid TOOL=$TOOL wrk -t2 -c64 -d"${SECS}s" -s bench/wrk_call.lua "http://127.0.0.1:$port/mcp" 2>&1 | grep '^RESULT' || echo "RESULT failed")
    echo "round=$round target=$name $line"
    # Each target runs in its own session: end its whole process group (gateway + echo server).
    kill -TERM -- "-$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true
    sleep 0.3; kill -KILL -- "-$PID" 2>/dev/null || true
  done
done
