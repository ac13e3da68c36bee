//! `run_code`: the MCP face of the WebAssembly sandbox in the `corral-codeexec` crate.
//!
//! `corral sandbox` is a stdio MCP server with one tool, `run_code {runtime, code, stdin?,
//! timeoutMs?}` (a drop-in for `npx @runno/mcp`); `corral serve` on its embedded defaults runs
//! it as a built-in server. `corral run` and `corral runtimes` use the same engine from the
//! command line.
//!
//! Seams: [`codeexec::Sandbox`] runs the code; this module speaks JSON-RPC and maps results.

use std::sync::Arc;
use std::time::Duration;

use codeexec::{Job, Limits, Outcome, Runtime, Sandbox, Status};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Longest wall time a caller may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Runs waiting for a slot past which `run_code` answers "busy".
const MAX_QUEUED: usize = 64;

/// The runtimes a caller may name, for error messages.
pub const RUNTIME_NAMES: &str =
    "python, quickjs, ruby, php-cgi, clang or clangpp (also: javascript, php, c, cpp)";

/// The `run_code` tool as `tools/list` shows it.
pub fn tool() -> Value {
    json!({
        "name": "run_code",
        "title": "Run code in a WebAssembly sandbox",
        "description": "Runs a program in a fresh WebAssembly sandbox (no host files, no network, no environment) and returns its output. Runtimes: python (CPython 3.12), quickjs (JavaScript, QuickJS-ng), ruby (3.2), php-cgi (PHP 8.2), clang (C, clang 8), clangpp (C++17, no exceptions). Also accepted: javascript, php, c, cpp. C and C++ are compiled inside the sandbox; compiler errors come back as status `crashed` with the diagnostics in stderr.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "runtime": {"type": "string", "enum": ["python", "quickjs", "ruby", "php-cgi", "clang", "clangpp", "javascript", "php", "c", "cpp"]},
                "code": {"type": "string", "description": "The program's source."},
                "stdin": {"type": "string", "description": "Standard input for the program."},
                "timeoutMs": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT.as_millis() as u64, "description": "Wall-clock limit (default 10000)."},
                "rubyGems": {"type": "boolean", "description": "Ruby only: load RubyGems (off by default; about 50 ms slower)."}
            },
            "required": ["runtime", "code"]
        },
        "outputSchema": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["completed", "crashed", "terminated", "timeout"]},
                "exitCode": {"type": "integer"},
                "tty": {"type": "string"},
                "stdout": {"type": "string"},
                "stderr": {"type": "string"},
                "truncated": {"type": "boolean"},
                "limit": {"type": "string", "enum": ["timeout", "memory", "fuel"]},
                "error": {"type": "string"},
                "durationMs": {"type": "number"},
                "prepareMs": {"type": "number"},
                "compile": {
                    "type": "object",
                    "description": "C and C++: building the program.",
                    "properties": {"ms": {"type": "number"}, "cached": {"type": "boolean"}},
                    "required": ["ms", "cached"]
                }
            },
            "required": ["status", "tty", "stdout", "stderr", "truncated", "durationMs", "prepareMs"]
        },
        "annotations": {"readOnlyHint": true, "openWorldHint": false}
    })
}

/// The arguments of one call, checked.
pub struct Request {
    pub runtime: Runtime,
    pub code: String,
    pub stdin: String,
    pub limits: Limits,
    pub ruby_gems: bool,
}

/// `defaults` are the server's own limits (`corral sandbox --fuel`); a call may shorten or
/// lengthen its wall time within [`MAX_TIMEOUT`].
pub fn parse(args: &Value, defaults: Limits) -> Result<Request, String> {
    let name = args
        .get("runtime")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`runtime` is required: {RUNTIME_NAMES}"))?;
    let runtime = Runtime::parse(name)
        .ok_or_else(|| format!("unknown runtime `{name}`: use {RUNTIME_NAMES}"))?;
    let code = args
        .get("code")
        .and_then(Value::as_str)
        .ok_or("`code` is required")?
        .to_string();
    let stdin = args
        .get("stdin")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut limits = defaults;
    if let Some(ms) = args.get("timeoutMs").and_then(Value::as_u64) {
        limits.timeout = Duration::from_millis(ms).min(MAX_TIMEOUT);
    }
    let ruby_gems = args
        .get("rubyGems")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Request {
        runtime,
        code,
        stdin,
        limits,
        ruby_gems,
    })
}

/// An outcome as an MCP tool result: text for people, `structuredContent` for programs.
pub fn result(outcome: &Outcome) -> Value {
    let mut text = outcome.tty.clone();
    let status = match outcome.status {
        Status::Completed => format!("exit code {}", outcome.exit_code.unwrap_or(0)),
        Status::Crashed => format!("crashed: {}", outcome.error.as_deref().unwrap_or("trap")),
        Status::Terminated => format!("terminated: {} limit", outcome.limit.unwrap_or("resource")),
        Status::Timeout => "timed out".into(),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("[{status}]"));
    json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": outcome,
        "isError": !matches!(outcome.status, Status::Completed),
    })
}

/// Runs a request on a blocking thread, bounded by `slots`.
pub async fn run(
    sandbox: &Arc<Sandbox>,
    slots: &Arc<tokio::sync::Semaphore>,
    req: Request,
) -> Result<Outcome, String> {
    use std::sync::atomic::Ordering;
    /// Decrements the count however the run ends.
    struct Counted;
    impl Drop for Counted {
        fn drop(&mut self) {
            WAITING.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _counted = Counted;
    if WAITING.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
        return Err("busy: too many runs waiting; try again shortly".into());
    }
    let _permit = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    let sandbox = sandbox.clone();
    tokio::task::spawn_blocking(move || {
        sandbox
            .run(Job {
                runtime: req.runtime,
                code: &req.code,
                stdin: codeexec::Stdin::Bytes(req.stdin.as_bytes()),
                limits: req.limits,
                ruby_gems: req.ruby_gems,
            })
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Runs asked for and not finished (a semaphore cannot count its waiters).
static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `corral sandbox`: a stdio MCP server offering `run_code`.
pub async fn serve_stdio(sandbox: Arc<Sandbox>, defaults: Limits) -> std::io::Result<()> {
    let warm = sandbox.clone();
    tokio::task::spawn_blocking(move || warm.warm_up());
    let slots = Arc::new(tokio::sync::Semaphore::new(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(mut line) = rx.recv().await {
            line.push(b'\n');
            if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
                return;
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            let err = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}});
            let _ = tx.send(err.to_string().into_bytes()).await;
            continue;
        };
        let (Some(id), Some(method)) = (
            msg.get("id").cloned(),
            msg.get("method").and_then(Value::as_str),
        ) else {
            continue; // notifications need no answer
        };
        let method = method.to_string();
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let (sandbox, slots, tx) = (sandbox.clone(), slots.clone(), tx.clone());
        tokio::spawn(async move {
            let reply = answer(&sandbox, &slots, defaults, &method, &params).await;
            let msg = match reply {
                Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                Err((code, message)) => {
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
                }
            };
            let _ = tx.send(msg.to_string().into_bytes()).await;
        });
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

async fn answer(
    sandbox: &Arc<Sandbox>,
    slots: &Arc<tokio::sync::Semaphore>,
    defaults: Limits,
    method: &str,
    params: &Value,
) -> Result<Value, (i64, String)> {
    match method {
        "initialize" => {
            let version = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("2025-06-18");
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "corral-sandbox", "version": env!("CARGO_PKG_VERSION")},
                "instructions": "run_code runs untrusted code in WebAssembly: no files, no network, no environment.",
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": [tool()]})),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            if name != "run_code" {
                return Err((-32602, format!("Unknown tool: {name}")));
            }
            let args = params.get("arguments").cloned().unwrap_or(Value::Null);
            let req = match parse(&args, defaults) {
                Ok(r) => r,
                Err(msg) => {
                    return Ok(
                        json!({"content": [{"type": "text", "text": msg}], "isError": true}),
                    );
                }
            };
            match run(sandbox, slots, req).await {
                Ok(o) => Ok(result(&o)),
                Err(msg) => {
                    Ok(json!({"content": [{"type": "text", "text": msg}], "isError": true}))
                }
            }
        }
        other => Err((-32601, format!("Method not found: {other}"))),
    }
}
