//! The shim's watch over a sandboxed server: what the sandbox refused, told to Corral.
//!
//! After the shim forks the server, its parent half stays outside the server's seccomp and
//! Landlock confinement and waits for it. While it waits it
//! - answers seccomp's user notifications for the calls the policy refuses (`fork` under
//!   `spawn: false`, an internet socket under `network: false`): the call fails with the same
//!   errno a plain filter would give, and the refusal is seen instead of only failing;
//! - watches the server's cgroup event counters (a fork refused by `limits.pids`, a process
//!   OOM-killed under `limits.memory`).
//!
//! Each finding is one line `KEY DETAIL` on a pipe that only Corral reads ([`REPORT_FD`]); the
//! server never holds that pipe, so it cannot forge a report. The supervisor turns the lines
//! into log lines, events and counts in the server's status ([`Refusal::parse`]).
//!
//! Landlock refusals are not seen here: the kernel reports them only to the audit log.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::cgroup::{Counter, parse_counter};

/// The descriptor number of the report pipe in the shim.
pub const REPORT_FD: RawFd = 3;

/// Refusals of one kind reported one by one before they are only counted.
const REPORTED_ONE_BY_ONE: u64 = 10;
/// How often counted refusals are summed up in a report.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// The syscall number bit of the x32 ABI, masked off to name the call.
const X32: i64 = 0x4000_0000;

/// One refusal, as carried on the report pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The configuration key that refused: `permissions.spawn`, `limits.pids`, …
    pub key: String,
    pub detail: String,
}

impl Refusal {
    /// Reads one report line; `None` for anything that is not one.
    pub fn parse(line: &str) -> Option<Refusal> {
        let (key, detail) = line.split_once(' ')?;
        let known = key.starts_with("permissions.") || key.starts_with("limits.");
        known.then(|| Refusal {
            key: key.to_string(),
            detail: detail.trim().to_string(),
        })
    }
}

/// What the shim's parent half watches.
pub struct Watch {
    /// The child's end sends the seccomp listener here (or closes without sending).
    pub listener_from_child: Option<OwnedFd>,
    pub counters: Vec<(Counter, File)>,
    pub report: Option<File>,
}

impl Watch {
    /// Opens the counters and the report pipe. Called before any namespace is entered, while
    /// the cgroup files are still reachable.
    pub fn open(counters: &[Counter], report_fd: Option<RawFd>) -> Watch {
        let counters = counters
            .iter()
            .filter_map(|c| File::open(&c.file).ok().map(|f| (c.clone(), f)))
            .collect();
        let report = report_fd.map(|fd| {
            // SAFETY: the supervisor placed the pipe's write end at this number for us, and
            // nothing else in the shim owns it.
            let file = unsafe { File::from_raw_fd(fd) };
            // A full pipe must never stall the server, which waits on our answers.
            // SAFETY: fcntl on a descriptor we own.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
            file
        });
        Watch {
            listener_from_child: None,
            counters,
            report,
        }
    }
}

struct Tally {
    seen: u64,
    unreported: u64,
    last_summary: Instant,
    detail: String,
}

struct Reporter {
    out: Option<File>,
    tallies: BTreeMap<String, Tally>,
}

impl Reporter {
    fn refused(&mut self, key: &str, detail: &str) {
        let t = self.tallies.entry(key.to_string()).or_insert(Tally {
            seen: 0,
            unreported: 0,
            last_summary: Instant::now(),
            detail: String::new(),
        });
        t.seen += 1;
        if t.seen <= REPORTED_ONE_BY_ONE {
            let line = format!("{key} {detail}\n");
            Self::send(&mut self.out, &line);
        } else {
            t.unreported += 1;
            t.detail = detail.to_string();
        }
    }

    /// Sums up what was only counted, when due (or at the end, `force`).
    fn summarise(&mut self, force: bool) -> bool {
        let mut pending = false;
        for (key, t) in &mut self.tallies {
            if t.unreported == 0 {
                continue;
            }
            if force || t.last_summary.elapsed() >= SUMMARY_EVERY {
                let line = format!(
                    "{key} {} more refused (latest: {})\n",
                    t.unreported, t.detail
                );
                Self::send(&mut self.out, &line);
                t.unreported = 0;
                t.last_summary = Instant::now();
            } else {
                pending = true;
            }
        }
        pending
    }

    fn send(out: &mut Option<File>, line: &str) {
        // One `write` per line keeps lines whole on the pipe; a full pipe drops the report.
        if let Some(f) = out {
            let _ = f.write(line.as_bytes());
        }
    }
}

/// Waits for the server (`child`), reporting what the sandbox refuses meanwhile, then returns
/// its wait status.
pub fn watch(child: libc::pid_t, mut w: Watch) -> libc::c_int {
    let listener = w.listener_from_child.take().and_then(|s| receive_fd(&s));
    let mut reporter = Reporter {
        out: w.report.take(),
        tallies: BTreeMap::new(),
    };
    let mut last: Vec<u64> = w.counters.iter().map(|(c, f)| read(f, &c.field)).collect();
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) } as RawFd;
    let mut listening = listener.as_ref().map(|l| l.as_raw_fd());
    loop {
        let mut fds = [
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: listening.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let pending = reporter.summarise(false);
        // Without a pidfd (kernels before 5.3) the loop polls for the exit instead.
        let timeout = if pidfd < 0 {
            100
        } else if !w.counters.is_empty() || pending {
            1000
        } else {
            -1
        };
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
        if let Some(fd) = listening {
            if fds[1].revents & libc::POLLIN != 0 {
                answer(fd, &mut reporter);
            } else if fds[1].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                // No process is left under the filter.
                listening = None;
            }
        }
        check_counters(&w.counters, &mut last, &mut reporter);
        if fds[0].revents != 0 || (pidfd < 0 && exited(child)) {
            break;
        }
    }
    check_counters(&w.counters, &mut last, &mut reporter);
    reporter.summarise(true);
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child
            || (r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
        {
            return status;
        }
    }
}

fn exited(child: libc::pid_t) -> bool {
    // SAFETY: waitid with WNOWAIT only peeks at the child's state; `info` is a valid out-pointer.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            child as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: reading the pid field of a siginfo filled (or zeroed) above.
    r != 0 || unsafe { info.si_pid() } == child
}

fn read(f: &File, field: &str) -> u64 {
    let mut buf = [0u8; 512];
    let n = f.read_at(&mut buf, 0).unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| parse_counter(t, field))
        .unwrap_or(0)
}

fn check_counters(counters: &[(Counter, File)], last: &mut [u64], reporter: &mut Reporter) {
    for ((c, f), before) in counters.iter().zip(last.iter_mut()) {
        let now = read(f, &c.field);
        for _ in *before..now {
            reporter.refused(&c.key, &c.meaning);
        }
        *before = now.max(*before);
    }
}

/// Takes one notification, fails the call as the policy says, and reports it.
fn answer(listener: RawFd, reporter: &mut Reporter) {
    // SAFETY: the kernel requires a zeroed request; all-zero is a valid seccomp_notif.
    let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: `req` is a valid, writable seccomp_notif for the ioctl.
    if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
        // ENOENT: the caller died (or was interrupted) before we could take it.
        return;
    }
    let (key, detail, errno) = classify(req.data.nr as i64, req.data.args[0]);
    let resp = libc::seccomp_notif_resp {
        id: req.id,
        val: 0,
        error: -errno,
        flags: 0,
    };
    // SAFETY: `resp` is a valid seccomp_notif_resp for the ioctl.
    unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
    reporter.refused(key, &detail);
}

/// What a refused call was, which permission refused it, and the errno it fails with.
fn classify(nr: i64, arg0: u64) -> (&'static str, String, i32) {
    let nr = nr & !X32;
    match nr {
        libc::SYS_clone | libc::SYS_fork | libc::SYS_vfork => (
            "permissions.spawn",
            "a new process (fork) was refused".into(),
            libc::EPERM,
        ),
        libc::SYS_socket => {
            let family = match arg0 as i32 {
                libc::AF_INET => "AF_INET",
                libc::AF_INET6 => "AF_INET6",
                _ => "a network family",
            };
            (
                "permissions.network",
                format!("an {family} socket was refused"),
                libc::EACCES,
            )
        }
        other => (
            "permissions",
            format!("system call {other} was refused"),
            libc::EPERM,
        ),
    }
}

/// Runs `f` with a message of one byte and room for one descriptor (SCM_RIGHTS).
fn with_message<R>(f: impl FnOnce(&mut libc::msghdr) -> R) -> R {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // `byte`, `iov` and `control` outlive the call, so the pointers in `msg` stay valid.
    f(&mut msg)
}

/// Sends `fd` over the unix socket `sock` (SCM_RIGHTS).
pub fn send_fd(sock: &OwnedFd, fd: &OwnedFd) -> std::io::Result<()> {
    with_message(|msg| {
        // SAFETY: `msg` has room for one header with one descriptor, so CMSG_FIRSTHDR is
        // non-null and CMSG_DATA has room for a RawFd.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
            if libc::sendmsg(sock.as_raw_fd(), msg, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    })
}

/// Receives one descriptor sent by [`send_fd`]; `None` when the peer closed without sending.
fn receive_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    with_message(|msg| {
        loop {
            // SAFETY: `msg` describes live buffers of the sizes given.
            let n = unsafe { libc::recvmsg(sock.as_raw_fd(), msg, libc::MSG_CMSG_CLOEXEC) };
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if n <= 0 {
                return None;
            }
            break;
        }
        // SAFETY: the kernel filled the control buffer (msg_controllen says how much);
        // CMSG_FIRSTHDR returns null when there is no header, and a SCM_RIGHTS header from
        // `send_fd` carries one descriptor, now ours.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
                return None;
            }
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
            Some(OwnedFd::from_raw_fd(fd))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_name_a_permission_or_limit() {
        assert_eq!(
            Refusal::parse("permissions.spawn a new process (fork) was refused"),
            Some(Refusal {
                key: "permissions.spawn".into(),
                detail: "a new process (fork) was refused".into()
            })
        );
        assert_eq!(
            Refusal::parse("limits.pids 3 more refused").unwrap().key,
            "limits.pids"
        );
        assert_eq!(Refusal::parse("hello world"), None);
        assert_eq!(Refusal::parse("permissions.spawn"), None);
    }

    #[test]
    fn refused_calls_fail_with_the_plain_filter_errno() {
        assert_eq!(classify(libc::SYS_fork, 0).2, libc::EPERM);
        assert_eq!(classify(X32 | libc::SYS_clone, 0).0, "permissions.spawn");
        let (key, detail, errno) = classify(libc::SYS_socket, libc::AF_INET6 as u64);
        assert_eq!((key, errno), ("permissions.network", libc::EACCES));
        assert!(detail.contains("AF_INET6"), "{detail}");
    }
}
