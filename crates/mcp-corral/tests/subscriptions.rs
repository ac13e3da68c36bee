//! Resource subscriptions: `notifications/resources/updated` from a real server
//! (server-everything) reaches only the client that subscribed to that resource, and keeps
//! coming after the server restarts (Corral subscribes again).

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::json;

/// What an event stream carries up to and including the next resource update (15 s at most).
async fn next_update<S, E>(events: &mut S) -> String
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Debug,
{
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.contains("notifications/resources/updated") {
        let chunk = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("an update within 15 s")
            .expect("the stream stays open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_updates_reach_only_subscribers_even_after_a_restart() {
    let cfg = everything_yaml(true);
    let corral = Corral::start(&cfg, &[]).await;
    corral
        .wait_status("everything", 20, |s| s["state"] == "running")
        .await;
    let (alice, bob) = (corral.http_session().await, corral.http_session().await);
    let url = corral.url("/mcp");
    let mut alice_events = event_stream(&corral.http, &url, &alice).await;
    let mut bob_events = event_stream(&corral.http, &url, &bob).await;
    let uri = "demo://resource/static/document/features.md";
    let v = corral
        .rpc(Some(&alice), "resources/subscribe", json!({"uri": uri}))
        .await;
    assert!(v.get("result").is_some(), "{v}");
    let v = corral
        .rpc(
            Some(&alice),
            "tools/call",
            json!({"name": "everything__toggle-subscriber-updates", "arguments": {}}),
        )
        .await;
    assert!(v.get("result").is_some(), "{v}");

    // The server sends updates every 5 s.
    let seen = next_update(&mut alice_events).await;
    assert!(seen.contains(uri), "{seen}");
    // Bob subscribed to nothing: whatever reached his stream by now, no update is among it.
    let bob_seen = drain(&mut bob_events, Duration::from_millis(300)).await;
    assert!(
        !bob_seen.contains("notifications/resources/updated"),
        "{bob_seen}"
    );

    // A restarted server has forgotten the subscription; Corral makes it again.
    let (status, _) = corral
        .post("/runner/stop", json!({"serverId": "everything"}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = corral
        .post("/runner/start", json!({"serverId": "everything"}))
        .await;
    assert_eq!(status, 200);
    corral
        .wait_status("everything", 20, |s| s["state"] == "running")
        .await;
    let v = corral
        .rpc(
            Some(&alice),
            "tools/call",
            json!({"name": "everything__toggle-subscriber-updates", "arguments": {}}),
        )
        .await;
    assert!(v.get("result").is_some(), "{v}");
    let seen = next_update(&mut alice_events).await;
    assert!(seen.contains(uri), "{seen}");

    let v = corral
        .rpc(Some(&alice), "resources/unsubscribe", json!({"uri": uri}))
        .await;
    assert!(v.get("result").is_some(), "{v}");
    corral.terminate().await;
}
