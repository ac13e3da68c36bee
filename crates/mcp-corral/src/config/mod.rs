//! Configuration: file formats, `${VAR}` interpolation, validation with locations, and
//! normalisation into one internal model.
//!
//! Seams: [`load`] turns files into a [`Config`]; nothing here starts a process. The supervisor
//! and gateway read only the normalised [`Config`] and [`ServerConfig`] types.

mod error;
mod interpolate;
pub mod model;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use error::{ConfigError, Diagnostic};
use model::{
    ClientFile, FileConfig, Limits, NamespaceMode, PackageManager, ServerSpec, TransportKind,
};

/// Default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Config files `corral serve` picks up from the working directory when `--config` is absent.
pub const DEFAULT_FILES: [&str; 4] = ["corral.yaml", "corral.yml", "corral.json", "corral.toml"];

/// The normalised configuration the rest of Corral runs on.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub servers: Vec<ServerConfig>,
    pub namespace: Namespace,
    pub http: HttpConfig,
    pub log_lines: usize,
    pub state_dir: PathBuf,
    /// The files this config came from, in merge order.
    pub sources: Vec<PathBuf>,
    /// The global `sandbox:` block every server inherits from (the last file's wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_defaults: Option<model::SandboxDefaults>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    pub separator: String,
    pub mode: NamespaceMode,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpConfig {
    pub listen: String,
    pub allowed_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub max_body_bytes: usize,
    pub session_idle_secs: u64,
}

/// One server, fully resolved.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerConfig {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub launch: Launch,
    pub enabled: bool,
    pub auto_start: bool,
    pub restart_on_failure: bool,
    pub max_restarts: u32,
    #[serde(with = "millis")]
    pub restart_delay: Duration,
    pub health: HealthConfig,
    #[serde(with = "millis")]
    pub stop_grace: Duration,
    #[serde(with = "millis")]
    pub call_timeout: Duration,
    pub log_lines: usize,
    /// Where this server was defined, for error messages.
    pub source: PathBuf,
    /// Set for servers reached over the network instead of started as a process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<Remote>,
    /// The isolation the server runs under, when it asked for any (see docs/security.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::sandbox::Policy>,
}

/// A remote server: Streamable HTTP (`http`) or legacy HTTP+SSE (`sse`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Remote {
    pub kind: TransportKind,
    pub url: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// How to start a server: what the launcher resolved from `package`/`command`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Set when the server comes from a package manager, so a missing one gets a precise error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package_manager: Option<PackageManager>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthConfig {
    /// `None` disables periodic checks (process liveness is always watched).
    #[serde(with = "opt_millis")]
    pub interval: Option<Duration>,
    #[serde(with = "millis")]
    pub timeout: Duration,
    pub retries: u32,
}

mod millis {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

mod opt_millis {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_millis() as u64),
            None => s.serialize_none(),
        }
    }
}

impl Config {
    /// The configuration `corral serve` runs with no file at all.
    pub fn embedded_default() -> Config {
        Config {
            servers: Vec::new(),
            namespace: Namespace {
                separator: "__".into(),
                mode: NamespaceMode::Always,
            },
            http: HttpConfig {
                listen: DEFAULT_LISTEN.into(),
                allowed_origins: Vec::new(),
                allowed_hosts: Vec::new(),
                max_body_bytes: 16 * 1024 * 1024,
                session_idle_secs: 3600,
            },
            log_lines: 500,
            state_dir: default_state_dir(),
            sources: Vec::new(),
            sandbox_defaults: None,
        }
    }

    pub fn server(&self, id: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.id == id)
    }
}

/// `$XDG_STATE_HOME/corral`, falling back to `~/.local/state/corral`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("corral");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".local/state/corral")
}

/// Which syntax a file is in, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    Toml,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

/// Loads and merges `paths` in order (later files override servers with the same id and
/// any global setting they set) and normalises the result.
pub fn load(paths: &[PathBuf]) -> Result<Config, ConfigError> {
    let env = |name: &str| std::env::var(name).ok();
    load_with_env(paths, &env)
}

/// [`load`] with an explicit environment, for tests.
pub fn load_with_env(
    paths: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut files = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.clone(),
            source,
        })?;
        files.push((path.clone(), text));
    }
    let parsed = files
        .iter()
        .map(|(path, text)| parse_file(path, text, env).map(|f| (path.clone(), text.as_str(), f)))
        .collect::<Result<Vec<_>, _>>()?;
    normalise(parsed)
}

/// Parses one file's text into [`FileConfig`], interpolating `${VAR}` in every string.
pub fn parse_file(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FileConfig, ConfigError> {
    let format = Format::from_path(path).ok_or_else(|| {
        ConfigError::invalid(Diagnostic::new(
            path,
            "",
            "unknown config file extension: use .yaml, .yml, .json or .toml",
        ))
    })?;
    let sniff: serde_json::Value = error::parse_typed(path, text, format)?;
    let is_client_file = sniff.get("mcpServers").is_some();
    let config = if is_client_file {
        let client: ClientFile = error::parse_typed(path, text, format)?;
        from_client_file(path, text, client)?
    } else {
        error::parse_typed::<FileConfig>(path, text, format)?
    };
    let mut config = interpolate::interpolate_config(path, text, config, env)?;
    config.client_file = is_client_file;
    Ok(config)
}

/// Claude Desktop / VS Code / Cursor `mcpServers` entries become Corral servers.
fn from_client_file(
    path: &Path,
    text: &str,
    client: ClientFile,
) -> Result<FileConfig, ConfigError> {
    let mut servers = Vec::new();
    for (id, entry) in client.mcp_servers {
        let key = format!("mcpServers.{id}");
        let kind = match entry.kind.as_deref() {
            None if entry.url.is_some() => TransportKind::Http,
            None | Some("stdio") => TransportKind::Stdio,
            Some("http") | Some("streamable-http") | Some("streamableHttp") => TransportKind::Http,
            Some("sse") => TransportKind::Sse,
            Some(other) => {
                return Err(ConfigError::invalid(
                    Diagnostic::new(
                        path,
                        &format!("{key}.type"),
                        &format!("unknown transport type `{other}`"),
                    )
                    .with_suggestion(error::nearest(other, &["stdio", "http", "sse"]))
                    .locate(text),
                ));
            }
        };
        let transport = if kind == TransportKind::Stdio {
            None
        } else {
            Some(model::TransportSpec {
                kind,
                url: entry.url.clone(),
                headers: entry.headers.clone(),
            })
        };
        servers.push(ServerSpec {
            id: Some(id.clone()),
            name: Some(id),
            transport,
            command: entry.command,
            args: entry.args,
            env: entry.env,
            cwd: entry.cwd,
            enabled: entry.disabled.map(|d| !d),
            limits: entry.timeout.map(|ms| Limits {
                timeout: Some(ms.div_ceil(1000)),
                ..Limits::default()
            }),
            ..ServerSpec::default()
        });
    }
    Ok(FileConfig {
        servers: Some(model::ServerList(servers)),
        ..FileConfig::default()
    })
}

fn normalise(files: Vec<(PathBuf, &str, FileConfig)>) -> Result<Config, ConfigError> {
    let mut config = Config::embedded_default();
    // Later files override earlier ones: whole server entries by id, globals field by field.
    let mut specs: Vec<(PathBuf, &str, String, ServerSpec)> = Vec::new();
    let mut sandbox_defaults = None;
    for (path, text, file) in files {
        config.sources.push(path.clone());
        if let Some(ns) = &file.namespace {
            if let Some(sep) = &ns.separator {
                if sep.is_empty() {
                    return Err(invalid(
                        &path,
                        text,
                        "namespace.separator",
                        "must not be empty",
                    ));
                }
                config.namespace.separator = sep.clone();
            }
            if let Some(mode) = ns.mode {
                config.namespace.mode = mode;
            }
        }
        if let Some(http) = &file.http {
            if let Some(listen) = &http.listen {
                config.http.listen = listen.clone();
            }
            config
                .http
                .allowed_origins
                .extend(http.allowed_origins.iter().cloned());
            config
                .http
                .allowed_hosts
                .extend(http.allowed_hosts.iter().cloned());
            if let Some(idle) = http.session_idle_secs {
                config.http.session_idle_secs = idle.max(1);
            }
            if let Some(max) = http.max_body_bytes {
                config.http.max_body_bytes = max;
            }
        }
        if let Some(lines) = file.logs.as_ref().and_then(|l| l.lines) {
            config.log_lines = lines.max(1);
        }
        if let Some(dir) = &file.state_dir {
            config.state_dir = resolve_relative(&path, dir);
        }
        if let Some(sandbox) = &file.sandbox {
            sandbox_defaults = Some((path.clone(), text, sandbox.clone()));
        }
        let mut entries: Vec<(String, ServerSpec)> = Vec::new();
        let lists = file
            .servers
            .iter()
            .map(|l| ("servers", &l.0))
            .chain(file.runner.iter().map(|r| ("runner.servers", &r.servers)));
        for (base, list) in lists {
            for (i, spec) in list.iter().enumerate() {
                let key = match (&spec.id, file.client_file) {
                    (Some(id), true) => format!("mcpServers.{id}"),
                    _ => format!("{base}[{i}]"),
                };
                entries.push((key, spec.clone()));
            }
        }
        for (key, spec) in entries {
            let id = spec.id.clone().unwrap_or_default();
            specs.retain(|(_, _, _, s)| s.id.as_deref() != Some(id.as_str()));
            specs.push((path.clone(), text, key, spec));
        }
    }
    if let Some((_, _, sandbox)) = sandbox_defaults {
        config.sandbox_defaults = Some(sandbox);
    }
    let mut ids = std::collections::BTreeSet::new();
    for (path, text, key, spec) in specs {
        let server = normalise_server(&path, text, &key, spec, &config)?;
        if !ids.insert(server.id.clone()) {
            return Err(invalid(
                &path,
                text,
                &key,
                &format!("duplicate server id `{}`", server.id),
            ));
        }
        config.servers.push(server);
    }
    Ok(config)
}

fn invalid(path: &Path, text: &str, key: &str, message: &str) -> ConfigError {
    ConfigError::invalid(Diagnostic::new(path, key, message).locate(text))
}

fn resolve_relative(config_file: &Path, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() {
        return path;
    }
    config_file
        .parent()
        .map(|dir| dir.join(&path))
        .unwrap_or(path)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn normalise_server(
    path: &Path,
    text: &str,
    key: &str,
    spec: ServerSpec,
    config: &Config,
) -> Result<ServerConfig, ConfigError> {
    let id = spec.id.clone().unwrap_or_default();
    if !valid_id(&id) {
        return Err(invalid(
            path,
            text,
            &format!("{key}.id"),
            &format!("server id `{id}` must be 1-64 letters, digits, `-` or `_`"),
        ));
    }
    let sep = &config.namespace.separator;
    if config.namespace.mode == NamespaceMode::Always && id.contains(sep.as_str()) {
        return Err(invalid(
            path,
            text,
            &format!("{key}.id"),
            &format!("server id `{id}` contains the namespace separator `{sep}`"),
        ));
    }
    let remote = match spec
        .transport
        .as_ref()
        .filter(|t| t.kind != TransportKind::Stdio)
    {
        None => None,
        Some(t) => {
            let field = format!("{key}.transport.url");
            let Some(url) = t.url.clone() else {
                return Err(invalid(
                    path,
                    text,
                    &field,
                    "remote servers (`http`, `sse`) need a `url`",
                ));
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    path,
                    text,
                    &field,
                    &format!("`{url}` is not an http:// or https:// URL"),
                ));
            }
            if spec.command.is_some() || spec.package.is_some() {
                return Err(invalid(
                    path,
                    text,
                    &format!("{key}.transport"),
                    "a remote server has a `url`, not a `command` or `package`",
                ));
            }
            Some(Remote {
                kind: t.kind,
                url,
                headers: t.headers.clone(),
            })
        }
    };
    let launch = if remote.is_some() {
        Launch {
            program: String::new(),
            args: Vec::new(),
            env: spec.env.clone(),
            cwd: None,
            package_manager: None,
        }
    } else {
        crate::launcher::resolve(&spec, path).map_err(|(field, message)| {
            invalid(
                path,
                text,
                &format!("{key}{}{field}", if field.is_empty() { "" } else { "." }),
                &message,
            )
        })?
    };
    let defaults = config.sandbox_defaults.as_ref();
    let sandbox = crate::sandbox::Policy::from_config(
        spec.permissions.as_ref(),
        spec.limits.as_ref(),
        defaults.and_then(|d| d.permissions.as_ref()),
        defaults.and_then(|d| d.limits.as_ref()),
        path.parent().unwrap_or(Path::new(".")),
        launch.env.keys().cloned().collect(),
    )
    .map_err(|e| {
        let which = if spec.permissions.is_some() {
            "permissions"
        } else if spec.limits.is_some() {
            "limits"
        } else {
            "sandbox"
        };
        invalid(path, text, &format!("{key}.{which}"), &e.to_string())
    })?;
    if sandbox.is_some() && remote.is_some() {
        return Err(invalid(
            path,
            text,
            &format!("{key}.permissions"),
            "permissions and memory/cpuTime/pids limits confine a local process; a remote server \
             (`transport.url`) runs elsewhere and cannot be sandboxed by Corral",
        ));
    }
    let health = spec.health_check.clone().unwrap_or_default();
    let interval = health.interval.unwrap_or(30_000);
    Ok(ServerConfig {
        name: spec.name.clone().unwrap_or_else(|| id.clone()),
        id,
        description: spec.description.clone(),
        launch,
        enabled: spec.enabled.unwrap_or(true),
        auto_start: spec.auto_start.unwrap_or(false),
        // A remote server that drops the connection is reconnected unless told otherwise.
        restart_on_failure: spec.restart_on_failure.unwrap_or(remote.is_some()),
        max_restarts: spec.max_restarts.unwrap_or(3),
        restart_delay: Duration::from_millis(spec.restart_delay.unwrap_or(1000)),
        health: HealthConfig {
            interval: (interval > 0).then(|| Duration::from_millis(interval)),
            timeout: Duration::from_millis(health.timeout.unwrap_or(5_000).max(1)),
            retries: health.retries.unwrap_or(3).max(1),
        },
        stop_grace: Duration::from_millis(spec.stop_grace.unwrap_or(2000)),
        call_timeout: Duration::from_secs(
            spec.limits
                .as_ref()
                .and_then(|l| l.timeout)
                .unwrap_or(60)
                .max(1),
        ),
        log_lines: spec.log_lines.unwrap_or(config.log_lines).max(1),
        source: path.to_path_buf(),
        remote,
        sandbox,
    })
}

/// The JSON Schema of the configuration file, generated from the types above.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(FileConfig);
    serde_json::to_value(schema).unwrap_or_default()
}

#[cfg(test)]
mod tests;

/// Normalises one server submitted at run time (`POST /load`), with the same rules as a file.
pub fn server_from_spec(spec: ServerSpec, base: &Config) -> Result<ServerConfig, ConfigError> {
    let origin = PathBuf::from("<api>");
    let text = serde_json::to_string_pretty(&spec).unwrap_or_default();
    let spec = interpolate::interpolate_config(
        &origin,
        &text,
        FileConfig {
            servers: Some(model::ServerList(vec![spec])),
            ..FileConfig::default()
        },
        &|name| std::env::var(name).ok(),
    )?
    .servers
    .and_then(|l| l.0.into_iter().next())
    .unwrap_or_default();
    normalise_server(&origin, &text, "server", spec, base)
}
