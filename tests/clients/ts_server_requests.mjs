// Server-to-client requests through Corral with the official MCP TypeScript SDK client:
// server-everything asks for sampling, elicitation and roots during tool calls.
//   node ts_server_requests.mjs stdio CORRAL_BIN ARGS...  |  node ts_server_requests.mjs http URL
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.FIXTURES_NODE_MODULES, "x.js"));
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StdioClientTransport } = require("@modelcontextprotocol/sdk/client/stdio.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");
const T = require("@modelcontextprotocol/sdk/types.js");

const [mode, target, ...rest] = process.argv.slice(2);
const transport = mode === "stdio"
  ? new StdioClientTransport({ command: target, args: rest, stderr: "inherit" })
  : new StreamableHTTPClientTransport(new URL(target));
const client = new Client(
  { name: "corral-ts-requests", version: "1.0.0" },
  { capabilities: { sampling: {}, elicitation: { form: {} }, roots: { listChanged: true } } },
);
const seen = {};
client.setRequestHandler(T.CreateMessageRequestSchema, async (req) => {
  seen.sampling = req.params.messages[0].content.text;
  return { role: "assistant", content: { type: "text", text: "sampled by typescript" }, model: "test-model", stopReason: "endTurn" };
});
client.setRequestHandler(T.ElicitRequestSchema, async (req) => {
  seen.elicitation = req.params.message;
  return { action: "accept", content: { name: "Grace", email: "grace@example.com" } };
});
client.setRequestHandler(T.ListRootsRequestSchema, async () => {
  seen.roots = true;
  return { roots: [{ uri: "file:///srv/ts-project", name: "ts-project" }] };
});
await client.connect(transport);
const texts = (r) => (r.content || []).filter((c) => c.type === "text").map((c) => c.text);
// The server registers these tools once it has seen the client's capabilities.
let names = [];
for (let i = 0; i < 50 && !names.includes("everything__trigger-sampling-request"); i++) {
  names = (await client.listTools()).tools.map((t) => t.name);
  if (!names.includes("everything__trigger-sampling-request")) await new Promise((r) => setTimeout(r, 100));
}
const out = { tools: names, seen };
out.sampling = texts(await client.callTool({ name: "everything__trigger-sampling-request", arguments: { prompt: "hello from ts", maxTokens: 20 } }));
out.elicitation = texts(await client.callTool({ name: "everything__trigger-elicitation-request", arguments: {} }));
out.roots = texts(await client.callTool({ name: "everything__get-roots-list", arguments: {} }));
console.log(JSON.stringify(out));
await client.close();
