//! Spawning a server in its own process group and stopping the whole group.
//!
//! A server started through a package manager is a tree (`npx` → `node` → …). Each server gets
//! its own process group so that stopping it reaches every descendant that did not leave the
//! group on purpose, and nothing is left behind as an orphan.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::config::Launch;

/// How a server process ended.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub at: String,
}

impl ExitInfo {
    pub fn from_status(status: ExitStatus) -> ExitInfo {
        use std::os::unix::process::ExitStatusExt;
        ExitInfo {
            code: status.code(),
            signal: status.signal(),
            at: crate::time::now(),
        }
    }

    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("was killed by signal {s} ({})", signal_name(s)),
            _ => "exited".into(),
        }
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

/// Why a server could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{program} not found on PATH (needed by packageManager: {program})")]
    PackageManagerMissing { program: String },
    #[error("command `{program}` not found (not on PATH, or not executable)")]
    CommandMissing { program: String },
    #[error("cannot start `{program}`: {source}")]
    Io {
        program: String,
        source: std::io::Error,
    },
}

/// Spawns the server with piped stdio in a new process group (pgid = pid).
pub fn spawn(launch: &Launch) -> Result<Child, SpawnError> {
    let path_var = launch.env.get("PATH").map(std::ffi::OsStr::new);
    let Some(program) = crate::launcher::find_program(&launch.program, path_var) else {
        return Err(match launch.package_manager {
            Some(_) => SpawnError::PackageManagerMissing {
                program: launch.program.clone(),
            },
            None => SpawnError::CommandMissing {
                program: launch.program.clone(),
            },
        });
    };
    let mut cmd = Command::new(&program);
    cmd.args(&launch.args)
        .envs(&launch.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // A safety net only: the supervisor always stops the group explicitly.
        .kill_on_drop(true);
    if let Some(cwd) = &launch.cwd {
        cmd.current_dir(cwd);
    }
    cmd.spawn().map_err(|source| SpawnError::Io {
        program: launch.program.clone(),
        source,
    })
}

/// Sends `signal` to every process in the group. Returns false when the group is empty.
pub fn signal_group(pgid: i32, signal: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill(2) with a negative pid only sends a signal; it touches no memory of ours.
    unsafe { libc::kill(-pgid, signal) == 0 }
}

/// True while any process of the group is alive (zombies of reaped children do not count).
pub fn group_alive(pgid: i32) -> bool {
    signal_group(pgid, 0)
}

/// Stops a server: its stdin is already closed by the caller; wait a moment, then SIGTERM the
/// group, then SIGKILL after `grace`. Afterwards the rest of the group gets the same treatment,
/// so grandchildren that outlived their parent do not become orphans.
pub async fn stop(child: &mut Child, pgid: i32, grace: Duration) -> ExitInfo {
    let polite = grace.min(Duration::from_millis(500));
    let status = match tokio::time::timeout(polite, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        _ => {
            signal_group(pgid, libc::SIGTERM);
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(Ok(status)) => Some(status),
                _ => {
                    signal_group(pgid, libc::SIGKILL);
                    child.wait().await.ok()
                }
            }
        }
    };
    reap_group(pgid, grace).await;
    status
        .map(ExitInfo::from_status)
        .unwrap_or_else(|| ExitInfo {
            code: None,
            signal: None,
            at: crate::time::now(),
        })
}

/// Ends whatever is left of a process group after its leader exited.
pub async fn reap_group(pgid: i32, grace: Duration) {
    if !group_alive(pgid) {
        return;
    }
    signal_group(pgid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while group_alive(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal_group(pgid, libc::SIGKILL);
}
