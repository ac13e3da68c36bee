//! The HTTP listener's guards: DNS-rebinding protection (Host, Origin), bearer tokens, refusing
//! to listen beyond loopback without a token, and the body size limit.

mod common;

use common::*;
use serde_json::json;

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn foreign_host_and_origin_headers_are_rejected() {
    let corral = Corral::start("servers: {}\n", &[]).await;
    let post = |host: Option<&str>, origin: Option<&str>| {
        let mut r = corral
            .http
            .post(corral.url("/mcp"))
            .header("content-type", "application/json")
            .body(PING);
        if let Some(h) = host {
            r = r.header("host", h);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    assert_eq!(post(None, None).await.unwrap().status(), 200);
    assert_eq!(
        post(Some("localhost:1234"), Some("http://localhost:3000"))
            .await
            .unwrap()
            .status(),
        200
    );
    let r = post(Some("evil.example:8787"), None).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("DNS-rebinding"));
    assert_eq!(
        post(None, Some("http://evil.example"))
            .await
            .unwrap()
            .status(),
        403
    );
    // The management API is guarded the same way.
    let r = corral
        .http
        .get(corral.url("/health"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_required_on_every_route_when_set() {
    let corral = Corral::start("servers: {}\n", &["--token", "s3cret"]).await;
    for path in ["/mcp", "/health", "/runner/servers"] {
        let r = corral.http.get(corral.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let r = corral
            .http
            .get(corral.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = corral
        .http
        .get(corral.url("/health"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = corral
        .http
        .post(corral.url("/mcp"))
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .body(PING)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn listening_beyond_loopback_without_a_token_is_refused() {
    let out = tokio::process::Command::new(BIN)
        .args(["serve", "--listen", &format!("0.0.0.0:{}", free_port())])
        .env_remove("CORRAL_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without a token") && err.contains("--token"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_rejected_with_413() {
    let corral = Corral::start("servers: {}\nhttp: {maxBodyBytes: 1024}\n", &[]).await;
    let big =
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x".repeat(4096)}});
    let r = corral
        .http
        .post(corral.url("/mcp"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = corral
        .http
        .post(corral.url("/mcp"))
        .header("content-type", "application/json")
        .body(PING)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the listener keeps serving");
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_expire_but_sessions_with_an_open_stream_stay() {
    let corral = Corral::start("servers: {}\nhttp: {sessionIdleSecs: 1}\n", &[]).await;
    let (idle, listening) = (corral.http_session().await, corral.http_session().await);
    let _stream = corral
        .http
        .get(corral.url("/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &listening)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
    let ping = |sid: String| {
        let r = corral
            .http
            .post(corral.url("/mcp"))
            .header("mcp-session-id", sid)
            .header("content-type", "application/json")
            .body(PING);
        async move { r.send().await.unwrap().status() }
    };
    assert_eq!(
        ping(idle).await,
        404,
        "an idle session without a stream is forgotten"
    );
    assert_eq!(
        ping(listening).await,
        200,
        "a session with an open event stream stays"
    );
    corral.terminate().await;
}
