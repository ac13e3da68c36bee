//! Config normalisation and diagnostics, one behaviour per test.

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "TOKEN" => Some("s3cret".into()),
        _ => None,
    }
}

fn load_text(name: &str, text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    load_with_env(&[path], &env)
}

fn diag(err: ConfigError) -> Diagnostic {
    match err {
        ConfigError::Invalid(d) => *d,
        other => panic!("expected a diagnostic, got {other}"),
    }
}

#[test]
fn yaml_typo_points_at_line_and_suggests_the_key() {
    let text = "servers:\n  - id: time\n    name: Time\n    transport: {type: stdio}\n    command: uvx\n    restartOnFailur: true\n";
    let d = diag(load_text("c.yaml", text).unwrap_err());
    assert_eq!(d.line, Some(6), "{d}");
    assert_eq!(d.key, "servers[0].restartOnFailur");
    assert_eq!(d.suggestion.as_deref(), Some("restartOnFailure"));
    let shown = d.to_string();
    assert!(shown.contains("c.yaml:6:"), "{shown}");
    assert!(
        shown.contains("did you mean `restartOnFailure`?"),
        "{shown}"
    );
}

#[test]
fn json_and_toml_typos_are_located_too() {
    let d = diag(
        load_text(
            "c.json",
            "{\n  \"servers\": {\"a\": {\"comand\": \"x\"}}\n}",
        )
        .unwrap_err(),
    );
    assert_eq!(d.line, Some(2));
    assert_eq!(d.suggestion.as_deref(), Some("command"));
    let d =
        diag(load_text("c.toml", "[servers.a]\ncommand = \"x\"\nautoStrat = true\n").unwrap_err());
    assert_eq!(d.line, Some(3), "{d}");
    assert_eq!(d.suggestion.as_deref(), Some("autoStart"));
}

#[test]
fn list_map_and_runner_forms_normalise_alike() {
    let list = load_text(
        "a.yaml",
        "servers:\n  - id: a\n    name: A\n    transport: {type: stdio}\n    command: echo\n",
    )
    .unwrap();
    let map = load_text("a.toml", "[servers.a]\nname = \"A\"\ncommand = \"echo\"\n").unwrap();
    let runner = load_text("a.json", r#"{"runner":{"servers":[{"id":"a","name":"A","transport":{"type":"stdio"},"command":"echo"}]}}"#).unwrap();
    let strip = |mut s: ServerConfig| {
        s.source = PathBuf::new();
        s
    };
    let a = strip(list.servers[0].clone());
    assert_eq!(a, strip(map.servers[0].clone()));
    assert_eq!(a, strip(runner.servers[0].clone()));
    assert_eq!(a.max_restarts, 3);
    assert_eq!(a.restart_delay, Duration::from_millis(1000));
    assert_eq!(a.call_timeout, Duration::from_secs(60));
    assert!(!a.auto_start && !a.restart_on_failure && a.enabled);
}

#[test]
fn list_entries_need_an_id() {
    let d = diag(load_text("c.yaml", "servers:\n  - name: x\n    command: echo\n").unwrap_err());
    assert!(d.message.contains("no `id`"), "{d}");
}

#[test]
fn claude_desktop_file_is_accepted_and_its_other_settings_ignored() {
    let text = r#"{"globalShortcut": "Ctrl+Space",
  "mcpServers": {
    "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"], "env": {"K": "${TOKEN}"}},
    "remote": {"url": "https://example.com/mcp"}
  }}"#;
    // `url` entries become remote servers.
    let c = load_text("claude_desktop_config.json", text).unwrap();
    let remote = c.server("remote").unwrap().remote.clone().unwrap();
    assert_eq!(remote.url, "https://example.com/mcp");
    assert_eq!(remote.kind, model::TransportKind::Http);
    assert!(
        c.server("remote").unwrap().restart_on_failure,
        "remote servers reconnect by default"
    );
    assert!(c.server("memory").unwrap().remote.is_none());
    let text = r#"{"mcpServers": {"memory": {"command": "npx", "args": ["-y", "pkg"], "env": {"K": "${TOKEN}"}}}}"#;
    let c = load_text("claude_desktop_config.json", text).unwrap();
    assert_eq!(c.servers[0].id, "memory");
    assert_eq!(c.servers[0].launch.env["K"], "s3cret");
}

#[test]
fn unset_variable_names_file_key_and_variable() {
    let d = diag(
        load_text(
            "c.yaml",
            "servers:\n  a:\n    command: echo\n    args: [\"${MISSING}\"]\n",
        )
        .unwrap_err(),
    );
    assert_eq!(d.key, "servers[0].args[0]");
    assert!(d.message.contains("`MISSING`"), "{d}");
    assert_eq!(d.line, Some(4));
    let ok = load_text(
        "c.yaml",
        "servers:\n  a:\n    command: echo\n    args: [\"${MISSING:-dflt}\", \"${TOKEN}\"]\n",
    )
    .unwrap();
    assert_eq!(ok.servers[0].launch.args, vec!["dflt", "s3cret"]);
}

#[test]
fn unenforceable_permissions_are_refused_with_their_location() {
    let d = diag(
        load_text(
            "c.yaml",
            "servers:\n  a:\n    command: echo\n    permissions: {network: false, allowedHosts: [api.example.com]}\n",
        )
        .unwrap_err(),
    );
    assert!(d.message.contains("allowedHosts"), "{d}");
    assert_eq!(d.line, Some(4));
    let d = diag(
        load_text(
            "c.yaml",
            "servers:\n  a:\n    transport: {type: http, url: 'http://127.0.0.1:1/mcp'}\n    permissions: {network: false}\n",
        )
        .unwrap_err(),
    );
    assert!(d.message.contains("remote server"), "{d}");
    let ok = load_text(
        "c.yaml",
        "servers:\n  a:\n    command: echo\n    limits: {timeout: 5}\n",
    )
    .unwrap();
    assert_eq!(ok.servers[0].call_timeout, Duration::from_secs(5));
    assert!(
        ok.servers[0].sandbox.is_none(),
        "a timeout alone needs no sandbox"
    );
}

#[test]
fn the_global_sandbox_block_is_inherited() {
    let c = load_text(
        "c.yaml",
        "sandbox:\n  permissions: {network: false, spawn: false}\n  limits: {memory: 128}\nservers:\n  a:\n    command: echo\n    permissions: {spawn: true}\n",
    )
    .unwrap();
    let policy = c.servers[0].sandbox.as_ref().unwrap();
    assert!(!policy.network && policy.spawn);
    assert_eq!(policy.memory_mb, Some(128));
}

#[test]
fn later_files_override_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.toml");
    std::fs::write(
        &a,
        "servers:\n  x: {command: one}\n  y: {command: two}\nnamespace: {separator: '.'}\n",
    )
    .unwrap();
    std::fs::write(&b, "[servers.x]\ncommand = \"three\"\n").unwrap();
    let c = load_with_env(&[a, b], &env).unwrap();
    let cmds: Vec<_> = c
        .servers
        .iter()
        .map(|s| (s.id.as_str(), s.launch.program.as_str()))
        .collect();
    assert_eq!(cmds, vec![("y", "two"), ("x", "three")]);
    assert_eq!(c.namespace.separator, ".");
}

#[test]
fn duplicate_ids_and_bad_ids_are_errors() {
    let d = diag(load_text("c.yaml", "servers:\n  - {id: 'a b', command: x}\n").unwrap_err());
    assert!(d.message.contains("letters, digits"), "{d}");
    let d = diag(load_text("c.yaml", "servers:\n  - {id: my__srv, command: x}\n").unwrap_err());
    assert!(d.message.contains("separator"), "{d}");
}

#[test]
fn unknown_package_manager_suggests_the_nearest() {
    let d = diag(
        load_text(
            "c.yaml",
            "servers:\n  a:\n    package: x\n    packageManager: pnmp\n",
        )
        .unwrap_err(),
    );
    assert_eq!(d.suggestion.as_deref(), Some("pnpm"), "{d}");
}

#[test]
fn schema_is_generated_from_the_types() {
    let schema = json_schema();
    let text = schema.to_string();
    assert!(
        text.contains("restartOnFailure") && text.contains("packageManager"),
        "{text}"
    );
}
