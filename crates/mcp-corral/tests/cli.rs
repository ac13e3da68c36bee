//! The command line against a running `corral serve`, and config checking.

mod common;

use std::process::Output;

use common::*;

fn corral(args: &[&str], url: Option<&str>) -> Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args);
    if let Some(u) = url {
        cmd.env("CORRAL_URL", u);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn config_check_points_at_file_line_and_suggests_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corral.yaml");
    std::fs::write(&file, "servers:\n  - id: time\n    name: Time\n    transport: {type: stdio}\n    command: uvx\n    restartOnFailur: true\n").unwrap();
    let out = corral(&["config", "check", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:6:", file.display())), "{err}");
    assert!(err.contains("servers[0].restartOnFailur"), "{err}");
    assert!(err.contains("did you mean `restartOnFailure`?"), "{err}");
}

#[test]
fn config_check_prints_the_normalised_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("claude_desktop_config.json");
    std::fs::write(&file, r#"{"mcpServers": {"memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]}}}"#).unwrap();
    let out = corral(&["config", "check", "--json", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["servers"][0]["id"], "memory");
    assert_eq!(v["servers"][0]["launch"]["program"], "npx");
    assert_eq!(v["servers"][0]["callTimeout"], 60_000);
}

#[test]
fn config_schema_is_valid_json_schema() {
    let out = corral(&["config", "schema"], None);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["$schema"].as_str().unwrap().contains("json-schema.org"));
    assert!(v.to_string().contains("restartOnFailure"));
}

#[test]
fn commands_say_clearly_when_corral_is_not_running() {
    let out = corral(&["ls"], Some(&format!("http://127.0.0.1:{}", free_port())));
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("is `corral serve` running?"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ls_status_tools_call_logs_and_stop_work_against_a_running_corral() {
    let cfg = format!(
        "servers:\n  mb:\n    command: python3\n    args: [\"-u\", \"{}\"]\n    autoStart: true\n",
        misbehave()
    );
    let c = Corral::start(&cfg, &[]).await;
    c.wait_status("mb", 10, |s| s["state"] == "running").await;
    let url = c.url("");
    let u = Some(url.as_str());
    let run = |args: &'static [&'static str]| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || corral(args, Some(&url)))
    };

    let out = run(&["ls"]).await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with("mb") && table.contains("running"),
        "{table}"
    );

    let out = run(&["tools", "mb"]).await.unwrap();
    assert!(stdout(&out).contains("mb__echo"), "{}", stdout(&out));
    let listed = stdout(&out).matches("mb__").count();

    let out = run(&["ls", "--json"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["servers"][0]["tools"], listed, "the count `tools` lists");

    let out = run(&["call", "mb", "echo", "text=hi there"]).await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "hi there");

    let out = run(&["call", "mb", "echo", "--args", "{\"text\": \"json args\"}"])
        .await
        .unwrap();
    assert_eq!(stdout(&out).trim(), "json args");

    let out = run(&["status", "mb"]).await.unwrap();
    assert!(
        stdout(&out).contains("state:       running"),
        "{}",
        stdout(&out)
    );

    let out = run(&["logs", "mb", "-n", "5"]).await.unwrap();
    assert!(stdout(&out).contains("[corral]"), "{}", stdout(&out));

    let out = run(&["status", "nope"]).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "unknown server: {}",
        stderr(&out)
    );

    // `logs -f` prints the backlog, then follows: a restart shows up live.
    let mut follow = tokio::process::Command::new(BIN)
        .args(["logs", "mb", "-f", "-n", "1"])
        .env("CORRAL_URL", &url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains("[corral]"), "{first}");
    let out = run(&["restart", "mb"]).await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let live = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(live.contains("restart requested"), "{live}");
    drop(follow);

    let out = run(&["stop", "mb"]).await.unwrap();
    assert_eq!(stdout(&out).trim(), "mb: stopped");
    let _ = u;
    c.terminate().await;
}

#[test]
fn doctor_reports_each_mechanism_and_what_each_permission_becomes() {
    let o = corral(&["doctor", "--json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let mechanisms: Vec<&str> = v["mechanisms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["mechanism"].as_str())
        .collect();
    for m in [
        "Landlock",
        "seccomp-bpf",
        "user namespaces",
        "memory cgroup",
        "pids cgroup",
        "Docker API",
    ] {
        assert!(mechanisms.contains(&m), "{m} missing: {v}");
    }
    let permissions = v["permissions"].to_string();
    for p in [
        "allowedPaths",
        "network: false",
        "allowedHosts",
        "spawn: false",
        "limits.memory",
        "limits.pids",
    ] {
        assert!(permissions.contains(p), "{p} missing: {v}");
    }
    assert!(
        !permissions.contains("not enforced by this version"),
        "every permission is implemented: {v}"
    );
    let table = stdout(&corral(&["doctor"], None));
    assert!(
        table.starts_with("MECHANISM") && table.contains("PERMISSION"),
        "{table}"
    );
}
