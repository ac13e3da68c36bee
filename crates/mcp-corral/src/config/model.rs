//! The configuration file types, exactly as users write them.
//!
//! These types are strict (`deny_unknown_fields`) and are also the source of the JSON Schema
//! (`corral config schema`). They are normalised into [`super::Config`] before anything runs.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A Corral configuration file (YAML, JSON or TOML).
#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// Editors use this to find the schema; Corral ignores it.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The servers to run: a list of entries with `id`, or a map from id to entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<ServerList>,
    /// Hatago Runner layout: `runner: { servers: [...] }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<RunnerBlock>,
    /// How aggregated tool and prompt names are formed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<NamespaceSpec>,
    /// The HTTP front and management API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// Per-server log ring buffers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogsSpec>,
    /// Where Corral keeps its state database. Default: `$XDG_STATE_HOME/corral`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// Default permissions and limits inherited by every server (enforced by the sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxDefaults>,
    /// Set when the file was a client's `mcpServers` file, so errors name its keys.
    #[serde(skip)]
    #[schemars(skip)]
    pub client_file: bool,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RunnerBlock {
    #[serde(default)]
    pub servers: Vec<ServerSpec>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SandboxDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// The `servers` key: a list (Hatago Runner style, each entry has an `id`) or a map keyed by id.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(transparent)]
pub struct ServerList(pub Vec<ServerSpec>);

impl<'de> Deserialize<'de> for ServerList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListOrMap;
        impl<'de> Visitor<'de> for ListOrMap {
            type Value = ServerList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a list of servers (each with an `id`) or a map from server id to server",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ServerList, A::Error> {
                let mut out = Vec::new();
                while let Some(spec) = seq.next_element::<ServerSpec>()? {
                    if spec.id.is_none() {
                        return Err(de::Error::custom(format!(
                            "server #{} has no `id` (required in the list form)",
                            out.len() + 1
                        )));
                    }
                    out.push(spec);
                }
                Ok(ServerList(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServerList, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let mut spec = map.next_value::<ServerSpec>()?;
                    match &spec.id {
                        Some(id) if *id != key => {
                            return Err(de::Error::custom(format!(
                                "server `{key}` sets a different `id` ({id}); drop `id` or make them equal"
                            )));
                        }
                        _ => spec.id = Some(key),
                    }
                    out.push(spec);
                }
                Ok(ServerList(out))
            }
        }
        d.deserialize_any(ListOrMap)
    }
}

impl JsonSchema for ServerList {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ServerList".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let item = g.subschema_for::<ServerSpec>();
        schemars::json_schema!({
            "description": "A list of servers (each with `id`) or a map from server id to server.",
            "anyOf": [
                { "type": "array", "items": item },
                { "type": "object", "additionalProperties": item }
            ]
        })
    }
}

/// One MCP server (Hatago Runner manifest schema).
#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    /// Stable identifier: letters, digits, `-` and `_`. Prefixes the server's tool names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Human-readable name. Default: the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How Corral talks to the server. Default: `{type: stdio}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportSpec>,
    /// A package to run through `packageManager`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_manager: Option<PackageManager>,
    /// Package version, in the package manager's own syntax. Default: latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// An executable to run (instead of `package`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables for the server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory. Relative paths are relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Whether the server is offered at all. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Start with `corral serve`. Default: false (started on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_start: Option<bool>,
    /// Restart after a crash or failed health check. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_on_failure: Option<bool>,
    /// Restarts allowed before the server is marked `failed`. Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    /// First restart delay in milliseconds; doubles per attempt with jitter, capped at 30 s. Default: 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_delay: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Milliseconds between SIGTERM and SIGKILL when stopping. Default: 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<u64>,
    /// Lines kept in this server's log ring buffer. Default: `logs.lines`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_lines: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransportSpec {
    #[serde(rename = "type")]
    pub kind: TransportKind,
    /// Remote servers (`http`, `sse`): the endpoint URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Stdio,
    Http,
    Sse,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    Npx,
    Pnpm,
    Yarn,
    Bun,
    Deno,
    Uvx,
    Pipx,
}

impl PackageManager {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageManager::Npx => "npx",
            PackageManager::Pnpm => "pnpm",
            PackageManager::Yarn => "yarn",
            PackageManager::Bun => "bun",
            PackageManager::Deno => "deno",
            PackageManager::Uvx => "uvx",
            PackageManager::Pipx => "pipx",
        }
    }
}

/// Health checks: a `ping` (or `tools/list` for servers without ping) every `interval` ms.
#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// Milliseconds between checks; 0 disables them. Default: 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    /// Milliseconds before one check counts as failed. Default: 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Consecutive failures before the server is `unhealthy`. Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// What a server may do. Enforced by the sandbox; see docs/security.md.
#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Permissions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_read: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_write: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn: Option<bool>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Memory in MB (sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// CPU seconds (sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<u64>,
    /// Tasks (processes and threads) the server may have at once (sandbox, pids cgroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Per-call timeout in seconds. Default: 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSpec {
    /// Between server id and tool name. Default: `__`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// `always` prefixes every name; `never` keeps names as they are (collisions are errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<NamespaceMode>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    Always,
    Never,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSpec {
    /// Address to listen on. Default: `127.0.0.1:8787`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Extra `Origin` values accepted besides loopback origins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Extra `Host` values accepted besides loopback names and the listen address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Largest accepted request body, in bytes. Default: 16 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// Seconds after which an HTTP session with no request and no open event stream is
    /// forgotten. Default: 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_idle_secs: Option<u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogsSpec {
    /// Lines kept per server. Default: 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
}

/// A client configuration file (Claude Desktop, VS Code, Cursor, Claude Code): only
/// `mcpServers` is read; the client's other settings are left alone.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientFile {
    #[serde(default)]
    pub mcp_servers: BTreeMap<String, ClientServer>,
}

/// One entry of an `mcpServers` map.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientServer {
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Remote server endpoint.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `stdio`, `http`, `sse` (Claude Code, VS Code); `streamable-http` is an alias of `http`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Client-side settings that Corral accepts and does not use.
    #[serde(default)]
    pub auto_approve: Option<serde_json::Value>,
    #[serde(default)]
    pub always_allow: Option<serde_json::Value>,
    #[serde(default)]
    pub timeout: Option<u64>,
}
