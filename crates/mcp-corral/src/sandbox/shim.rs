//! The sandbox shim: `corral __sandbox-exec POLICY -- program args…`.
//!
//! Runs before any async runtime exists, in a process of its own, so it can call `unshare`,
//! `fork` and `mount` freely. In order: die with the supervisor, join the memory cgroup, set
//! rlimits, enter new namespaces (user when not root; mount, pid, ipc, uts, and net when
//! `network: false`), fork so the server is PID 1 of its pid namespace (its descendants die
//! with it; the parent waits and mirrors its exit), give it a private `/proc`, `/tmp`, `/run` and `/var/run` (hiding host sockets such
//! as `docker.sock`, which Landlock cannot guard on these kernels), apply Landlock, drop
//! capabilities, set no-new-privs, install seccomp, and `execve` the server.
//!
//! Any step that fails ends the shim with exit code 126 and one line on stderr naming the
//! step: the supervisor shows it as the reason the server did not start.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{FsPolicy, Policy, forward, monitor};
pub use forward::PROXY_PORT;

/// The private home of a server started with `env: false`, inside its private `/tmp`.
pub const PRIVATE_HOME: &str = "/tmp/home";

/// Exit code of a shim that could not apply its policy.
pub const SETUP_FAILED: i32 = 126;

/// Entry point: `args` are the process arguments after `__sandbox-exec`. Never returns.
pub fn main(args: &[String]) -> ! {
    let (policy, program, argv) = match parse(args) {
        Ok(parsed) => parsed,
        Err(e) => fail("arguments", &e),
    };
    if let Err((step, e)) = run(&policy, &program, &argv) {
        fail(step, &e);
    }
    // `run` only returns on error: a successful execve replaces this process.
    fail("execve", "returned")
}

fn fail(step: &str, detail: &str) -> ! {
    eprintln!("corral sandbox: {step} failed: {detail}");
    std::process::exit(SETUP_FAILED)
}

fn parse(args: &[String]) -> Result<(Policy, String, Vec<String>), String> {
    let policy = args.first().ok_or("missing policy")?;
    let policy: Policy = serde_json::from_str(policy).map_err(|e| e.to_string())?;
    if args.get(1).map(String::as_str) != Some("--") {
        return Err("expected `--` after the policy".into());
    }
    let program = args.get(2).ok_or("missing program")?.clone();
    Ok((policy, program, args[2..].to_vec()))
}

type Step = (&'static str, String);

fn errno(step: &'static str) -> Step {
    (step, std::io::Error::last_os_error().to_string())
}

fn run(policy: &Policy, program: &str, argv: &[String]) -> Result<(), Step> {
    // Corral's own scheduling policy is not the server's (see `sched`).
    crate::sched::reset_in_child();
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(errno("prctl(PDEATHSIG)"));
    }
    // Inside before anything else happens, so every page of the server is counted.
    join_cgroups(&policy.cgroups).map_err(|e| ("joining the cgroups", e))?;
    let mut watch = monitor::Watch::open(&policy.counters, policy.report_fd);
    set_rlimits(policy)?;
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        enter_user_namespace()?;
    }
    let isolated_net = !policy.network || policy.egress();
    if isolated_net {
        // SAFETY: unshare takes flags only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(errno("unshare(network namespace)"));
        }
        loopback_up()?;
    }
    match (&policy.egress_socket, policy.egress()) {
        (Some(socket), true) => forward::start(forward::Forwarder::bind(policy, socket)?)?,
        (None, true) => return Err(("egress", "no proxy socket was given".into())),
        _ => {}
    }
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) } != 0 {
        return Err(errno("unshare(pid, ipc, uts namespaces)"));
    }
    // The server's half sends its seccomp listener to the monitor over this pair.
    let notify = if !policy.spawn || !policy.network {
        Some(socket_pair()?)
    } else {
        None
    };
    // SAFETY: fork in a single-threaded process (no runtime exists yet).
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(errno("fork into the pid namespace"));
    }
    if child > 0 {
        watch.listener_from_child = notify.map(|(ours, _theirs)| ours);
        // Only the server uses the pipes now: closing our copies lets the supervisor see EOF
        // when the server's side closes.
        // SAFETY: closing standard descriptors we no longer use.
        unsafe {
            libc::close(0);
            libc::close(1);
        }
        mirror(monitor::watch(child, watch));
    }
    // The child: PID 1 of the new pid namespace, in a mount namespace of its own. The report
    // pipe and the counters are the monitor's alone.
    drop(watch);
    let notify = notify.map(|(_ours, theirs)| theirs);
    // SAFETY: as above; the parent's death must take the server with it.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(errno("unshare(mount namespace)"));
    }
    // Opened in this mount namespace (a bind mount cannot take its source from another) and
    // before the private /tmp covers them: allowed paths under /tmp are bound back from these.
    let under_tmp = open_paths_under_tmp(policy)?;
    private_mounts(&under_tmp, policy.egress())?;
    let name = b"corral-sandbox";
    // SAFETY: the pointer and length describe `name`.
    unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    let net = if !policy.network {
        NetRule::Closed
    } else if let Some(ports) = forward::ports(policy) {
        NetRule::Ports(ports)
    } else {
        NetRule::Open
    };
    match &policy.fs {
        Some(fs) => apply_landlock(fs, &net, !under_tmp.is_empty())?,
        // Defence in depth for the network namespace.
        None if net != NetRule::Open => {
            let _ = landlock_network_only(&net);
        }
        None => {}
    }
    drop_capabilities()?;
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(errno("prctl(NO_NEW_PRIVS)"));
    }
    install_seccomp(policy, notify)?;
    exec(program, argv)
}

/// Moves the shim into each cgroup before it forks anything.
///
/// On v1 the shim writes `0` ("this thread") to `tasks`: the kernel then skips the global
/// thread-group lock whose write side waits for an RCU grace period, which made a
/// `cgroup.procs` migration cost 5-20 ms here against 0.3 ms. Moving one thread moves the
/// whole process because the shim has exactly one thread (no runtime exists yet). v2 has no
/// per-thread file for domain cgroups, so it takes the `cgroup.procs` path.
fn join_cgroups(dirs: &[PathBuf]) -> Result<(), String> {
    for dir in dirs {
        let tasks = dir.join("tasks");
        let file = if tasks.is_file() {
            tasks
        } else {
            dir.join("cgroup.procs")
        };
        std::fs::write(&file, "0").map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}

fn set_rlimits(policy: &Policy) -> Result<(), Step> {
    let set = |resource, soft: u64, hard: u64, what: &'static str| {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `lim` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(errno(what));
        }
        Ok(())
    };
    set(libc::RLIMIT_CORE, 0, 0, "setrlimit(CORE)")?;
    if let Some(secs) = policy.cpu_time {
        // SIGXCPU at the soft limit, SIGKILL a second later for servers that catch it.
        set(libc::RLIMIT_CPU, secs, secs + 1, "setrlimit(CPU)")?;
    }
    if let Some(n) = policy.nproc {
        set(libc::RLIMIT_NPROC, n, n, "setrlimit(NPROC)")?;
    }
    if let Some(bytes) = policy.address_space {
        set(libc::RLIMIT_AS, bytes, bytes, "setrlimit(AS)")?;
    }
    Ok(())
}

/// For a non-root user: a user namespace in which it is root, so the other namespaces and the
/// mounts are allowed. Files keep their real owners (the map is the user's own uid).
fn enter_user_namespace() -> Result<(), Step> {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(errno(
            "unshare(user namespace): unprivileged user namespaces are disabled on this host",
        ));
    }
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|e| ("writing the user namespace maps", e.to_string()))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    Ok(())
}

/// Allowed paths below `/tmp`, opened before the private `/tmp` covers them.
fn open_paths_under_tmp(policy: &Policy) -> Result<Vec<(PathBuf, std::fs::File)>, Step> {
    let allowed = policy
        .fs
        .iter()
        .flat_map(|fs| fs.read.iter().chain(&fs.write));
    let mut out: Vec<(PathBuf, std::fs::File)> = Vec::new();
    for p in allowed.chain(&policy.launch_paths) {
        if p.starts_with("/tmp") && !out.iter().any(|(q, _)| q == p) {
            let f = std::fs::File::open(p)
                .map_err(|e| ("opening an allowed path", format!("{}: {e}", p.display())))?;
            out.push((p.clone(), f));
        }
    }
    // Parents first, so a nested path is bound inside its parent's bind, not hidden by it.
    out.sort_by_key(|(p, _)| p.components().count());
    Ok(out)
}

/// Exits the way the server did (`status` from `waitpid`), so the supervisor sees the
/// server's own exit status.
fn mirror(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // Die of the same signal (default action restored), so the exit reads the same.
        // SAFETY: resetting a handler and raising a signal in our own process.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::prctl(libc::PR_SET_PDEATHSIG, 0);
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(libc::WEXITSTATUS(status))
}

fn socket_pair() -> Result<(OwnedFd, OwnedFd), Step> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(errno("socketpair"));
    }
    // SAFETY: socketpair succeeded, so both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let (source, fstype, data) = (c(source)?, c(fstype)?, c(data)?);
    let target = CString::new(target.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(format!(
            "{}: {}",
            target.to_string_lossy(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A private `/proc` (this pid namespace only), `/tmp`, `/run` and `/var/run`.
fn private_mounts(under_tmp: &[(PathBuf, std::fs::File)], egress: bool) -> Result<(), Step> {
    let step = |e: String| ("mounting the private filesystem view", e);
    mount(
        "none",
        Path::new("/"),
        "",
        libc::MS_REC | libc::MS_PRIVATE,
        "",
    )
    .map_err(step)?;
    mount(
        "proc",
        Path::new("/proc"),
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    )
    .map_err(step)?;
    for dir in ["/run", "/var/run", "/tmp"] {
        let path = Path::new(dir);
        // `/var/run` is usually a link to `/run`, hidden already.
        let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        if is_dir {
            mount(
                "tmpfs",
                path,
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV,
                "mode=1777,size=256m",
            )
            .map_err(step)?;
        }
    }
    std::fs::create_dir_all(PRIVATE_HOME).map_err(|e| step(e.to_string()))?;
    if egress {
        point_dns_at_the_forwarder().map_err(step)?;
    }
    for (path, file) in under_tmp {
        let is_dir = file.metadata().is_ok_and(|m| m.is_dir());
        let made = if is_dir {
            std::fs::create_dir_all(path)
        } else {
            // A file is bound onto a file.
            path.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::File::create(path).map(drop))
        };
        made.map_err(|e| step(format!("{}: {e}", path.display())))?;
        let from = format!("/proc/self/fd/{}", file.as_raw_fd());
        mount(&from, path, "", libc::MS_BIND | libc::MS_REC, "").map_err(step)?;
    }
    Ok(())
}

/// The sandbox resolves names through the egress forwarder: its own `resolv.conf`.
fn point_dns_at_the_forwarder() -> Result<(), String> {
    let etc = Path::new("/etc/resolv.conf");
    // systemd hosts link it into /run, which is private now: write the file where it points.
    if let Ok(target) = std::fs::read_link(etc) {
        let target = if target.is_absolute() {
            target
        } else {
            Path::new("/etc").join(target)
        };
        if target.starts_with("/run") {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            return std::fs::write(&target, forward::RESOLV_CONF).map_err(|e| e.to_string());
        }
    }
    let ours = Path::new("/run/corral-resolv.conf");
    std::fs::write(ours, forward::RESOLV_CONF).map_err(|e| e.to_string())?;
    mount(&ours.display().to_string(), etc, "", libc::MS_BIND, "")
}

/// Brings up `lo` in the new network namespace (it starts down).
fn loopback_up() -> Result<(), Step> {
    // SAFETY: a plain datagram socket for the interface ioctls.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(errno("socket for bringing up lo"));
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for both ioctls; the union member is the flags.
    let r = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        }
    };
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(errno("bringing up lo"));
    }
    Ok(())
}

/// Paths every runtime reads: libraries, interpreters, certificates, devices.
const RUNTIME_READ: &[&str] = &[
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt", "/proc", "/dev", "/sys",
];
/// Device files a runtime may write.
const RUNTIME_WRITE_FILES: &[&str] = &["/dev/null", "/dev/zero", "/dev/tty", "/dev/full"];

/// Scratch space inside the private `/tmp` when allowed paths are bound under it (`TMPDIR`).
const PRIVATE_SCRATCH: &str = "/tmp/scratch";

/// `rebound`: allowed paths live under the private `/tmp`, so `/tmp` as a whole cannot be
/// granted (Landlock rules cover everything beneath a path, bind mounts included); the server
/// gets a scratch directory and its home there instead.
fn apply_landlock(fs: &FsPolicy, net: &NetRule, rebound: bool) -> Result<(), Step> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, Scope,
    };
    let abi = ABI::V5;
    let step = |e: landlock::RulesetError| ("Landlock", e.to_string());
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(step)?;
    if *net != NetRule::Open {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(step)?;
    }
    let mut created = ruleset
        .scope(Scope::from_all(ABI::V6))
        .map_err(step)?
        .create()
        .map_err(step)?;
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let mut rules: Vec<(PathBuf, landlock::BitFlags<AccessFs>)> = Vec::new();
    if fs.read_all {
        rules.push(("/".into(), read));
    }
    if fs.write_all {
        rules.push(("/".into(), all));
    }
    for p in RUNTIME_READ {
        rules.push((PathBuf::from(p), read));
    }
    for p in &fs.read {
        rules.push((p.clone(), read));
    }
    for p in &fs.write {
        rules.push((p.clone(), all));
    }
    // The private /tmp (and home) are the sandbox's own scratch space.
    if rebound {
        std::fs::create_dir_all(PRIVATE_SCRATCH).map_err(|e| ("Landlock", e.to_string()))?;
        // SAFETY: the shim is single-threaded; nothing reads the environment concurrently.
        unsafe { std::env::set_var("TMPDIR", PRIVATE_SCRATCH) };
        rules.push((PRIVATE_SCRATCH.into(), all));
        rules.push((PRIVATE_HOME.into(), all));
    } else {
        rules.push(("/tmp".into(), all));
    }
    let file_write = AccessFs::WriteFile | AccessFs::ReadFile;
    for p in RUNTIME_WRITE_FILES {
        rules.push((PathBuf::from(p), file_write));
    }
    for (path, access) in rules {
        let Ok(fd) = PathFd::new(&path) else {
            // A runtime path this host does not have; allowed paths were checked at config time.
            continue;
        };
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(step)?;
    }
    if let NetRule::Ports(ports) = net {
        for port in ports {
            created = created
                .add_rule(landlock::NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(step)?;
        }
    }
    let status = created.restrict_self().map_err(step)?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err((
            "Landlock",
            "the kernel does not enforce it (Linux < 5.13, or `landlock` missing from the `lsm=` \
             boot parameter); filesystem permissions cannot be enforced"
                .into(),
        ));
    }
    Ok(())
}

/// What Landlock's TCP rules allow (kernels with ABI ≥ 4; not enforced before, where the
/// network namespace stands alone).
#[derive(Debug, Clone, PartialEq)]
enum NetRule {
    Open,
    /// No bind, no connect.
    Closed,
    /// Connect only to these ports (the egress forwarder's), no bind.
    Ports(Vec<u16>),
}

/// Landlock's TCP rules alone, for a sandbox without filesystem rules.
fn landlock_network_only(net: &NetRule) -> Result<(), Step> {
    use landlock::{
        ABI, Access, AccessNet, NetPort, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
    };
    let step = |e: landlock::RulesetError| ("Landlock (network)", e.to_string());
    let mut created = Ruleset::default()
        .handle_access(AccessNet::from_all(ABI::V4))
        .map_err(step)?
        .scope(Scope::from_all(ABI::V6))
        .map_err(step)?
        .create()
        .map_err(step)?;
    if let NetRule::Ports(ports) = net {
        for port in ports {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(step)?;
        }
    }
    created.restrict_self().map_err(step)?;
    Ok(())
}

/// Clears the bounding, ambient, effective, permitted and inheritable capability sets.
fn drop_capabilities() -> Result<(), Step> {
    for cap in 0..=63 {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability is expected.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data::default(); 2];
    // SAFETY: capset with a v3 header and two data words, all owned here.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(errno("capset (dropping capabilities)"));
    }
    Ok(())
}

fn install_seccomp(policy: &Policy, notify: Option<OwnedFd>) -> Result<(), Step> {
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule,
    };
    const X32: i64 = 0x4000_0000;
    // Stands for "ask the monitor" while seccompiler builds the program (see `notifying`).
    const ASK: u32 = 0xfff;
    let step = |e: String| ("seccomp", e);
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| step(e.to_string()))?;
    // Refused calls: the monitor fails them (EPERM for spawning, EACCES for sockets, see
    // `monitor::classify`) and reports each one.
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut enosys: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    if !policy.spawn {
        let new_process = SeccompRule::new(vec![
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                0,
            )
            .map_err(|e| step(e.to_string()))?,
        ])
        .map_err(|e| step(e.to_string()))?;
        refused.insert(libc::SYS_clone, vec![new_process]);
        for nr in [libc::SYS_fork, libc::SYS_vfork] {
            refused.insert(nr, vec![]);
        }
        // x32 entry points of the same calls (the arch check does not cover them).
        for nr in [libc::SYS_fork, libc::SYS_vfork, libc::SYS_clone] {
            refused.insert(X32 | nr, vec![]);
        }
        // clone3 passes its flags in memory, out of seccomp's reach: ENOSYS makes libcs
        // fall back to clone, which the rule above judges. Not a refusal, so not reported.
        enosys.insert(libc::SYS_clone3, vec![]);
        enosys.insert(X32 | libc::SYS_clone3, vec![]);
    }
    if !policy.network {
        let family = |f: i32| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, f as u64)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(|e| step(e.to_string()))
        };
        refused.insert(
            libc::SYS_socket,
            vec![family(libc::AF_INET)?, family(libc::AF_INET6)?],
        );
        refused.insert(X32 | libc::SYS_socket, vec![]);
    }
    let compile = |rules: BTreeMap<i64, Vec<SeccompRule>>, errno: u32| {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
            arch,
        )
        .map_err(|e| step(e.to_string()))?;
        let program: BpfProgram = filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| step(e.to_string()))?;
        Ok::<_, Step>(program)
    };
    if !enosys.is_empty() {
        seccompiler::apply_filter(&compile(enosys, libc::ENOSYS as u32)?)
            .map_err(|e| step(e.to_string()))?;
    }
    if refused.is_empty() {
        return Ok(());
    }
    let program = compile(refused.clone(), ASK)?;
    if let Some(sock) = notify
        && let Some(listener) = notifying(&program, ASK)
    {
        // Sent before exec; our copy closes when `listener` drops.
        return monitor::send_fd(&sock, &listener)
            .map_err(|e| step(format!("passing the listener: {e}")));
    }
    // No listener (an older kernel, or one already taken by an outer sandbox): the same
    // refusals as plain errno filters, enforced but not reported.
    let (spawn, network): (BTreeMap<_, _>, BTreeMap<_, _>) = refused
        .into_iter()
        .partition(|(nr, _)| (nr & !X32) != libc::SYS_socket);
    for (rules, errno) in [(spawn, libc::EPERM), (network, libc::EACCES)] {
        if !rules.is_empty() {
            seccompiler::apply_filter(&compile(rules, errno as u32)?)
                .map_err(|e| step(e.to_string()))?;
        }
    }
    Ok(())
}

/// Installs `program` with its `ask` errno returns turned into user notifications, and returns
/// the listener; `None` when the kernel does not offer one (nothing was installed then).
fn notifying(program: &[seccompiler::sock_filter], ask: u32) -> Option<OwnedFd> {
    const BPF_RET_K: u16 = 0x06;
    let mut program = program.to_vec();
    for insn in &mut program {
        if insn.code == BPF_RET_K && insn.k == libc::SECCOMP_RET_ERRNO | ask {
            insn.k = libc::SECCOMP_RET_USER_NOTIF;
        }
    }
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr().cast(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; no-new-privs is set.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog,
        )
    };
    // SAFETY: a non-negative result is a new descriptor (opened close-on-exec by the kernel).
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn exec(program: &str, argv: &[String]) -> Result<(), Step> {
    let c = |s: &OsStr| CString::new(s.as_bytes()).map_err(|e| ("execve", e.to_string()));
    let path = c(OsStr::new(program))?;
    let args: Vec<CString> = argv
        .iter()
        .map(|a| c(OsStr::new(a)))
        .collect::<Result<_, _>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    // The environment was prepared by the supervisor (see `Policy::environment`).
    // SAFETY: `path` and every argv entry are NUL-terminated and outlive the call; argv ends
    // with a null pointer; `environ` is this process's own environment.
    unsafe {
        libc::execv(path.as_ptr(), arg_ptrs.as_ptr());
    }
    Err(errno("execve"))
}
