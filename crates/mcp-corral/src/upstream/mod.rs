//! The JSON-RPC link to one upstream MCP server.
//!
//! A [`Connection`] owns nothing but the byte streams to a server. It assigns its own request
//! ids (so concurrent callers can never collide), keeps the pending map that returns every reply
//! to exactly the caller that asked, maps progress tokens back to the caller's own token and
//! sink, and hands every other server notification to [`Events`]. It never parses payloads it
//! does not need to route.
//!
//! Seams: the supervisor creates connections over a child's pipes and closes them with the exit
//! status; the gateway calls [`Connection::start_call`] and [`Connection::cancel`].

pub mod remote;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWrite, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::jsonrpc::scan::{self, Scan};
use crate::jsonrpc::{self, Envelope, Kind, RawSlice, Reply};
use crate::lines::LineWriter;

/// Calls in flight to one server before new ones get a "busy" error.
const MAX_PENDING: usize = 4096;
/// The longest line accepted from a server (64 MiB); longer lines are dropped with a log entry.
const MAX_LINE: usize = 64 * 1024 * 1024;

/// Where notifications tied to one call (progress) are delivered: the caller's outbound queue.
pub type Sink = mpsc::Sender<Vec<u8>>;

/// Receives what a server sends that is not a reply to a call.
pub trait Events: Send + Sync + 'static {
    /// A notification not tied to a call: `notifications/tools/list_changed`, `notifications/message`, …
    fn notification(&self, server: &str, method: &str, params: Option<&RawValue>);
    /// A line on stdout that is not JSON-RPC: kept in the server's log.
    fn stray_output(&self, server: &str, line: &str);
    /// A limit Corral enforces on the connection fired (a call hit `limits.timeout`).
    fn limit_fired(&self, server: &str, what: &str);
    /// A request from the server to a client (`sampling/createMessage`, `elicitation/create`,
    /// `roots/list`, …). The receiver must answer it through [`ServerRequest::respond`].
    fn server_request(&self, request: ServerRequest);
}

/// A request a server sent to its client, waiting for an answer.
pub struct ServerRequest {
    pub conn: Arc<Connection>,
    /// The server's own id for the request, echoed back in the answer.
    pub id: Box<RawValue>,
    pub method: String,
    pub params: Option<Box<RawValue>>,
}

impl ServerRequest {
    /// Answers the server: `field` is `result` or `error`, `raw` its JSON.
    pub fn respond(&self, field: &str, raw: &str) {
        let _ = self
            .conn
            .write_line(jsonrpc::response_raw(&self.id, field, raw));
    }

    pub fn fail(&self, code: i64, message: &str) {
        let _ = self
            .conn
            .write_line(jsonrpc::error(Some(&self.id), code, message));
    }
}

/// Why a call did not get a reply from the server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("server `{server}` {reason}")]
    Closed { server: String, reason: String },
    #[error("server `{server}` has {MAX_PENDING} calls in flight; try again later")]
    Busy { server: String },
    #[error("request cancelled")]
    Cancelled,
    /// The call's deadline passed; Corral told the server to stop (`notifications/cancelled`).
    #[error("server `{server}` did not answer within {} s", .after.as_secs())]
    TimedOut {
        server: String,
        after: std::time::Duration,
    },
}

impl CallError {
    pub fn code(&self) -> i64 {
        match self {
            CallError::Closed { .. } => jsonrpc::code::SERVER_UNAVAILABLE,
            CallError::Busy { .. } => jsonrpc::code::BUSY,
            CallError::Cancelled => jsonrpc::code::REQUEST_CANCELLED,
            CallError::TimedOut { .. } => jsonrpc::code::REQUEST_TIMEOUT,
        }
    }
}

/// Request parameters as Corral forwards them.
pub enum Params<'a> {
    None,
    /// Forwarded unchanged.
    Raw(&'a str),
    /// Top-level members kept raw; the gateway rewrites only the ones it routes on.
    Object(ParamMap),
}

pub type ParamMap = BTreeMap<String, Box<RawValue>>;

/// Where a call's progress notifications go, and under which token the caller knows them.
pub struct ProgressRoute {
    pub sink: Sink,
    pub token: Box<RawValue>,
}

struct Pending {
    reply: oneshot::Sender<Result<Reply, CallError>>,
    progress: Option<ProgressRoute>,
    /// When the call times out, and its timeout (for the error message).
    deadline: Option<(tokio::time::Instant, std::time::Duration)>,
}

/// A live link to one server.
pub struct Connection {
    server: Arc<str>,
    /// The server's stdin. Callers write their own requests (no writer task in between: one
    /// task wake-up less per call), combined into one syscall under load.
    writer: LineWriter,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Pending, IdHash>>,
    closed: Mutex<Option<String>>,
    /// Set while calls with a deadline may be pending, so the sweeper ticks; a call that finds
    /// it clear wakes the sweeper. One timer per connection instead of one per call.
    sweep_armed: std::sync::atomic::AtomicBool,
    sweep: tokio::sync::Notify,
    /// For a server on the stateless revision (2026-07-28): the `_meta` members every request
    /// carries (protocol version, client info, capabilities), since there is no handshake.
    envelope: std::sync::OnceLock<serde_json::Map<String, serde_json::Value>>,
    /// Where timeouts are reported (the server's log).
    events: Arc<dyn Events>,
}

/// A call in flight; await `reply`, or cancel by `id`.
pub struct CallHandle {
    pub id: u64,
    pub reply: oneshot::Receiver<Result<Reply, CallError>>,
}

impl Connection {
    /// Starts the reader and writer tasks over a server's stdout/stdin.
    ///
    /// `on_eof` fires when the server closes its stdout, so the supervisor can reap it.
    pub fn spawn<R, W>(
        server: &str,
        stdout: R,
        stdin: W,
        events: Arc<dyn Events>,
        on_eof: oneshot::Sender<()>,
    ) -> Arc<Connection>
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Arc::new_cyclic(|weak: &std::sync::Weak<Connection>| {
            let weak = weak.clone();
            // A server that closed its stdin cannot answer what is pending: fail it now.
            let on_error = move |e: std::io::Error| {
                if let Some(conn) = weak.upgrade() {
                    conn.close(&format!("stopped reading its stdin ({e})"));
                }
            };
            Connection {
                server: server.into(),
                writer: LineWriter::new(stdin, on_error),
                next_id: AtomicU64::new(1),
                pending: Mutex::new(HashMap::default()),
                closed: Mutex::new(None),
                sweep_armed: std::sync::atomic::AtomicBool::new(false),
                sweep: tokio::sync::Notify::new(),
                envelope: std::sync::OnceLock::new(),
                events: events.clone(),
            }
        });
        tokio::spawn(sweep_deadlines(Arc::downgrade(&conn)));
        let reader = conn.clone();
        tokio::spawn(async move {
            reader.read_loop(stdout, events).await;
            let _ = on_eof.send(());
        });
        conn
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends a request; the reply arrives on the returned handle. Never waits: the line is
    /// queued for the writer, and the pending map caps how many calls can be queued.
    ///
    /// With a `timeout`, a call still unanswered after it fails with [`CallError::TimedOut`]
    /// and the server gets `notifications/cancelled`.
    pub fn start_call(
        &self,
        method: &str,
        params: Params<'_>,
        progress: Option<ProgressRoute>,
        timeout: Option<std::time::Duration>,
    ) -> Result<CallHandle, CallError> {
        if let Some(reason) = lock(&self.closed).clone() {
            return Err(CallError::Closed {
                server: self.server.to_string(),
                reason,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id_text = id.to_string();
        let params = match self.envelope.get() {
            Some(envelope) => Params::Object(with_envelope(params, envelope)),
            None => params,
        };
        let line = match params {
            Params::None => jsonrpc::request_raw(&id_text, method, None),
            Params::Raw(raw) => jsonrpc::request_raw(&id_text, method, Some(raw)),
            Params::Object(mut map) => {
                if progress.is_some() {
                    set_progress_token(&mut map, id);
                }
                jsonrpc::request_raw(&id_text, method, Some(&serialize_map(&map)))
            }
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.len() >= MAX_PENDING {
                return Err(CallError::Busy {
                    server: self.server.to_string(),
                });
            }
            pending.insert(
                id,
                Pending {
                    reply: tx,
                    progress,
                    deadline: timeout.map(|after| (tokio::time::Instant::now() + after, after)),
                },
            );
        }
        if self.write_line(line).is_err() {
            lock(&self.pending).remove(&id);
            return Err(self.closed_error());
        }
        if timeout.is_some() && !self.sweep_armed.swap(true, Ordering::SeqCst) {
            self.sweep.notify_one();
        }
        Ok(CallHandle { id, reply: rx })
    }

    /// Talks to this server on the stateless revision from now on: every request carries
    /// `envelope` in its `_meta`.
    pub fn set_stateless(&self, envelope: serde_json::Map<String, serde_json::Value>) {
        let _ = self.envelope.set(envelope);
    }

    /// Whether the server speaks the stateless revision (results may be `input_required`).
    pub fn is_stateless(&self) -> bool {
        self.envelope.get().is_some()
    }

    /// A request/response round trip for Corral's own use (handshake, lists, health).
    pub async fn request(&self, method: &str, params: Option<&str>) -> Result<Reply, CallError> {
        let params = params.map_or(Params::None, Params::Raw);
        let handle = self.start_call(method, params, None, None)?;
        handle
            .reply
            .await
            .unwrap_or_else(|_| Err(self.closed_error()))
    }

    /// Sends a request whose answer nobody waits for (a `subscriptions/listen` that lasts as
    /// long as the connection): it takes no slot in the pending map and does not count as a
    /// call in flight; an answer, if one comes, is dropped as unmatched.
    pub fn send_untracked(
        &self,
        id: &str,
        method: &str,
        params: Params<'_>,
    ) -> Result<(), CallError> {
        let params = match self.envelope.get() {
            Some(envelope) => Params::Object(with_envelope(params, envelope)),
            None => params,
        };
        let params = match params {
            Params::None => None,
            Params::Raw(raw) => Some(raw.to_string()),
            Params::Object(map) => Some(serialize_map(&map)),
        };
        let line = jsonrpc::request_raw(
            &serde_json::to_string(id).unwrap_or_default(),
            method,
            params.as_deref(),
        );
        self.write_line(line).map_err(|_| self.closed_error())
    }

    /// Sends a notification to the server.
    pub fn notify(&self, method: &str, params: Option<&str>) -> Result<(), CallError> {
        let line = jsonrpc::notification_raw(method, params);
        self.write_line(line).map_err(|_| self.closed_error())
    }

    fn write_line(&self, line: Vec<u8>) -> std::io::Result<()> {
        self.writer.push(line)
    }

    /// Releases a pending call and tells the server (`notifications/cancelled`).
    pub fn cancel(&self, id: u64, reason: &str) {
        self.end_call(id, CallError::Cancelled, reason);
    }

    /// Fails a pending call with `error` and tells the server to stop working on it.
    fn end_call(&self, id: u64, error: CallError, reason: &str) {
        let removed = lock(&self.pending).remove(&id);
        if let Some(p) = removed {
            let _ = p.reply.send(Err(error));
            let params = serde_json::json!({ "requestId": id, "reason": reason }).to_string();
            let _ = self.notify("notifications/cancelled", Some(&params));
        }
    }

    /// Fails the calls whose deadline passed; true while calls with a deadline remain.
    fn expire_overdue(&self) -> bool {
        let now = tokio::time::Instant::now();
        let mut overdue = Vec::new();
        let mut waiting = false;
        for (id, p) in lock(&self.pending).iter() {
            match p.deadline {
                Some((at, after)) if at <= now => overdue.push((*id, after)),
                Some(_) => waiting = true,
                None => {}
            }
        }
        for (id, after) in overdue {
            let error = CallError::TimedOut {
                server: self.server.to_string(),
                after,
            };
            self.end_call(id, error, "timed out in Corral (limits.timeout)");
            let what = format!(
                "a call hit limits.timeout ({} s); the server was told to cancel it",
                after.as_secs()
            );
            self.events.limit_fired(&self.server, &what);
        }
        waiting
    }

    /// Fails every call in flight with `reason` and refuses new ones. Called by the supervisor
    /// with the exit status, so callers learn at once why their call ended.
    pub fn close(&self, reason: &str) {
        *lock(&self.closed) = Some(reason.to_string());
        let drained: Vec<Pending> = lock(&self.pending).drain().map(|(_, p)| p).collect();
        for p in drained {
            let _ = p.reply.send(Err(CallError::Closed {
                server: self.server.to_string(),
                reason: reason.to_string(),
            }));
        }
    }

    /// Closes the server's stdin once everything queued before has been written: the first,
    /// polite stop signal for a stdio server.
    pub async fn close_stdin(&self) {
        self.writer.close().await;
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.pending).len()
    }

    fn closed_error(&self) -> CallError {
        let reason = lock(&self.closed)
            .clone()
            .unwrap_or_else(|| "closed its connection".into());
        CallError::Closed {
            server: self.server.to_string(),
            reason,
        }
    }

    async fn read_loop<R: tokio::io::AsyncRead + Unpin>(
        self: Arc<Self>,
        stdout: R,
        events: Arc<dyn Events>,
    ) {
        let mut reader = BufReader::with_capacity(64 * 1024, stdout);
        let mut line = Vec::with_capacity(4096);
        loop {
            line.clear();
            match read_line_limited(&mut reader, &mut line).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    events.stray_output(
                        &self.server,
                        &format!("[corral] reading stdout failed: {e}"),
                    );
                    break;
                }
            }
            if trim_line(&line).is_empty() {
                continue;
            }
            // Large lines move into the reply (no copy of a 1 MiB result); small ones are copied
            // out, which is cheaper than allocating a fresh read buffer for every message.
            let taken = if line.len() > 64 * 1024 {
                std::mem::replace(&mut line, Vec::with_capacity(4096))
            } else {
                line.clone()
            };
            self.dispatch(taken, events.as_ref()).await;
        }
    }

    async fn dispatch(self: &Arc<Self>, line: Vec<u8>, events: &dyn Events) {
        let text = trim_line(&line);
        match scan_reply(text) {
            Ok(Some((id, is_error, range))) => {
                let offset = text.as_ptr() as usize - line.as_ptr() as usize;
                let range = range.start + offset..range.end + offset;
                // SAFETY: `scan_reply` returns the range of a JSON value inside `text`, which it
                // checked is UTF-8; `text` is a sub-slice of `line` starting at `offset`.
                let body = unsafe { RawSlice::new(line, range) };
                self.on_response(id, is_error, body);
                return;
            }
            Ok(None) => {}
            Err(Scan::Invalid) => {
                events.stray_output(&self.server, &String::from_utf8_lossy(text));
                return;
            }
            Err(Scan::Unsupported) => {}
        }
        let Ok(env) = Envelope::parse(text) else {
            events.stray_output(&self.server, &String::from_utf8_lossy(text));
            return;
        };
        match env.kind() {
            Kind::Response => {
                let Some(id) = env.id.and_then(|raw| raw.get().parse::<u64>().ok()) else {
                    return;
                };
                let (is_error, range) = match (env.result, env.error) {
                    (Some(r), _) => (false, RawSlice::range_in(&line, r)),
                    (None, Some(e)) => (true, RawSlice::range_in(&line, e)),
                    (None, None) => return,
                };
                drop(env);
                if let Some(range) = range {
                    // SAFETY: `range_in` located a `RawValue` (a `&str`) parsed from `line`.
                    let body = unsafe { RawSlice::new(line, range) };
                    self.on_response(id, is_error, body);
                }
            }
            Kind::Notification => self.on_notification(&env, events),
            Kind::Request => self.on_server_request(&env, events).await,
            Kind::Invalid => events.stray_output(&self.server, &String::from_utf8_lossy(text)),
        }
    }

    fn on_response(&self, id: u64, is_error: bool, body: RawSlice) {
        let Some(pending) = lock(&self.pending).remove(&id) else {
            return;
        };
        let reply = if is_error {
            Reply::Error(body)
        } else {
            Reply::Result(body)
        };
        let _ = pending.reply.send(Ok(reply));
    }

    fn on_notification(&self, env: &Envelope<'_>, events: &dyn Events) {
        if env.method() == "notifications/progress"
            && let Some(params) = env.params
        {
            self.route_progress(params);
            return;
        }
        events.notification(&self.server, env.method(), env.params);
    }

    /// Progress tokens sent upstream are Corral's request ids, so the token finds the caller.
    fn route_progress(&self, params: &RawValue) {
        let Ok(mut map) = serde_json::from_str::<ParamMap>(params.get()) else {
            return;
        };
        let Some(id) = map
            .get("progressToken")
            .and_then(|t| t.get().parse::<u64>().ok())
        else {
            return;
        };
        let (sink, token) = {
            let pending = lock(&self.pending);
            let Some(route) = pending.get(&id).and_then(|p| p.progress.as_ref()) else {
                return;
            };
            (route.sink.clone(), route.token.clone())
        };
        map.insert("progressToken".into(), token);
        let line = jsonrpc::notification_raw("notifications/progress", Some(&serialize_map(&map)));
        // A client that stops reading loses progress updates, never replies: drop when full.
        let _ = sink.try_send(line);
    }

    /// Server-to-client requests: `ping` is answered here; everything else goes to [`Events`],
    /// which forwards it to a client or answers with an error.
    async fn on_server_request(self: &Arc<Self>, env: &Envelope<'_>, events: &dyn Events) {
        let Some(id) = env.id else { return };
        if env.method() == "ping" {
            let _ = self.write_line(jsonrpc::response_raw(id, "result", "{}"));
            return;
        }
        events.server_request(ServerRequest {
            conn: self.clone(),
            id: id.to_owned(),
            method: env.method().to_string(),
            params: env.params.map(RawValue::to_owned),
        });
    }
}

/// How often pending calls are checked against their deadlines (the timeout's precision).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Fails calls whose deadline passed. Holds only a weak reference, so it ends with the
/// connection.
async fn sweep_deadlines(conn: std::sync::Weak<Connection>) {
    loop {
        let Some(c) = conn.upgrade() else { return };
        if c.expire_overdue() {
            drop(c);
            tokio::time::sleep(SWEEP_EVERY).await;
            continue;
        }
        // Nothing has a deadline: sleep until a call with one arrives (looking again now and
        // then, so a dropped connection does not leave this task behind).
        c.sweep_armed.store(false, Ordering::SeqCst);
        if c.expire_overdue() {
            c.sweep_armed.store(true, Ordering::SeqCst);
            continue;
        }
        let woken = async move { c.sweep.notified().await };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), woken).await;
    }
}

/// The common reply, `{"jsonrpc":"2.0","id":<Corral id>,"result"|"error":…}`, taken apart in
/// one pass: its id, whether it is an error, and the payload's range in `text`. `Ok(None)` for
/// anything else (requests, notifications, odd ids), which goes through [`Envelope`].
#[allow(clippy::type_complexity)]
fn scan_reply(text: &[u8]) -> Result<Option<(u64, bool, std::ops::Range<usize>)>, Scan> {
    let Ok(text) = std::str::from_utf8(text) else {
        return Err(Scan::Invalid);
    };
    let (mut version, mut id, mut body, mut is_error, mut other) = (None, None, None, false, false);
    scan::object_members(text, |m| {
        match m.key {
            "jsonrpc" if version.is_none() => version = Some(m.value),
            "id" if id.is_none() => id = Some(m.value),
            "result" | "error" if body.is_none() => {
                is_error = m.key == "error";
                body = Some(m.value);
            }
            // A request or notification: the general path handles it.
            "method" => return Err(Scan::Unsupported),
            "jsonrpc" | "id" | "result" | "error" => other = true,
            _ => {}
        }
        Ok(())
    })?;
    if other || version.is_none_or(|v| &text[v] != "\"2.0\"") {
        return Ok(None);
    }
    let (Some(id), Some(body)) = (id, body) else {
        return Ok(None);
    };
    Ok(text[id].parse::<u64>().ok().map(|id| (id, is_error, body)))
}

/// The request's params with the stateless envelope merged into `_meta` (members the
/// caller set win).
fn with_envelope(
    params: Params<'_>,
    envelope: &serde_json::Map<String, serde_json::Value>,
) -> ParamMap {
    let mut map: ParamMap = match params {
        Params::None => ParamMap::new(),
        Params::Raw(raw) => serde_json::from_str(raw).unwrap_or_default(),
        Params::Object(map) => map,
    };
    let mut meta: serde_json::Map<String, serde_json::Value> = map
        .get("_meta")
        .and_then(|m| serde_json::from_str(m.get()).ok())
        .unwrap_or_default();
    for (k, v) in envelope {
        meta.entry(k.clone()).or_insert_with(|| v.clone());
    }
    map.insert("_meta".into(), jsonrpc::to_raw(&meta));
    map
}

fn set_progress_token(map: &mut ParamMap, id: u64) {
    let mut meta: serde_json::Map<String, serde_json::Value> = map
        .get("_meta")
        .and_then(|m| serde_json::from_str(m.get()).ok())
        .unwrap_or_default();
    meta.insert("progressToken".into(), id.into());
    map.insert("_meta".into(), jsonrpc::to_raw(&meta));
}

/// Hashing for Corral's own sequential request ids: they are not attacker-chosen, so a
/// multiply-shift hash is safe and much cheaper than SipHash on the per-call path.
type IdHash = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Serialises a map of raw members without re-parsing them.
pub fn serialize_map(map: &ParamMap) -> String {
    let mut out =
        String::with_capacity(map.values().map(|v| v.get().len() + 16).sum::<usize>() + 2);
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).unwrap_or_default());
        out.push(':');
        out.push_str(v.get());
    }
    out.push('}');
    out
}

/// Strips the newline, a trailing CR and a UTF-8 BOM.
fn trim_line(line: &[u8]) -> &[u8] {
    let mut s = line;
    while let [rest @ .., b'\n' | b'\r'] = s {
        s = rest;
    }
    s.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(s)
}

async fn read_line_limited<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let n = reader.read_until(b'\n', line).await?;
    if line.len() > MAX_LINE {
        line.truncate(0);
        line.extend_from_slice(b"[corral] dropped an oversized line from the server");
    }
    Ok(n)
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every critical section
/// here leaves the maps consistent, so the data stays valid.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
