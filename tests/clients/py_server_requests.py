#!/usr/bin/env python3
"""Server-to-client requests through Corral with the official MCP Python SDK.

server-everything asks the client for sampling, elicitation and roots from inside a tool call;
Corral must forward each request to this client and route the answer back.
  py_server_requests.py stdio CORRAL_BIN ARGS...  |  py_server_requests.py http URL
"""
import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

seen = {}


async def sampling(ctx, params):
    seen["sampling"] = params.messages[0].content.text
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="sampled by python"), model="test-model", stop_reason="endTurn")


async def elicitation(ctx, params):
    seen["elicitation"] = params.message
    return types.ElicitResult(action="accept", content={"name": "Ada", "email": "ada@example.com"})


async def roots(ctx):
    seen["roots"] = True
    return types.ListRootsResult(roots=[types.Root(uri="file:///srv/project", name="project")])


def texts(result):
    return [c.text for c in result.content if getattr(c, "type", None) == "text"]


async def scenario(s):
    await s.initialize()
    # The server registers these tools only after it learns the client's capabilities.
    for _ in range(50):
        names = [t.name for t in (await s.list_tools()).tools]
        if "everything__trigger-sampling-request" in names:
            break
        await asyncio.sleep(0.1)
    out = {"tools": names}
    out["sampling"] = texts(await s.call_tool("everything__trigger-sampling-request", {"prompt": "hello sampler", "maxTokens": 20}))
    out["elicitation"] = texts(await s.call_tool("everything__trigger-elicitation-request", {}))
    out["roots"] = texts(await s.call_tool("everything__get-roots-list", {}))
    out["seen"] = seen
    return out


async def main():
    kw = dict(sampling_callback=sampling, elicitation_callback=elicitation, list_roots_callback=roots)
    if sys.argv[1] == "stdio":
        async with stdio_client(StdioServerParameters(command=sys.argv[2], args=sys.argv[3:])) as (r, w):
            async with ClientSession(r, w, **kw) as s:
                print(json.dumps(await scenario(s)))
    else:
        async with streamable_http_client(sys.argv[2]) as streams:
            async with ClientSession(streams[0], streams[1], **kw) as s:
                print(json.dumps(await scenario(s)))


asyncio.run(main())
