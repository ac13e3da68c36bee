//! `corral doctor`: what this host can enforce, probed now (never inferred from the distro).

/// One probed mechanism.
pub struct Finding {
    pub mechanism: &'static str,
    pub status: String,
    pub ok: bool,
}

/// Probes every mechanism the sandbox uses.
pub fn probe() -> Vec<Finding> {
    let mut out = Vec::new();
    let abi = landlock_abi();
    out.push(Finding {
        mechanism: "Landlock",
        status: match abi {
            Some(v) if v >= 4 => format!("ABI {v} (filesystem and TCP rules)"),
            Some(v) => format!("ABI {v} (filesystem rules; no TCP rules before ABI 4)"),
            None => "unavailable (Linux < 5.13 or not in `lsm=`)".into(),
        },
        ok: abi.is_some(),
    });
    let seccomp = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Seccomp:")));
    out.push(Finding {
        mechanism: "seccomp-bpf",
        status: match (seccomp, seccomp && user_notification()) {
            (true, true) => "available; refusals reported (user notification)",
            (true, false) => "available; refusals enforced but not reported (no user notification)",
            (false, _) => "unavailable",
        }
        .into(),
        ok: seccomp,
    });
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let userns = can_unshare(libc::CLONE_NEWUSER);
    out.push(Finding {
        mechanism: "user namespaces",
        status: match (userns, root) {
            (true, _) => "unprivileged user namespaces work".into(),
            (false, true) => "blocked (not needed: Corral runs as root)".into(),
            (false, false) => "blocked (e.g. AppArmor's restrict_unprivileged_userns): sandboxed servers cannot start as this user".into(),
        },
        ok: userns || root,
    });
    let ns = if root || userns {
        let flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET;
        can_unshare(if root {
            flags
        } else {
            flags | libc::CLONE_NEWUSER
        })
    } else {
        false
    };
    out.push(Finding {
        mechanism: "mount/pid/net namespaces",
        status: if ns {
            "can be created"
        } else {
            "cannot be created"
        }
        .into(),
        ok: ns,
    });
    for (controller, found) in super::cgroup::describe() {
        out.push(Finding {
            mechanism: if controller == "memory" {
                "memory cgroup"
            } else {
                "pids cgroup"
            },
            ok: found.is_some(),
            status: found.unwrap_or_else(|| "none writable".into()),
        });
    }
    let docker = std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok();
    out.push(Finding {
        mechanism: "Docker API",
        status: if docker {
            "reachable at /var/run/docker.sock"
        } else {
            "not reachable"
        }
        .into(),
        ok: docker,
    });
    out
}

/// What the findings mean for each permission.
pub fn consequences(findings: &[Finding]) -> Vec<(&'static str, String)> {
    let ok = |m: &str| findings.iter().any(|f| f.mechanism == m && f.ok);
    let landlock = ok("Landlock");
    let ns = ok("mount/pid/net namespaces");
    let seccomp = ok("seccomp-bpf");
    let verdict = |yes: bool, how: &str| {
        if yes {
            format!("enforced ({how})")
        } else {
            format!("REFUSED: needs {how}")
        }
    };
    vec![
        (
            "fsRead / fsWrite / allowedPaths",
            verdict(landlock && ns, "Landlock + mount namespace"),
        ),
        (
            "network: false",
            verdict(
                ns,
                "an empty network namespace; seccomp and Landlock TCP rules on top",
            ),
        ),
        (
            "allowedHosts",
            verdict(
                ns,
                "an empty network namespace whose only way out is Corral's egress proxy",
            ),
        ),
        ("spawn: false", verdict(seccomp, "seccomp")),
        ("env: false", "enforced (cleared environment)".into()),
        (
            "limits.memory",
            if ok("memory cgroup") {
                "enforced (memory cgroup, OOM kill reported)".into()
            } else {
                "weaker: RLIMIT_AS (virtual memory) with a warning".into()
            },
        ),
        ("limits.cpuTime", "enforced (RLIMIT_CPU)".into()),
        (
            "limits.pids",
            if ok("pids cgroup") {
                "enforced (pids cgroup, refused forks reported)".into()
            } else {
                "weaker: RLIMIT_NPROC (per user, not for root) with a warning".into()
            },
        ),
        ("limits.timeout", "enforced (per-call timer)".into()),
    ]
}

/// Whether seccomp can hand refused calls to a monitor (Linux ≥ 5.0).
fn user_notification() -> bool {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_uint = 2;
    let action: u32 = libc::SECCOMP_RET_USER_NOTIF;
    // SAFETY: the call only reads the u32 that `action` points to.
    unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action) == 0 }
}

fn landlock_abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer and the VERSION flag the call only returns a number.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v)
}

/// Whether a child process can enter new namespaces of these kinds.
fn can_unshare(flags: libc::c_int) -> bool {
    // SAFETY: the child only calls unshare and _exit, both async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            let ok = libc::unshare(flags) == 0;
            libc::_exit(if ok { 0 } else { 1 });
        }
    }
    if pid < 0 {
        return false;
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}
