//! Remote upstreams: Streamable HTTP and legacy HTTP+SSE servers.
//!
//! A bridge task turns a remote server into the same newline-delimited byte streams a child
//! process has, so [`super::Connection`] (ids, pending map, progress routing) is reused as it is.
//! The bridge reads the lines Corral writes, sends them over HTTP, and writes every message the
//! server sends back (JSON bodies, SSE events on POST responses and on the GET stream) as lines.
//! When the transport fails for good, the bridge ends and the connection sees end-of-file, which
//! the supervisor treats like a process exit (restart policy, backoff).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::Mutex;

use crate::jsonrpc;

/// Which remote transport to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    StreamableHttp,
    LegacySse,
}

/// The two ends a [`super::Connection`] is built on, plus the bridge task.
pub struct Bridge {
    /// Messages from the server (the connection's "stdout").
    pub from_server: DuplexStream,
    /// Messages to the server (the connection's "stdin").
    pub to_server: DuplexStream,
    pub task: tokio::task::JoinHandle<String>,
}

const PIPE: usize = 1 << 20;

/// Starts a bridge to `url`. The task's output is why it ended.
pub fn connect(
    flavor: Flavor,
    url: String,
    headers: BTreeMap<String, String>,
    client: reqwest::Client,
) -> Bridge {
    let (conn_stdout, bridge_out) = tokio::io::duplex(PIPE);
    let (conn_stdin, bridge_in) = tokio::io::duplex(PIPE);
    let out = Arc::new(Mutex::new(bridge_out));
    let task = match flavor {
        Flavor::StreamableHttp => tokio::spawn(streamable(url, headers, client, bridge_in, out)),
        Flavor::LegacySse => tokio::spawn(legacy(url, headers, client, bridge_in, out)),
    };
    Bridge {
        from_server: conn_stdout,
        to_server: conn_stdin,
        task,
    }
}

type Out = Arc<Mutex<DuplexStream>>;

/// One HTTP client for every remote server (connection pooling, TLS roots loaded once).
pub fn http_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            crate::tls::install_provider();
            reqwest::Client::builder()
                .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default()
        })
        .clone()
}

async fn emit(out: &Out, msg: &[u8]) -> bool {
    let mut w = out.lock().await;
    w.write_all(msg).await.is_ok() && w.write_all(b"\n").await.is_ok()
}

/// Answers a request that could not be delivered, so its caller does not wait for a timeout.
async fn fail_request(out: &Out, line: &[u8], message: &str) {
    if let Ok(env) = jsonrpc::Envelope::parse(line)
        && env.kind() == jsonrpc::Kind::Request
    {
        let _ = emit(
            out,
            &jsonrpc::error(env.id, jsonrpc::code::SERVER_UNAVAILABLE, message),
        )
        .await;
    }
}

/// Session state learned from the server's answers.
#[derive(Default)]
struct SessionInfo {
    session_id: Option<String>,
    protocol: Option<String>,
}

async fn streamable(
    url: String,
    headers: BTreeMap<String, String>,
    client: reqwest::Client,
    input: DuplexStream,
    out: Out,
) -> String {
    let info = Arc::new(Mutex::new(SessionInfo::default()));
    let mut lines = BufReader::new(input).lines();
    let mut get_stream: Option<tokio::task::JoinHandle<()>> = None;
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<String>(1);
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            why = failed_rx.recv() => return why.unwrap_or_default(),
        };
        let Ok(Some(line)) = line else { break };
        let is_initialized = line.contains("\"notifications/initialized\"");
        let (c, u, h, i, o, failed) = (
            client.clone(),
            url.clone(),
            headers.clone(),
            info.clone(),
            out.clone(),
            failed_tx.clone(),
        );
        tokio::spawn(async move {
            let (client, url, headers, info, out) = (c, u, h, i, o);
            if let Err(e) =
                post_message(&client, &url, &headers, &info, &out, line.as_bytes()).await
            {
                let (PostError::Transport(why) | PostError::Request(why)) = &e;
                fail_request(&out, line.as_bytes(), why).await;
                if let PostError::Transport(why) = e {
                    let _ = failed.try_send(why);
                }
            }
        });
        // After the handshake, listen for server-initiated messages on the GET stream.
        if is_initialized && get_stream.is_none() {
            let (client, url, headers, info, out) = (
                client.clone(),
                url.clone(),
                headers.clone(),
                info.clone(),
                out.clone(),
            );
            get_stream = Some(tokio::spawn(async move {
                listen(&client, &url, &headers, &info, &out).await
            }));
        }
    }
    if let Some(h) = get_stream {
        h.abort();
    }
    // Corral closed the connection: end the session politely.
    let sid = info.lock().await.session_id.clone();
    if let Some(sid) = sid {
        let req = with_headers(client.delete(&url).header("mcp-session-id", sid), &headers);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), req.send()).await;
    }
    "closed by Corral".into()
}

/// Adds the configured headers (e.g. `Authorization`) to a request.
fn with_headers(
    mut req: reqwest::RequestBuilder,
    headers: &BTreeMap<String, String>,
) -> reqwest::RequestBuilder {
    for (k, v) in headers {
        req = req.header(k, v);
    }
    req
}

fn request(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &BTreeMap<String, String>,
    info: &SessionInfo,
) -> reqwest::RequestBuilder {
    let mut req = with_headers(client.request(method, url), headers);
    if let Some(sid) = &info.session_id {
        req = req.header("mcp-session-id", sid);
    }
    if let Some(p) = &info.protocol {
        req = req.header("mcp-protocol-version", p);
    }
    req
}

/// Why a message could not be delivered: the transport is gone (the bridge ends, the supervisor
/// reconnects), or only this request failed.
enum PostError {
    Transport(String),
    Request(String),
}

async fn post_message(
    client: &reqwest::Client,
    url: &str,
    headers: &BTreeMap<String, String>,
    info: &Mutex<SessionInfo>,
    out: &Out,
    body: &[u8],
) -> Result<(), PostError> {
    let mut req = {
        let info = info.lock().await;
        request(client, reqwest::Method::POST, url, headers, &info)
    };
    for (name, value) in stateless_headers(body) {
        req = req.header(name, value);
    }
    let resp = req
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| PostError::Transport(format!("cannot reach {url}: {}", root_cause(&e))))?;
    let status = resp.status();
    if let Some(sid) = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        info.lock().await.session_id = Some(sid.to_string());
    }
    if status == reqwest::StatusCode::NOT_FOUND && info.lock().await.session_id.is_some() {
        return Err(PostError::Transport(format!(
            "{url} ended the session (HTTP 404)"
        )));
    }
    if status == reqwest::StatusCode::ACCEPTED {
        return Ok(());
    }
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        // Many servers answer a JSON-RPC error with a 4xx status: deliver it as it is.
        if text.contains("\"jsonrpc\"") {
            let _ = emit(out, text.trim().as_bytes()).await;
            return Ok(());
        }
        return Err(PostError::Request(format!(
            "{url} answered HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        )));
    }
    let is_sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if is_sse {
        read_sse(resp, out, info).await;
        return Ok(());
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| PostError::Request(format!("reading the answer from {url}: {e}")))?;
    deliver(&bytes, out, info).await;
    Ok(())
}

/// The routing headers a 2026-07-28 request carries over HTTP: `MCP-Protocol-Version` (from
/// the body's `_meta`, there being no session), `Mcp-Method`, and `Mcp-Name` for the methods
/// that name a tool, prompt or resource. Empty for requests of the initialize era.
fn stateless_headers(body: &[u8]) -> Vec<(&'static str, String)> {
    const META_VERSION: &[u8] = b"io.modelcontextprotocol/protocolVersion";
    if memchr::memmem::find(body, META_VERSION).is_none() {
        return Vec::new();
    }
    let Ok(msg) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let params = msg.get("params");
    let Some(version) = params
        .and_then(|p| p.pointer("/_meta/io.modelcontextprotocol~1protocolVersion"))
        .and_then(Value::as_str)
    else {
        return Vec::new();
    };
    let mut out = vec![("mcp-protocol-version", version.to_string())];
    if let Some(method) = msg.get("method").and_then(Value::as_str) {
        out.push(("mcp-method", method.to_string()));
        let named = match method {
            "tools/call" | "prompts/get" => params.and_then(|p| p.get("name")),
            "resources/read" => params.and_then(|p| p.get("uri")),
            _ => None,
        };
        if let Some(name) = named.and_then(Value::as_str) {
            out.push(("mcp-name", name.to_string()));
        }
    }
    out
}

/// Writes one JSON body (a message or a batch) as lines, noting the negotiated protocol.
async fn deliver(bytes: &[u8], out: &Out, info: &Mutex<SessionInfo>) {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return;
    }
    if trimmed.contains("\"protocolVersion\"")
        && let Ok(v) = serde_json::from_str::<Value>(trimmed)
        && let Some(p) = v.pointer("/result/protocolVersion").and_then(Value::as_str)
    {
        info.lock().await.protocol = Some(p.to_string());
    }
    if trimmed.starts_with('[') {
        if let Ok(items) = serde_json::from_str::<Vec<Box<serde_json::value::RawValue>>>(trimmed) {
            for item in items {
                let _ = emit(out, item.get().as_bytes()).await;
            }
        }
        return;
    }
    let _ = emit(out, trimmed.as_bytes()).await;
}

/// Reads an SSE body, delivering each `message` event's data.
async fn read_sse(resp: reqwest::Response, out: &Out, info: &Mutex<SessionInfo>) {
    let mut events = SseParser::default();
    let mut body = resp.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        for (event, data) in events.push(&chunk) {
            if event.is_empty() || event == "message" {
                deliver(data.as_bytes(), out, info).await;
            }
        }
    }
}

/// The GET stream for server-initiated messages; a server without one answers 405.
async fn listen(
    client: &reqwest::Client,
    url: &str,
    headers: &BTreeMap<String, String>,
    info: &Mutex<SessionInfo>,
    out: &Out,
) {
    for attempt in 0..5u32 {
        let req = {
            let info = info.lock().await;
            request(client, reqwest::Method::GET, url, headers, &info)
        };
        match req.header("accept", "text/event-stream").send().await {
            Ok(resp) if resp.status().is_success() => read_sse(resp, out, info).await,
            Ok(_) => return,
            Err(_) => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(250 << attempt)).await;
    }
}

/// Legacy HTTP+SSE: `GET url` streams events; the first (`endpoint`) names where to POST.
async fn legacy(
    url: String,
    headers: BTreeMap<String, String>,
    client: reqwest::Client,
    input: DuplexStream,
    out: Out,
) -> String {
    let req = with_headers(
        client.get(&url).header("accept", "text/event-stream"),
        &headers,
    );
    let resp = match req.send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return format!("{url} answered HTTP {}", r.status()),
        Err(e) => return format!("cannot reach {url}: {}", root_cause(&e)),
    };
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::default();
    let info = Mutex::new(SessionInfo::default());
    // Wait for the endpoint event before sending anything.
    let endpoint = loop {
        let Some(Ok(chunk)) = body.next().await else {
            return format!("{url} closed the event stream before naming an endpoint");
        };
        if let Some((_, data)) = parser
            .push(&chunk)
            .into_iter()
            .find(|(e, _)| e == "endpoint")
        {
            match reqwest::Url::parse(&url).and_then(|base| base.join(data.trim())) {
                Ok(u) => break u.to_string(),
                Err(e) => return format!("bad endpoint `{data}` from {url}: {e}"),
            }
        }
    };
    let reader = {
        let out = out.clone();
        async move {
            while let Some(Ok(chunk)) = body.next().await {
                for (event, data) in parser.push(&chunk) {
                    if event.is_empty() || event == "message" {
                        deliver(data.as_bytes(), &out, &info).await;
                    }
                }
            }
        }
    };
    let writer = async {
        let mut lines = BufReader::new(input).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let req = client
                .post(&endpoint)
                .header("content-type", "application/json")
                .body(line.clone());
            match with_headers(req, &headers).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    fail_request(
                        &out,
                        line.as_bytes(),
                        &format!("{endpoint} answered HTTP {}", r.status()),
                    )
                    .await
                }
                Err(e) => {
                    let why = format!("cannot reach {endpoint}: {}", root_cause(&e));
                    fail_request(&out, line.as_bytes(), &why).await;
                    return why;
                }
            }
        }
        "closed by Corral".to_string()
    };
    tokio::select! {
        _ = reader => format!("{url} closed the event stream"),
        why = writer => why,
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Incremental Server-Sent Events parser: `(event, data)` per complete event.
#[derive(Default)]
pub struct SseParser {
    buf: String,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<(String, String)> {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
        let mut out = Vec::new();
        loop {
            let normalized = self.buf.replace("\r\n", "\n");
            let Some(end) = normalized.find("\n\n") else {
                self.buf = normalized;
                return out;
            };
            let block = normalized[..end].to_string();
            self.buf = normalized[end + 2..].to_string();
            let mut event = String::new();
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if !data.is_empty() {
                out.push((event, data.join("\n")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SseParser, stateless_headers};

    #[test]
    fn stateless_requests_carry_routing_headers() {
        let body = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        assert_eq!(
            stateless_headers(body),
            vec![
                ("mcp-protocol-version", "2026-07-28".to_string()),
                ("mcp-method", "tools/call".to_string()),
                ("mcp-name", "echo".to_string()),
            ]
        );
        let legacy = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo"}}"#;
        assert!(stateless_headers(legacy).is_empty());
    }

    #[test]
    fn parses_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: endpoint\r\ndata: /messages?s").is_empty());
        let got = p.push(b"ession=1\r\n\r\ndata: {\"a\":1}\n\n: comment\n\n");
        assert_eq!(
            got,
            vec![
                ("endpoint".to_string(), "/messages?session=1".to_string()),
                (String::new(), "{\"a\":1}".to_string())
            ]
        );
    }
}
