#!/usr/bin/env python3
"""Sandboxed vs unsandboxed, side by side: start time and per-call latency.

  python3 bench/sandbox.py [CORRAL_BIN] [ROUNDS]

For each round, in alternation: start `corral serve --stdio` with one server (the escape
fixture under /usr/bin/python3, autoStart) plain and sandboxed (network: false, spawn: false,
env: false, allowedPaths, memory and cpuTime limits), time `initialize` → the first `tools/call`
answered (the server starts with Corral), then 500 sequential `tools/call`s. Prints medians and ratios.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/corral"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 15
CALLS = 500
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "escape.py")

SERVER = """servers:
  box:
    command: /usr/bin/python3
    args: ["-u", "{fixture}"]
    autoStart: true
{policy}stateDir: {state}
"""
POLICY = os.environ.get("SANDBOX_POLICY", """    permissions: {{network: false, spawn: false, env: false, fsWrite: true, allowedPaths: ["{data}"]}}
    limits: {{memory: 256, cpuTime: 300}}
""")


def run(config):
    p = subprocess.Popen([BIN, "serve", "--stdio", "--config", config, "--log-level", "warn"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def rpc(i, method, params):
        p.stdin.write((json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}) + "\n").encode())
        p.stdin.flush()
        while True:
            m = json.loads(p.stdout.readline())
            if m.get("id") == i:
                return m

    t0 = time.perf_counter()
    rpc(0, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}})
    # The first call waits for the server to be running (it starts with Corral).
    r = rpc(1, "tools/call", {"name": "box__try", "arguments": {"action": "env", "arg": "PATH"}})
    assert "ALLOWED" in r["result"]["content"][0]["text"], r
    start = time.perf_counter() - t0
    i = 2
    lat = []
    for n in range(CALLS):
        t = time.perf_counter()
        r = rpc(i + n, "tools/call", {"name": "box__try", "arguments": {"action": "env", "arg": "PATH"}})
        lat.append(time.perf_counter() - t)
        assert "ALLOWED" in r["result"]["content"][0]["text"], r
    p.stdin.close()
    p.wait()
    return start, statistics.median(lat)


def paired_calls(tmp, policy):
    """Per-call latency of two servers behind one Corral, calls alternating between them."""
    config = os.path.join(tmp, "paired.yaml")
    entry = """  {id}:
    command: /usr/bin/python3
    args: ["-u", "{fixture}"]
    autoStart: true
{policy}"""
    with open(config, "w") as f:
        f.write("servers:\n")
        f.write(entry.format(id="plain", fixture=FIXTURE, policy=""))
        f.write(entry.format(id="boxed", fixture=FIXTURE, policy=policy))
        f.write(f"stateDir: {tmp}/s3\n")
    p = subprocess.Popen([BIN, "serve", "--stdio", "--config", config, "--log-level", "warn"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seq = [0]

    def call(server):
        seq[0] += 1
        body = {"jsonrpc": "2.0", "id": seq[0], "method": "tools/call",
                "params": {"name": server + "__try", "arguments": {"action": "env", "arg": "PATH"}}}
        t = time.perf_counter()
        p.stdin.write((json.dumps(body) + "\n").encode())
        p.stdin.flush()
        while True:
            m = json.loads(p.stdout.readline())
            if m.get("id") == seq[0]:
                break
        assert "ALLOWED" in m["result"]["content"][0]["text"], m
        return time.perf_counter() - t

    p.stdin.write(b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"b","version":"1"}}}\n')
    p.stdin.flush()
    p.stdout.readline()
    for _ in range(50):  # warm both
        call("plain")
        call("boxed")
    lat = {"plain": [], "boxed": []}
    for _ in range(CALLS * 4):
        lat["plain"].append(call("plain"))
        lat["boxed"].append(call("boxed"))
    p.stdin.close()
    p.wait()
    return statistics.median(lat["plain"]), statistics.median(lat["boxed"])


def main():
    tmp = tempfile.mkdtemp()
    os.makedirs(os.path.join(tmp, "data"))
    policy = POLICY.format(data=tmp + "/data")
    plain = os.path.join(tmp, "plain.yaml")
    boxed = os.path.join(tmp, "boxed.yaml")
    with open(plain, "w") as f:
        f.write(SERVER.format(fixture=FIXTURE, policy="", state=tmp + "/s1"))
    with open(boxed, "w") as f:
        f.write(SERVER.format(fixture=FIXTURE, policy=policy, state=tmp + "/s2"))
    starts = {"plain": [], "sandboxed": []}
    for _ in range(ROUNDS):
        starts["plain"].append(run(plain)[0])
        starts["sandboxed"].append(run(boxed)[0])
    ps, ss = statistics.median(starts["plain"]), statistics.median(starts["sandboxed"])
    pl, sl = paired_calls(tmp, policy)
    print(f"policy: {policy.strip()}")
    print(f"start to first tools/call ({ROUNDS} rounds, alternating)  plain {ps*1000:.1f} ms  sandboxed {ss*1000:.1f} ms  delta {(ss-ps)*1000:+.1f} ms")
    print(f"per-call p50 ({CALLS*4} calls each, alternating in one Corral)  plain {pl*1e6:.0f} us  sandboxed {sl*1e6:.0f} us  ratio {sl/pl:.3f}")


main()
