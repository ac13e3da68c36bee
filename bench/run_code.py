#!/usr/bin/env python3
"""run_code warm latency, throughput and memory, through `corral sandbox` (stdio MCP).

  XDG_CACHE_HOME=… python3 bench/run_code.py [CORRAL_BIN] [CALLS]

Installed runtimes are expected (`corral runtimes install`). For each runtime: CALLS sequential
hello-world calls after one warm-up (median round trip through MCP, and the run's own
`durationMs`); then python hello-worlds/s with 8 calls in flight for 5 s; then the server's RSS.
"""
import json
import statistics
import subprocess
import sys
import threading
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/corral"
CALLS = int(sys.argv[2]) if len(sys.argv) > 2 else 50
HELLO = {"python": "print('hello world')", "quickjs": "console.log('hello world')"}

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


def call(runtime):
    r = rpc("tools/call", {"name": "run_code", "arguments": {"runtime": runtime, "code": HELLO[runtime]}})
    sc = r["result"]["structuredContent"]
    assert sc["stdout"] == "hello world\n", r
    return sc


rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}})
for runtime in HELLO:
    first = time.perf_counter()
    call(runtime)
    first = time.perf_counter() - first
    rtt, run = [], []
    for _ in range(CALLS):
        t = time.perf_counter()
        sc = call(runtime)
        rtt.append(time.perf_counter() - t)
        run.append(sc["durationMs"])
    print(f"{runtime:8} first call {first*1000:7.1f} ms   warm: round trip p50 {statistics.median(rtt)*1000:6.2f} ms, run p50 {statistics.median(run):6.2f} ms")

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
rss = int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024
print(f"corral sandbox RSS with both runtimes loaded: {rss:.0f} MB")
p.stdin.close()
p.wait()
