#!/usr/bin/env python3
"""Drives Corral with the official MCP Python SDK and prints what it saw as JSON.

  py_client.py stdio CORRAL_BIN ARGS...   # the SDK launches Corral as a stdio server
  py_client.py http URL                   # Streamable HTTP
  py_client.py sse URL                    # legacy HTTP+SSE (GET /sse, POST /messages)
The scenario touches every aggregated server: list, call, read, prompt, complete.
"""
import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp import types


def texts(result):
    return [c.text for c in result.content if getattr(c, "type", None) == "text"]


async def scenario(session, workdir):
    out = {}
    init = await session.initialize()
    out["protocolVersion"] = init.protocol_version
    out["serverName"] = init.server_info.name
    tools = await session.list_tools()
    out["tools"] = sorted(t.name for t in tools.tools)
    out["echo"] = texts(await session.call_tool("everything__echo", {"message": "hello from python"}))
    out["time"] = texts(await session.call_tool("time__get_current_time", {"timezone": "UTC"}))
    await session.call_tool("memory__create_entities", {"entities": [{"name": "corral-py", "entityType": "test", "observations": ["seen by python"]}]})
    out["graph"] = texts(await session.call_tool("memory__read_graph", {}))
    out["dir"] = texts(await session.call_tool("filesystem__list_directory", {"path": workdir}))
    progress = []

    async def on_progress(p, total, message):
        progress.append(p)

    out["long"] = texts(await session.call_tool("everything__trigger-long-running-operation", {"duration": 1, "steps": 3}, progress_callback=on_progress))
    out["progress"] = progress
    resources = await session.list_resources()
    out["resources"] = [str(r.uri) for r in resources.resources]
    read = await session.read_resource("demo://resource/static/document/features.md")
    out["read"] = [getattr(c, "text", "")[:40] for c in read.contents]
    templated = await session.read_resource("demo://resource/dynamic/text/7")
    out["templated"] = [getattr(c, "text", "")[:60] for c in templated.contents]
    prompts = await session.list_prompts()
    out["prompts"] = sorted(p.name for p in prompts.prompts)
    got = await session.get_prompt("everything__args-prompt", {"city": "Lisbon"})
    out["prompt"] = [m.content.text for m in got.messages if getattr(m.content, "type", "") == "text"]
    done = await session.complete(types.PromptReference(type="ref/prompt", name="everything__completable-prompt"), {"name": "department", "value": "E"})
    out["complete"] = done.completion.values
    try:
        unknown = await session.call_tool("nope__missing", {})
        out["unknownIsError"] = getattr(unknown, "is_error", None)
        out["unknownText"] = texts(unknown)
    except Exception as e:  # the SDK raises MCPError for a JSON-RPC error
        out["unknownText"] = str(e)
    return out


async def main():
    mode = sys.argv[1]
    workdir = sys.argv[2]
    if mode == "stdio":
        params = StdioServerParameters(command=sys.argv[3], args=sys.argv[4:])
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                print(json.dumps(await scenario(s, workdir)))
    elif mode == "sse":
        async with sse_client(sys.argv[3]) as streams:
            async with ClientSession(streams[0], streams[1]) as s:
                print(json.dumps(await scenario(s, workdir)))
    else:
        async with streamable_http_client(sys.argv[3]) as streams:
            r, w = streams[0], streams[1]
            async with ClientSession(r, w) as s:
                print(json.dumps(await scenario(s, workdir)))


asyncio.run(main())
