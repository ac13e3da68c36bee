#!/usr/bin/env python3
"""What one extra process in the middle costs a sequential stdio call, and how much of that is
Corral: echo p50 directly, through two minimal C relays (bench/relay.c, no parsing at all) and
through `corral serve --stdio`, interleaved in one run. Also the CPU each middle process spends
per call (/proc/PID/stat).

    bench/hop.py [--reps 5] [--calls 2000]

Needs a C compiler (`cc`), python3 and a release build at target/release/corral. The echo server
is the shared harness's (../shared/bench/echo_server.py, or CORRAL_BENCH_HARNESS).
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.environ.get("CORRAL_BENCH_HARNESS", os.path.join(ROOT, "..", "shared", "bench"))
ECHO = os.path.join(HARNESS, "echo_server.py")


def cpu_seconds(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def measure(cmd, env, calls):
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                         env={**os.environ, **env})
    out = p.stdout

    def rpc(i, method, params):
        p.stdin.write((json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}) + "\n").encode())
        while True:
            msg = json.loads(out.readline())
            if msg.get("id") == i:
                return msg

    rpc(0, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                          "clientInfo": {"name": "hop", "version": "1"}})
    p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    tool = rpc(1, "tools/list", {})["result"]["tools"][0]["name"]
    call = {"name": tool, "arguments": {"text": "hi"}}
    for i in range(200):
        rpc(2 + i, "tools/call", call)
    cpu0, lat = cpu_seconds(p.pid), []
    for i in range(calls):
        t0 = time.perf_counter_ns()
        rpc(1000 + i, "tools/call", call)
        lat.append(time.perf_counter_ns() - t0)
    cpu = cpu_seconds(p.pid) - cpu0
    p.stdin.close()
    p.wait()
    return statistics.median(lat) / 1e3, cpu / calls * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        relay = os.path.join(tmp, "relay")
        subprocess.run(["cc", "-O2", "-pthread", "-o", relay, os.path.join(ROOT, "bench", "relay.c")], check=True)
        with open(os.path.join(tmp, "corral.toml"), "w") as f:
            f.write(f'stateDir = "{tmp}/state"\n[servers.echo]\ncommand = "python3"\nargs = ["-u", "{ECHO}"]\nautoStart = true\n')
        server = ["python3", "-u", ECHO]
        targets = {
            "direct": (server, {}),
            "relay, 2 threads (C)": ([relay, "threads", *server], {}),
            "relay, epoll (C)": ([relay, "epoll", *server], {}),
            "corral": ([os.path.join(ROOT, "target", "release", "corral"), "serve", "--stdio",
                        "--config", os.path.join(tmp, "corral.toml"), "--log-level", "warn"], {}),
        }
        results = {name: [] for name in targets}
        for rep in range(a.reps):
            for name, (cmd, env) in targets.items():
                p50, cpu = measure(cmd, env, a.calls)
                results[name].append((p50, cpu))
                whose = "server" if name == "direct" else "middle"
                print(f"[rep {rep}] {name:22s} p50 {p50:6.0f} us   {whose} CPU {cpu:5.1f} us/call", flush=True)
    base = statistics.median(p for p, _ in results["direct"])
    print(f"\n| target | echo p50 µs (median of {a.reps}) | ratio to direct | CPU of the middle process µs/call |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        p50 = statistics.median(p for p, _ in runs)
        cpu = "—" if name == "direct" else f"{statistics.median(c for _, c in runs):.0f}"
        print(f"| {name} | {p50:.0f} | {p50 / base:.2f}× | {cpu} |")


if __name__ == "__main__":
    main()
