#!/usr/bin/env python3
"""`corral sandbox` driven by the official MCP Python SDK client.

  py_run_code.py CORRAL_BIN      (XDG_CACHE_HOME must hold installed runtimes)
"""
import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main():
    # The SDK passes only a few variables to the server by default: hand over the cache.
    env = {"PATH": os.environ.get("PATH", ""), "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}
    params = StdioServerParameters(command=sys.argv[1], args=["sandbox"], env=env)
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            out = {"tools": [t.name for t in (await s.list_tools()).tools]}

            async def run(**args):
                res = await s.call_tool("run_code", args)
                return res.structured_content

            out["hello"] = await run(runtime="python", code="print('hello from python')")
            out["stdin"] = await run(runtime="python", code="print('GOT:', input())", stdin="line one\n")
            out["timeout"] = await run(runtime="quickjs", code="for(;;){}", timeoutMs=300)
            out["flood"] = await run(runtime="python", code="print('x' * 4096 * 1024)")
            out["ruby_tty"] = await run(runtime="ruby", code='puts "a"; $stderr.puts "b"; puts "c"')
            out["php"] = await run(runtime="php-cgi", code='<?php echo "hi from php\\n";')
            hello_c = '#include <stdio.h>\nint main(void) { puts("hi from c"); return 0; }'
            out["c_first"] = await run(runtime="c", code=hello_c)
            out["c_again"] = await run(runtime="clang", code=hello_c)
            many = await asyncio.gather(*[run(runtime="quickjs", code=f"console.log({i} * 2)") for i in range(32)])
            out["concurrent"] = sum(1 for i, m in enumerate(many) if m["stdout"] == f"{i * 2}\n")
            out["flood"] = {"truncated": out["flood"]["truncated"]}
            print(json.dumps(out))


asyncio.run(main())
