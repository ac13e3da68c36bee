-- wrk script: every request is a JSON-RPC `tools/call` of the echo tool with a unique text; the
-- response must contain that text, or the request counts as wrong.
-- Environment: TOOL (tool name), SESSION (Mcp-Session-Id, optional).
local tool = os.getenv("TOOL") or "echo"
local session = os.getenv("SESSION")
local counter = 0
-- Global so that done() can read each thread's count with thread:get().
wrong = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"
  if session and session ~= "" then
    wrk.headers["Mcp-Session-Id"] = session
  end
end

-- wrk pipelines nothing by default: one request in flight per connection, so the request that a
-- response answers is the last one this connection sent. The text checked is per thread.
local last = nil
function request()
  counter = counter + 1
  last = "wrk-" .. tostring(counter)
  local body = '{"jsonrpc":"2.0","id":' .. counter .. ',"method":"tools/call","params":{"name":"' .. tool .. '","arguments":{"text":"' .. last .. '"}}}'
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"text":"wrk-', 1, true) then
    wrong = wrong + 1
  end
end

function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do
    w = w + (t:get("wrong") or 0)
  end
  io.write(string.format("RESULT requests=%d wrong=%d rps=%.0f p50_us=%d p99_us=%d\n",
    summary.requests, w, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99)))
end
