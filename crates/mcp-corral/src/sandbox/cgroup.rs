//! Memory and pids cgroups for sandboxed servers, v1 or v2, nested under Corral's own cgroups.
//!
//! The supervisor makes the cgroups for each server start, writes the limits, and hands the
//! directories to the shim, which moves itself in before anything else (so the server and all
//! its descendants are counted). The shim's monitor watches the event counters while the
//! server runs ([`Counter`]); after it exits the supervisor reads whether the OOM killer fired
//! and removes the directories.
//!
//! Each controller is taken from the unified (v2) hierarchy when that hierarchy offers it and
//! from its own v1 hierarchy otherwise; controllers that land on v2 share one directory, since
//! a process belongs to exactly one v2 cgroup.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The cgroups of one server start. Removed when dropped.
#[derive(Debug, Default)]
pub struct Cgroups {
    groups: Vec<Group>,
}

#[derive(Debug)]
struct Group {
    dir: PathBuf,
    version: Version,
    controllers: Vec<Controller>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Memory,
    Pids,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
        }
    }
}

/// An event counter the shim's monitor watches while the server runs: a line `field N` in
/// `file`. When N grows, the limit named by `key` refused something.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Counter {
    /// The configuration key of the limit, e.g. `limits.pids`.
    pub key: String,
    pub file: PathBuf,
    pub field: String,
    /// What one count means, for the report.
    pub meaning: String,
}

/// What could be made, and why the rest could not.
pub struct Made {
    pub cgroups: Cgroups,
    /// `Err(reason)` when a memory limit was asked for and no memory cgroup could be made.
    pub memory: Result<(), String>,
    /// The same for a pids limit.
    pub pids: Result<(), String>,
}

static NEXT: AtomicU64 = AtomicU64::new(1);

impl Cgroups {
    /// Creates the cgroups for `memory_mb` (no swap) and `pids` (tasks: processes and
    /// threads). A limit that cannot be had is reported in [`Made`], not an error here: the
    /// caller decides on the fallback.
    pub fn create(server: &str, memory_mb: Option<u64>, pids: Option<u64>) -> Made {
        let name = format!(
            "corral-{}-{}-{}",
            std::process::id(),
            sanitize(server),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut made = Made {
            cgroups: Cgroups::default(),
            memory: Ok(()),
            pids: Ok(()),
        };
        let wanted: Vec<(Controller, u64)> = [
            memory_mb.map(|mb| (Controller::Memory, mb.saturating_mul(1024 * 1024))),
            pids.map(|n| (Controller::Pids, n)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut on_v2 = Vec::new();
        let unified = v2_dir();
        for (controller, value) in wanted {
            let mut reasons = Vec::new();
            match &unified {
                Some(dir) if delegate(dir, controller) => {
                    on_v2.push((controller, value));
                    continue;
                }
                Some(_) => reasons.push(format!(
                    "cgroup v2: the {} controller is not available",
                    controller.name()
                )),
                None => reasons.push("cgroup v2: not mounted".into()),
            }
            let outcome = match v1_dir(controller) {
                Some(parent) => make(&parent.join(&name), Version::V1, &[(controller, value)])
                    .map(Some)
                    .map_err(|e| {
                        reasons.push(format!("cgroup v1: {e}"));
                        reasons.join("; ")
                    }),
                None => {
                    reasons.push(format!("cgroup v1: no {} hierarchy", controller.name()));
                    Err(reasons.join("; "))
                }
            };
            made.record(controller, outcome);
        }
        if let (false, Some(dir)) = (on_v2.is_empty(), &unified) {
            let outcome =
                make(&dir.join(&name), Version::V2, &on_v2).map_err(|e| format!("cgroup v2: {e}"));
            for (controller, _) in &on_v2 {
                let one = match &outcome {
                    Ok(_) => Ok(None),
                    Err(e) => Err(e.clone()),
                };
                made.record(*controller, one);
            }
            if let Ok(group) = outcome {
                made.cgroups.groups.push(group);
            }
        }
        made
    }

    /// The directories the shim joins.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.groups.iter().map(|g| g.dir.clone()).collect()
    }

    pub fn has_memory(&self) -> bool {
        self.has(Controller::Memory)
    }

    pub fn has_pids(&self) -> bool {
        self.has(Controller::Pids)
    }

    fn has(&self, c: Controller) -> bool {
        self.groups.iter().any(|g| g.controllers.contains(&c))
    }

    /// How many times the OOM killer fired in these cgroups.
    pub fn oom_kills(&self) -> u64 {
        self.counters()
            .iter()
            .filter(|c| c.key == "limits.memory")
            .map(|c| read_counter(&c.file, &c.field))
            .sum()
    }

    /// The event counters of these cgroups.
    pub fn counters(&self) -> Vec<Counter> {
        let mut out = Vec::new();
        for g in &self.groups {
            for c in &g.controllers {
                out.push(match (c, g.version) {
                    (Controller::Memory, v) => Counter {
                        key: "limits.memory".into(),
                        file: g.dir.join(match v {
                            Version::V1 => "memory.oom_control",
                            Version::V2 => "memory.events",
                        }),
                        field: "oom_kill".into(),
                        meaning: "a process was OOM-killed".into(),
                    },
                    (Controller::Pids, _) => Counter {
                        key: "limits.pids".into(),
                        file: g.dir.join("pids.events"),
                        field: "max".into(),
                        meaning: "a new process or thread was refused".into(),
                    },
                });
            }
        }
        out
    }
}

impl Made {
    fn record(&mut self, controller: Controller, outcome: Result<Option<Group>, String>) {
        let slot = match controller {
            Controller::Memory => &mut self.memory,
            Controller::Pids => &mut self.pids,
        };
        match outcome {
            Ok(group) => {
                if let Some(g) = group {
                    self.cgroups.groups.push(g);
                }
                *slot = Ok(());
            }
            Err(e) => *slot = Err(e),
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        // Empty once the server's processes are gone; a leftover is harmless and rare.
        for g in &self.groups {
            let _ = std::fs::remove_dir(&g.dir);
        }
    }
}

/// The value of the line `field N` in a cgroup event file (0 when absent or unreadable).
pub fn read_counter(file: &Path, field: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| parse_counter(&text, field))
        .unwrap_or(0)
}

pub fn parse_counter(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (name, value) = l.split_once(' ')?;
        (name == field).then(|| value.trim().parse().ok())?
    })
}

fn make(dir: &Path, version: Version, limits: &[(Controller, u64)]) -> Result<Group, String> {
    std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Err(e) = write_limits(dir, version, limits) {
        let _ = std::fs::remove_dir(dir);
        return Err(e);
    }
    Ok(Group {
        dir: dir.to_path_buf(),
        version,
        controllers: limits.iter().map(|(c, _)| *c).collect(),
    })
}

fn write_limits(dir: &Path, version: Version, limits: &[(Controller, u64)]) -> Result<(), String> {
    let write = |file: &str, value: String| {
        std::fs::write(dir.join(file), value).map_err(|e| format!("{file}: {e}"))
    };
    for (controller, value) in limits {
        match (controller, version) {
            (Controller::Memory, Version::V1) => {
                write("memory.limit_in_bytes", value.to_string())?;
                // Absent without swap accounting; then there is no swap to escape into either.
                let _ = write("memory.memsw.limit_in_bytes", value.to_string());
            }
            (Controller::Memory, Version::V2) => {
                write("memory.max", value.to_string())?;
                let _ = write("memory.swap.max", "0".into());
            }
            (Controller::Pids, _) => write("pids.max", value.to_string())?,
        }
    }
    Ok(())
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

/// Corral's own directory in the unified hierarchy, when one is mounted.
fn v2_dir() -> Option<PathBuf> {
    let own = own_path("")?;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(Path::new)
        .find(|root| root.join("cgroup.controllers").is_file())
        .map(|root| root.join(own.trim_start_matches('/')))
}

/// Whether the v2 directory `dir` has `controller`.
fn offers(dir: &Path, controller: Controller) -> bool {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == controller.name()))
}

/// Whether children of the v2 directory `dir` can use `controller`.
fn delegate(dir: &Path, controller: Controller) -> bool {
    // Children get the controller only when the parent delegates it.
    offers(dir, controller)
        && std::fs::write(
            dir.join("cgroup.subtree_control"),
            format!("+{}", controller.name()),
        )
        .is_ok()
}

fn v1_dir(controller: Controller) -> Option<PathBuf> {
    let name = controller.name();
    let own = own_path(name)?;
    let dir = Path::new("/sys/fs/cgroup")
        .join(name)
        .join(own.trim_start_matches('/'));
    let probe = match controller {
        Controller::Memory => "memory.limit_in_bytes",
        Controller::Pids => "cgroup.procs",
    };
    dir.join(probe).is_file().then_some(dir)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Which cgroup Corral could use here for each controller, for `corral doctor`.
pub fn describe() -> Vec<(&'static str, Option<String>)> {
    let unified = v2_dir();
    [Controller::Memory, Controller::Pids]
        .into_iter()
        .map(|c| {
            let found = match &unified {
                Some(d) if offers(d, c) => Some(format!("v2 ({})", d.display())),
                _ => v1_dir(c).map(|d| format!("v1 ({})", d.display())),
            };
            (c.name(), found)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_field_name() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_counter(v1, "oom_kill"), Some(2));
        assert_eq!(parse_counter("max 7\n", "max"), Some(7));
        assert_eq!(
            parse_counter("low 0\nhigh 0\nmax 0\noom 1\n", "oom_kill"),
            None
        );
    }
}
