//! Real escape attempts against sandboxed servers (tests/fixtures/escape.py under
//! /usr/bin/python3, and server-filesystem under /usr/bin/node): every permission and limit is
//! tried from inside, and the refusals are checked on the host side too.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn escape() -> String {
    repo()
        .join("tests/fixtures/escape.py")
        .display()
        .to_string()
}

/// A server entry running the escape fixture with `policy` (YAML lines at server level).
fn boxed(id: &str, policy: &str) -> String {
    let mut s = format!(
        "  {id}:\n    command: /usr/bin/python3\n    args: [\"-u\", \"{}\"]\n",
        escape()
    );
    for line in policy.lines() {
        s.push_str("    ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// What the fixture answers for `action arg` on `server`: `ALLOWED: …`, `DENIED: …`, or the
/// JSON-RPC error when the server died.
async fn attempt(c: &Corral, server: &str, action: &str, arg: &str) -> String {
    let v = c
        .rpc(
            None,
            "tools/call",
            json!({"name": format!("{server}__try"), "arguments": {"action": action, "arg": arg}}),
        )
        .await;
    match v["result"]["content"][0]["text"].as_str() {
        Some(t) => t.to_string(),
        None => format!("ERROR: {}", v["error"]),
    }
}

fn allowed(out: &str) -> bool {
    out.starts_with("ALLOWED")
}

/// A file outside /tmp (which every sandbox replaces with its own), so that reading it is a
/// question for Landlock.
struct Outside(std::path::PathBuf);

impl Outside {
    fn new(tag: &str) -> Outside {
        let dir = std::path::PathBuf::from(format!(
            "/var/tmp/corral-sandbox-test-{tag}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret.txt"), "host secret").unwrap();
        Outside(dir)
    }
    fn file(&self) -> String {
        self.0.join("secret.txt").display().to_string()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn filesystem_permissions_hold_against_reads_and_writes() {
    let outside = Outside::new("fs");
    // Under /tmp, which each sandbox replaces: allowed paths there are bound back in.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in.txt"), "inside").unwrap();
    let paths = format!("allowedPaths: [\"{}\"]", data.display());
    let yaml = format!(
        "servers:\n{}{}{}",
        boxed(
            "rw",
            &format!("permissions: {{fsRead: true, fsWrite: true, {paths}}}")
        ),
        boxed(
            "ro",
            &format!("permissions: {{fsRead: true, fsWrite: false, {paths}}}")
        ),
        boxed("open", "permissions: {network: true}"),
    );
    let c = Corral::start(&yaml, &[]).await;
    let inside = data.join("in.txt").display().to_string();

    let out = attempt(&c, "rw", "read", &outside.file()).await;
    assert!(
        out.contains("PermissionError"),
        "outside allowedPaths: {out}"
    );
    let out = attempt(&c, "rw", "read", &inside).await;
    assert_eq!(out, "ALLOWED: inside");
    let out = attempt(&c, "rw", "read", "/root/.bashrc").await;
    assert!(!allowed(&out), "home directory: {out}");
    let written = data.join("from-rw.txt");
    let out = attempt(&c, "rw", "write", &written.display().to_string()).await;
    assert!(allowed(&out), "fsWrite inside allowedPaths: {out}");
    assert!(written.is_file(), "the write reached the host");

    let denied = data.join("from-ro.txt");
    let out = attempt(&c, "ro", "write", &denied.display().to_string()).await;
    assert!(out.contains("PermissionError"), "fsWrite: false: {out}");
    assert!(!denied.exists());
    let out = attempt(&c, "ro", "write", &format!("{}/x", outside.0.display())).await;
    assert!(!allowed(&out), "{out}");

    // Without filesystem permissions the same read works: the denials above are the policy's.
    let out = attempt(&c, "open", "read", &outside.file()).await;
    assert_eq!(out, "ALLOWED: host secret");
    c.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn network_false_cuts_tcp_and_host_unix_sockets() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A socket where docker.sock would be: Landlock cannot stop connect() to a socket file,
    // the sandbox's private /run must.
    let sock_path = format!("/run/corral-sandbox-test-{}.sock", std::process::id());
    let _ = std::fs::remove_file(&sock_path);
    let unix = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let yaml = format!(
        "servers:\n{}{}",
        boxed("offline", "permissions: {network: false}"),
        boxed("online", "permissions: {spawn: true}"),
    );
    let c = Corral::start(&yaml, &[]).await;
    let target = format!("127.0.0.1:{port}");
    let out = attempt(&c, "offline", "tcp", &target).await;
    assert!(!allowed(&out), "loopback TCP on the host: {out}");
    let out = attempt(&c, "offline", "unix", &sock_path).await;
    assert!(!allowed(&out), "host unix socket: {out}");
    // The socket() refusal is seen, not only suffered: status, events and log say so.
    let s = refused(&c, "offline", "permissions.network").await;
    assert!(
        s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["refusedBy"] == "permissions.network"
                && e["reason"].as_str().unwrap().contains("AF_INET socket")),
        "{s}"
    );
    let (_, logs) = c.get("/logs?name=offline&lines=50").await;
    assert!(
        logs.to_string()
            .contains("sandbox (permissions.network): an AF_INET socket was refused"),
        "{logs}"
    );
    // The control: an unrestricted network reaches both.
    assert!(allowed(&attempt(&c, "online", "tcp", &target).await));
    let out = attempt(&c, "online", "unix", &sock_path).await;
    assert!(
        !allowed(&out),
        "/run is private in every sandbox, network or not: {out}"
    );
    c.terminate().await;
    drop(unix);
    let _ = std::fs::remove_file(&sock_path);
}

#[tokio::test(flavor = "multi_thread")]
async fn env_spawn_and_proc_are_confined() {
    // `python3` from PATH may be a pyenv shim (a bash script that forks): under
    // `spawn: false` Corral must start the real interpreter instead.
    let shimmed = format!(
        "  shimmed:\n    command: python3\n    args: [\"-u\", \"{}\"]\n    permissions: {{spawn: false}}\n",
        escape()
    );
    let yaml = format!(
        "servers:\n{}{}{shimmed}",
        boxed(
            "strict",
            "permissions: {env: false, spawn: false}\nenv: {OWN_SETTING: kept}"
        ),
        boxed("loose", "permissions: {network: true}"),
    );
    let c = Corral::start(&yaml, &[]).await;
    // cargo sets this for the test process, and Corral inherits it.
    let secret = "CARGO_MANIFEST_DIR";
    let out = attempt(&c, "strict", "env", secret).await;
    assert!(
        out.contains("not set"),
        "env: false hides Corral's environment: {out}"
    );
    assert!(allowed(&attempt(&c, "loose", "env", secret).await));
    assert_eq!(
        attempt(&c, "strict", "env", "OWN_SETTING").await,
        "ALLOWED: kept"
    );
    assert_eq!(
        attempt(&c, "strict", "env", "HOME").await,
        "ALLOWED: /tmp/home",
        "a private home"
    );
    let out = attempt(&c, "strict", "fork", "").await;
    assert!(
        out.contains("Operation not permitted"),
        "spawn: false: {out}"
    );
    assert_eq!(
        attempt(&c, "strict", "thread", "").await,
        "ALLOWED: thread ran"
    );
    let s = refused(&c, "strict", "permissions.spawn").await;
    assert_eq!(
        s["refusals"]["permissions.spawn"], 1,
        "one fork, one report: {s}"
    );
    assert!(allowed(&attempt(&c, "loose", "fork", "").await));
    assert!(
        c.get("/runner/status/loose").await.1["refusals"].is_null(),
        "nothing refused, nothing reported"
    );
    assert_eq!(
        attempt(&c, "shimmed", "thread", "").await,
        "ALLOWED: thread ran",
        "the interpreter behind the shim runs"
    );
    // Its own pid namespace: no host process is visible.
    let procs = attempt(&c, "strict", "procs", "").await;
    assert_eq!(procs, "ALLOWED: 1", "{procs}");
    c.terminate().await;
}

/// The status of `id` once `key` has refused something.
async fn refused(c: &Corral, id: &str, key: &str) -> Value {
    let s = c
        .wait_status(id, 10, |s| s["refusals"][key].as_u64() > Some(0))
        .await;
    let (_, full) = c.get(&format!("/runner/status/{id}")).await;
    assert_eq!(
        full["state"], "running",
        "a refusal does not stop the server: {s}"
    );
    full
}

#[tokio::test(flavor = "multi_thread")]
async fn corral_runs_as_a_batch_task_and_its_servers_do_not() {
    let yaml = format!(
        "servers:\n{}{}",
        boxed("plain", ""),
        boxed("boxed", "permissions: {spawn: false}"),
    );
    let c = Corral::start(&yaml, &[]).await;
    // SAFETY: querying the scheduling policy of a process we started.
    let corral = unsafe { libc::sched_getscheduler(c.child.id().unwrap() as i32) };
    assert_eq!(corral, libc::SCHED_BATCH);
    for server in ["plain", "boxed"] {
        assert_eq!(
            attempt(&c, server, "sched", "").await,
            "ALLOWED: SCHED_OTHER",
            "{server}"
        );
    }
    c.terminate().await;
}

async fn last_error(c: &Corral, id: &str) -> Value {
    c.wait_status(id, 20, |s| s["lastError"].is_string()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_fire_and_say_which() {
    let yaml = format!(
        "servers:\n{}{}{}",
        boxed("hog", "limits: {memory: 64}"),
        boxed("spinner", "limits: {cpuTime: 1}"),
        boxed(
            "slow",
            "limits: {timeout: 1}\npermissions: {network: false}"
        ),
    );
    let c = Corral::start(&yaml, &[]).await;
    assert_eq!(
        attempt(&c, "hog", "memory", "16").await,
        "ALLOWED: allocated 16 MB",
        "under the limit"
    );
    let out = attempt(&c, "hog", "memory", "256").await;
    assert!(out.contains("OOM-killed") && out.contains("64 MB"), "{out}");
    let s = last_error(&c, "hog").await;
    assert!(
        s["lastError"].as_str().unwrap().contains("limits.memory"),
        "{s}"
    );

    let out = attempt(&c, "spinner", "spin", "10").await;
    assert!(out.contains("limits.cpuTime = 1 s"), "{out}");

    let started = std::time::Instant::now();
    let out = attempt(&c, "slow", "sleep", "30").await;
    assert!(out.contains("limits.timeout"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let (_, logs) = c.get("/logs?name=slow&lines=50").await;
    assert!(
        logs.to_string().contains("a call hit limits.timeout (1 s)"),
        "the server's log says which limit fired: {logs}"
    );
    let (_, logs) = c.get("/logs?name=hog&lines=50").await;
    assert!(logs.to_string().contains("OOM-killed"), "{logs}");
    c.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pids_limit_refuses_forks_and_says_so() {
    let yaml = format!(
        "servers:\n{}{}",
        boxed("few", "limits: {pids: 6}"),
        boxed("many", "permissions: {network: true}"),
    );
    let c = Corral::start(&yaml, &[]).await;
    // The shim's monitor and the server are two of the six tasks.
    let out = attempt(&c, "few", "forks", "20").await;
    assert!(
        out.starts_with("DENIED") && out.contains("Resource temporarily unavailable"),
        "{out}"
    );
    let got: u32 = out
        .split(" after ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(99);
    assert!((1..=4).contains(&got), "{out}");
    let s = refused(&c, "few", "limits.pids").await;
    assert!(
        s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["refusedBy"] == "limits.pids"),
        "{s}"
    );
    // The children are gone again, so the budget is back.
    assert_eq!(
        attempt(&c, "few", "forks", "2").await,
        "ALLOWED: 2 children"
    );
    assert_eq!(
        attempt(&c, "many", "forks", "20").await,
        "ALLOWED: 20 children",
        "the control"
    );
    c.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_lives_under_tmp_still_starts() {
    // Every sandbox gets a private /tmp: the server's own script there must stay reachable,
    // with and without filesystem rules.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("escape.py");
    std::fs::copy(escape(), &script).unwrap();
    let data = tempfile::tempdir_in("/var/tmp").unwrap();
    let entry = |id: &str, policy: &str| {
        format!(
            "  {id}:\n    command: /usr/bin/python3\n    args: [\"-u\", \"{}\"]\n    permissions: {policy}\n",
            script.display()
        )
    };
    let yaml = format!(
        "servers:\n{}{}",
        entry("plain", "{network: false}"),
        entry(
            "ruled",
            &format!(
                "{{fsWrite: false, allowedPaths: [\"{}\"]}}",
                data.path().display()
            )
        ),
    );
    let c = Corral::start(&yaml, &[]).await;
    for id in ["plain", "ruled"] {
        assert_eq!(
            attempt(&c, id, "thread", "").await,
            "ALLOWED: thread ran",
            "{id}"
        );
    }
    c.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_double_forked_grandchild_dies_with_its_server() {
    let yaml = format!(
        "servers:\n{}",
        boxed("parent", "permissions: {network: false}")
    );
    let c = Corral::start(&yaml, &[]).await;
    let out = attempt(&c, "parent", "grandchild", "").await;
    assert!(allowed(&out), "{out}");
    // The fixture reports the pid just before the grandchild execs `sleep`: give it a moment.
    let mut before = Vec::new();
    for _ in 0..50 {
        before = pids_matching("sleep 300.123");
        if !before.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!before.is_empty(), "the grandchild runs");
    let (status, v) = c.post("/runner/stop", json!({"serverId": "parent"})).await;
    assert!(status < 300, "{status} {v}");
    let mut left = before.clone();
    for _ in 0..50 {
        left = pids_matching("sleep 300.123");
        if left.iter().all(|p| !before.contains(p)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left.iter().all(|p| !before.contains(p)),
        "left behind: {left:?}"
    );
    c.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_filesystem_works_confined_to_one_directory() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("note.txt"), "shared note").unwrap();
    std::fs::write(dir.path().join("private.txt"), "private").unwrap();
    let yaml = format!(
        "servers:\n  fs:\n    command: /usr/bin/node\n    args: [\"{}/@modelcontextprotocol/server-filesystem/dist/index.js\", \"{}\"]\n    permissions: {{network: false, spawn: false, env: false, fsWrite: false, allowedPaths: [\"{}\"]}}\n",
        node_modules().display(),
        shared.display(),
        shared.display()
    );
    let c = Corral::start(&yaml, &[]).await;
    let call = |name: &str, args: Value| {
        c.rpc(
            None,
            "tools/call",
            json!({"name": format!("fs__{name}"), "arguments": args}),
        )
    };
    let v = call("read_text_file", json!({"path": shared.join("note.txt")})).await;
    assert_eq!(first_text(&v), "shared note", "{v}");
    let v = call(
        "read_text_file",
        json!({"path": dir.path().join("private.txt")}),
    )
    .await;
    assert!(
        v["result"]["isError"] == true && !v.to_string().contains("\"private\""),
        "{v}"
    );
    // Its own write tool is refused by the sandbox (fsWrite: false), not just by its checks.
    let v = call(
        "write_file",
        json!({"path": shared.join("new.txt"), "content": "x"}),
    )
    .await;
    assert!(v["result"]["isError"] == true, "{v}");
    assert!(!shared.join("new.txt").exists());
    c.terminate().await;
}

/// A host HTTP server on 127.0.0.1 answering every request with `body`.
fn web_server(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_hosts_lets_one_target_through_and_no_other() {
    let a = web_server("site-A");
    let b = web_server("site-B");
    let yaml = format!(
        "servers:\n{}",
        boxed(
            "web",
            &format!("permissions: {{allowedHosts: [\"localhost:{a}\", \"named.invalid\"]}}")
        )
    );
    let c = Corral::start(&yaml, &[]).await;
    // A client that honours HTTP(S)_PROXY: plain HTTP, and a CONNECT tunnel as HTTPS uses.
    let out = attempt(&c, "web", "http", &format!("http://localhost:{a}/")).await;
    assert_eq!(out, "ALLOWED: 200 site-A");
    assert_eq!(
        attempt(&c, "web", "tunnel", &format!("localhost:{a}")).await,
        "ALLOWED: site-A"
    );
    let out = attempt(&c, "web", "http", &format!("http://localhost:{b}/")).await;
    assert!(out.contains("403"), "another local target: {out}");
    let out = attempt(&c, "web", "tunnel", &format!("localhost:{b}")).await;
    assert!(out.contains("403"), "{out}");
    let out = attempt(&c, "web", "http", &format!("http://127.0.0.1:{a}/")).await;
    assert!(out.contains("403"), "the allowed target by raw IP: {out}");
    // Node's fetch ignores proxy variables: the listed loopback target still works, nothing
    // else is reachable.
    let out = attempt(&c, "web", "node_fetch", &format!("http://localhost:{a}/")).await;
    assert_eq!(out, "ALLOWED: 200 site-A");
    for url in [
        format!("http://localhost:{b}/"),
        format!("http://127.0.0.1:{b}/"),
    ] {
        let out = attempt(&c, "web", "node_fetch", &url).await;
        assert!(!allowed(&out), "{url}: {out}");
    }
    let out = attempt(&c, "web", "tcp", &format!("127.0.0.1:{b}")).await;
    assert!(!allowed(&out), "a raw socket: {out}");
    // Transparent mode for named hosts: the sandbox's DNS answers only listed names, each
    // with a loopback address whose connections go to the proxy as that name.
    let out = attempt(&c, "web", "resolve", "named.invalid").await;
    assert!(out.starts_with("ALLOWED: 127.1."), "{out}");
    let out = attempt(&c, "web", "resolve", "unlisted.invalid").await;
    assert!(!allowed(&out), "{out}");
    let out = attempt(&c, "web", "node_fetch", "http://named.invalid/").await;
    assert!(
        !allowed(&out),
        "the name does not exist outside either: {out}"
    );
    // Every refusal is logged with the server and the host.
    let (_, logs) = c.get("/logs?name=web&lines=200").await;
    let text = logs.to_string();
    assert!(
        text.contains(&format!("localhost:{b} is not in allowedHosts")),
        "{text}"
    );
    assert!(
        text.contains("cannot resolve named.invalid"),
        "the transparent connection reached the proxy as the name: {text}"
    );
    assert!(
        text.contains(
            "sandbox (permissions.allowedHosts): DNS lookup of `unlisted.invalid` refused"
        ),
        "refused lookups are logged: {text}"
    );
    let (_, s) = c.get("/runner/status/web").await;
    assert!(
        s["refusals"]["permissions.allowedHosts"].as_u64() >= Some(4),
        "each refused connection and lookup is counted: {s}"
    );
    c.terminate().await;
}
