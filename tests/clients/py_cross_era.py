#!/usr/bin/env python3
"""Both protocol eras against a 2026-07-28-only server behind Corral, with the official Python SDK.

  py_cross_era.py legacy|auto modern|everything stdio CORRAL_BIN ARGS...
  py_cross_era.py legacy|auto modern|everything http URL

`legacy` opens an initialize-era session, `auto` probes `server/discover` and talks 2026-07-28.
Behind Corral is either `modern` (tests/fixtures/modern_only.py, 2026-07-28 only: its
`input_required` must reach a legacy client as an `elicitation/create` request) or `everything`
(server-everything, initialize era: its `elicitation/create` must reach a 2026-07-28 client as
`input_required`). Either way the client's elicitation callback answers. Prints a JSON summary.
"""
import asyncio
import json
import sys

from mcp import StdioServerParameters, types
from mcp.client.client import Client

seen = {}


async def elicitation(ctx, params):
    seen["elicitation"] = params.message
    seen["mode"] = ctx.session.protocol_version if hasattr(ctx.session, "protocol_version") else None
    return types.ElicitResult(action="accept", content={"name": "Grace"})


def texts(result):
    return [c.text for c in result.content if getattr(c, "type", None) == "text"]


async def main():
    mode, behind, transport = sys.argv[1], sys.argv[2], sys.argv[3]
    if transport == "stdio":
        server = StdioServerParameters(command=sys.argv[4], args=sys.argv[5:])
    else:
        server = sys.argv[4]
    if behind == "modern":
        echo = ("modern__echo", {"text": "across eras"})
        ask = "modern__greet"
    else:
        echo = ("everything__echo", {"message": "across eras"})
        ask = "everything__trigger-elicitation-request"
    async with Client(server, mode=mode, elicitation_callback=elicitation) as c:
        out = {"protocol": c.session.protocol_version if hasattr(c.session, "protocol_version") else None}
        out["tools"] = sorted(t.name for t in (await c.list_tools()).tools)
        out["echo"] = texts(await c.call_tool(*echo))
        out["asked"] = texts(await c.call_tool(ask, {}))
        out["seen"] = seen
        print(json.dumps(out))


asyncio.run(main())
