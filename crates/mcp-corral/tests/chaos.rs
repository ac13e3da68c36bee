//! Id and token hygiene under load: 16 HTTP clients keep 64 calls each in flight against 3
//! servers while one server is killed (SIGKILL) and restarted over and over. Every call must get
//! either its own answer or a clear error naming the killed server; no answer and no progress
//! notification may reach the wrong caller; nothing may be lost.
//!
//! Bounded in time: `CORRAL_CHAOS_SECS` (default 6). `bench/chaos.sh` runs it longer, in release,
//! and records the throughput it prints.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use serde_json::{Value, json};

const CLIENTS: usize = 16;
const IN_FLIGHT: usize = 64;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    server_errors: AtomicU64,
    progress: AtomicU64,
}

/// Sends one call; returns the parsed final response and the progress tokens seen on its stream.
async fn call(
    http: &reqwest::Client,
    url: &str,
    session: &str,
    id: u64,
    body: Value,
) -> (Value, Vec<Value>) {
    let resp = http
        .post(url)
        .header("mcp-session-id", session)
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {id} failed at the HTTP level: {e}"));
    let sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if !sse {
        return (resp.json().await.unwrap(), Vec::new());
    }
    let mut tokens = Vec::new();
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            for data in frame.lines().filter_map(|l| l.strip_prefix("data: ")) {
                let v: Value = serde_json::from_str(data).unwrap();
                if v["method"] == "notifications/progress" {
                    tokens.push(v["params"]["progressToken"].clone());
                } else {
                    return (v, tokens);
                }
            }
        }
    }
    panic!("stream of request {id} ended without a response");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_answer_is_lost_or_misdelivered_while_a_server_is_killed_repeatedly() {
    let secs: u64 = std::env::var("CORRAL_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let server = |id: &str| {
        format!(
            "  {id}:\n    command: python3\n    args: [\"-u\", \"{}\"]\n    autoStart: true\n    restartOnFailure: true\n    restartDelay: 50\n    maxRestarts: 10000\n",
            misbehave()
        )
    };
    let cfg = format!(
        "servers:\n{}{}{}",
        server("a"),
        server("b"),
        server("victim")
    );
    let corral = Corral::start(&cfg, &[]).await;
    for id in ["a", "b", "victim"] {
        corral
            .wait_status(id, 20, |s| s["state"] == "running")
            .await;
    }
    let url = corral.url("/mcp");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tally = Arc::new(Tally::default());
    let next_id = Arc::new(AtomicU64::new(1));

    let killer = {
        let corral_url = corral.url("");
        tokio::spawn(async move {
            let http = http_client();
            let mut kills = 0u32;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let status: Value = http
                    .get(format!("{corral_url}/runner/status/victim"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if let Some(pid) = status["pid"].as_i64() {
                    // The victim is a child of the Corral this test started.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    kills += 1;
                }
            }
            kills
        })
    };

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let session = corral.http_session().await;
        let (url, tally, next_id) = (url.clone(), tally.clone(), next_id.clone());
        clients.push(tokio::spawn(async move {
            let http = http_client();
            let lanes = (0..IN_FLIGHT).map(|lane| {
                let (http, url, session, tally, next_id) = (http.clone(), url.clone(), session.clone(), tally.clone(), next_id.clone());
                async move {
                    let mut sent = 0u64;
                    while Instant::now() < deadline {
                        let n = next_id.fetch_add(1, Ordering::Relaxed);
                        let server = ["a", "b", "victim"][(n % 3) as usize];
                        let text = format!("c{c}-l{lane}-n{n}");
                        // The same JSON-RPC id in every session, on purpose.
                        let id = lane as u64;
                        let with_progress = n % 4 == 0;
                        let body = if with_progress {
                            let token = format!("tok-{text}");
                            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": format!("{server}__progress"), "arguments": {"steps": 2}, "_meta": {"progressToken": token}}})
                        } else {
                            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": format!("{server}__echo"), "arguments": {"text": text}}})
                        };
                        let (resp, tokens) = call(&http, &url, &session, id, body).await;
                        sent += 1;
                        assert_eq!(resp["id"], id, "answer under the caller's own id: {resp}");
                        for t in &tokens {
                            assert_eq!(*t, json!(format!("tok-{text}")), "progress reached the wrong call");
                        }
                        tally.progress.fetch_add(tokens.len() as u64, Ordering::Relaxed);
                        if let Some(err) = resp.get("error") {
                            let msg = err["message"].as_str().unwrap_or_default();
                            assert_eq!(server, "victim", "only the killed server may fail: {resp}");
                            assert!(msg.contains("`victim`"), "the error names the server: {resp}");
                            tally.server_errors.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let expected = if with_progress { "done".to_string() } else { text.clone() };
                            assert_eq!(first_text(&resp), expected, "{resp}");
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    sent
                }
            });
            futures::future::join_all(lanes).await.into_iter().sum::<u64>()
        }));
    }
    let started = Instant::now();
    let mut sent = 0;
    for c in clients {
        sent += tokio::time::timeout(Duration::from_secs(secs + 60), c)
            .await
            .expect("clients finish")
            .unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let kills = killer.await.unwrap();
    let ok = tally.ok.load(Ordering::Relaxed);
    let errors = tally.server_errors.load(Ordering::Relaxed);
    println!(
        "CHAOS clients={CLIENTS} in_flight={} calls={sent} ok={ok} victim_errors={errors} progress={} kills={kills} seconds={elapsed:.1} calls_per_s={:.0}",
        CLIENTS * IN_FLIGHT,
        tally.progress.load(Ordering::Relaxed),
        sent as f64 / elapsed
    );
    assert_eq!(ok + errors, sent, "every call got an answer or an error");
    assert!(kills >= 2, "the victim was killed repeatedly ({kills})");
    assert!(
        ok > errors * 5,
        "most calls succeed while one server of three is being killed"
    );
    let status = corral
        .wait_status("victim", 20, |s| s["state"] == "running")
        .await;
    assert!(status["restarts"].as_u64().unwrap() >= 1, "{status}");
    corral.terminate().await;
}
