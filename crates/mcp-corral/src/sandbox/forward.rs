//! The inside end of `allowedHosts`: a forwarder process in the sandbox's network namespace.
//!
//! The sandbox's network namespace holds nothing but `lo`. The forwarder (forked by the shim
//! before it enters its pid namespace, so the server cannot see it; it dies with the shim)
//! listens there and relays to Corral's egress proxy over its unix socket ([`super::egress`]),
//! which decides what may pass:
//! - `127.0.0.1:3128`, the proxy named in `HTTP(S)_PROXY`, relayed as it is;
//! - for clients that ignore proxy variables (Node's `fetch`): `localhost:PORT` entries on the
//!   same address inside the sandbox, and a DNS server on `127.0.0.1:53` (the sandbox's
//!   `resolv.conf` points at it) that answers only allowed names, each with an address of its
//!   own in `127.1.0.0/16` where the forwarder listens on ports 80 and 443 (and the entry's
//!   port). A connection there becomes a `CONNECT name:port` to the proxy. Other names get
//!   NXDOMAIN, reported on the server's stderr.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Policy;
use super::egress::HostRule;

/// The port of the egress proxy inside a sandbox (`HTTP(S)_PROXY`).
pub const PROXY_PORT: u16 = 3128;
/// The sandbox's `resolv.conf`.
pub const RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions ndots:0 attempts:1\n";

type Step = (&'static str, String);

/// The ports a sandboxed server may connect to (Landlock TCP rules): the proxy's, 80 and 443 of
/// the named hosts, and each entry's own port.
pub fn ports(policy: &Policy) -> Option<Vec<u16>> {
    if !policy.egress() {
        return None;
    }
    let mut ports = vec![PROXY_PORT, 80, 443];
    for rule in rules(policy) {
        if let Some(port) = rule.port
            && !ports.contains(&port)
        {
            ports.push(port);
        }
    }
    Some(ports)
}

fn rules(policy: &Policy) -> Vec<HostRule> {
    policy
        .allowed_hosts
        .iter()
        .filter_map(|h| HostRule::parse(h).ok())
        .collect()
}

/// The forwarder's sockets, bound before the fork so they listen by the time the server runs.
pub struct Forwarder {
    socket: PathBuf,
    proxy: TcpListener,
    /// `localhost:PORT` entries: the client thinks it reaches the target directly.
    direct: Vec<(TcpListener, u16)>,
    dns: UdpSocket,
    rules: Vec<HostRule>,
    report: Option<RawFd>,
}

impl Forwarder {
    pub fn bind(policy: &Policy, socket: &Path) -> Result<Forwarder, Step> {
        let bind = |port: u16| {
            TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
                (
                    "egress forwarder",
                    format!("listening on 127.0.0.1:{port}: {e}"),
                )
            })
        };
        let rules = rules(policy);
        let mut direct = Vec::new();
        for rule in &rules {
            if let Some(port) = rule.loopback_port()
                && port != PROXY_PORT
                && !direct.iter().any(|(_, p)| *p == port)
            {
                direct.push((bind(port)?, port));
            }
        }
        let dns = UdpSocket::bind(("127.0.0.1", 53))
            .map_err(|e| ("egress forwarder", format!("DNS on 127.0.0.1:53: {e}")))?;
        Ok(Forwarder {
            socket: socket.to_path_buf(),
            proxy: bind(PROXY_PORT)?,
            direct,
            dns,
            rules,
            report: policy.report_fd,
        })
    }
}

/// Forks the forwarder process and returns in the shim.
pub fn start(forward: Forwarder) -> Result<(), Step> {
    // SAFETY: fork in a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err((
            "fork of the egress forwarder",
            std::io::Error::last_os_error().to_string(),
        ));
    }
    if pid > 0 {
        // The sockets live in the forwarder now.
        drop(forward);
        return Ok(());
    }
    // SAFETY: the forwarder must not outlive the shim, nor hold the server's stdin/stdout open
    // (stderr stays: refusals are reported there, into the server's log).
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
        }
    }
    serve(forward)
}

fn serve(forward: Forwarder) -> ! {
    let Forwarder {
        socket,
        proxy,
        direct,
        dns,
        rules,
        report,
    } = forward;
    for (listener, port) in direct {
        let s = socket.clone();
        std::thread::spawn(move || accept_loop(listener, s, Some(("localhost".into(), port))));
    }
    let s = socket.clone();
    std::thread::spawn(move || accept_loop(proxy, s, None));
    let names = Names {
        socket,
        rules,
        assigned: Mutex::new(HashMap::new()),
        report,
    };
    Arc::new(names).answer_dns(dns)
}

fn accept_loop(listener: TcpListener, socket: PathBuf, connect_to: Option<(String, u16)>) {
    for conn in listener.incoming().flatten() {
        let socket = socket.clone();
        let target = connect_to.clone();
        std::thread::spawn(move || {
            let _ = relay(conn, &socket, target);
        });
    }
}

/// One connection: to the proxy as it is, or (`connect_to`) through a `CONNECT` it opens.
fn relay(
    client: TcpStream,
    socket: &Path,
    connect_to: Option<(String, u16)>,
) -> std::io::Result<()> {
    let mut upstream = std::os::unix::net::UnixStream::connect(socket)?;
    if let Some((host, port)) = connect_to {
        write!(
            upstream,
            "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if upstream.read(&mut byte)? == 0 || head.len() > 16 * 1024 {
                return Ok(());
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Ok(());
        }
    }
    let (mut c_read, mut u_write) = (client.try_clone()?, upstream.try_clone()?);
    let back = std::thread::spawn(move || {
        let mut client = client;
        let _ = std::io::copy(&mut upstream, &mut client);
        // The other direction may still be reading: end ours so the client sees EOF.
        let _ = client.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut c_read, &mut u_write);
    let _ = u_write.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
    Ok(())
}

/// Allowed names and the loopback addresses they were given.
struct Names {
    socket: PathBuf,
    rules: Vec<HostRule>,
    assigned: Mutex<HashMap<String, Ipv4Addr>>,
    /// The shim's report pipe (see `monitor`), inherited from the shim.
    report: Option<RawFd>,
}

impl Names {
    /// Tells Corral, on the report pipe when there is one, else on stderr (the server's log).
    fn refused(&self, detail: &str) {
        match self.report {
            Some(fd) => {
                let line = format!("permissions.allowedHosts {detail}\n");
                // SAFETY: writing a buffer we own to a descriptor this process holds; the pipe
                // is non-blocking (set by the monitor), so a full pipe drops the line.
                unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
            }
            None => eprintln!("corral sandbox: {detail}"),
        }
    }

    fn answer_dns(self: Arc<Self>, dns: UdpSocket) -> ! {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = dns.recv_from(&mut buf) else {
                continue;
            };
            if let Some(reply) = self.reply(&buf[..n]) {
                let _ = dns.send_to(&reply, from);
            }
        }
    }

    /// The address for `name`, listening on its ports, if a rule allows it.
    fn address(self: &Arc<Self>, name: &str) -> Option<Ipv4Addr> {
        let ports: Vec<u16> = self
            .rules
            .iter()
            .filter(|r| r.loopback_port().is_none())
            .filter_map(|r| {
                let probe = r.port.unwrap_or(443);
                r.matches_host(name).then_some(probe)
            })
            .collect();
        if ports.is_empty() {
            return None;
        }
        let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = assigned.get(name) {
            return Some(*ip);
        }
        let n = assigned.len() + 1;
        if n > 65_000 {
            return None;
        }
        let ip = Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8);
        let mut listen: Vec<u16> = vec![80, 443];
        for p in ports {
            if !listen.contains(&p) {
                listen.push(p);
            }
        }
        for port in listen {
            if let Ok(listener) = TcpListener::bind((ip, port)) {
                let socket = self.socket.clone();
                let target = Some((name.to_string(), port));
                std::thread::spawn(move || accept_loop(listener, socket, target));
            }
        }
        assigned.insert(name.to_string(), ip);
        Some(ip)
    }

    /// The answer to one DNS query: an A record for an allowed name, nothing for its other
    /// record types, NXDOMAIN for everything else.
    fn reply(self: &Arc<Self>, query: &[u8]) -> Option<Vec<u8>> {
        let (name, qtype, end) = parse_question(query)?;
        let mut out = Vec::with_capacity(end + 16);
        out.extend_from_slice(&query[..2]); // id
        let rd = query[2] & 0x01;
        let allowed = self.address(&name);
        let rcode = if allowed.is_some() { 0 } else { 3 };
        if allowed.is_none() {
            self.refused(&format!(
                "DNS lookup of `{name}` refused (not in allowedHosts)"
            ));
        }
        out.push(0x80 | 0x04 | rd); // response, authoritative, recursion desired echoed
        out.push(0x80 | rcode); // recursion available
        let answers: u16 = match allowed {
            Some(_) if qtype == 1 => 1,
            _ => 0,
        };
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&answers.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&query[12..end]);
        if let (Some(ip), 1) = (allowed, answers) {
            out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]); // name pointer, A, IN
            out.extend_from_slice(&60u32.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
        Some(out)
    }
}

/// The question of a DNS query: (lowercase name, type, offset after the question).
fn parse_question(q: &[u8]) -> Option<(String, u16, usize)> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn only_allowed_names_resolve_each_to_its_own_loopback_address() {
        let names = Arc::new(Names {
            socket: PathBuf::from("/nonexistent"),
            rules: vec![
                HostRule::parse("api.example.com").unwrap(),
                HostRule::parse("*.cdn.example").unwrap(),
            ],
            assigned: Mutex::new(HashMap::new()),
            report: None,
        });
        let r = names.reply(&query("API.example.com", 1)).unwrap();
        assert_eq!(&r[..2], &[0x12, 0x34], "same id");
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        let ip = &r[r.len() - 4..];
        assert_eq!(&ip[..2], &[127, 1]);
        let again = names.reply(&query("api.example.com", 1)).unwrap();
        assert_eq!(&again[again.len() - 4..], ip, "stable per name");
        let other = names.reply(&query("x.cdn.example", 1)).unwrap();
        assert_ne!(&other[other.len() - 4..], ip, "an address per name");
        let aaaa = names.reply(&query("api.example.com", 28)).unwrap();
        assert_eq!(u16::from_be_bytes([aaaa[6], aaaa[7]]), 0, "no AAAA");
        let denied = names.reply(&query("evil.example", 1)).unwrap();
        assert_eq!(denied[3] & 0x0f, 3, "NXDOMAIN");
    }
}
