#!/usr/bin/env bash
# Corral's own memory with 5 servers running (the servers excluded): RSS of the corral process
# after startup and after 2000 calls spread over the 5 servers through the HTTP front.
#   bench/rss.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${CORRAL_BENCH_HARNESS:-$ROOT/../shared/bench}
cd "$ROOT"
CARGO_TARGET_DIR="$ROOT/target" cargo build --release --locked -p mcp-corral >&2
TMP=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{
  echo "stateDir = \"$TMP/state\""
  for i in 1 2 3 4 5; do
    printf '[servers.s%d]\ncommand = "python3"\nargs = ["-u", "%s"]\nautoStart = true\n' "$i" "$SHARED/echo_server.py"
  done
} > "$TMP/corral.toml"
target/release/corral serve --listen "127.0.0.1:$PORT" --config "$TMP/corral.toml" --log-level warn &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 200); do
  n=$(curl -s "http://127.0.0.1:$PORT/health" | python3 -c 'import json,sys; print(sum(s["state"]=="running" for s in json.load(sys.stdin)["services"]))' 2>/dev/null || echo 0)
  [ "$n" = 5 ] && break
  sleep 0.05
done
rss() {
  awk '/^(VmRSS|RssAnon|RssFile|RssShmem)/{v[$1]=$2/1024}
       END{printf "%.1f MB (anonymous %.1f, file-backed %.1f, shared memory %.1f)", v["VmRSS:"], v["RssAnon:"], v["RssFile:"], v["RssShmem:"]}' "/proc/$PID/status"
}
echo "servers running: $n"
echo "corral RSS after start: $(rss)"
python3 - "$PORT" <<'PY'
import json, sys, urllib.request, concurrent.futures
url = f"http://127.0.0.1:{sys.argv[1]}/mcp"
def call(i):
    body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": f"s{i % 5 + 1}__echo", "arguments": {"text": f"t{i}"}}}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json", "Accept": "application/json"})
    out = json.load(urllib.request.urlopen(req))
    assert out["result"]["content"][0]["text"] == f"t{i}", out
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    list(pool.map(call, range(2000)))
PY
echo "corral RSS after 2000 calls: $(rss)"
