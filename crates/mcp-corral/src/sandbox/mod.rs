//! Per-server isolation: what a server's `permissions` and `limits` become on this host.
//!
//! The supervisor turns a server's config into a [`Policy`] and starts the server through a
//! re-exec of the `corral` binary (`corral __sandbox-exec POLICY -- program args…`, see
//! [`shim`]). That small single-threaded process applies the policy to itself with namespaces,
//! mounts, Landlock, seccomp and rlimits, then `execve`s the server, so none of it runs in the
//! async runtime between `fork` and `exec`. Memory is limited from outside, with a cgroup the
//! supervisor creates and the shim joins ([`cgroup`]).
//!
//! Fail-closed: a permission the host cannot enforce stops the server with an error naming the
//! mechanism; a limit may fall back to a weaker mechanism with a warning. [`doctor`] reports
//! what the host supports.
//!
//! Seams: config normalisation calls [`Policy::from_config`]; the supervisor calls
//! [`Policy::command`] to wrap the launch and reads [`cgroup::Cgroup`] events after an exit.

pub mod cgroup;
pub mod doctor;
pub mod egress;
mod forward;
pub mod monitor;
pub mod shim;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::model::{Limits, Permissions};

/// The hidden subcommand the supervisor re-executes `corral` with.
pub const SHIM_ARG: &str = "__sandbox-exec";

/// Environment variables of Corral's own that never reach a server, even with `env: true`.
const CORRAL_SECRETS: &[&str] = &["CORRAL_TOKEN", "CORRAL_API_TOKEN"];

/// What one server may do, resolved to absolute paths. Serialized to the shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// `false`: an empty network namespace (only `lo`).
    pub network: bool,
    /// With `network`: the only hosts reachable, through Corral's egress proxy (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// The egress proxy's unix socket (set at spawn when `allowed_hosts` is not empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_socket: Option<PathBuf>,
    /// `None`: no filesystem restriction beyond the private `/tmp`, `/run` and `/proc`.
    pub fs: Option<FsPolicy>,
    /// `false`: only PATH, HOME (private), LANG, TERM and the server's own `env`.
    pub env: bool,
    /// The server's own `env` keys (kept even when `env` is false).
    pub own_env: Vec<String>,
    /// `false`: seccomp refuses fork, vfork and clone of a new process.
    pub spawn: bool,
    /// RLIMIT_CPU, seconds.
    pub cpu_time: Option<u64>,
    /// Memory limit in MB: a cgroup when one can be made, else RLIMIT_AS.
    pub memory_mb: Option<u64>,
    /// Tasks (processes and threads) at once: a pids cgroup when one can be made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Cgroup directories the shim joins before anything else (set at spawn).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<PathBuf>,
    /// Cgroup event counters the shim's monitor reports on while the server runs (set at spawn).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<cgroup::Counter>,
    /// RLIMIT_AS in bytes, when no memory cgroup is available (set at spawn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space: Option<u64>,
    /// RLIMIT_NPROC, when no pids cgroup is available (set at spawn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nproc: Option<u64>,
    /// The descriptor on which the shim's monitor reports refusals to Corral (set at spawn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_fd: Option<i32>,
    /// What the server's own launch needs (its program, scripts, working directory): bound back
    /// into the private `/tmp` when it lives there (set at spawn).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub launch_paths: Vec<PathBuf>,
}

/// The filesystem a sandboxed server sees through Landlock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FsPolicy {
    /// Read (and execute) anywhere, not only below `read`.
    pub read_all: bool,
    /// Write anywhere, not only below `write`.
    pub write_all: bool,
    /// Readable trees: what the runtime needs, plus `allowedPaths` when `fsRead` is true.
    pub read: Vec<PathBuf>,
    /// Writable trees: `allowedPaths` when `fsWrite` is true.
    pub write: Vec<PathBuf>,
}

/// Why a policy cannot be built or enforced.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("{0}")]
    Unsupported(String),
    #[error("allowedPaths entry `{path}` does not exist: {reason}")]
    MissingPath { path: String, reason: String },
}

impl Policy {
    /// The policy for a server, its own settings over the global `sandbox:` defaults. `None`
    /// when nothing is restricted (the server runs as it is). `base` resolves relative paths.
    pub fn from_config(
        permissions: Option<&Permissions>,
        limits: Option<&Limits>,
        defaults_permissions: Option<&Permissions>,
        defaults_limits: Option<&Limits>,
        base: &Path,
        own_env: Vec<String>,
    ) -> Result<Option<Policy>, PolicyError> {
        let p = merge_permissions(defaults_permissions, permissions);
        let memory_mb = limits
            .and_then(|l| l.memory)
            .or(defaults_limits.and_then(|l| l.memory));
        let cpu_time = limits
            .and_then(|l| l.cpu_time)
            .or(defaults_limits.and_then(|l| l.cpu_time));
        let pids = limits
            .and_then(|l| l.pids)
            .or(defaults_limits.and_then(|l| l.pids));
        if p == Permissions::default()
            && memory_mb.is_none()
            && cpu_time.is_none()
            && pids.is_none()
        {
            return Ok(None);
        }
        if !cfg!(target_os = "linux") {
            return Err(PolicyError::Unsupported(
                "permissions and memory/cpuTime/pids limits are enforced on Linux only (Landlock, \
                 seccomp, namespaces); on this OS Corral refuses to start a server that asks for \
                 them. Remove them to run it unconfined."
                    .into(),
            ));
        }
        let allowed_hosts = p.allowed_hosts.clone().unwrap_or_default();
        for entry in &allowed_hosts {
            egress::HostRule::parse(entry)
                .map_err(|e| PolicyError::Unsupported(format!("allowedHosts: {e}")))?;
        }
        if p.network == Some(false) && !allowed_hosts.is_empty() {
            return Err(PolicyError::Unsupported(
                "`allowedHosts` lists what the network may reach, but `network: false` forbids \
                 any network: remove one of them"
                    .into(),
            ));
        }
        let read_allowed = p.fs_read.unwrap_or(true);
        let write_allowed = p.fs_write.unwrap_or(true);
        let fs = match &p.allowed_paths {
            Some(paths) => {
                let mut resolved = Vec::new();
                for raw in paths {
                    let joined = if Path::new(raw).is_absolute() {
                        PathBuf::from(raw)
                    } else {
                        base.join(raw)
                    };
                    let real = joined
                        .canonicalize()
                        .map_err(|e| PolicyError::MissingPath {
                            path: raw.clone(),
                            reason: e.to_string(),
                        })?;
                    resolved.push(real);
                }
                Some(FsPolicy {
                    read_all: false,
                    write_all: false,
                    read: if read_allowed {
                        resolved.clone()
                    } else {
                        Vec::new()
                    },
                    write: if write_allowed { resolved } else { Vec::new() },
                })
            }
            None if read_allowed && write_allowed => None,
            None => Some(FsPolicy {
                read_all: read_allowed,
                write_all: write_allowed,
                read: Vec::new(),
                write: Vec::new(),
            }),
        };
        Ok(Some(Policy {
            network: p.network.unwrap_or(true),
            allowed_hosts,
            egress_socket: None,
            fs,
            env: p.env.unwrap_or(true),
            own_env,
            spawn: p.spawn.unwrap_or(true),
            cpu_time,
            memory_mb,
            pids,
            cgroups: Vec::new(),
            counters: Vec::new(),
            address_space: None,
            nproc: None,
            report_fd: None,
            launch_paths: Vec::new(),
        }))
    }

    /// Network only through the egress proxy.
    pub fn egress(&self) -> bool {
        self.network && !self.allowed_hosts.is_empty()
    }

    /// Adds the trees the server's runtime needs to read: its program's installation and any
    /// script or package named by absolute path in its arguments, and its working directory.
    pub fn allow_runtime(&mut self, program: &Path, args: &[String], cwd: Option<&Path>) {
        let mut extra = vec![install_root(program)];
        for arg in args {
            let p = Path::new(arg);
            if p.is_absolute() && p.exists() {
                extra.push(package_root(p));
            }
        }
        if let Some(cwd) = cwd {
            extra.push(cwd.to_path_buf());
        }
        for path in extra {
            let Ok(real) = path.canonicalize() else {
                continue;
            };
            if let Some(fs) = &mut self.fs
                && !fs.read.contains(&real)
            {
                fs.read.push(real.clone());
            }
            if !self.launch_paths.contains(&real) {
                self.launch_paths.push(real);
            }
        }
    }

    /// The environment the server starts with: Corral's own (minus its secrets) plus the
    /// server's, or with `env: false` only the basics plus the server's.
    pub fn environment(
        &self,
        parent: impl Iterator<Item = (String, String)>,
        own: &std::collections::BTreeMap<String, String>,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = if self.env {
            parent
                .filter(|(k, _)| !CORRAL_SECRETS.contains(&k.as_str()))
                .collect()
        } else {
            parent
                .filter(|(k, _)| matches!(k.as_str(), "PATH" | "LANG" | "TERM" | "LC_ALL"))
                .collect()
        };
        if !self.env {
            out.push(("HOME".into(), shim::PRIVATE_HOME.into()));
        }
        if self.egress() {
            let proxy = format!("http://127.0.0.1:{}", shim::PROXY_PORT);
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                out.retain(|(key, _)| key != k);
                out.push((k.into(), proxy.clone()));
            }
            out.retain(|(key, _)| !key.eq_ignore_ascii_case("no_proxy"));
        }
        for (k, v) in own {
            out.retain(|(key, _)| key != k);
            out.push((k.clone(), v.clone()));
        }
        out
    }
}

/// The server's settings win field by field over the global defaults.
fn merge_permissions(defaults: Option<&Permissions>, own: Option<&Permissions>) -> Permissions {
    let d = defaults.cloned().unwrap_or_default();
    let o = own.cloned().unwrap_or_default();
    Permissions {
        network: o.network.or(d.network),
        allowed_hosts: o.allowed_hosts.or(d.allowed_hosts),
        fs_read: o.fs_read.or(d.fs_read),
        fs_write: o.fs_write.or(d.fs_write),
        allowed_paths: o.allowed_paths.or(d.allowed_paths),
        env: o.env.or(d.env),
        spawn: o.spawn.or(d.spawn),
    }
}

/// The installation a program belongs to: `/usr` for `/usr/bin/node`,
/// `~/.pyenv/versions/3.11.7` for its `bin/python3`, a venv's root for its `bin/python`.
fn install_root(program: &Path) -> PathBuf {
    let real = program
        .canonicalize()
        .unwrap_or_else(|_| program.to_path_buf());
    let dir = real.parent().unwrap_or(Path::new("/"));
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("bin" | "sbin") => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// What a script named on the command line needs: the `node_modules` tree it lives in (Node
/// resolves dependencies upwards), a venv's `site-packages`' root, or its own directory.
fn package_root(script: &Path) -> PathBuf {
    let mut topmost_modules = None;
    for ancestor in script.ancestors() {
        if ancestor.file_name().and_then(|n| n.to_str()) == Some("node_modules") {
            topmost_modules = Some(ancestor.to_path_buf());
        }
    }
    if let Some(m) = topmost_modules {
        return m;
    }
    if script.is_dir() {
        return script.to_path_buf();
    }
    script.parent().unwrap_or(Path::new("/")).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(f: impl FnOnce(&mut Permissions)) -> Permissions {
        let mut p = Permissions::default();
        f(&mut p);
        p
    }

    #[test]
    fn nothing_asked_means_no_sandbox() {
        let none = Policy::from_config(None, None, None, None, Path::new("/"), vec![]).unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn server_settings_override_defaults_field_by_field() {
        let defaults = perms(|p| {
            p.network = Some(false);
            p.spawn = Some(false);
        });
        let own = perms(|p| p.spawn = Some(true));
        let policy = Policy::from_config(
            Some(&own),
            None,
            Some(&defaults),
            None,
            Path::new("/"),
            vec![],
        )
        .unwrap()
        .unwrap();
        assert!(!policy.network, "inherited from the defaults");
        assert!(policy.spawn, "the server's own setting wins");
        assert_eq!(policy.fs, None, "no filesystem restriction was asked for");
    }

    #[test]
    fn allowed_paths_resolve_against_the_config_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let own = perms(|p| {
            p.fs_write = Some(false);
            p.allowed_paths = Some(vec!["./data".into()]);
        });
        let policy = Policy::from_config(Some(&own), None, None, None, dir.path(), vec![])
            .unwrap()
            .unwrap();
        let fs = policy.fs.unwrap();
        let data = dir.path().join("data").canonicalize().unwrap();
        assert_eq!(fs.read, vec![data]);
        assert!(fs.write.is_empty(), "fsWrite: false");
        let missing = perms(|p| p.allowed_paths = Some(vec!["./nope".into()]));
        let err =
            Policy::from_config(Some(&missing), None, None, None, dir.path(), vec![]).unwrap_err();
        assert!(err.to_string().contains("./nope"), "{err}");
    }

    #[test]
    fn allowed_hosts_are_checked_and_turn_on_the_proxy() {
        let own = perms(|p| p.allowed_hosts = Some(vec!["api.example.com".into()]));
        let policy = Policy::from_config(Some(&own), None, None, None, Path::new("/"), vec![])
            .unwrap()
            .unwrap();
        assert!(policy.egress());
        let env = policy.environment(std::iter::empty(), &Default::default());
        assert!(
            env.iter()
                .any(|(k, v)| k == "HTTPS_PROXY" && v.starts_with("http://127.0.0.1:"))
        );
        let both = perms(|p| {
            p.network = Some(false);
            p.allowed_hosts = Some(vec!["api.example.com".into()]);
        });
        let err =
            Policy::from_config(Some(&both), None, None, None, Path::new("/"), vec![]).unwrap_err();
        assert!(err.to_string().contains("network: false"), "{err}");
        let bad = perms(|p| p.allowed_hosts = Some(vec!["https://x/".into()]));
        assert!(Policy::from_config(Some(&bad), None, None, None, Path::new("/"), vec![]).is_err());
    }

    #[test]
    fn env_false_keeps_only_the_basics_and_the_servers_own() {
        let own = perms(|p| p.env = Some(false));
        let policy = Policy::from_config(Some(&own), None, None, None, Path::new("/"), vec![])
            .unwrap()
            .unwrap();
        let parent = vec![
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("SECRET".to_string(), "x".to_string()),
        ];
        let mut server = std::collections::BTreeMap::new();
        server.insert("API_KEY".to_string(), "k".to_string());
        let env = policy.environment(parent.into_iter(), &server);
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"PATH") && keys.contains(&"API_KEY") && keys.contains(&"HOME"));
        assert!(!keys.contains(&"SECRET"), "{keys:?}");
    }

    #[test]
    fn runtimes_find_their_installation_and_packages() {
        assert_eq!(
            install_root(Path::new("/usr/bin/env")),
            PathBuf::from("/usr")
        );
        assert_eq!(
            package_root(Path::new(
                "/x/node_modules/@s/p/node_modules/q/dist/index.js"
            )),
            PathBuf::from("/x/node_modules")
        );
    }
}
