//! Spawning a server in its own process group and stopping the whole group.
//!
//! A server started through a package manager is a tree (`npx` → `node` → …). Each server gets
//! its own process group so that stopping it reaches every descendant that did not leave the
//! group on purpose, and nothing is left behind as an orphan.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::config::Launch;
use crate::sandbox::Policy;
use crate::sandbox::cgroup::Cgroups;

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
        libc::SIGXCPU => "SIGXCPU",
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
    #[error("sandbox: {0}")]
    Sandbox(String),
}

/// Where a server's sandbox reports: warnings to its log ring, and what Corral's side of the
/// sandbox (the egress proxy) refused to its refusal record.
#[derive(Clone)]
pub struct Log {
    pub warn: std::sync::Arc<dyn Fn(&str) + Send + Sync>,
    pub refused: std::sync::Arc<dyn Fn(&crate::sandbox::monitor::Refusal) + Send + Sync>,
}

/// A spawned server process, with what confines it.
pub struct Spawned {
    pub child: Child,
    pub limits: Option<Confinement>,
    /// The read end of the sandbox's report pipe: one [`Refusal`](crate::sandbox::monitor::Refusal)
    /// per line.
    pub reports: Option<std::os::fd::OwnedFd>,
}

/// The limits a sandboxed server runs under, to explain its exit.
pub struct Confinement {
    pub cgroups: Cgroups,
    /// The `allowedHosts` proxy; it lives as long as the server.
    pub egress: Option<crate::sandbox::egress::EgressProxy>,
    pub memory_mb: Option<u64>,
    pub cpu_time: Option<u64>,
}

impl Confinement {
    /// Which limit ended the server, if one did.
    pub fn fired(&self, exit: &ExitInfo) -> Option<String> {
        if let Some(mb) = self.memory_mb
            && self.cgroups.oom_kills() > 0
        {
            return Some(format!("was OOM-killed: limits.memory = {mb} MB"));
        }
        if let Some(secs) = self.cpu_time
            && matches!(exit.signal, Some(libc::SIGXCPU | libc::SIGKILL))
            && (exit.signal == Some(libc::SIGXCPU) || exit.code.is_none())
        {
            return Some(format!(
                "hit limits.cpuTime = {secs} s ({})",
                exit.describe()
            ));
        }
        None
    }
}

/// Spawns the server with piped stdio in a new process group (pgid = pid).
pub fn spawn(
    launch: &Launch,
    sandbox: Option<&Policy>,
    server: &str,
    log: &Log,
) -> Result<Spawned, SpawnError> {
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
    let (mut cmd, limits, reports) = match sandbox {
        None => {
            // A launcher's tree runs under the keeper, so it dies with Corral (see `keeper`).
            // The running binary is reached through /proc, which works even after an upgrade
            // replaced the file.
            let me = std::path::Path::new("/proc/self/exe");
            let mut cmd = if starts_a_tree(launch, &program) && me.exists() {
                let mut cmd = Command::new(me);
                cmd.arg(super::keeper::KEEPER_ARG).arg("--").arg(&program);
                cmd
            } else {
                Command::new(&program)
            };
            cmd.args(&launch.args).envs(&launch.env);
            die_with_corral(&mut cmd);
            (cmd, None, None)
        }
        Some(policy) => confined(launch, &program, policy, server, log)?,
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // A safety net only: the supervisor always stops the group explicitly.
        .kill_on_drop(true);
    if let Some(cwd) = &launch.cwd {
        cmd.current_dir(cwd);
    }
    let child = cmd.spawn().map_err(|source| SpawnError::Io {
        program: launch.program.clone(),
        source,
    })?;
    Ok(Spawned {
        child,
        limits,
        reports,
    })
}

/// Programs that run the server as their child rather than becoming it: package managers
/// and shells. Their servers are grandchildren of Corral, which the kernel's parent-death
/// signal does not reach, so they run under a keeper (about 0.8 MB of memory of its own,
/// 5 MB of RSS counting the pages it shares with Corral). Any other program is the server
/// itself and needs none.
fn starts_a_tree(launch: &Launch, program: &std::path::Path) -> bool {
    const LAUNCHERS: &[&str] = &[
        "npx", "npm", "pnpm", "pnpx", "yarn", "bun", "bunx", "deno", "uvx", "uv", "pipx", "sh",
        "bash", "dash", "zsh",
    ];
    launch.package_manager.is_some()
        || program
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| LAUNCHERS.contains(&n))
}

/// Makes the server get SIGKILL if Corral dies without stopping it (a crash, `kill -9`), so
/// no server outlives it. The sandbox shim does the same for sandboxed servers.
///
/// The signal follows the *thread* that forked. Servers are spawned from the async runtime's
/// threads, which live as long as the process (never from the blocking pool, whose idle
/// threads exit).
fn die_with_corral(cmd: &mut Command) {
    let corral = std::process::id();
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, sched_setscheduler, _exit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Corral's own scheduling policy is not the server's.
            crate::sched::reset_in_child();
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Corral died between fork and prctl: the signal will never come.
            if libc::getppid() as u32 != corral {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// A command ready to spawn, what confines it, and the report pipe's read end.
type Confined = (Command, Option<Confinement>, Option<std::os::fd::OwnedFd>);

/// The command that starts the server through the sandbox shim.
fn confined(
    launch: &Launch,
    program: &std::path::Path,
    policy: &Policy,
    server: &str,
    log: &Log,
) -> Result<Confined, SpawnError> {
    let mut policy = policy.clone();
    let program = if policy.spawn {
        program.to_path_buf()
    } else {
        real_program(launch, program)?
    };
    policy.allow_runtime(&program, &launch.args, launch.cwd.as_deref());
    let made = Cgroups::create(server, policy.memory_mb, policy.pids);
    if let (Some(mb), Err(reason)) = (policy.memory_mb, &made.memory) {
        (log.warn)(&format!(
            "limits.memory: no memory cgroup ({reason}); falling back to RLIMIT_AS, which limits \
             virtual memory (runtimes that reserve address space, like Node, may fail to start)"
        ));
        policy.address_space = Some(mb.saturating_mul(1024 * 1024));
    }
    if let (Some(n), Err(reason)) = (policy.pids, &made.pids) {
        (log.warn)(&format!(
            "limits.pids: no pids cgroup ({reason}); falling back to RLIMIT_NPROC, which counts \
             every process of the user and does not bind root"
        ));
        policy.nproc = Some(n);
    }
    policy.cgroups = made.cgroups.dirs();
    policy.counters = made.cgroups.counters();
    let (reports, report_end) = report_pipe()?;
    policy.report_fd = Some(crate::sandbox::monitor::REPORT_FD);
    let mut egress = None;
    if policy.egress() {
        let rules = policy
            .allowed_hosts
            .iter()
            .filter_map(|h| crate::sandbox::egress::HostRule::parse(h).ok())
            .collect();
        let refused = log.refused.clone();
        let denied = std::sync::Arc::new(move |detail: &str| {
            refused(&crate::sandbox::monitor::Refusal {
                key: "permissions.allowedHosts".into(),
                detail: detail.to_string(),
            })
        });
        let proxy = crate::sandbox::egress::start(rules, denied)
            .map_err(|e| SpawnError::Sandbox(format!("cannot start the egress proxy: {e}")))?;
        policy.egress_socket = Some(proxy.path().to_path_buf());
        egress = Some(proxy);
    }
    let exe = std::env::current_exe()
        .map_err(|e| SpawnError::Sandbox(format!("cannot find the corral binary: {e}")))?;
    let encoded = serde_json::to_string(&policy).map_err(|e| SpawnError::Sandbox(e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.arg(crate::sandbox::SHIM_ARG)
        .arg(encoded)
        .arg("--")
        .arg(&program)
        .args(&launch.args)
        .env_clear()
        .envs(policy.environment(std::env::vars(), &launch.env));
    hand_over(&mut cmd, report_end);
    let limits = Confinement {
        cgroups: made.cgroups,
        egress,
        memory_mb: policy.memory_mb,
        cpu_time: policy.cpu_time,
    };
    Ok((cmd, Some(limits), Some(reports)))
}

/// The sandbox's report pipe: (read end for Corral, write end for the shim), both
/// close-on-exec so no other child inherits them.
fn report_pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), SpawnError> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SpawnError::Sandbox(format!(
            "cannot make the report pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: pipe2 succeeded: both are fresh descriptors that nothing else owns.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Gives the shim `end` as descriptor [`REPORT_FD`](crate::sandbox::monitor::REPORT_FD), the
/// only descriptor beyond stdio it inherits. The command keeps `end` alive until it is dropped
/// after the spawn, which closes Corral's copy.
fn hand_over(cmd: &mut Command, end: std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    let target = crate::sandbox::monitor::REPORT_FD;
    let fd = end.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (dup2, fcntl); `end` is moved in, so `fd` stays open until the command drops.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &end;
            if fd == target {
                // Already in place: only the close-on-exec flag must go.
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// With `spawn: false` the server must be the process that runs: a launcher that starts it as
/// a child (a package manager, a pyenv or asdf shim) would be refused by seccomp. Shims are
/// resolved to the real binary; package managers cannot be.
fn real_program(
    launch: &Launch,
    program: &std::path::Path,
) -> Result<std::path::PathBuf, SpawnError> {
    if let Some(pm) = &launch.package_manager {
        return Err(SpawnError::Sandbox(format!(
            "`spawn: false` cannot run a server through a package manager ({pm:?}): it starts \
             the server as a child process, which the policy forbids. Install the package and \
             use `command` with its entry point (e.g. `command: node`, `args: [path/to/index.js]`)"
        )));
    }
    let text = program.to_string_lossy();
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manager = if text.contains("/.pyenv/shims/") {
        Some("pyenv")
    } else if text.contains("/.asdf/shims/") {
        Some("asdf")
    } else {
        None
    };
    let Some(manager) = manager else {
        return Ok(program.to_path_buf());
    };
    let out = std::process::Command::new(manager)
        .args(["which", &name])
        .envs(&launch.env)
        .output()
        .map_err(|e| {
            SpawnError::Sandbox(format!(
                "`{}` is a {manager} shim, which forks (refused under `spawn: false`), and \
                 `{manager} which {name}` could not run: {e}",
                program.display()
            ))
        })?;
    let real = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || real.is_empty() {
        return Err(SpawnError::Sandbox(format!(
            "`{}` is a {manager} shim, which forks (refused under `spawn: false`), and \
             `{manager} which {name}` found no real binary; use its absolute path as `command`",
            program.display()
        )));
    }
    Ok(std::path::PathBuf::from(real))
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
