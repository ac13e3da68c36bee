#!/usr/bin/env python3
"""What the allowedHosts proxy adds to a small request, side by side.

  python3 bench/egress.py [CORRAL_BIN] [REQUESTS] [ROUNDS]

One `corral serve --stdio` with two copies of the escape fixture: `direct` (no sandbox) and
`proxied` (allowedHosts: localhost:PORT). Each round, both time REQUESTS sequential small
requests to a local HTTP server: `direct` connects straight to it; `proxied` goes through the
sandbox's forwarder and Corral's egress proxy with a CONNECT tunnel, as an HTTPS client does
(TLS itself costs the same on both paths and is left out). Prints the medians of the rounds'
medians and the difference.
"""
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/corral"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 200
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 7
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "escape.py")


class Small(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Small)
    port = web.server_address[1]
    threading.Thread(target=web.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp()
    config = os.path.join(tmp, "c.yaml")
    with open(config, "w") as f:
        f.write(f"""servers:
  direct:
    command: /usr/bin/python3
    args: ["-u", "{FIXTURE}"]
    autoStart: true
  proxied:
    command: /usr/bin/python3
    args: ["-u", "{FIXTURE}"]
    autoStart: true
    permissions: {{allowedHosts: ["localhost:{port}"]}}
stateDir: {tmp}/state
""")
    p = subprocess.Popen([BIN, "serve", "--stdio", "--config", config, "--log-level", "warn"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seq = [0]

    def rpc(method, params):
        seq[0] += 1
        p.stdin.write((json.dumps({"jsonrpc": "2.0", "id": seq[0], "method": method, "params": params}) + "\n").encode())
        p.stdin.flush()
        while True:
            m = json.loads(p.stdout.readline())
            if m.get("id") == seq[0]:
                return m

    rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}})

    def timed(server):
        r = rpc("tools/call", {"name": server + "__try", "arguments": {"action": "timed", "arg": f"localhost:{port} {N}"}})
        text = r["result"]["content"][0]["text"]
        assert text.startswith("ALLOWED: "), text
        return float(text.split()[1])

    timed("direct"), timed("proxied")  # warm up
    direct, proxied = [], []
    for _ in range(ROUNDS):
        direct.append(timed("direct"))
        proxied.append(timed("proxied"))
    p.stdin.close()
    p.wait()
    d, q = statistics.median(direct), statistics.median(proxied)
    print(f"{ROUNDS} rounds x {N} requests: direct {d:.3f} ms  through the egress proxy {q:.3f} ms  added {q - d:+.3f} ms")


main()
