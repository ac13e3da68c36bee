//! Memory cgroups for sandboxed servers, v1 or v2, nested under Corral's own cgroup.
//!
//! The supervisor makes one cgroup per server start, writes the limit, and hands the directory
//! to the shim, which moves itself in before `execve` (so the server and all its descendants
//! are counted). After the server exits the supervisor reads whether the OOM killer fired and
//! removes the directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A server's memory cgroup.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    version: Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

static NEXT: AtomicU64 = AtomicU64::new(1);

impl Cgroup {
    /// Creates a cgroup limited to `mb` megabytes (no swap). `Err` says why none could be made.
    pub fn create(server: &str, mb: u64) -> Result<Cgroup, String> {
        let bytes = mb.saturating_mul(1024 * 1024);
        let name = format!(
            "corral-{}-{}-{}",
            std::process::id(),
            sanitize(server),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut reasons = Vec::new();
        match v2_parent() {
            Some(parent) => match make(&parent.join(&name), Version::V2, bytes) {
                Ok(c) => return Ok(c),
                Err(e) => reasons.push(format!("cgroup v2: {e}")),
            },
            None => reasons.push("cgroup v2: no memory controller".into()),
        }
        match v1_parent() {
            Some(parent) => match make(&parent.join(&name), Version::V1, bytes) {
                Ok(c) => return Ok(c),
                Err(e) => reasons.push(format!("cgroup v1: {e}")),
            },
            None => reasons.push("cgroup v1: no memory hierarchy".into()),
        }
        Err(reasons.join("; "))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many times the OOM killer fired in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once the server's processes are gone; a leftover is harmless and rare.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn make(dir: &Path, version: Version, bytes: u64) -> Result<Cgroup, String> {
    std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cg = Cgroup {
        dir: dir.to_path_buf(),
        version,
    };
    let write = |file: &str, value: String| {
        std::fs::write(dir.join(file), value).map_err(|e| format!("{file}: {e}"))
    };
    match version {
        Version::V1 => {
            write("memory.limit_in_bytes", bytes.to_string())?;
            // Absent without swap accounting; then there is no swap to escape into either.
            let _ = write("memory.memsw.limit_in_bytes", bytes.to_string());
        }
        Version::V2 => {
            write("memory.max", bytes.to_string())?;
            let _ = write("memory.swap.max", "0".into());
        }
    }
    Ok(cg)
}

/// Corral's own cgroup path in hierarchy `controller` (v1) or the unified one (`""`).
fn own_path(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        matches.then(|| path.to_string())
    })
}

/// The v2 directory to nest under, when the unified hierarchy offers the memory controller.
fn v2_parent() -> Option<PathBuf> {
    let own = own_path("")?;
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let root = Path::new(root);
        if !root.join("cgroup.controllers").is_file() {
            continue;
        }
        let dir = root.join(own.trim_start_matches('/'));
        let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
        if controllers.split_whitespace().any(|c| c == "memory") {
            // Children get the controller only when the parent delegates it.
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory");
            return Some(dir);
        }
    }
    None
}

fn v1_parent() -> Option<PathBuf> {
    let own = own_path("memory")?;
    let dir = Path::new("/sys/fs/cgroup/memory").join(own.trim_start_matches('/'));
    dir.join("memory.limit_in_bytes").is_file().then_some(dir)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Which memory cgroup Corral could use here, for `corral doctor`.
pub fn describe() -> String {
    match (v2_parent(), v1_parent()) {
        (Some(d), _) => format!("v2 memory controller ({})", d.display()),
        (None, Some(d)) => format!("v1 memory hierarchy ({})", d.display()),
        (None, None) => "none writable".into(),
    }
}
