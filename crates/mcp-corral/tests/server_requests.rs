//! Server-to-client requests (sampling, elicitation, roots) from a real server
//! (server-everything) reach the official Python SDK client through Corral, over both fronts,
//! and the answers find their way back. Without a capable client, the server gets an error at once.

mod common;

use common::*;
use serde_json::{Value, json};

fn check(out: &Value) {
    assert!(
        out["sampling"][0]
            .as_str()
            .unwrap()
            .contains("sampled by python"),
        "{out}"
    );
    assert!(
        out["seen"]["sampling"]
            .as_str()
            .unwrap()
            .contains("hello sampler"),
        "{out}"
    );
    assert!(out["elicitation"].to_string().contains("Ada"), "{out}");
    assert!(out["seen"]["elicitation"].as_str().is_some(), "{out}");
    assert!(
        out["roots"].to_string().contains("file:///srv/project"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_elicitation_and_roots_round_trip_over_http() {
    let corral = Corral::start(&everything_yaml(false), &[]).await;
    let out = run_python(&["http".into(), corral.url("/mcp")]);
    check(&out);
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_elicitation_and_roots_round_trip_over_stdio() {
    let (_dir, front) = stdio_front(&everything_yaml(false));
    let out = run_python(&front);
    check(&out);
}

fn run_python(args: &[String]) -> Value {
    let script = repo()
        .join("tests/clients/py_server_requests.py")
        .display()
        .to_string();
    run_client(
        venv_bin("python").to_str().unwrap(),
        &[&[script], args].concat(),
    )
}

fn run_typescript(args: &[String]) -> Value {
    let script = repo()
        .join("tests/clients/ts_server_requests.mjs")
        .display()
        .to_string();
    run_client("node", &[&[script], args].concat())
}

fn check_typescript(out: &Value) {
    assert!(
        out["sampling"]
            .to_string()
            .contains("sampled by typescript"),
        "{out}"
    );
    assert!(
        out["seen"]["sampling"]
            .as_str()
            .unwrap()
            .contains("hello from ts"),
        "{out}"
    );
    assert!(out["elicitation"].to_string().contains("Grace"), "{out}");
    assert!(
        out["roots"].to_string().contains("file:///srv/ts-project"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_client_answers_server_requests_over_http() {
    let corral = Corral::start(&everything_yaml(false), &[]).await;
    check_typescript(&run_typescript(&["http".into(), corral.url("/mcp")]));
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_client_answers_server_requests_over_stdio() {
    let (_dir, front) = stdio_front(&everything_yaml(false));
    check_typescript(&run_typescript(&front));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_capable_client_the_server_gets_an_error_at_once() {
    // A raw client that declares no capabilities: the sampling request cannot be forwarded.
    let mut peer = StdioPeer::corral(&everything_yaml(false)).await;
    peer.initialize().await;
    let started = std::time::Instant::now();
    let v = peer
        .request(
            json!(1),
            "tools/call",
            json!({"name": "everything__trigger-sampling-request", "arguments": {"prompt": "x"}}),
        )
        .await;
    let text = v.to_string();
    assert!(
        text.contains("no connected client supports `sampling/createMessage`"),
        "{v}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// A server that gives up on its request (`notifications/cancelled`) is heard by the client that
/// was asked, under the id Corral gave the request; the client's late answer goes nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_s_cancellation_reaches_the_asked_client_under_corral_s_id() {
    let mut peer = StdioPeer::corral(&misbehave_yaml()).await;
    peer.initialize_as("2025-06-18", json!({"elicitation": {}}))
        .await;
    let call = peer
        .start(
            json!(1),
            "tools/call",
            json!({"name": "mb__ask_then_cancel", "arguments": {"after_ms": 200}}),
        )
        .await;
    let ask = peer.next_message(30).await;
    assert_eq!(ask["method"], "elicitation/create", "{ask}");
    let cancelled = peer.next_message(30).await;
    assert_eq!(
        cancelled["method"], "notifications/cancelled",
        "{cancelled}"
    );
    assert_eq!(cancelled["params"]["requestId"], ask["id"], "{cancelled}");
    assert_eq!(cancelled["params"]["reason"], "gave up waiting");
    // Answering anyway is harmless: the answer is dropped, and the call ends as the server said.
    peer.send_raw(
        &json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept", "content": {}}})
            .to_string(),
    )
    .await;
    let done = tokio::time::timeout(std::time::Duration::from_secs(30), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first_text(&done), "gave up", "{done}");
    let again = peer
        .request(
            json!(2),
            "tools/call",
            json!({"name": "mb__echo", "arguments": {"text": "still fine"}}),
        )
        .await;
    assert_eq!(first_text(&again), "still fine", "{again}");
}

fn misbehave_yaml() -> String {
    format!(
        "servers:\n  mb:\n    command: python3\n    args: [\"{}\"]\n    autoStart: true\n",
        misbehave()
    )
}

/// A URL-mode elicitation reaches a client that declared URL mode, and the server's
/// `notifications/elicitation/complete` for it follows to that client.
#[tokio::test(flavor = "multi_thread")]
async fn a_url_elicitation_and_its_completion_reach_the_client_that_declared_url_mode() {
    // The stdio client is asked; an HTTP client of the same Corral must hear nothing of it.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut peer = StdioPeer::corral_with(&misbehave_yaml(), &["--listen", &addr]).await;
    peer.initialize_as(
        "2025-11-25",
        json!({"elicitation": {"form": {}, "url": {}}}),
    )
    .await;
    let http = http_client();
    let url = format!("http://{addr}/mcp");
    let bob = http_session(&http, &url).await;
    let mut bob_events = event_stream(&http, &url, &bob).await;
    let call = peer
        .start(
            json!(1),
            "tools/call",
            json!({"name": "mb__url_elicit", "arguments": {"id": "flow-7"}}),
        )
        .await;
    let ask = peer.next_message(30).await;
    assert_eq!(ask["method"], "elicitation/create", "{ask}");
    assert_eq!(ask["params"]["mode"], "url", "{ask}");
    peer.send_raw(
        &json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept"}}).to_string(),
    )
    .await;
    let complete = peer.next_message(30).await;
    assert_eq!(
        complete["method"], "notifications/elicitation/complete",
        "{complete}"
    );
    assert_eq!(complete["params"]["elicitationId"], "flow-7");
    let done = tokio::time::timeout(std::time::Duration::from_secs(30), call)
        .await
        .unwrap()
        .unwrap();
    assert!(first_text(&done).contains("accept"), "{done}");
    let bob_seen = drain(&mut bob_events, std::time::Duration::from_millis(300)).await;
    assert!(!bob_seen.contains("elicitation/complete"), "{bob_seen}");
}

/// A client that declared form-mode elicitation only is never sent a URL: the server gets an
/// error at once naming the missing capability.
#[tokio::test(flavor = "multi_thread")]
async fn a_form_only_client_is_not_sent_a_url_elicitation() {
    let mut peer = StdioPeer::corral(&misbehave_yaml()).await;
    peer.initialize_as("2025-06-18", json!({"elicitation": {}}))
        .await;
    let done = peer
        .request(
            json!(1),
            "tools/call",
            json!({"name": "mb__url_elicit", "arguments": {}}),
        )
        .await;
    let text = first_text(&done);
    assert!(text.contains("capability `elicitation.url`"), "{done}");
    assert!(
        peer.notifications
            .try_recv()
            .map_or(true, |m| m["method"] != "elicitation/create"),
        "no request was sent"
    );
}
