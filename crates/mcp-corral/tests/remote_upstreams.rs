//! Remote upstreams: one Corral serves another over Streamable HTTP and over legacy HTTP+SSE;
//! calls, progress and errors cross both hops, and a lost remote is reconnected with backoff.

mod common;

use common::*;
use serde_json::json;

fn misbehave_yaml() -> String {
    format!(
        "servers:\n  mb:\n    command: python3\n    args: [\"-u\", \"{}\"]\n    autoStart: true\n",
        misbehave()
    )
}

async fn through(kind: &str, path: &str) {
    let inner = Corral::start(&misbehave_yaml(), &[]).await;
    inner
        .wait_status("mb", 10, |s| s["state"] == "running")
        .await;
    let outer_cfg = format!(
        "servers:\n  remote:\n    transport: {{type: {kind}, url: \"{}\"}}\n",
        inner.url(path)
    );
    let mut peer = StdioPeer::corral(&outer_cfg).await;
    peer.initialize().await;
    let v = peer.request(json!(1), "tools/list", json!({})).await;
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"remote__mb__echo"), "{names:?}");
    let v = peer
        .request(
            json!(2),
            "tools/call",
            json!({"name": "remote__mb__echo", "arguments": {"text": "two hops"}}),
        )
        .await;
    assert_eq!(first_text(&v), "two hops");
    let v = peer.request(json!(3), "tools/call", json!({"name": "remote__mb__progress", "arguments": {"steps": 3}, "_meta": {"progressToken": "p"}})).await;
    assert_eq!(first_text(&v), "done");
    let progress = peer
        .raw
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("notifications/progress") && l.contains("\"progressToken\":\"p\""))
        .count();
    assert_eq!(
        progress, 3,
        "progress crosses both hops under the caller's token"
    );
    let v = peer
        .request(
            json!(4),
            "tools/call",
            json!({"name": "remote__nope", "arguments": {}}),
        )
        .await;
    assert_eq!(v["error"]["code"], -32602);
    inner.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamable_http_upstream_works_like_a_local_one() {
    through("http", "/mcp").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_sse_upstream_works_like_a_local_one() {
    through("sse", "/sse").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_remote_is_reconnected_with_backoff() {
    let inner = Corral::start(&misbehave_yaml(), &[]).await;
    let port = inner.port;
    let outer_cfg = format!(
        "servers:\n  remote:\n    transport: {{type: http, url: \"{}\"}}\n    autoStart: true\n    restartDelay: 100\n    maxRestarts: 20\n",
        inner.url("/mcp")
    );
    let outer = Corral::start(&outer_cfg, &[]).await;
    outer
        .wait_status("remote", 10, |s| s["state"] == "running")
        .await;
    inner.terminate().await;
    // The next call notices the remote is gone and fails with a clear error, never hangs.
    let v = outer
        .rpc(
            None,
            "tools/call",
            json!({"name": "remote__mb__echo", "arguments": {"text": "x"}}),
        )
        .await;
    assert!(v.get("error").is_some(), "{v}");
    outer
        .wait_status("remote", 10, |s| {
            s["state"] == "restarting" || s["state"] == "starting"
        })
        .await;
    // The remote comes back on the same port: Corral reconnects by itself.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        format!("{}stateDir: {}/s\n", misbehave_yaml(), dir.path().display()),
    )
    .unwrap();
    let mut again = tokio::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
            "c.yaml",
        ])
        .current_dir(dir.path())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = outer
        .wait_status("remote", 30, |s| s["state"] == "running")
        .await;
    assert!(status["restarts"].as_u64().unwrap() >= 1, "{status}");
    let v = outer
        .rpc(
            None,
            "tools/call",
            json!({"name": "remote__mb__echo", "arguments": {"text": "back again"}}),
        )
        .await;
    assert_eq!(first_text(&v), "back again", "{v}");
    outer.terminate().await;
    let _ = again.kill().await;
}
