//! The official Python and TypeScript SDK clients use four real servers (server-everything,
//! server-filesystem, server-memory from npm; mcp-server-time from PyPI) through Corral, over
//! both fronts: list, call, progress, read (static and templated), prompt, complete.

mod common;

use common::*;
use serde_json::Value;

fn check(out: &Value, lang: &str) {
    let tools: Vec<&str> = out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for expected in [
        "everything__echo",
        "filesystem__list_directory",
        "memory__read_graph",
        "time__get_current_time",
    ] {
        assert!(
            tools.contains(&expected),
            "{lang}: {expected} missing from {tools:?}"
        );
    }
    assert!(
        tools.iter().all(|t| t.contains("__")),
        "every tool is namespaced: {tools:?}"
    );
    assert_eq!(out["echo"][0], format!("Echo: hello from {lang}"));
    assert!(
        out["time"][0].as_str().unwrap().contains("UTC"),
        "{}",
        out["time"]
    );
    assert!(out["graph"][0].as_str().unwrap().contains(&format!(
        "corral-{}",
        if lang == "python" { "py" } else { "ts" }
    )));
    assert!(
        out["dir"][0].as_str().unwrap().contains("corral.yaml"),
        "{}",
        out["dir"]
    );
    assert!(
        out["long"][0].as_str().unwrap().contains("completed"),
        "{}",
        out["long"]
    );
    // The TypeScript SDK settles a call's promise before it runs handlers for notifications that
    // arrived just ahead of the reply, so its last progress update can land after the call
    // returned. Exact order and count are asserted on the wire in `gateway_routing.rs`.
    let min = if lang == "python" { 3 } else { 2 };
    assert!(
        out["progress"].as_array().unwrap().len() >= min,
        "progress reached the caller: {}",
        out["progress"]
    );
    assert!(
        out["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "demo://resource/static/document/features.md")
    );
    assert!(!out["read"][0].as_str().unwrap().is_empty());
    assert!(
        out["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "everything__args-prompt")
    );
    assert!(
        out["prompt"][0].as_str().unwrap().contains("Lisbon"),
        "{}",
        out["prompt"]
    );
    assert!(
        out["complete"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "Engineering"),
        "{}",
        out["complete"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let corral = Corral::start(&real_servers_yaml(dir.path()), &[]).await;
    std::fs::write(dir.path().join("corral.yaml"), "marker").unwrap();
    let script = repo()
        .join("tests/clients/py_client.py")
        .display()
        .to_string();
    let out = run_client(
        venv_bin("python").to_str().unwrap(),
        &[
            script,
            "http".into(),
            dir.path().display().to_string(),
            corral.url("/mcp"),
        ],
    );
    check(&out, "python");
    assert!(!out["templated"][0].as_str().unwrap().is_empty());
    assert!(
        out["unknownIsError"] == Value::Bool(true)
            || out["unknownText"].to_string().contains("Unknown tool"),
        "{out}"
    );
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_over_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}\nstateDir: {}/state\n",
        real_servers_yaml(dir.path()),
        dir.path().display()
    );
    std::fs::write(dir.path().join("corral.yaml"), cfg).unwrap();
    let script = repo()
        .join("tests/clients/py_client.py")
        .display()
        .to_string();
    let config = dir.path().join("corral.yaml").display().to_string();
    let out = run_client(
        venv_bin("python").to_str().unwrap(),
        &[
            script,
            "stdio".into(),
            dir.path().display().to_string(),
            BIN.into(),
            "serve".into(),
            "--stdio".into(),
            "--config".into(),
            config,
        ],
    );
    check(&out, "python");
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_sdk_client_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let corral = Corral::start(&real_servers_yaml(dir.path()), &[]).await;
    std::fs::write(dir.path().join("corral.yaml"), "marker").unwrap();
    let script = repo()
        .join("tests/clients/ts_client.mjs")
        .display()
        .to_string();
    let out = run_client(
        "node",
        &[
            script,
            "http".into(),
            dir.path().display().to_string(),
            corral.url("/mcp"),
        ],
    );
    check(&out, "typescript");
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_sdk_client_over_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}\nstateDir: {}/state\n",
        real_servers_yaml(dir.path()),
        dir.path().display()
    );
    std::fs::write(dir.path().join("corral.yaml"), cfg).unwrap();
    let script = repo()
        .join("tests/clients/ts_client.mjs")
        .display()
        .to_string();
    let config = dir.path().join("corral.yaml").display().to_string();
    let out = run_client(
        "node",
        &[
            script,
            "stdio".into(),
            dir.path().display().to_string(),
            BIN.into(),
            "serve".into(),
            "--stdio".into(),
            "--config".into(),
            config,
        ],
    );
    check(&out, "typescript");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_over_legacy_http_sse() {
    let dir = tempfile::tempdir().unwrap();
    let corral = Corral::start(&real_servers_yaml(dir.path()), &[]).await;
    std::fs::write(dir.path().join("corral.yaml"), "marker").unwrap();
    let script = repo()
        .join("tests/clients/py_client.py")
        .display()
        .to_string();
    let out = run_client(
        venv_bin("python").to_str().unwrap(),
        &[
            script,
            "sse".into(),
            dir.path().display().to_string(),
            corral.url("/sse"),
        ],
    );
    check(&out, "python");
    corral.terminate().await;
}
