//! The `allowedHosts` egress proxy: the only way out of a sandbox's empty network namespace.
//!
//! Corral listens on a unix socket per sandboxed server. Inside the sandbox the shim's parent
//! relays to it: its HTTP proxy port (for clients that honour `HTTP(S)_PROXY`), and transparent
//! listeners for clients that do not (see [`super::shim`]). The proxy speaks HTTP/1.1 proxy
//! requests: `CONNECT host:port` (HTTPS and any TCP) and absolute-URI requests (plain HTTP). It
//! checks the host against the list, resolves it itself, refuses private and loopback
//! addresses unless the entry names one, and logs every refusal with the server and host.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// The longest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// One `allowedHosts` entry: `host` (ports 80 and 443), `host:port`, or `*.domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    pub host: String,
    pub port: Option<u16>,
}

impl HostRule {
    pub fn parse(entry: &str) -> Result<HostRule, String> {
        let entry = entry.trim().to_ascii_lowercase();
        let (host, port) = match entry.rsplit_once(':') {
            // `[::1]:8080`, `host:8080`; a bare IPv6 literal has more than one colon.
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{entry}`: `{p}` is not a port"))?;
                (h.trim_matches(['[', ']']).to_string(), Some(port))
            }
            _ => (entry.trim_matches(['[', ']']).to_string(), None),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!(
                "`{entry}` is not a host name (use `host`, `host:port` or `*.domain`)"
            ));
        }
        Ok(HostRule { host, port })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => port == 80 || port == 443,
        };
        port_ok && self.matches_host(host)
    }

    /// Whether `host` is this entry's host (or, for `*.domain`, one below it).
    pub fn matches_host(&self, host: &str) -> bool {
        match self.host.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => self.host == host,
        }
    }

    /// The entry itself names a loopback or private target, so resolving to one is expected.
    fn names_local(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| is_local(&ip))
    }

    /// Entries a non-proxy-aware client reaches at the same address inside the sandbox.
    pub fn loopback_port(&self) -> Option<u16> {
        let local = matches!(self.host.as_str(), "localhost" | "127.0.0.1");
        if local { self.port } else { None }
    }
}

fn is_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // CGNAT 100.64/10
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_local(&IpAddr::V4(v4)))
        }
    }
}

/// A running proxy; dropping it stops it and removes its socket.
pub struct EgressProxy {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl EgressProxy {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// Starts a proxy; `denied` hears every refusal.
pub fn start(
    rules: Vec<HostRule>,
    denied: Arc<dyn Fn(&str) + Send + Sync>,
) -> std::io::Result<EgressProxy> {
    let path = std::env::temp_dir().join(format!(
        "corral-egress-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let rules = Arc::new(rules);
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (rules, denied) = (rules.clone(), denied.clone());
            tokio::spawn(async move {
                if let Err(e) = serve(conn, &rules).await {
                    denied(&format!("egress denied: {e}"));
                }
            });
        }
    });
    Ok(EgressProxy { path, task })
}

/// Handles one proxied connection; `Err` is a refusal (already answered with 403/502).
async fn serve(mut conn: UnixStream, rules: &[HostRule]) -> Result<(), String> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = conn.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
            break end + 4;
        }
        if head.len() > MAX_HEAD {
            return refuse(&mut conn, 400, "request head too large").await;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let first = text.lines().next().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let Some((host, port)) = target_of(method, target) else {
        return refuse(&mut conn, 400, &format!("cannot proxy `{first}`")).await;
    };
    let Some(rule) = rules.iter().find(|r| r.matches(&host, port)) else {
        return refuse(
            &mut conn,
            403,
            &format!("{host}:{port} is not in allowedHosts"),
        )
        .await;
    };
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(a) => a.collect(),
        Err(e) => return refuse(&mut conn, 502, &format!("cannot resolve {host}: {e}")).await,
    };
    let allowed: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| rule.names_local() || !is_local(&a.ip()))
        .collect();
    if allowed.is_empty() {
        return refuse(
            &mut conn,
            403,
            &format!(
                "{host}:{port} resolves to a private or loopback address; list it explicitly to allow that"
            ),
        )
        .await;
    }
    let mut upstream = None;
    for addr in &allowed {
        if let Ok(Ok(s)) = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            upstream = Some(s);
            break;
        }
    }
    let Some(mut upstream) = upstream else {
        return refuse(&mut conn, 502, &format!("cannot connect to {host}:{port}")).await;
    };
    if connect {
        conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
    } else {
        // Origin servers get the origin form (`GET /path`), as a proxy must send it.
        let origin = origin_form(&text, first, method, target);
        upstream
            .write_all(origin.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    // Bytes the client sent after the head belong to the tunnel.
    if head.len() > end {
        upstream
            .write_all(&head[end..])
            .await
            .map_err(|e| e.to_string())?;
    }
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
    Ok(())
}

/// `(host, port)` of a proxy request: `CONNECT host:port` or `GET http://host[:port]/…`.
fn target_of(method: &str, target: &str) -> Option<(String, u16)> {
    let authority = if method.eq_ignore_ascii_case("CONNECT") {
        target
    } else {
        let rest = target.strip_prefix("http://")?;
        rest.split(['/', '?', '#']).next()?
    };
    let default = if method.eq_ignore_ascii_case("CONNECT") {
        443
    } else {
        80
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse().ok()?),
        _ => (authority, default),
    };
    let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
    (!host.is_empty()).then_some((host, port))
}

/// The request head with its absolute URI replaced by the path (`/` when it has none).
fn origin_form(head: &str, first: &str, method: &str, target: &str) -> String {
    let after_scheme = target.strip_prefix("http://").unwrap_or(target);
    let path = after_scheme
        .find(['/', '?'])
        .map_or("/", |i| &after_scheme[i..]);
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let version = first.split_whitespace().nth(2).unwrap_or("HTTP/1.1");
    let rest = head.split_once("\r\n").map_or("\r\n", |(_, r)| r);
    format!("{method} {path} {version}\r\n{rest}")
}

async fn refuse(conn: &mut UnixStream, status: u16, why: &str) -> Result<(), String> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Bad Gateway",
    };
    let body = format!("corral: {why}\n");
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes()).await;
    Err(why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_hosts_ports_and_wildcards() {
        let r = HostRule::parse("API.example.com").unwrap();
        assert!(r.matches("api.example.com", 443) && r.matches("api.example.com", 80));
        assert!(!r.matches("api.example.com", 22) && !r.matches("evil.com", 443));
        let w = HostRule::parse("*.example.com").unwrap();
        assert!(w.matches("a.example.com", 443) && !w.matches("example.com", 443));
        assert!(!w.matches("a.example.com.evil", 443));
        let p = HostRule::parse("localhost:8080").unwrap();
        assert!(p.matches("localhost", 8080) && !p.matches("localhost", 8081));
        assert_eq!(p.loopback_port(), Some(8080));
        assert!(HostRule::parse("http://x/").is_err());
        assert_eq!(
            HostRule::parse("[::1]:9000").unwrap(),
            HostRule {
                host: "::1".into(),
                port: Some(9000)
            }
        );
    }

    #[test]
    fn targets_come_from_connect_and_absolute_uris() {
        assert_eq!(
            target_of("CONNECT", "a.com:8443"),
            Some(("a.com".into(), 8443))
        );
        assert_eq!(
            target_of("GET", "http://A.com/x?y"),
            Some(("a.com".into(), 80))
        );
        assert_eq!(
            target_of("GET", "http://u:p@a.com:81/"),
            Some(("a.com".into(), 81))
        );
        assert_eq!(target_of("GET", "/relative"), None);
    }

    #[test]
    fn plain_http_is_forwarded_in_origin_form() {
        let head = "GET http://a.com:81/x?y=1 HTTP/1.1\r\nHost: a.com:81\r\n\r\n";
        let first = head.lines().next().unwrap();
        assert_eq!(
            origin_form(head, first, "GET", "http://a.com:81/x?y=1"),
            "GET /x?y=1 HTTP/1.1\r\nHost: a.com:81\r\n\r\n"
        );
        assert!(origin_form(head, first, "GET", "http://a.com").starts_with("GET / HTTP/1.1"));
    }

    #[test]
    fn private_addresses_are_local() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
        ] {
            assert!(is_local(&ip.parse().unwrap()), "{ip}");
        }
        assert!(!is_local(&"93.184.216.34".parse().unwrap()));
    }
}
