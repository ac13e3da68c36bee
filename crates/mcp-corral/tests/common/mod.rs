//! Helpers for integration tests: start the real `corral` binary, speak to it over stdio and
//! HTTP, and find the fixtures that `scripts/fixtures.sh` installed.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root exists")
}

/// The fixtures directory; the README's test command installs it before running cargo test.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("CORRAL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
            cache.join("corral-test")
        });
    assert!(
        dir.join("stamp").is_file(),
        "test fixtures missing in {}: run scripts/test.sh (it installs them)",
        dir.display()
    );
    dir
}

pub fn node_modules() -> PathBuf {
    fixtures().join("npm/node_modules")
}

pub fn venv_bin(name: &str) -> PathBuf {
    fixtures().join("venv/bin").join(name)
}

pub fn misbehave() -> String {
    repo()
        .join("tests/fixtures/misbehave.py")
        .display()
        .to_string()
}

/// A config with server-everything alone, as `everything` (started with Corral if `auto_start`).
pub fn everything_yaml(auto_start: bool) -> String {
    format!(
        "servers:\n  everything:\n    command: node\n    args: [\"{}/@modelcontextprotocol/server-everything/dist/index.js\", \"stdio\"]\n{}",
        node_modules().display(),
        if auto_start {
            "    autoStart: true\n"
        } else {
            ""
        }
    )
}

/// Config entries for the four real servers of the core tests.
pub fn real_servers_yaml(workdir: &Path) -> String {
    let nm = node_modules();
    format!(
        r#"servers:
  everything:
    command: node
    args: ["{nm}/@modelcontextprotocol/server-everything/dist/index.js", "stdio"]
  filesystem:
    command: node
    args: ["{nm}/@modelcontextprotocol/server-filesystem/dist/index.js", "{work}"]
  memory:
    command: node
    args: ["{nm}/@modelcontextprotocol/server-memory/dist/index.js"]
    env: {{ MEMORY_FILE_PATH: "{work}/memory.jsonl" }}
  time:
    command: "{time}"
    args: ["--local-timezone", "UTC"]
"#,
        nm = nm.display(),
        work = workdir.display(),
        time = venv_bin("mcp-server-time").display()
    )
}

/// An HTTP client for tests (Corral's TLS provider installed first, as the binary does).
pub fn http_client() -> reqwest::Client {
    corral::tls::install_provider();
    reqwest::Client::new()
}

/// `initialize` (no capabilities) at the Streamable HTTP endpoint `url`; returns the session id.
pub async fn http_session(http: &reqwest::Client, url: &str) -> String {
    let r = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .send()
        .await
        .unwrap();
    r.headers()["mcp-session-id"].to_str().unwrap().to_string()
}

/// The session's standalone event stream (`GET url`), as raw chunks.
pub async fn event_stream(
    http: &reqwest::Client,
    url: &str,
    session: &str,
) -> impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin + use<> {
    let r = http
        .get(url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes_stream()
}

/// Everything an event stream delivers until it has been quiet for `quiet`.
pub async fn drain<S, E>(events: &mut S, quiet: Duration) -> String
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    use futures::StreamExt;
    let mut seen = String::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(quiet, events.next()).await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `corral serve` process with an HTTP front, killed (SIGTERM) on drop.
pub struct Corral {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Corral {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Writes `config` (YAML) and starts `corral serve` on a free port; waits for `/health`.
    pub async fn start(config: &str, extra: &[&str]) -> Corral {
        let dir = tempfile::tempdir().unwrap();
        let config = if config.contains("stateDir:") {
            config.to_string()
        } else {
            format!("{config}\nstateDir: {}/state\n", dir.path().display())
        };
        std::fs::write(dir.path().join("corral.yaml"), config).unwrap();
        let port = free_port();
        let child = Command::new(BIN)
            .args([
                "serve",
                "--config",
                "corral.yaml",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let c = Corral {
            child,
            port,
            dir,
            http: http_client(),
        };
        for _ in 0..500 {
            if c.http
                .get(c.url("/health"))
                .bearer_auth(token_of(extra))
                .send()
                .await
                .is_ok()
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("corral did not start listening on {port}");
    }

    pub fn workdir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// One JSON-RPC request over Streamable HTTP (JSON response), optionally in a session.
    pub async fn rpc(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let mut req = self
            .http
            .post(self.url("/mcp"))
            .header("accept", "application/json, text/event-stream");
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        let r = req
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    /// `initialize` over HTTP; returns the session id.
    pub async fn http_session(&self) -> String {
        http_session(&self.http, &self.url("/mcp")).await
    }

    /// Polls `/runner/status/{id}` until `pred` holds or `secs` pass.
    pub async fn wait_status(&self, id: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, v) = self.get(&format!("/runner/status/{id}")).await;
            if pred(&v) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "status of {id} never matched; last: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and wait, so servers are stopped the way a user's Ctrl-C stops them.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("corral exits after SIGTERM")
            .unwrap()
    }
}

fn token_of(extra: &[&str]) -> String {
    extra
        .iter()
        .position(|a| *a == "--token")
        .and_then(|i| extra.get(i + 1))
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// A line-oriented JSON-RPC client on a child's stdio (Corral's stdio front).
pub struct StdioPeer {
    pub child: Child,
    stdin: ChildStdin,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
    pub notifications: mpsc::UnboundedReceiver<Value>,
    pub raw: Arc<Mutex<Vec<String>>>,
    pub dir: Option<tempfile::TempDir>,
}

impl StdioPeer {
    /// Starts `corral serve --stdio` with `config` (YAML).
    pub async fn corral(config: &str) -> StdioPeer {
        StdioPeer::corral_with(config, &[]).await
    }

    /// [`StdioPeer::corral`] with more `serve` arguments (`--listen ADDR` adds an HTTP front).
    pub async fn corral_with(config: &str, extra: &[&str]) -> StdioPeer {
        let dir = tempfile::tempdir().unwrap();
        let config = format!("{config}\nstateDir: {}/state\n", dir.path().display());
        std::fs::write(dir.path().join("corral.yaml"), config).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--stdio", "--config", "corral.yaml"])
            .args(extra)
            .current_dir(dir.path());
        let mut peer = StdioPeer::spawn(cmd);
        peer.dir = Some(dir);
        peer
    }

    pub fn spawn(mut cmd: Command) -> StdioPeer {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>> = Arc::default();
        let raw: Arc<Mutex<Vec<String>>> = Arc::default();
        let (ntx, nrx) = mpsc::unbounded_channel();
        let (p, r) = (pending.clone(), raw.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                r.lock().unwrap().push(line.clone());
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v.get("method").is_some() {
                    let _ = ntx.send(v);
                } else if let Some(id) = v.get("id")
                    && let Some(tx) = p.lock().unwrap().remove(&id.to_string())
                {
                    let _ = tx.send(v);
                }
            }
        });
        StdioPeer {
            child,
            stdin,
            pending,
            notifications: nrx,
            raw,
            dir: None,
        }
    }

    pub async fn send_raw(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.write_all(b"\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Sends a request and returns a receiver for its response.
    pub async fn start(
        &mut self,
        id: Value,
        method: &str,
        params: Value,
    ) -> oneshot::Receiver<Value> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id.to_string(), tx);
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_raw(&msg.to_string()).await;
        rx
    }

    pub async fn request(&mut self, id: Value, method: &str, params: Value) -> Value {
        let rx = self.start(id, method, params).await;
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("response within 60 s")
            .unwrap()
    }

    /// Initializes as a client of `version` that declares `capabilities`.
    pub async fn initialize_as(&mut self, version: &str, capabilities: Value) -> Value {
        let v = self.request(json!(0), "initialize", json!({"protocolVersion": version, "capabilities": capabilities, "clientInfo": {"name": "t", "version": "1"}})).await;
        self.send_raw(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        v
    }

    /// The next request or notification Corral sends, skipping log messages and list changes
    /// (which a server's start produces); panics after `secs`.
    pub async fn next_message(&mut self, secs: u64) -> Value {
        tokio::time::timeout(Duration::from_secs(secs), async {
            loop {
                let msg = self.notifications.recv().await.expect("corral is running");
                let method = msg["method"].as_str().unwrap_or_default();
                if method != "notifications/message" && !method.ends_with("/list_changed") {
                    return msg;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no message from corral within {secs} s"))
    }

    pub async fn initialize(&mut self) -> Value {
        let v = self.request(json!(0), "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}})).await;
        self.send_raw(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        v
    }
}

/// Arguments for a client script that launches Corral itself over stdio (`stdio BIN serve
/// --stdio --config FILE`), with `yaml` written to a fresh directory that the guard keeps.
pub fn stdio_front(yaml: &str) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("corral.yaml");
    std::fs::write(
        &cfg,
        format!("{yaml}stateDir: {}/state\n", dir.path().display()),
    )
    .unwrap();
    let args = ["stdio", BIN, "serve", "--stdio", "--config"]
        .into_iter()
        .map(String::from)
        .chain([cfg.display().to_string()])
        .collect();
    (dir, args)
}

/// Runs a client program (SDK scenario script) and parses the JSON it prints on its last line.
pub fn run_client(program: &str, args: &[String]) -> Value {
    let out = std::process::Command::new(program)
        .args(args)
        .env("FIXTURES_NODE_MODULES", node_modules())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{program} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("bad client output {e}: {stdout}"))
}

/// The text of the first content item of a tools/call response.
pub fn first_text(resp: &Value) -> String {
    resp["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Pids of live processes whose command line contains `needle`.
pub fn pids_matching(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit(") ")
            .next()
            .is_some_and(|s| s.starts_with('Z'));
        if cmd.contains(needle) && !zombie {
            out.push(pid);
        }
    }
    out
}
