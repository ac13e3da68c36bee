//! run_code: real interpreters (CPython 3.12 and QuickJS from PyPI wheels, digests pinned)
//! under wasmtime, from the command line (`corral run`), as the `corral sandbox` MCP server
//! driven by the official Python SDK client, and as `corral serve`'s built-in tool set.

mod common;

use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;
use serde_json::{Value, json};

/// A cache with the runtimes installed once for this test binary (pip download, verify,
/// precompile); later runs on the same machine only verify.
fn xdg() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = fixtures().join("xdg-cache");
        let out = Command::new(BIN)
            .args(["runtimes", "install", "python", "quickjs"])
            .env("XDG_CACHE_HOME", &dir)
            // The fixtures' venv always has pip, whatever the system Python lacks.
            .env("CORRAL_PYTHON", venv_bin("python"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runtimes install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn corral_run(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("run")
        .args(args)
        .env("XDG_CACHE_HOME", xdg())
        .env("CORRAL_SECRET_FOR_TEST", "do-not-leak")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn hello_world_exit_codes_and_stderr_in_both_runtimes() {
    let o = corral_run(&["python", "-c", "print('héllo, wörld')"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "héllo, wörld\n");
    let o = corral_run(&[
        "python",
        "-c",
        "import sys, json; print(json.dumps({'n': sum(range(10))})); print('oops', file=sys.stderr); sys.exit(3)",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(text(&o.stdout), "{\"n\": 45}\n");
    assert_eq!(text(&o.stderr), "oops\n");
    let o = corral_run(&[
        "javascript",
        "-c",
        "console.log([1,2,3].map(x => x * 2).join(','))",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "2,4,6\n");
}

#[test]
fn escape_attempts_fail_inside_the_sandbox() {
    let probe = r#"
import os, socket
def attempt(name, f):
    try:
        f()
        print(name, "ALLOWED")
    except Exception as e:
        print(name, "denied", type(e).__name__)
attempt("read", lambda: open("/etc/passwd").read())
attempt("list", lambda: os.listdir("/"))
attempt("socket", lambda: socket.create_connection(("127.0.0.1", 80)))
print("env", dict(os.environ))
"#;
    let o = corral_run(&["python", "-c", probe]);
    let out = text(&o.stdout);
    assert!(!out.contains("ALLOWED"), "{out}");
    for what in ["read denied", "list denied", "socket denied", "env {}"] {
        assert!(out.contains(what), "{what}: {out}");
    }
    let o = corral_run(&[
        "quickjs",
        "-c",
        "console.log(String(std.loadFile('/etc/passwd')))",
    ]);
    assert_eq!(text(&o.stdout), "null\n", "{}", text(&o.stderr));
}

#[test]
fn limits_end_runs_with_the_right_status() {
    let started = std::time::Instant::now();
    let o = corral_run(&["python", "--timeout-ms", "500", "-c", "while True: pass"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("timeout"), "{}", text(&o.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let o = corral_run(&["python", "-c", "x = bytearray(600 * 1024 * 1024)"]);
    assert!(
        text(&o.stderr).contains("memory limit"),
        "{}",
        text(&o.stderr)
    );
    let o = corral_run(&["quickjs", "-c", "function f(){ return f() } f()"]);
    assert!(!o.status.success(), "deep recursion ends the run");
}

/// Runs tests/clients/py_run_code.py against `corral sandbox` and returns its JSON.
#[test]
fn the_sandbox_server_serves_the_python_sdk_client_and_32_concurrent_runs() {
    let script = repo()
        .join("tests/clients/py_run_code.py")
        .display()
        .to_string();
    let out = Command::new(venv_bin("python"))
        .args([&script, BIN])
        .env("XDG_CACHE_HOME", xdg())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["tools"], json!(["run_code"]));
    assert_eq!(v["hello"]["status"], "completed");
    assert_eq!(v["hello"]["stdout"], "hello from python\n");
    assert_eq!(v["stdin"]["stdout"], "GOT: line one\n");
    assert_eq!(v["timeout"]["status"], "timeout");
    assert_eq!(v["timeout"]["limit"], "timeout");
    assert_eq!(v["flood"]["truncated"], true);
    assert_eq!(v["concurrent"], 32, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_on_its_embedded_defaults_offers_run_code() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", xdg())
        .env("XDG_STATE_HOME", dir.path())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = http_client();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "sandbox__run_code", "arguments": {"runtime": "python", "code": "print(6 * 7)"}}});
    let mut answer = Value::Null;
    for _ in 0..100 {
        if let Ok(r) = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&call)
            .send()
            .await
        {
            answer = r.json().await.unwrap_or(Value::Null);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        answer["result"]["structuredContent"]["stdout"], "42\n",
        "{answer}"
    );
    let _ = child.kill().await;
}

#[test]
fn runtimes_verify_detects_a_corrupted_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let src = xdg().join("corral/runtimes/quickjs/quickjs.wasm");
    let dst = dir.path().join("corral/runtimes/quickjs");
    std::fs::create_dir_all(&dst).unwrap();
    let mut bytes = std::fs::read(&src).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(dst.join("quickjs.wasm"), bytes).unwrap();
    let o = Command::new(BIN)
        .args(["runtimes", "verify"])
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stdout).contains("expected sha256"),
        "{}",
        text(&o.stdout)
    );
}
