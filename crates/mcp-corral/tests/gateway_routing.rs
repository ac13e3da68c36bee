//! Routing on the wire: ids and progress tokens come back to the caller that sent them, under
//! load and across clients; malformed input gets a JSON-RPC error and the connection lives on;
//! timeouts and cancellation release calls.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn misbehave_yaml(extra: &str) -> String {
    format!(
        "servers:\n  mb:\n    command: python3\n    args: [\"-u\", \"{}\"]\n{extra}",
        misbehave()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_reaches_the_caller_under_its_own_token_before_the_reply() {
    let mut peer = StdioPeer::corral(&misbehave_yaml("")).await;
    peer.initialize().await;
    let resp = peer.request(json!("call-1"), "tools/call", json!({"name": "mb__progress", "arguments": {"steps": 4}, "_meta": {"progressToken": "tok-α"}})).await;
    assert_eq!(first_text(&resp), "done");
    let lines = peer.raw.lock().unwrap().clone();
    let progress: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 4, "{lines:#?}");
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["params"]["progressToken"], "tok-α");
        assert_eq!(p["params"]["progress"], i as u64 + 1);
    }
    let reply_at = lines.iter().position(|l| l.contains("\"call-1\"")).unwrap();
    let last_progress_at = lines
        .iter()
        .rposition(|l| l.contains("notifications/progress"))
        .unwrap();
    assert!(
        last_progress_at < reply_at,
        "all progress precedes the reply"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_concurrent_calls_from_four_http_clients_each_get_their_own_answer() {
    let corral = Corral::start(&misbehave_yaml("    autoStart: true\n"), &[]).await;
    let mut tasks = Vec::new();
    for client in 0..4 {
        let session = corral.http_session().await;
        let url = corral.url("/mcp");
        tasks.push(tokio::spawn(async move {
            let http = common::http_client();
            let calls = (0..64).map(|i| {
                let (http, url, session) = (http.clone(), url.clone(), session.clone());
                async move {
                    let text = format!("client{client}-call{i}");
                    // Same JSON-RPC id in every client: Corral must keep them apart.
                    let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "mb__echo", "arguments": {"text": text, "delay_ms": (i % 7) * 3}}});
                    let v: Value = http.post(&url).header("mcp-session-id", session).header("accept", "application/json, text/event-stream").json(&body).send().await.unwrap().json().await.unwrap();
                    assert_eq!(v["id"], i, "{v}");
                    assert_eq!(first_text(&v), text, "{v}");
                }
            });
            futures::future::join_all(calls).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_calls_in_flight_on_the_stdio_front() {
    let mut peer = StdioPeer::corral(&misbehave_yaml("")).await;
    peer.initialize().await;
    let mut waits = Vec::new();
    for i in 0..64 {
        let id = if i % 2 == 0 {
            json!(i)
        } else {
            json!(format!("s{i}"))
        };
        let rx = peer.start(id.clone(), "tools/call", json!({"name": "mb__echo", "arguments": {"text": format!("t{i}"), "delay_ms": (64 - i) % 9}})).await;
        waits.push((id, i, rx));
    }
    for (id, i, rx) in waits {
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v["id"], id);
        assert_eq!(first_text(&v), format!("t{i}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_rpc_on_stdio_gets_errors_and_the_session_survives() {
    let mut peer = StdioPeer::corral(&misbehave_yaml("")).await;
    peer.initialize().await;
    peer.send_raw("{not json").await;
    peer.send_raw(r#"{"jsonrpc":"1.0","id":"old","method":"ping"}"#)
        .await;
    peer.send_raw(r#"[1,2"#).await;
    let v = peer.request(json!(5), "no/such/method", json!({})).await;
    assert_eq!(v["error"]["code"], -32601);
    let v = peer
        .request(
            json!(6),
            "tools/call",
            json!({"name": "mb__echo", "arguments": {"text": "still here"}}),
        )
        .await;
    assert_eq!(first_text(&v), "still here");
    let lines = peer.raw.lock().unwrap().clone();
    let errors: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("error").is_some())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e["error"]["code"] == -32700 && e["id"].is_null()),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e["error"]["code"] == -32600 && e["id"] == "old"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_rpc_over_http_gets_errors_and_the_server_survives() {
    let corral = Corral::start(&misbehave_yaml(""), &[]).await;
    let r = corral
        .http
        .post(corral.url("/mcp"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32700);
    let r = corral
        .http
        .post(corral.url("/mcp"))
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1}"#)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32600, "{v}");
    let v = corral
        .rpc(
            None,
            "tools/call",
            json!({"name": "mb__echo", "arguments": {"text": "fine"}}),
        )
        .await;
    assert_eq!(first_text(&v), "fine");
    let r = corral
        .http
        .post(corral.url("/mcp"))
        .header("mcp-session-id", "nope")
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "unknown session");
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_call_hits_the_per_call_timeout_and_other_calls_continue() {
    let mut peer = StdioPeer::corral(&misbehave_yaml("    limits: {timeout: 1}\n")).await;
    peer.initialize().await;
    let hung = peer
        .start(
            json!("h"),
            "tools/call",
            json!({"name": "mb__hang", "arguments": {}}),
        )
        .await;
    let v = peer
        .request(
            json!("e"),
            "tools/call",
            json!({"name": "mb__echo", "arguments": {"text": "meanwhile"}}),
        )
        .await;
    assert_eq!(first_text(&v), "meanwhile");
    let started = std::time::Instant::now();
    let v = tokio::time::timeout(Duration::from_secs(10), hung)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v["error"]["code"], -32001, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.timeout"),
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn cancellation_releases_the_call_without_a_reply() {
    let mut peer = StdioPeer::corral(&misbehave_yaml("")).await;
    peer.initialize().await;
    let hung = peer
        .start(
            json!(41),
            "tools/call",
            json!({"name": "mb__hang", "arguments": {}}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    peer.send_raw(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":41,"reason":"user"}}"#).await;
    let v = peer
        .request(
            json!(42),
            "tools/call",
            json!({"name": "mb__echo", "arguments": {"text": "after"}}),
        )
        .await;
    assert_eq!(first_text(&v), "after");
    drop(hung);
    let lines = peer.raw.lock().unwrap().clone();
    assert!(
        !lines.iter().any(|l| l.contains("\"id\":41")),
        "a cancelled request gets no response: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_changed_is_sent_when_a_server_is_loaded_at_run_time() {
    let corral = Corral::start("servers: {}\n", &[]).await;
    let session = corral.http_session().await;
    let stream = corral
        .http
        .get(corral.url("/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let (status, v) = corral
        .post(
            "/load",
            json!({"name": "late", "command": "python3", "args": ["-u", misbehave()]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let mut body = stream.bytes_stream();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("notifications/tools/list_changed") {
        let chunk = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut body))
            .await
            .expect("list_changed within 10 s")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let v = corral.rpc(Some(&session), "tools/list", json!({})).await;
    assert!(
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "late__echo"),
        "{v}"
    );
    corral.terminate().await;
}
