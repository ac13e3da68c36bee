//! The MCP Inspector CLI (`@modelcontextprotocol/inspector-cli`) lists, calls, reads, gets
//! prompts and sets the log level through Corral over Streamable HTTP, legacy SSE and stdio.

mod common;

use common::*;
use serde_json::Value;

fn inspector(target: &[String], args: &[&str]) -> Value {
    let build = node_modules().join("@modelcontextprotocol/inspector-cli/build");
    // The CLI checks for `../package.json` relative to the working directory but imports it
    // relative to its own file: running it from its build directory satisfies both.
    let out = std::process::Command::new("node")
        .arg(build.join("index.js"))
        .args(target)
        .args(args)
        .current_dir(&build)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "inspector {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = stdout
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in: {stdout}"));
    serde_json::from_str(&stdout[start..]).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn exercise(target: &[String]) {
    let tools = inspector(target, &["--method", "tools/list"]);
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"everything__echo") && names.contains(&"time__get_current_time"),
        "{names:?}"
    );
    let echo = inspector(
        target,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "everything__echo",
            "--tool-arg",
            "message=inspected",
        ],
    );
    assert_eq!(echo["content"][0]["text"], "Echo: inspected");
    let time = inspector(
        target,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "time__get_current_time",
            "--tool-arg",
            "timezone=UTC",
        ],
    );
    assert!(
        time["content"][0]["text"].as_str().unwrap().contains("UTC"),
        "{time}"
    );
    let read = inspector(
        target,
        &[
            "--method",
            "resources/read",
            "--uri",
            "demo://resource/static/document/features.md",
        ],
    );
    assert!(
        !read["contents"][0]["text"].as_str().unwrap().is_empty(),
        "{read}"
    );
    let prompt = inspector(
        target,
        &[
            "--method",
            "prompts/get",
            "--prompt-name",
            "everything__args-prompt",
            "--prompt-args",
            "city=Oslo",
        ],
    );
    assert!(prompt.to_string().contains("Oslo"), "{prompt}");
    let level = inspector(
        target,
        &["--method", "logging/setLevel", "--log-level", "debug"],
    );
    assert!(level.as_object().is_some_and(|o| o.is_empty()), "{level}");
}

fn config(dir: &std::path::Path) -> String {
    format!(
        "servers:\n  everything:\n    command: node\n    args: [\"{nm}/@modelcontextprotocol/server-everything/dist/index.js\", \"stdio\"]\n  time:\n    command: \"{time}\"\n    args: [\"--local-timezone\", \"UTC\"]\nstateDir: {dir}/state\n",
        nm = node_modules().display(),
        time = venv_bin("mcp-server-time").display(),
        dir = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn inspector_cli_over_streamable_http_and_legacy_sse() {
    let dir = tempfile::tempdir().unwrap();
    let corral = Corral::start(&config(dir.path()), &[]).await;
    let (mcp, sse) = (corral.url("/mcp"), corral.url("/sse"));
    tokio::task::spawn_blocking(move || {
        exercise(&[mcp]);
        exercise(&[sse]);
    })
    .await
    .unwrap();
    corral.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn inspector_cli_over_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("corral.yaml");
    std::fs::write(&cfg, config(dir.path())).unwrap();
    let target = vec![
        BIN.to_string(),
        "serve".into(),
        "--stdio".into(),
        "--config".into(),
        cfg.display().to_string(),
    ];
    tokio::task::spawn_blocking(move || exercise(&target))
        .await
        .unwrap();
}
