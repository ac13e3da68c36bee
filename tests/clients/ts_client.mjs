// Drives Corral with the official MCP TypeScript SDK and prints what it saw as JSON.
//   node ts_client.mjs stdio WORKDIR CORRAL_BIN ARGS...
//   node ts_client.mjs http WORKDIR URL
// NODE_PATH must point at the fixtures' node_modules.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.FIXTURES_NODE_MODULES, "x.js"));
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StdioClientTransport } = require("@modelcontextprotocol/sdk/client/stdio.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");

const [mode, workdir, target, ...rest] = process.argv.slice(2);
const transport = mode === "stdio"
  ? new StdioClientTransport({ command: target, args: rest, stderr: "inherit" })
  : new StreamableHTTPClientTransport(new URL(target));
const client = new Client({ name: "corral-ts-test", version: "1.0.0" });
await client.connect(transport);
const texts = (r) => (r.content || []).filter((c) => c.type === "text").map((c) => c.text);
const out = {};
out.serverName = client.getServerVersion()?.name;
out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
out.echo = texts(await client.callTool({ name: "everything__echo", arguments: { message: "hello from typescript" } }));
out.time = texts(await client.callTool({ name: "time__get_current_time", arguments: { timezone: "UTC" } }));
await client.callTool({ name: "memory__create_entities", arguments: { entities: [{ name: "corral-ts", entityType: "test", observations: ["seen by ts"] }] } });
out.graph = texts(await client.callTool({ name: "memory__read_graph", arguments: {} }));
out.dir = texts(await client.callTool({ name: "filesystem__list_directory", arguments: { path: workdir } }));
const progress = [];
out.long = texts(await client.callTool(
  { name: "everything__trigger-long-running-operation", arguments: { duration: 1, steps: 3 } },
  undefined,
  { onprogress: (p) => progress.push(p.progress) },
));
out.progress = progress;
out.resources = (await client.listResources()).resources.map((r) => r.uri);
out.read = (await client.readResource({ uri: "demo://resource/static/document/features.md" })).contents.map((c) => (c.text || "").slice(0, 40));
out.prompts = (await client.listPrompts()).prompts.map((p) => p.name).sort();
const got = await client.getPrompt({ name: "everything__args-prompt", arguments: { city: "Lisbon" } });
out.prompt = got.messages.filter((m) => m.content.type === "text").map((m) => m.content.text);
const done = await client.complete({ ref: { type: "ref/prompt", name: "everything__completable-prompt" }, argument: { name: "department", value: "E" } });
out.complete = done.completion.values;
try {
  const r = await client.callTool({ name: "nope__missing", arguments: {} });
  out.unknownIsError = r.isError ?? null;
} catch (e) {
  out.unknownError = String(e.message || e);
}
console.log(JSON.stringify(out));
await client.close();
