//! Tasks (2025-11-25): Corral runs task-augmented calls for servers without task support, and
//! passes them through to a server that runs tasks itself (server-everything), under task ids
//! of its own.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn tool<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn corral_runs_tasks_for_a_server_without_task_support() {
    let cfg = format!(
        "servers:\n  mb:\n    command: python3\n    args: [\"{}\"]\n    autoStart: true\n",
        misbehave()
    );
    let corral = Corral::start(&cfg, &[]).await;
    corral
        .wait_status("mb", 20, |s| s["state"] == "running")
        .await;
    let (alice, bob) = (corral.http_session().await, corral.http_session().await);

    let init = corral
        .rpc(None, "initialize", json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}))
        .await;
    assert!(
        init["result"]["capabilities"]["tasks"]["requests"]["tools"]["call"].is_object(),
        "{init}"
    );
    let list = corral.rpc(Some(&alice), "tools/list", json!({})).await;
    assert_eq!(
        tool(&list, "mb__echo")["execution"]["taskSupport"],
        "optional"
    );

    // Created at once, working while the server takes its time, then completed.
    let created = corral
        .rpc(
            Some(&alice),
            "tools/call",
            json!({"name": "mb__echo", "arguments": {"text": "later", "delay_ms": 600}, "task": {"ttl": 60000}}),
        )
        .await;
    let task = &created["result"]["task"];
    assert_eq!(task["status"], "working", "{created}");
    assert_eq!(task["ttl"], 60000);
    let task_id = task["taskId"].as_str().unwrap().to_string();
    let got = corral
        .rpc(Some(&alice), "tasks/get", json!({"taskId": task_id}))
        .await;
    assert_eq!(got["result"]["status"], "working", "{got}");
    let result = corral
        .rpc(Some(&alice), "tasks/result", json!({"taskId": task_id}))
        .await;
    assert_eq!(result["result"]["content"][0]["text"], "later", "{result}");
    assert_eq!(
        result["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"],
        task_id
    );
    let got = corral
        .rpc(Some(&alice), "tasks/get", json!({"taskId": task_id}))
        .await;
    assert_eq!(got["result"]["status"], "completed", "{got}");

    // Lists are per session.
    let mine = corral.rpc(Some(&alice), "tasks/list", json!({})).await;
    assert_eq!(mine["result"]["tasks"][0]["taskId"], task_id, "{mine}");
    let theirs = corral.rpc(Some(&bob), "tasks/list", json!({})).await;
    assert_eq!(theirs["result"]["tasks"], json!([]), "{theirs}");

    // Cancelling a call that never answers: the task ends cancelled, the result says so, and
    // a second cancel is refused.
    let created = corral
        .rpc(
            Some(&alice),
            "tools/call",
            json!({"name": "mb__hang", "arguments": {}, "task": {}}),
        )
        .await;
    let hung = created["result"]["task"]["taskId"]
        .as_str()
        .unwrap()
        .to_string();
    let waiter = {
        let (http, url, alice, hung) = (
            corral.http.clone(),
            corral.url("/mcp"),
            alice.clone(),
            hung.clone(),
        );
        tokio::spawn(async move {
            let r = http
                .post(url)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", alice)
                .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tasks/result", "params": {"taskId": hung}}))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cancelled = corral
        .rpc(Some(&alice), "tasks/cancel", json!({"taskId": hung}))
        .await;
    assert_eq!(cancelled["result"]["status"], "cancelled", "{cancelled}");
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("tasks/result returns once the task is cancelled")
        .unwrap();
    assert_eq!(waited["error"]["code"], -32800, "{waited}");
    let again = corral
        .rpc(Some(&alice), "tasks/cancel", json!({"taskId": hung}))
        .await;
    assert_eq!(again["error"]["code"], -32602, "{again}");
    let unknown = corral
        .rpc(Some(&alice), "tasks/get", json!({"taskId": "nope"}))
        .await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_pass_through_to_a_server_that_runs_them() {
    let cfg = everything_yaml(true);
    let corral = Corral::start(&cfg, &[]).await;
    corral
        .wait_status("everything", 20, |s| s["state"] == "running")
        .await;
    let session = corral.http_session().await;
    let list = corral.rpc(Some(&session), "tools/list", json!({})).await;
    let research = tool(&list, "everything__simulate-research-query");
    assert_eq!(
        research["execution"]["taskSupport"], "required",
        "unchanged"
    );
    assert_eq!(
        tool(&list, "everything__echo")["execution"]["taskSupport"],
        "forbidden",
        "the server's own task policy is kept as it is"
    );

    let created = corral
        .rpc(
            Some(&session),
            "tools/call",
            json!({"name": "everything__simulate-research-query", "arguments": {"topic": "otters"}, "task": {"ttl": 60000}}),
        )
        .await;
    let task_id = created["result"]["task"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    // Corral's own id (128 random bits), never the server's: two servers cannot collide, and
    // nobody can guess it.
    assert!(
        task_id.len() == 32 && task_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{task_id}"
    );
    let got = corral
        .rpc(Some(&session), "tasks/get", json!({"taskId": task_id}))
        .await;
    assert_eq!(got["result"]["taskId"], task_id, "{got}");
    // Another client on the same server does not see it.
    let other = corral.http_session().await;
    let theirs = corral.rpc(Some(&other), "tasks/list", json!({})).await;
    assert_eq!(theirs["result"]["tasks"], json!([]), "{theirs}");
    let listed = corral.rpc(Some(&session), "tasks/list", json!({})).await;
    assert!(
        listed["result"]["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["taskId"] == task_id),
        "{listed}"
    );
    let result = corral
        .rpc(Some(&session), "tasks/result", json!({"taskId": task_id}))
        .await;
    let text = result["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{result}"));
    assert!(text.contains("otters"), "{text}");
}

/// A server that needs input for one of its tasks asks while the owner waits on `tasks/result`;
/// the request names the task by Corral's id, not the server's, and the answer reaches the task.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_s_elicitation_names_corral_s_task_id_and_reaches_its_owner() {
    let mut peer = StdioPeer::corral(&everything_yaml(true)).await;
    let init = peer
        .initialize_as("2025-11-25", json!({"elicitation": {}}))
        .await;
    assert!(init["result"].is_object(), "{init}");
    let created = peer
        .request(
            json!(1),
            "tools/call",
            json!({"name": "everything__simulate-research-query", "arguments": {"topic": "python", "ambiguous": true}, "task": {"ttl": 60000}}),
        )
        .await;
    let task_id = created["result"]["task"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    let result = peer
        .start(json!(2), "tasks/result", json!({"taskId": task_id}))
        .await;
    let ask = loop {
        let msg = peer.next_message(60).await;
        if msg["method"] == "notifications/tasks/status" {
            assert_eq!(msg["params"]["taskId"], task_id.as_str(), "{msg}");
            continue;
        }
        break msg;
    };
    assert_eq!(ask["method"], "elicitation/create", "{ask}");
    assert_eq!(
        ask["params"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"], task_id,
        "{ask}"
    );
    peer.send_raw(
        &json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept", "content": {"interpretation": "the snake"}}})
            .to_string(),
    )
    .await;
    let result = tokio::time::timeout(Duration::from_secs(60), result)
        .await
        .expect("the task finishes within 60 s")
        .unwrap();
    let text = result["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{result}"));
    assert!(text.contains("the snake"), "{text}");
}
