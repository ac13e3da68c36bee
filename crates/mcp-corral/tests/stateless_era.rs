//! Clients on the 2026-07-28 (stateless) revision: `server/discover`, per-request versions,
//! header checks, result types and cache hints, `subscriptions/listen` — in front of a server
//! that only speaks 2024-11-05.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{Value, json};

const V: &str = "2026-07-28";

fn meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": V, "io.modelcontextprotocol/clientCapabilities": {}})
}

fn old_server_yaml() -> String {
    format!(
        "servers:\n  old:\n    command: python3\n    args: [\"-u\", \"{}\"]\n    autoStart: true\n    env: {{MISBEHAVE_PROTOCOL: \"2024-11-05\"}}\n",
        misbehave()
    )
}

async fn post(c: &Corral, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut r = c
        .http
        .post(c.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stateless_client_uses_a_2024_11_05_server() {
    let c = Corral::start(&old_server_yaml(), &[]).await;
    let s = c.wait_status("old", 10, |s| s["state"] == "running").await;
    assert_eq!(
        s["protocolVersion"], "2024-11-05",
        "the upstream speaks the old revision"
    );

    let (status, v) = post(&c, json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta()}}), &[("mcp-protocol-version", V), ("mcp-method", "server/discover")]).await;
    assert_eq!(status, 200, "{v}");
    let versions = v["result"]["supportedVersions"].as_array().unwrap();
    assert!(
        versions.contains(&json!(V)) && versions.contains(&json!("2024-11-05")),
        "{v}"
    );
    assert_eq!(v["result"]["resultType"], "complete");
    assert!(
        v["result"]["ttlMs"].as_u64().is_some() && v["result"]["cacheScope"].is_string(),
        "{v}"
    );

    let (_, v) = post(
        &c,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": meta()}}),
        &[("mcp-protocol-version", V)],
    )
    .await;
    assert_eq!(v["result"]["resultType"], "complete");
    assert!(v["result"]["ttlMs"].is_u64(), "{v}");
    assert!(
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "old__echo")
    );

    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "old__echo", "arguments": {"text": "from the future"}, "_meta": meta()}});
    let (status, v) = post(
        &c,
        call,
        &[
            ("mcp-protocol-version", V),
            ("mcp-method", "tools/call"),
            ("mcp-name", "old__echo"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(first_text(&v), "from the future");
    assert_eq!(v["result"]["resultType"], "complete");
    assert!(
        v["result"].get("ttlMs").is_none(),
        "tool results carry no cache hints: {v}"
    );
    c.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_and_headers_are_checked() {
    let c = Corral::start(&old_server_yaml(), &[]).await;
    let bad = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2099-01-01", "io.modelcontextprotocol/clientCapabilities": {}}}});
    let (status, v) = post(&c, bad, &[("mcp-protocol-version", "2099-01-01")]).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], -32022);
    assert!(
        v["error"]["data"]["supported"]
            .as_array()
            .unwrap()
            .contains(&json!(V)),
        "{v}"
    );
    assert_eq!(v["error"]["data"]["requested"], "2099-01-01");

    let list =
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": meta()}});
    let (status, v) = post(&c, list.clone(), &[]).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (400, json!(-32020)),
        "missing version header: {v}"
    );
    let (status, v) = post(&c, list.clone(), &[("mcp-protocol-version", "2025-11-25")]).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (400, json!(-32020)),
        "version header disagrees: {v}"
    );
    let (status, v) = post(
        &c,
        list,
        &[("mcp-protocol-version", V), ("mcp-method", "tools/call")],
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (400, json!(-32020)),
        "method header disagrees: {v}"
    );
    c.terminate().await;
}

/// Reads the event stream until `needle` has been seen (10 s at most).
async fn read_until<S>(seen: &mut String, stream: &mut S, needle: &str)
where
    S: futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("`{needle}` within 10 s; got {seen}"))
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_listen_delivers_requested_notifications_tagged_with_the_subscription() {
    let c = Corral::start(&old_server_yaml(), &[]).await;
    c.wait_status("old", 10, |s| s["state"] == "running").await;
    let listen = json!({"jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen", "params": {"notifications": {"toolsListChanged": true, "promptsListChanged": false}, "_meta": meta()}});
    let resp = c
        .http
        .post(c.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", V)
        .json(&listen)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    read_until(
        &mut seen,
        &mut stream,
        "notifications/subscriptions/acknowledged",
    )
    .await;
    assert!(
        seen.contains("\"toolsListChanged\":true") && !seen.contains("promptsListChanged"),
        "{seen}"
    );
    assert!(
        seen.contains("\"io.modelcontextprotocol/subscriptionId\":\"sub-1\""),
        "{seen}"
    );
    // A new server changes the tool list: the listener hears it, tagged with its subscription.
    let (status, v) = c
        .post(
            "/load",
            json!({"name": "late", "command": "python3", "args": ["-u", misbehave()]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    seen.clear();
    read_until(&mut seen, &mut stream, "notifications/tools/list_changed").await;
    assert!(
        seen.contains("\"io.modelcontextprotocol/subscriptionId\":\"sub-1\""),
        "{seen}"
    );
    c.terminate().await;
}

/// A stateless call to `tool`, declaring `capabilities`, with `extra` params merged in.
fn stateless_call(id: u64, tool: &str, capabilities: Value, extra: Value) -> Value {
    let mut params = json!({
        "name": tool,
        "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": V, "io.modelcontextprotocol/clientCapabilities": capabilities},
    });
    if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// The one input request of an `input_required` result: (key, request, requestState).
fn only_input_request(v: &Value) -> (String, Value, String) {
    let r = &v["result"];
    assert_eq!(r["resultType"], "input_required", "{v}");
    let asked = r["inputRequests"].as_object().unwrap();
    assert_eq!(asked.len(), 1, "{v}");
    let (key, request) = asked.iter().next().unwrap();
    (
        key.clone(),
        request.clone(),
        r["requestState"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stateless_client_answers_server_requests_with_input_responses() {
    let c = Corral::start(&everything_yaml(true), &[]).await;
    c.wait_status("everything", 20, |s| s["state"] == "running")
        .await;
    let h = [("mcp-protocol-version", V)];

    // Elicitation: the server's request comes back as input_required; the retry answers it.
    let tool = "everything__trigger-elicitation-request";
    let caps = json!({"elicitation": {"form": {}}});
    let (_, v) = post(&c, stateless_call(1, tool, caps.clone(), json!({})), &h).await;
    let (key, request, state) = only_input_request(&v);
    assert_eq!(request["method"], "elicitation/create", "{v}");
    assert!(request["params"]["requestedSchema"].is_object(), "{v}");
    let answers = json!({"inputResponses": {key: {"action": "accept", "content": {"name": "Ada"}}}, "requestState": state});
    let (_, v) = post(
        &c,
        stateless_call(2, tool, caps.clone(), answers.clone()),
        &h,
    )
    .await;
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert!(v.to_string().contains("Name: Ada"), "{v}");

    // The same state cannot be used twice: that call has ended.
    let (_, v) = post(&c, stateless_call(3, tool, caps, answers), &h).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requestState"),
        "{v}"
    );

    // Sampling, the same way.
    let tool = "everything__trigger-sampling-request";
    let caps = json!({"sampling": {}});
    let args = json!({"arguments": {"prompt": "capital of France?"}});
    let (_, v) = post(&c, stateless_call(4, tool, caps.clone(), args), &h).await;
    let (key, request, state) = only_input_request(&v);
    assert_eq!(request["method"], "sampling/createMessage", "{v}");
    let answer = json!({"role": "assistant", "content": {"type": "text", "text": "Paris, of course"}, "model": "test-model", "stopReason": "endTurn"});
    let retry = json!({"arguments": {"prompt": "capital of France?"}, "inputResponses": {key: answer}, "requestState": state});
    let (_, v) = post(&c, stateless_call(5, tool, caps, retry), &h).await;
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert!(v.to_string().contains("Paris, of course"), "{v}");

    // A client that declares no sampling gets the server's refusal at once, not input_required.
    let started = std::time::Instant::now();
    let args = json!({"arguments": {"prompt": "x"}});
    let (_, v) = post(&c, stateless_call(6, tool, json!({}), args), &h).await;
    assert_ne!(v["result"]["resultType"], "input_required", "{v}");
    assert!(
        v.to_string().contains("sampling"),
        "the refusal names what is missing: {v}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    c.terminate().await;
}
