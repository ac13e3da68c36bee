//! `Last-Event-ID`: a client whose event stream drops mid-call reconnects with `GET /mcp` and
//! gets everything it missed, the call's answer included; so does a dropped GET stream.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::json;

type Events = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Reads until `needle` has been seen (15 s at most); returns everything read.
async fn read_until(stream: &mut Events, needle: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("`{needle}` within 15 s; got {seen}"))
            .unwrap_or_else(|| panic!("stream ended before `{needle}`; got {seen}"))
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

/// The last `id:` field in an event-stream text.
fn last_event_id(text: &str) -> String {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("no event id in {text}"))
        .to_string()
}

async fn get_stream(c: &Corral, sid: &str, last: Option<&str>) -> Events {
    let mut req = c
        .http
        .get(c.url("/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", sid);
    if let Some(last) = last {
        req = req.header("last-event-id", last);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    Box::pin(resp.bytes_stream())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_whose_stream_dropped_is_answered_on_resume() {
    let c = Corral::start(&everything_yaml(true), &[]).await;
    c.wait_status("everything", 20, |s| s["state"] == "running")
        .await;
    let sid = c.http_session().await;
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "everything__trigger-long-running-operation",
        "arguments": {"duration": 2, "steps": 4},
        "_meta": {"progressToken": "p"}}});
    let resp = c
        .http
        .post(c.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &sid)
        .json(&call)
        .send()
        .await
        .unwrap();
    let mut stream: Events = Box::pin(resp.bytes_stream());
    let first = read_until(&mut stream, "notifications/progress").await;
    let last = last_event_id(&first);
    drop(stream);
    // The call finishes while nobody is connected.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut resumed = get_stream(&c, &sid, Some(&last)).await;
    let rest = read_until(&mut resumed, "\"id\":7").await;
    assert!(rest.contains("\"result\""), "the answer arrives: {rest}");
    assert!(
        rest.contains("\"progress\":4"),
        "progress missed while away is replayed: {rest}"
    );
    assert!(
        !rest.contains(&format!("id: {last}\n")),
        "nothing already seen is sent again: {rest}"
    );
    c.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_get_stream_resumes_with_the_notifications_it_missed() {
    let c = Corral::start(&everything_yaml(true), &[]).await;
    c.wait_status("everything", 20, |s| s["state"] == "running")
        .await;
    let sid = c.http_session().await;
    let mut stream = get_stream(&c, &sid, None).await;
    // A list change while connected, for an event id.
    let load = || {
        c.post(
            "/load",
            json!({"name": "late", "command": "python3", "args": ["-u", misbehave()]}),
        )
    };
    let (status, v) = load().await;
    assert_eq!(status, 201, "{v}");
    let seen = read_until(&mut stream, "notifications/tools/list_changed").await;
    let last = last_event_id(&seen);
    drop(stream);
    // Another while disconnected: unloading the server changes the list again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, v) = c.post("/unload", json!({"name": "late"})).await;
    assert!(status < 300, "{status} {v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut resumed = get_stream(&c, &sid, Some(&last)).await;
    let missed = read_until(&mut resumed, "notifications/tools/list_changed").await;
    assert!(!missed.contains(&format!("id: {last}\n")), "{missed}");
    c.terminate().await;
}
