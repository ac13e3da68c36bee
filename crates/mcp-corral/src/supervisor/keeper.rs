//! The keeper: `corral __keeper -- program args…`, the parent of an unsandboxed server started
//! through a launcher (a package manager or a shell, see `process::starts_a_tree`).
//!
//! A server started through a launcher is a tree (`npx` → `node`). Corral stops a tree by its
//! process group, but if Corral itself is killed (`kill -9`, a crash) it stops nothing, and
//! the parent-death signal the kernel offers reaches only the direct child: `npx` would die
//! and `node` would live on. The keeper closes that gap. It is a small single-threaded process
//! (a re-exec of the `corral` binary, before any runtime exists) that
//! - asks for a catchable signal when Corral dies, and on it kills the server's process group
//!   and every descendant that left it (as a child subreaper it inherits them), then exits;
//! - otherwise waits for the server and exits the same way, so the supervisor sees the
//!   server's own exit status; descendants the server left behind are killed then too.
//!
//! Sandboxed servers do not need it: the sandbox shim makes them PID 1 of a pid namespace.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

/// The hidden first argument that selects the keeper.
pub const KEEPER_ARG: &str = "__keeper";

/// The signal the keeper asks for when Corral dies (catchable, unlike SIGKILL).
const CORRAL_DIED: libc::c_int = libc::SIGUSR1;

/// Entry point: `args` are the process arguments after `__keeper`. Never returns.
pub fn main(args: &[String]) -> ! {
    let argv = match args.split_first() {
        Some((dashes, rest)) if dashes == "--" && !rest.is_empty() => rest,
        _ => fail("expected `-- program args…`"),
    };
    // SAFETY: getppid cannot fail.
    let corral = unsafe { libc::getppid() };
    let mut wanted = empty_set();
    for sig in [
        CORRAL_DIED,
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
    ] {
        // SAFETY: `wanted` is a valid, initialised signal set.
        unsafe { libc::sigaddset(&mut wanted, sig) };
    }
    // Signals are taken with sigwaitinfo below, never by handlers. SIGTERM and SIGINT reach
    // the whole group when Corral stops the server: the keeper waits for the server instead.
    // SAFETY: `wanted` is a valid signal set; the old mask is not needed.
    unsafe {
        libc::sigprocmask(libc::SIG_BLOCK, &wanted, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        libc::prctl(libc::PR_SET_PDEATHSIG, CORRAL_DIED);
        // Corral died before the request took effect: the signal will never come.
        if libc::getppid() != corral {
            libc::_exit(1);
        }
    }
    // SAFETY: fork in a single-threaded process (no runtime exists).
    let server = unsafe { libc::fork() };
    if server < 0 {
        fail(&format!("fork: {}", std::io::Error::last_os_error()));
    }
    if server == 0 {
        exec(argv, &wanted);
    }
    // Only the server uses the pipes: closing our copies lets the supervisor see EOF when the
    // server's side closes. stderr stays open for our own last words.
    // SAFETY: closing descriptors this process no longer uses.
    unsafe {
        libc::close(0);
        libc::close(1);
    }
    let status = watch(server, &wanted);
    // The server is gone; whatever it left behind goes with it.
    kill_descendants();
    mirror(status)
}

/// Waits for the server; returns its wait status. Exits at once if Corral dies.
fn watch(server: libc::pid_t, wanted: &libc::sigset_t) -> libc::c_int {
    loop {
        // SAFETY: siginfo_t is plain data; zero is a valid value to overwrite.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `wanted` and `info` are valid for the call.
        let sig = unsafe { libc::sigwaitinfo(wanted, &mut info) };
        if sig == CORRAL_DIED {
            kill_descendants();
            // SAFETY: ending this process.
            unsafe { libc::_exit(1) };
        }
        if sig != libc::SIGCHLD {
            continue;
        }
        // Reap everything that ended: the server, or orphans we adopted as subreaper.
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == server {
                return status;
            }
        }
    }
}

/// SIGKILLs every other member of the keeper's process group (the server's, unless a process
/// left it) and every child of the keeper (the server, and descendants that left the group and
/// were adopted when their parent died), until none is left. Bounded: a process that keeps
/// forking faster than it is killed cannot hold the keeper forever.
fn kill_descendants() {
    // SAFETY: getpgrp and getpid cannot fail.
    let (group, me) = unsafe { (libc::getpgrp(), libc::getpid()) };
    for _ in 0..50 {
        let mut victims = group_members(group, me);
        victims.extend(children_of(me));
        victims.sort_unstable();
        victims.dedup();
        if victims.is_empty() {
            return;
        }
        for pid in victims {
            // SAFETY: signalling a process of the server's tree (never this one).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        loop {
            // SAFETY: reaping our own children; a null status pointer is allowed.
            let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
        }
    }
}

/// Direct children of `pid`, from /proc.
fn children_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for task in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = task.path().join("children");
        if let Ok(text) = std::fs::read_to_string(path) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<libc::pid_t>().ok()),
            );
        }
    }
    out
}

/// Live processes in process group `group` other than `me`, from /proc.
fn group_members(group: libc::pid_t, me: libc::pid_t) -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // SAFETY: getpgid only reads another process's group id.
        if unsafe { libc::getpgid(pid) } == group && !zombie(pid) {
            out.push(pid);
        }
    }
    out
}

/// A zombie cannot be killed, only reaped by its parent.
fn zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

fn exec(argv: &[String], blocked: &libc::sigset_t) -> ! {
    // The server starts with the signal mask of an ordinary process (its scheduling policy is
    // already the default one: the supervisor reset the keeper's).
    // SAFETY: unblocking signals in the child before exec.
    unsafe {
        libc::sigprocmask(libc::SIG_UNBLOCK, blocked, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let c = |s: &str| CString::new(OsStr::new(s).as_bytes()).unwrap_or_default();
    let args: Vec<CString> = argv.iter().map(|a| c(a)).collect();
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: `args` outlive the call and `ptrs` ends with a null pointer; the program was
    // resolved to a path by the supervisor.
    unsafe { libc::execv(args[0].as_ptr(), ptrs.as_ptr()) };
    fail(&format!(
        "cannot start `{}`: {}",
        argv[0],
        std::io::Error::last_os_error()
    ))
}

/// Exits the way the server did (`status` from `waitpid`).
fn mirror(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // Die of the same signal (default action, unblocked), so the exit reads the same.
        // SAFETY: resetting a handler and raising a signal in our own process.
        unsafe {
            let mut set = empty_set();
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::signal(sig, libc::SIG_DFL);
            libc::prctl(libc::PR_SET_PDEATHSIG, 0);
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(libc::WEXITSTATUS(status))
}

fn empty_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

fn fail(detail: &str) -> ! {
    eprintln!("corral keeper: {detail}");
    std::process::exit(126)
}
