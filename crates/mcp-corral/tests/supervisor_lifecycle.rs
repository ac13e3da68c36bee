//! Server lifecycle through the real binary: crash mid-call, restart policy, maxRestarts,
//! health-check restarts, lazy start, process-tree cleanup, missing package managers, logs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn mb(id: &str, extra: &str) -> String {
    format!(
        "  {id}:\n    command: python3\n    args: [\"-u\", \"{}\"]\n{extra}",
        misbehave()
    )
}

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_mid_call_fails_that_call_at_once_then_restarts() {
    let cfg = format!(
        "servers:\n{}",
        mb(
            "mb",
            "    autoStart: true\n    restartOnFailure: true\n    restartDelay: 100\n"
        )
    );
    let corral = Corral::start(&cfg, &[]).await;
    corral
        .wait_status("mb", 10, |s| s["state"] == "running")
        .await;
    let slow = {
        let url = corral.url("/mcp");
        tokio::spawn(async move {
            let body = json!({"jsonrpc":"2.0","id":"slow","method":"tools/call","params":{"name":"mb__hang","arguments":{}}});
            common::http_client()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let v = corral
        .rpc(
            None,
            "tools/call",
            json!({"name": "mb__crash", "arguments": {"code": 7}}),
        )
        .await;
    assert_eq!(v["error"]["code"], -32000, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`mb`") && msg.contains("exited with code 7"),
        "{msg}"
    );
    let other = slow.await.unwrap();
    assert!(
        other["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exited with code 7"),
        "in-flight calls fail too: {other}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed at once, not at a timeout"
    );
    let status = corral
        .wait_status("mb", 10, |s| s["state"] == "running" && s["restarts"] == 1)
        .await;
    let events = status["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["to"] == "restarting" && e["exitCode"] == 7),
        "{events:#?}"
    );
    let v = corral
        .rpc(
            None,
            "tools/call",
            json!({"name": "mb__echo", "arguments": {"text": "back"}}),
        )
        .await;
    assert_eq!(first_text(&v), "back");
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_restarts_exhausted_marks_the_server_failed_with_the_reason() {
    let cfg = format!(
        "servers:\n{}",
        mb(
            "bad",
            "    autoStart: true\n    restartOnFailure: true\n    maxRestarts: 2\n    restartDelay: 50\n    env: {MISBEHAVE_EXIT_AT_START: \"9\"}\n"
        )
    );
    let corral = Corral::start(&cfg, &[]).await;
    let status = corral
        .wait_status("bad", 20, |s| s["state"] == "failed")
        .await;
    assert_eq!(status["restarts"], 2);
    let err = status["lastError"].as_str().unwrap();
    assert!(
        err.contains("exited with code 9") && err.contains("maxRestarts"),
        "{err}"
    );
    assert!(
        err.contains("exiting at start on purpose"),
        "the last stderr line explains the crash: {err}"
    );
    // Its tools were never listed, but the name points at it: the error names the server.
    let v = corral
        .rpc(
            None,
            "tools/call",
            json!({"name": "bad__echo", "arguments": {}}),
        )
        .await;
    assert_eq!(v["error"]["code"], -32000, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("`bad`") && msg.contains("failed"), "{msg}");
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_health_checks_make_the_server_unhealthy_and_restart_it() {
    let cfg = format!(
        "servers:\n{}",
        mb(
            "deaf",
            "    autoStart: true\n    restartOnFailure: true\n    restartDelay: 50\n    healthCheck: {interval: 150, timeout: 100, retries: 2}\n    env: {MISBEHAVE_PING: ignore}\n"
        )
    );
    let corral = Corral::start(&cfg, &[]).await;
    let status = corral
        .wait_status("deaf", 20, |s| s["restarts"].as_u64().unwrap_or(0) >= 1)
        .await;
    let events = status["events"].as_array().unwrap();
    let unhealthy = events
        .iter()
        .find(|e| e["to"] == "unhealthy")
        .expect("went unhealthy");
    assert!(
        unhealthy["reason"]
            .as_str()
            .unwrap()
            .contains("health checks failed"),
        "{unhealthy}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["from"] == "stopping" || e["to"] == "restarting"),
        "{events:#?}"
    );
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_servers_report_ping_latency() {
    let cfg = format!(
        "servers:\n{}",
        mb(
            "ok",
            "    autoStart: true\n    healthCheck: {interval: 100}\n"
        )
    );
    let corral = Corral::start(&cfg, &[]).await;
    let s = corral
        .wait_status("ok", 10, |s| s["healthLatencyMs"].as_f64().is_some())
        .await;
    assert_eq!(s["state"], "running");
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_leaves_no_orphans_even_double_forked_grandchildren() {
    let cfg = format!(
        "servers:\n{}",
        mb(
            "tree",
            "    autoStart: true\n    env: {MISBEHAVE_GRANDCHILD: \"1\"}\n"
        )
    );
    let corral = Corral::start(&cfg, &[]).await;
    corral
        .wait_status("tree", 10, |s| s["state"] == "running")
        .await;
    let v = corral
        .rpc(
            None,
            "tools/call",
            json!({"name": "tree__pid", "arguments": {}}),
        )
        .await;
    let pids: Value = serde_json::from_str(&first_text(&v)).unwrap();
    let (pid, grandchild) = (
        pids["pid"].as_i64().unwrap() as i32,
        pids["grandchild"].as_i64().unwrap() as i32,
    );
    assert!(alive(pid) && alive(grandchild));
    let (status, v) = corral
        .post("/runner/stop", json!({"serverId": "tree"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "stopped");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!alive(pid), "server process is gone");
    assert!(!alive(grandchild), "double-forked grandchild is gone");

    // And on SIGTERM to corral itself.
    let (status, _) = corral
        .post("/runner/start", json!({"serverId": "tree"}))
        .await;
    assert_eq!(status, 200);
    let v = corral
        .rpc(
            None,
            "tools/call",
            json!({"name": "tree__pid", "arguments": {}}),
        )
        .await;
    let pids: Value = serde_json::from_str(&first_text(&v)).unwrap();
    let (pid, grandchild) = (
        pids["pid"].as_i64().unwrap() as i32,
        pids["grandchild"].as_i64().unwrap() as i32,
    );
    let exit = corral.terminate().await;
    assert!(exit.success(), "corral exits 0 on SIGTERM: {exit:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !alive(pid) && !alive(grandchild),
        "SIGTERM to corral stops every server tree"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_server_starts_on_its_first_call() {
    let cfg = format!("servers:\n{}", mb("lazy", ""));
    let corral = Corral::start(&cfg, &[]).await;
    // First run: discovery lists its tools, then stops it again.
    let v = corral.rpc(None, "tools/list", json!({})).await;
    assert!(
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "lazy__echo"),
        "{v}"
    );
    corral
        .wait_status("lazy", 10, |s| s["state"] == "stopped")
        .await;
    let v = corral
        .rpc(
            None,
            "tools/call",
            json!({"name": "lazy__echo", "arguments": {"text": "woke up"}}),
        )
        .await;
    assert_eq!(first_text(&v), "woke up");
    corral
        .wait_status("lazy", 5, |s| s["state"] == "running")
        .await;
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_servers_tools_are_listed_from_the_state_directory_after_a_restart_of_corral() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "servers:\n{}stateDir: {}/shared-state\n",
        mb("kept", ""),
        dir.path().display()
    );
    let first = Corral::start(&cfg, &[]).await;
    let v = first.rpc(None, "tools/list", json!({})).await;
    let tools = v["result"]["tools"].clone();
    assert!(
        tools
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "kept__echo"),
        "{v}"
    );
    first.terminate().await;
    assert!(
        dir.path().join("shared-state/lists/kept.json").is_file(),
        "the lists are kept in the state directory"
    );
    // Second run with a command that cannot start: the tools still come from the state directory.
    let cfg = cfg.replace("python3", "/nonexistent/python3");
    let second = Corral::start(&cfg, &[]).await;
    let v = second.rpc(None, "tools/list", json!({})).await;
    assert_eq!(v["result"]["tools"], tools, "{v}");
    let s = second
        .wait_status("kept", 5, |s| s["state"] == "stopped")
        .await;
    assert_eq!(s["tools"], tools.as_array().unwrap().len());
    second.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_package_manager_fails_only_that_server_with_a_clear_error() {
    let cfg = format!(
        "servers:\n  viapnpm:\n    package: some-mcp-server\n    packageManager: pnpm\n    autoStart: true\n    env: {{PATH: /nonexistent}}\n{}",
        mb("fine", "    autoStart: true\n")
    );
    let corral = Corral::start(&cfg, &[]).await;
    let s = corral
        .wait_status("viapnpm", 10, |s| s["state"] == "failed")
        .await;
    assert!(
        s["lastError"]
            .as_str()
            .unwrap()
            .contains("pnpm not found on PATH"),
        "{s}"
    );
    let v = corral
        .rpc(
            None,
            "tools/call",
            json!({"name": "fine__echo", "arguments": {"text": "unaffected"}}),
        )
        .await;
    assert_eq!(first_text(&v), "unaffected");
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stderr_lines_are_kept_in_the_log_ring() {
    let cfg = format!(
        "servers:\n{}",
        mb(
            "talky",
            "    autoStart: true\n    env: {MISBEHAVE_STDERR: \"hello on stderr\"}\n"
        )
    );
    let corral = Corral::start(&cfg, &[]).await;
    corral
        .wait_status("talky", 10, |s| s["state"] == "running")
        .await;
    let (status, v) = corral.get("/logs?name=talky&lines=50").await;
    assert_eq!(status, 200);
    let lines = v["lines"].as_array().unwrap();
    let line = lines
        .iter()
        .find(|l| l["line"] == "hello on stderr")
        .expect("stderr line kept");
    assert_eq!(line["stream"], "stderr");
    assert!(line["at"].as_str().unwrap().ends_with('Z'));
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_tree_dies_with_corral_even_when_corral_is_killed() {
    // misbehave.py ignores its arguments: this one only makes the processes easy to find. The
    // server keeps running after its stdin closes, so only Corral's death can end it. It runs
    // under `sh`, which stays as its parent (the `; true`): a grandchild of Corral, as `node`
    // is under `npx`.
    let marker = format!("--corral-death-marker-{}", std::process::id());
    let cfg = format!(
        "servers:\n  mb:\n    command: /bin/sh\n    args: [\"-c\", \"python3 -u {} {marker}; true\"]\n    env: {{MISBEHAVE_IGNORE_EOF: \"1\"}}\n    autoStart: true\n",
        misbehave()
    );
    let mut corral = Corral::start(&cfg, &[]).await;
    corral
        .wait_status("mb", 10, |s| s["state"] == "running")
        .await;
    let tree = pids_matching(&marker);
    assert!(tree.len() >= 2, "the shell and the server: {tree:?}");
    // SIGKILL: Corral gets no chance to stop its servers itself.
    corral.child.kill().await.unwrap();
    for _ in 0..100 {
        if tree.iter().all(|p| !alive(*p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<_> = tree.iter().filter(|p| alive(**p)).collect();
    panic!("{left:?} outlived a killed Corral");
}
