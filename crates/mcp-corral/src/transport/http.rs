//! The Streamable HTTP front (`/mcp`) and the guards every HTTP route passes through:
//! bearer token, `Host` and `Origin` allow-lists (DNS-rebinding protection), body size limit.
//!
//! POST carries client messages; a request is answered with JSON, or with an SSE stream when it
//! asked for progress and the client accepts `text/event-stream`. GET opens the session's stream
//! for server notifications, or with `Last-Event-ID` resumes a session's stream where a dropped
//! connection left it (see [`super::replay`]); DELETE ends the session. Requests without `Mcp-Session-Id` are served
//! statelessly (no notifications outside the call), which also suits load generators.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::replay::{Resumed, Streams};
use crate::gateway::{Gateway, Session};
use crate::jsonrpc::{self, Envelope, Kind, code};
use crate::upstream::lock;

const SESSION_HEADER: &str = "mcp-session-id";

/// Who may talk to the HTTP listener.
#[derive(Clone, Debug)]
pub struct Guard {
    pub token: Option<String>,
    pub listen: SocketAddr,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
    /// Sessions idle this long (no request, no open event stream) are forgotten.
    pub session_idle: std::time::Duration,
}

impl Guard {
    fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host);
        if is_loopback_name(name) {
            return true;
        }
        if name.trim_matches(['[', ']']).parse::<IpAddr>().ok() == Some(self.listen.ip()) {
            return true;
        }
        if self
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(name))
        {
            return true;
        }
        // Bound to every interface: the names clients use are unknowable, so the token (which
        // binding beyond loopback requires) is what protects the listener.
        self.listen.ip().is_unspecified() && self.token.is_some()
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        if self
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let Some(rest) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false;
        };
        is_loopback_name(strip_port(rest))
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        return &host[..end + 2];
    }
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

fn is_loopback_name(name: &str) -> bool {
    let bare = name.trim_matches(['[', ']']);
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Shared state of the HTTP listener.
pub struct HttpState {
    pub gw: Arc<Gateway>,
    pub guard: Guard,
    sessions: Mutex<HashMap<String, HttpSession>>,
    /// Legacy HTTP+SSE sessions, by the `sessionId` query parameter.
    legacy: Mutex<HashMap<String, Arc<Session>>>,
    stateless: Arc<Session>,
}

impl HttpState {
    pub fn new(gw: Arc<Gateway>, guard: Guard) -> Arc<HttpState> {
        let stateless = gw.open_session(None);
        let st = Arc::new(HttpState {
            gw,
            guard,
            sessions: Mutex::new(HashMap::new()),
            legacy: Mutex::new(HashMap::new()),
            stateless,
        });
        let weak = Arc::downgrade(&st);
        let every = (st.guard.session_idle / 4).clamp(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(60),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(st) = weak.upgrade() else { return };
                st.expire_idle_sessions();
            }
        });
        st
    }

    /// Forgets sessions that sent nothing for `session_idle` and have no open event stream
    /// (clients that vanished without `DELETE`), cancelling whatever they left in flight.
    fn expire_idle_sessions(&self) {
        let idle = self.guard.session_idle;
        let expired: Vec<Arc<Session>> = {
            let mut sessions = lock(&self.sessions);
            let ids: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| lock(&s.last_seen).elapsed() >= idle && !s.streams.connected())
                .map(|(k, _)| k.clone())
                .collect();
            ids.iter()
                .filter_map(|k| sessions.remove(k))
                .map(|s| s.session)
                .collect()
        };
        for s in expired {
            tracing::debug!(
                session = s.id,
                "HTTP session expired after {} s idle",
                idle.as_secs()
            );
            self.gw.close_session(s.id);
            s.set_out(None);
        }
    }
}

/// A Streamable HTTP session and when its client last sent anything.
struct HttpSession {
    session: Arc<Session>,
    last_seen: Mutex<std::time::Instant>,
    /// Its event streams, kept for `Last-Event-ID` resumption.
    streams: Arc<Streams>,
}

impl HttpSession {
    fn touch(&self) -> (Arc<Session>, Arc<Streams>) {
        *lock(&self.last_seen) = std::time::Instant::now();
        (self.session.clone(), self.streams.clone())
    }
}

/// The `/mcp` routes plus `extra` (the management API), all behind the guard.
pub fn router(state: Arc<HttpState>, extra: Router<Arc<HttpState>>) -> Router {
    let max = state.guard.max_body_bytes;
    Router::new()
        .route("/mcp", post(post_mcp).get(get_mcp).delete(delete_mcp))
        .route("/sse", get(get_legacy_sse))
        .route("/messages", post(post_legacy_message))
        .merge(extra)
        .layer(DefaultBodyLimit::max(max))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn guard(State(st): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    let g = &st.guard;
    let mcp = req.uri().path().starts_with("/mcp");
    let deny = |status: StatusCode, msg: &str| -> Response {
        let mut resp = if mcp {
            json_response(status, jsonrpc::error(None, code::SERVER_UNAVAILABLE, msg))
        } else {
            crate::api::error(status, msg)
        };
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    };
    if let Some(token) = &g.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes())) {
            return deny(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !g.host_allowed(host) {
        return deny(
            StatusCode::FORBIDDEN,
            &format!(
                "Host `{host}` is not allowed (DNS-rebinding protection; see http.allowedHosts)"
            ),
        );
    }
    if let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        && !g.origin_allowed(origin)
    {
        return deny(
            StatusCode::FORBIDDEN,
            &format!("Origin `{origin}` is not allowed (see http.allowedOrigins)"),
        );
    }
    let resp = next.run(req).await;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && mcp {
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            jsonrpc::error(
                None,
                code::INVALID_REQUEST,
                &format!(
                    "request body exceeds {} bytes (http.maxBodyBytes)",
                    g.max_body_bytes
                ),
            ),
        );
    }
    resp
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn new_session_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn post_mcp(State(st): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let named = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let session = match &named {
        Some(sid) => match lock(&st.sessions).get(sid).map(HttpSession::touch) {
            Some(s) => Some(s),
            None => {
                return json_response(
                    StatusCode::NOT_FOUND,
                    jsonrpc::error(
                        None,
                        code::INVALID_REQUEST,
                        "Session not found (it expired or was deleted); initialize again",
                    ),
                );
            }
        },
        None => None,
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first == Some(b'[') {
        let session = session.map_or_else(|| st.stateless.clone(), |(s, _)| s);
        return post_batch(&st, session, &body).await;
    }
    let env = match Envelope::parse(&body) {
        Ok(env) => env,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                jsonrpc::error(None, code::PARSE_ERROR, &format!("Parse error: {e}")),
            );
        }
    };
    let kind = env.kind();
    let is_init = kind == Kind::Request && env.method() == "initialize";
    // Calls that asked for progress, and listen streams, are answered as SSE.
    let wants_progress = kind == Kind::Request
        && (env.method() == "subscriptions/listen"
            || env
                .params
                .is_some_and(|p| p.get().contains("progressToken")));
    if kind == Kind::Request
        && let Some(version) = crate::gateway::request_version(env.params)
    {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if !crate::gateway::all_versions().contains(&version.as_str()) {
            let data = serde_json::json!({ "supported": crate::gateway::all_versions(), "requested": version });
            let body = jsonrpc::error_with_data(
                env.id,
                crate::gateway::UNSUPPORTED_PROTOCOL_VERSION,
                &format!("Unsupported protocol version: {version}"),
                Some(data),
            );
            return json_response(StatusCode::BAD_REQUEST, body);
        }
        if let Err(msg) = crate::gateway::check_headers(
            &body,
            header("mcp-protocol-version"),
            header("mcp-method"),
            header("mcp-name"),
        ) {
            return json_response(
                StatusCode::BAD_REQUEST,
                jsonrpc::error(env.id, crate::gateway::HEADER_MISMATCH, &msg),
            );
        }
    }
    let id: Option<Box<RawValue>> = env.id.map(RawValue::to_owned);
    drop(env);
    let (session, streams, new_sid) = match session {
        Some((s, streams)) => (s, Some(streams), None),
        None if is_init => {
            let sid = new_session_id();
            let s = st.gw.open_session(None);
            let streams = Arc::new(Streams::default());
            lock(&st.sessions).insert(
                sid.clone(),
                HttpSession {
                    session: s.clone(),
                    last_seen: Mutex::new(std::time::Instant::now()),
                    streams: streams.clone(),
                },
            );
            (s, Some(streams), Some(sid))
        }
        None => (st.stateless.clone(), None, None),
    };
    if kind != Kind::Request {
        return match st.gw.handle(&session, &body, None).await {
            Some(err) => json_response(StatusCode::BAD_REQUEST, err),
            None => StatusCode::ACCEPTED.into_response(),
        };
    }
    let mut resp = if wants_progress && accepts_sse(&headers) {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
        let gw = st.gw.clone();
        tokio::spawn(async move {
            let out = gw
                .handle(&session, &body, Some(&tx))
                .await
                .unwrap_or_else(|| cancelled(id.as_deref()));
            let _ = tx.send(out).await;
        });
        match streams {
            // In a session the stream is resumable: a dropped connection loses nothing.
            Some(streams) => event_stream(streams.open(rx)),
            None => sse_response(rx),
        }
    } else {
        let out = st
            .gw
            .handle(&session, &body, None)
            .await
            .unwrap_or_else(|| cancelled(id.as_deref()));
        json_response(StatusCode::OK, out)
    };
    if let Some(sid) = new_sid
        && let Ok(v) = HeaderValue::from_str(&sid)
    {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

/// HTTP must answer every request; a call the client itself cancelled gets this.
fn cancelled(id: Option<&RawValue>) -> Vec<u8> {
    jsonrpc::error(id, code::REQUEST_CANCELLED, "Request cancelled")
}

async fn post_batch(st: &HttpState, session: Arc<Session>, body: &[u8]) -> Response {
    let items: Vec<&RawValue> = match serde_json::from_slice(body) {
        Ok(items) => items,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                jsonrpc::error(None, code::PARSE_ERROR, &format!("Parse error: {e}")),
            );
        }
    };
    if items.is_empty() {
        return json_response(
            StatusCode::BAD_REQUEST,
            jsonrpc::error(None, code::INVALID_REQUEST, "Invalid request: empty batch"),
        );
    }
    let answers = futures::future::join_all(
        items
            .iter()
            .map(|m| st.gw.handle(&session, m.get().as_bytes(), None)),
    )
    .await;
    let answers: Vec<Vec<u8>> = answers.into_iter().flatten().collect();
    if answers.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    let mut out = b"[".to_vec();
    out.extend(answers.join(&b","[..]));
    out.push(b']');
    json_response(StatusCode::OK, out)
}

fn event_stream(body: super::replay::Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn sse_response(rx: mpsc::Receiver<Vec<u8>>) -> Response {
    let stream = ReceiverStream::new(rx).map(|msg| {
        let mut frame = Vec::with_capacity(msg.len() + 24);
        frame.extend_from_slice(b"event: message\ndata: ");
        frame.extend_from_slice(&msg);
        frame.extend_from_slice(b"\n\n");
        Ok::<_, std::convert::Infallible>(Bytes::from(frame))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn get_mcp(State(st): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if !accepts_sse(&headers) {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /mcp opens an event stream: send `Accept: text/event-stream`",
        )
            .into_response();
    }
    let Some((session, streams)) = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|sid| lock(&st.sessions).get(sid).map(HttpSession::touch))
    else {
        return json_response(
            StatusCode::BAD_REQUEST,
            jsonrpc::error(
                None,
                code::INVALID_REQUEST,
                "GET /mcp needs a valid Mcp-Session-Id (initialize first)",
            ),
        );
    };
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        match streams.resume(last) {
            Resumed::Stream(body) => return event_stream(body),
            // Nothing kept under that id (never issued, or expired): a fresh stream.
            Resumed::Unknown => {
                tracing::debug!(session = session.id, "cannot resume after event `{last}`");
            }
        }
    }
    let (tx, rx) = mpsc::channel(1024);
    session.set_out(Some(tx));
    event_stream(streams.open(rx))
}

async fn delete_mcp(State(st): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let Some(sid) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            jsonrpc::error(
                None,
                code::INVALID_REQUEST,
                "DELETE /mcp needs Mcp-Session-Id",
            ),
        );
    };
    match lock(&st.sessions).remove(sid).map(|s| s.session) {
        Some(s) => {
            st.gw.close_session(s.id);
            s.set_out(None);
            StatusCode::NO_CONTENT.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(listen: &str, token: Option<&str>) -> Guard {
        Guard {
            token: token.map(str::to_string),
            listen: listen.parse().unwrap(),
            allowed_hosts: vec!["corral.internal".into()],
            allowed_origins: vec!["https://app.example".into()],
            max_body_bytes: 1,
            session_idle: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn hosts_are_checked_against_loopback_listen_and_allow_list() {
        let g = guard("127.0.0.1:8787", None);
        for ok in [
            "localhost:8787",
            "127.0.0.1:8787",
            "[::1]:8787",
            "localhost",
            "corral.internal",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8787", "", "10.0.0.1:8787"] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        assert!(guard("0.0.0.0:8787", Some("t")).host_allowed("anything:8787"));
        assert!(!guard("0.0.0.0:8787", None).host_allowed("anything:8787"));
    }

    #[test]
    fn origins_must_be_loopback_or_listed() {
        let g = guard("127.0.0.1:8787", None);
        assert!(g.origin_allowed("http://localhost:3000"));
        assert!(g.origin_allowed("http://127.0.0.1"));
        assert!(g.origin_allowed("https://app.example"));
        assert!(!g.origin_allowed("http://evil.example"));
        assert!(!g.origin_allowed("null"));
    }
}

/// Legacy HTTP+SSE transport (protocol 2024-11-05): `GET /sse` opens the session's event
/// stream, whose first event names the endpoint for `POST /messages?sessionId=…`. Every
/// answer travels on the event stream; POSTs get `202 Accepted`.
async fn get_legacy_sse(State(st): State<Arc<HttpState>>) -> Response {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
    let sid = new_session_id();
    let session = st.gw.open_session(Some(tx));
    lock(&st.legacy).insert(sid.clone(), session.clone());
    let endpoint = format!("event: endpoint\ndata: /messages?sessionId={sid}\n\n");
    // Ends the session when the client drops the stream.
    let guard = LegacyGuard {
        st: st.clone(),
        sid,
        session: session.id,
    };
    let events = ReceiverStream::new(rx).map(move |msg| {
        let _keep = &guard;
        let mut frame = Vec::with_capacity(msg.len() + 24);
        frame.extend_from_slice(b"event: message\ndata: ");
        frame.extend_from_slice(&msg);
        frame.extend_from_slice(b"\n\n");
        Ok::<_, std::convert::Infallible>(Bytes::from(frame))
    });
    let stream = futures::stream::once(async move { Ok(Bytes::from(endpoint)) }).chain(events);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

struct LegacyGuard {
    st: Arc<HttpState>,
    sid: String,
    session: u64,
}

impl Drop for LegacyGuard {
    fn drop(&mut self) {
        lock(&self.st.legacy).remove(&self.sid);
        self.st.gw.close_session(self.session);
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyQuery {
    session_id: String,
}

async fn post_legacy_message(
    State(st): State<Arc<HttpState>>,
    axum::extract::Query(q): axum::extract::Query<LegacyQuery>,
    body: Bytes,
) -> Response {
    let Some(session) = lock(&st.legacy).get(&q.session_id).cloned() else {
        return crate::api::error(
            StatusCode::NOT_FOUND,
            "unknown sessionId: open GET /sse first",
        );
    };
    let Some(out) = session.out_sink() else {
        return crate::api::error(StatusCode::GONE, "the session's event stream is closed");
    };
    let gw = st.gw.clone();
    tokio::spawn(async move {
        if let Some(resp) = gw.handle(&session, &body, None).await {
            let _ = out.send(resp).await;
        }
    });
    StatusCode::ACCEPTED.into_response()
}
