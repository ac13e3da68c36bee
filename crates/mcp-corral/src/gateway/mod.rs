//! The MCP server Corral exposes: sessions, version negotiation, the merged catalog, routing.
//!
//! A transport hands every message it reads to [`Gateway::handle`] together with the
//! [`Session`] it belongs to, and writes back whatever comes out. The gateway answers
//! `initialize`, `ping` and the list methods itself (from the merged catalog), and forwards
//! calls to the owning server with a Corral-chosen id, returning the reply under the caller's id.
//!
//! Seams: transports call in; the gateway calls the supervisor for connections (which starts
//! stopped servers on demand) and subscribes to its [`Notice`]s to keep the catalog current.

mod catalog;
mod input;
mod stateless;
pub mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::config::Namespace;
use crate::config::model::NamespaceMode;
use crate::jsonrpc::scan::{self, Scan};
use crate::jsonrpc::{self, Envelope, Kind, code};
use crate::supervisor::{Notice, RequestRouter, Supervisor};
use crate::upstream::{
    CallError, Connection, ParamMap, Params, ProgressRoute, ServerRequest, Sink, lock,
};
pub use catalog::Merged;
pub use stateless::{
    HEADER_MISMATCH, STATELESS_VERSION, UNSUPPORTED_PROTOCOL_VERSION, all_versions, check_headers,
    request_version,
};

/// Protocol revisions a client may negotiate with `initialize`, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
pub const LATEST_VERSION: &str = "2025-11-25";
/// How long a list request waits for servers Corral has never seen to report their lists.
const DISCOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// One connected client: a stdio peer, or one HTTP `Mcp-Session-Id`.
pub struct Session {
    pub id: u64,
    /// Where notifications not tied to a call go (stdio: stdout; HTTP: the GET stream, if open).
    out: Mutex<Option<Sink>>,
    protocol: Mutex<Option<String>>,
    /// Set once the client sends 2026-07-28 (stateless) requests: it gets notifications only on
    /// the `subscriptions/listen` streams it opens, never unsolicited.
    stateless: std::sync::atomic::AtomicBool,
    /// What the client declared in `initialize` (sampling, elicitation, roots, …).
    capabilities: Mutex<Value>,
    /// When the client last sent a request (a global sequence number, higher is later).
    last_active: AtomicU64,
}

impl Session {
    pub fn set_out(&self, sink: Option<Sink>) {
        *lock(&self.out) = sink;
    }

    fn out(&self) -> Option<Sink> {
        lock(&self.out).clone()
    }

    /// The session's outbound queue, for transports that deliver answers on it.
    pub fn out_sink(&self) -> Option<Sink> {
        self.out()
    }

    pub fn protocol(&self) -> Option<String> {
        lock(&self.protocol).clone()
    }
}

/// A caller's request: (session id, the request id as the client wrote it).
type CallKey = (u64, String);
/// Where that request went: the connection and Corral's id on it.
struct UpstreamCall {
    conn: Arc<Connection>,
    id: u64,
    /// The call's own stream to the client (an HTTP POST answered with SSE), if any.
    sink: Option<Sink>,
    /// Set for a stateless client's call: the server's requests go to it (see [`input`]).
    input: Option<input::InputRoute>,
}

/// A request Corral sent to a client, waiting for the client's answer.
struct ForwardedRequest {
    asker: Asker,
    session: u64,
}

/// Who gets a client's answer.
enum Asker {
    /// A server's own request (initialize-era servers), answered on its connection.
    Server(ServerRequest),
    /// One of a stateless server's `inputRequests`, which Corral collects for the retry.
    Corral(tokio::sync::oneshot::Sender<Result<Box<RawValue>, String>>),
}

impl Asker {
    fn answer(self, field: &str, raw: &RawValue) {
        match self {
            Asker::Server(request) => request.respond(field, raw.get()),
            Asker::Corral(tx) => {
                let _ = tx.send(if field == "result" {
                    Ok(raw.to_owned())
                } else {
                    Err(raw.get().to_string())
                });
            }
        }
    }

    fn fail(self, code: i64, message: &str) {
        match self {
            Asker::Server(request) => request.fail(code, message),
            Asker::Corral(tx) => {
                let _ = tx.send(Err(message.to_string()));
            }
        }
    }
}

pub struct Gateway {
    sup: Arc<Supervisor>,
    namespace: Namespace,
    catalog: RwLock<Arc<Merged>>,
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
    next_session: AtomicU64,
    /// (session, caller's id) → the upstream call, so `notifications/cancelled` can find it.
    inflight: Mutex<HashMap<CallKey, UpstreamCall>>,
    api_session: std::sync::OnceLock<Arc<Session>>,
    /// Corral's ids for forwarded server-to-client requests → the request.
    forwarded: Mutex<HashMap<String, ForwardedRequest>>,
    next_forwarded: AtomicU64,
    activity: AtomicU64,
    /// (server, elicitationId) of URL-mode elicitations → the session that was asked, so the
    /// server's `notifications/elicitation/complete` reaches that client alone.
    /// Each entry also carries its arrival number, so the oldest is dropped first when full.
    url_elicitations: Mutex<HashMap<(String, String), (u64, u64)>>,
    /// Servers that asked for roots, so client `roots/list_changed` reaches them.
    roots_askers: Mutex<std::collections::HashSet<String>>,
    /// (server, uri) → the sessions (or `subscriptions/listen` streams) subscribed to it.
    subscriptions: Mutex<HashMap<(String, String), std::collections::HashSet<u64>>>,
    /// Per server, the connection its upstream subscriptions were made on: a server that
    /// restarted (a new connection) has forgotten them, and Corral makes them again.
    subscribed_on: Mutex<HashMap<String, usize>>,
    /// Open `subscriptions/listen` streams (2026-07-28 clients), by subscriber key.
    listeners: Mutex<HashMap<u64, stateless::Listener>>,
    next_api_id: AtomicU64,
    /// Task-augmented calls (Corral-run, and the ids of upstream-run ones).
    tasks: Arc<tasks::Tasks>,
    /// Stateless clients' calls waiting for input, by `requestState` token.
    parked: Mutex<HashMap<String, input::Parked>>,
    /// This gateway, for tasks it spawns that must outlive a request.
    me: std::sync::OnceLock<std::sync::Weak<Gateway>>,
}

impl Gateway {
    pub fn new(sup: Arc<Supervisor>, namespace: Namespace) -> Arc<Gateway> {
        let gw = Arc::new(Gateway {
            catalog: RwLock::new(Arc::new(Merged::build(&sup, &namespace))),
            sup,
            namespace,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            inflight: Mutex::new(HashMap::new()),
            api_session: std::sync::OnceLock::new(),
            forwarded: Mutex::new(HashMap::new()),
            next_forwarded: AtomicU64::new(1),
            activity: AtomicU64::new(1),
            url_elicitations: Mutex::new(HashMap::new()),
            roots_askers: Mutex::new(std::collections::HashSet::new()),
            subscriptions: Mutex::new(HashMap::new()),
            subscribed_on: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            next_api_id: AtomicU64::new(1),
            tasks: Arc::new(tasks::Tasks::default()),
            parked: Mutex::new(HashMap::new()),
            me: std::sync::OnceLock::new(),
        });
        let _ = gw.me.set(Arc::downgrade(&gw));
        let router: std::sync::Weak<dyn RequestRouter> =
            Arc::downgrade(&gw) as std::sync::Weak<Gateway>;
        gw.sup.set_router(router);
        let mut notices = gw.sup.subscribe();
        let weak = Arc::downgrade(&gw);
        tokio::spawn(async move {
            loop {
                let notice = match notices.recv().await {
                    Ok(n) => Some(n),
                    // Missed notices: rebuilding the catalog catches up on any list change.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(gw) = weak.upgrade() else { return };
                gw.on_notice(notice);
            }
        });
        gw
    }

    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.sup
    }

    pub fn catalog(&self) -> Arc<Merged> {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn open_session(&self, out: Option<Sink>) -> Arc<Session> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let s = Arc::new(Session {
            id,
            out: Mutex::new(out),
            protocol: Mutex::new(None),
            capabilities: Mutex::new(Value::Null),
            stateless: std::sync::atomic::AtomicBool::new(false),
            last_active: AtomicU64::new(0),
        });
        lock(&self.sessions).insert(id, s.clone());
        s
    }

    pub fn session(&self, id: u64) -> Option<Arc<Session>> {
        lock(&self.sessions).get(&id).cloned()
    }

    pub fn close_session(&self, id: u64) {
        lock(&self.sessions).remove(&id);
        let calls: Vec<UpstreamCall> = {
            let mut inflight = lock(&self.inflight);
            let keys: Vec<_> = inflight.keys().filter(|(s, _)| *s == id).cloned().collect();
            keys.into_iter()
                .filter_map(|k| inflight.remove(&k))
                .collect()
        };
        // The client is gone: nobody will read these answers, so let the servers stop working.
        for call in calls {
            call.conn.cancel(call.id, "client disconnected");
        }
        self.drop_subscriber(id);
        lock(&self.url_elicitations).retain(|_, (s, _)| *s != id);
        let listeners: Vec<u64> = lock(&self.listeners)
            .iter()
            .filter(|(_, l)| l.session == id)
            .map(|(k, _)| *k)
            .collect();
        for key in listeners {
            self.remove_listener(key);
        }
        let orphaned: Vec<ForwardedRequest> = {
            let mut fwd = lock(&self.forwarded);
            let keys: Vec<String> = fwd
                .iter()
                .filter(|(_, f)| f.session == id)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter().filter_map(|k| fwd.remove(&k)).collect()
        };
        for f in orphaned {
            tokio::spawn(async move {
                f.asker.fail(
                    code::INTERNAL_ERROR,
                    "the client that was asked disconnected",
                )
            });
        }
    }

    fn on_notice(&self, notice: Option<Notice>) {
        match notice {
            None | Some(Notice::ListsChanged { .. }) => {
                if let Some(Notice::ListsChanged { server }) = &notice {
                    self.renew_subscriptions(server);
                }
                let fresh = Arc::new(Merged::build(&self.sup, &self.namespace));
                let old = std::mem::replace(
                    &mut *self.catalog.write().unwrap_or_else(|e| e.into_inner()),
                    fresh.clone(),
                );
                for method in fresh.changed_since(&old) {
                    self.broadcast(&jsonrpc::notification_raw(method, None));
                    self.to_listeners(method, None);
                }
            }
            Some(Notice::Notification {
                server,
                method,
                params,
            }) => {
                let params = params.as_deref();
                match method.as_str() {
                    "notifications/resources/updated" => self.resource_updated(&server, params),
                    "notifications/tasks/status" => self.task_status(&server, params),
                    "notifications/cancelled" => self.server_cancelled(&server, params),
                    "notifications/elicitation/complete" => {
                        self.url_elicitation_complete(&server, params)
                    }
                    _ => self.broadcast(&jsonrpc::notification_raw(
                        &method,
                        params.map(RawValue::get),
                    )),
                }
            }
        }
    }

    fn broadcast(&self, line: &[u8]) {
        let sinks: Vec<Sink> = lock(&self.sessions)
            .values()
            .filter(|s| !s.stateless.load(Ordering::Relaxed))
            .filter_map(|s| s.out())
            .collect();
        for sink in sinks {
            let _ = sink.try_send(line.to_vec());
        }
    }

    /// Handles one message from a client. Returns the response for requests (and for messages
    /// that cannot be parsed); `None` for notifications, responses, and cancelled calls.
    ///
    /// `call_sink` is where progress for this call goes when the transport has a per-call stream
    /// (an HTTP POST answered with SSE); otherwise the session's own outbound queue is used.
    pub async fn handle(
        &self,
        session: &Arc<Session>,
        msg: &[u8],
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        if let Some(call) = FastCall::scan(msg) {
            return self.call_fast(session, call, call_sink).await;
        }
        // Boxed: the general path's state machine is large, and keeping it out of the fast
        // path's future keeps each call's task allocation small.
        Box::pin(self.handle_general(session, msg, call_sink)).await
    }

    async fn handle_general(
        &self,
        session: &Arc<Session>,
        msg: &[u8],
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        let env = match Envelope::parse(msg) {
            Ok(env) => env,
            Err(e) => {
                let (c, what) = if e.is_syntax() || e.is_eof() {
                    (code::PARSE_ERROR, "Parse error")
                } else {
                    (code::INVALID_REQUEST, "Invalid request")
                };
                return Some(jsonrpc::error(None, c, &format!("{what}: {e}")));
            }
        };
        match env.kind() {
            Kind::Request => {}
            Kind::Notification => {
                self.on_client_notification(session, &env).await;
                return None;
            }
            // Answers to server-to-client requests: none are forwarded yet, so none are expected.
            Kind::Response => {
                self.on_client_response(&env).await;
                return None;
            }
            Kind::Invalid => {
                return Some(jsonrpc::error(
                    env.id,
                    code::INVALID_REQUEST,
                    "Invalid request: not a JSON-RPC 2.0 request, notification or response",
                ));
            }
        }
        // Invariant: `Kind::Request` implies an id.
        let id = env.id?;
        session.last_active.store(
            self.activity.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let params = env.params;
        if let Some(version) = stateless::request_version(params) {
            return self
                .handle_stateless(session, id, env.method(), params, &version, call_sink)
                .await;
        }
        self.dispatch(session, id, env.method(), params, call_sink)
            .await
    }

    /// Routes one request by method (both protocol eras share this).
    async fn dispatch(
        &self,
        session: &Arc<Session>,
        id: &RawValue,
        method: &str,
        params: Option<&RawValue>,
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        match method {
            "initialize" => Some(self.initialize(session, id, params)),
            "ping" => Some(jsonrpc::response_raw(id, "result", "{}")),
            "tools/list" => Some(self.listed().await.tools.to_response(id)),
            "prompts/list" => Some(self.listed().await.prompts.to_response(id)),
            "resources/list" => Some(self.listed().await.resources.to_response(id)),
            "resources/templates/list" => Some(self.listed().await.templates.to_response(id)),
            "tools/call" => {
                self.call_named(session, id, "tools/call", params, call_sink, Named::Tool)
                    .await
            }
            "prompts/get" => {
                self.call_named(session, id, "prompts/get", params, call_sink, Named::Prompt)
                    .await
            }
            m @ ("resources/read" | "resources/subscribe" | "resources/unsubscribe") => {
                self.call_by_uri(session, id, m, params, call_sink).await
            }
            "completion/complete" => self.complete(session, id, params, call_sink).await,
            "logging/setLevel" => Some(self.set_level(id, params).await),
            m @ ("tasks/get" | "tasks/result" | "tasks/cancel" | "tasks/list") => {
                Some(Box::pin(self.task_request(session, id, m, params)).await)
            }
            other => Some(jsonrpc::error(
                Some(id),
                code::METHOD_NOT_FOUND,
                &format!("Method not found: {other}"),
            )),
        }
    }

    /// The catalog for a list request: complete once first-run discovery is done (bounded wait).
    async fn listed(&self) -> Arc<Merged> {
        if self.sup.discovery_pending() {
            self.sup.discovered(DISCOVERY_WAIT).await;
            self.on_notice(None);
        }
        self.catalog()
    }

    fn initialize(&self, session: &Session, id: &RawValue, params: Option<&RawValue>) -> Vec<u8> {
        let requested = params
            .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
            .and_then(|p| p.get("protocolVersion")?.as_str().map(str::to_string));
        let version = match requested {
            Some(v) if SUPPORTED_VERSIONS.contains(&v.as_str()) => v,
            _ => LATEST_VERSION.to_string(),
        };
        *lock(&session.protocol) = Some(version.clone());
        *lock(&session.capabilities) = params
            .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
            .and_then(|p| p.get("capabilities").cloned())
            .unwrap_or(Value::Null);
        let result = json!({
            "protocolVersion": version,
            "capabilities": {
                "tools": { "listChanged": true },
                "resources": { "listChanged": true, "subscribe": true },
                "prompts": { "listChanged": true },
                "completions": {},
                "logging": {},
                "tasks": tasks::capability(),
            },
            "serverInfo": { "name": "corral", "title": "Corral MCP gateway", "version": env!("CARGO_PKG_VERSION") },
            "instructions": "Corral aggregates several MCP servers. Tool and prompt names are prefixed with the id of the server that owns them.",
        });
        jsonrpc::result(id, &result)
    }

    async fn on_client_notification(&self, session: &Session, env: &Envelope<'_>) {
        if env.method() == "notifications/roots/list_changed" {
            let askers: Vec<String> = lock(&self.roots_askers).iter().cloned().collect();
            for id in askers {
                if let Ok(s) = self.sup.get(&id)
                    && let Some(conn) = s.connection()
                {
                    let _ = conn.notify("notifications/roots/list_changed", None);
                }
            }
            return;
        }
        if env.method() != "notifications/cancelled" {
            return;
        }
        let Some(request_id) = env
            .params
            .and_then(|p| serde_json::from_str::<ParamMap>(p.get()).ok())
            .and_then(|mut m| m.remove("requestId"))
        else {
            return;
        };
        let key = (session.id, request_id.get().to_string());
        // A cancelled `subscriptions/listen` closes its stream.
        self.end_listener(session.id, request_id.get());
        let call = lock(&self.inflight).remove(&key);
        if let Some(call) = call {
            call.conn.cancel(call.id, "cancelled by the client");
        }
    }

    /// A client's answer to a request Corral forwarded from a server.
    async fn on_client_response(&self, env: &Envelope<'_>) {
        let Some(id) = env.id else { return };
        let Some(fwd) = lock(&self.forwarded).remove(id.get()) else {
            return;
        };
        match (env.result, env.error) {
            (Some(r), _) => fwd.asker.answer("result", r),
            (None, Some(e)) => fwd.asker.answer("error", e),
            (None, None) => {}
        }
    }

    /// Sends a request to a client under Corral's own id; its answer goes to `asker`.
    fn ask_client(
        &self,
        session: u64,
        sink: &Sink,
        method: &str,
        params: Option<&str>,
        asker: Asker,
    ) -> String {
        let id = format!(
            "\"corral-{}\"",
            self.next_forwarded.fetch_add(1, Ordering::Relaxed)
        );
        let line = jsonrpc::request_raw(&id, method, params);
        lock(&self.forwarded).insert(id.clone(), ForwardedRequest { asker, session });
        if sink.try_send(line).is_err()
            && let Some(f) = lock(&self.forwarded).remove(&id)
        {
            tokio::spawn(async move {
                f.asker
                    .fail(code::INTERNAL_ERROR, "the client's queue is full or closed")
            });
        }
        id
    }

    /// Takes back requests sent with [`Self::ask_client`] that are still unanswered: the client
    /// gets `notifications/cancelled` for each, and a late answer goes nowhere.
    fn withdraw(&self, sink: &Sink, ids: impl IntoIterator<Item = String>, reason: &str) {
        for id in ids {
            if lock(&self.forwarded).remove(&id).is_none() {
                continue;
            }
            let Ok(request_id) = serde_json::from_str::<Value>(&id) else {
                continue;
            };
            let params = json!({ "requestId": request_id, "reason": reason }).to_string();
            let _ = sink.try_send(jsonrpc::notification_raw(
                "notifications/cancelled",
                Some(&params),
            ));
        }
    }

    /// Picks the client for a server's request: the newest call in flight to that server whose
    /// client declared the capability (a stateless client's call takes the request itself, see
    /// [`input`]); failing that (an unsolicited request), the most recently active session that
    /// declared it.
    ///
    /// With an `owner` (the request belongs to that session's task), only that session is asked.
    fn pick_client(
        &self,
        conn: &Arc<Connection>,
        wanted: Wanted,
        owner: Option<u64>,
    ) -> Option<Asked> {
        let sessions = lock(&self.sessions).clone();
        let capable = |s: &Session| {
            owner.is_none_or(|o| o == s.id) && wanted.declared_in(&lock(&s.capabilities))
        };
        let mut in_flight: Vec<(u64, u64, Option<Sink>, Option<input::InputRoute>)> =
            lock(&self.inflight)
                .iter()
                .filter(|((session, _), call)| {
                    Arc::ptr_eq(&call.conn, conn) && owner.is_none_or(|o| o == *session)
                })
                .map(|((session, _), call)| {
                    (call.id, *session, call.sink.clone(), call.input.clone())
                })
                .collect();
        in_flight.sort_by_key(|(uid, ..)| std::cmp::Reverse(*uid));
        for (_, sid, sink, route) in in_flight {
            if let Some(route) = route {
                if route.accepts(wanted) {
                    return Some(Asked::Call(route));
                }
                continue;
            }
            let Some(session) = sessions.get(&sid) else {
                continue;
            };
            if !capable(session) {
                continue;
            }
            if let Some(sink) = sink.or_else(|| session.out()) {
                return Some(Asked::Session(session.clone(), sink));
            }
        }
        let mut idle: Vec<&Arc<Session>> = sessions.values().filter(|s| capable(s)).collect();
        idle.sort_by_key(|s| std::cmp::Reverse(s.last_active.load(Ordering::Relaxed)));
        idle.into_iter()
            .find_map(|s| s.out().map(|sink| Asked::Session(s.clone(), sink)))
    }

    async fn call_named(
        &self,
        session: &Arc<Session>,
        id: &RawValue,
        method: &str,
        params: Option<&RawValue>,
        call_sink: Option<&Sink>,
        kind: Named,
    ) -> Option<Vec<u8>> {
        if let Some(raw) = params
            && let Some((range, name)) = plain_name(raw.get())
        {
            return self
                .call_spliced(session, id, method, kind, raw.get(), range, name, call_sink)
                .await;
        }
        let (mut map, name) = match string_member(id, params, "name") {
            Ok(found) => found,
            Err(error) => return Some(error),
        };
        let owner = match self.owner_or_discover(&name, kind).await {
            Ok(owner) => owner,
            Err(msg) => return Some(jsonrpc::error(Some(id), code::SERVER_UNAVAILABLE, &msg)),
        };
        let Some((server, original)) = owner else {
            return Some(unknown_name(id, kind, &name));
        };
        map.insert("name".into(), jsonrpc::to_raw(&original));
        if matches!(kind, Named::Tool) && map.contains_key("task") {
            return Box::pin(self.call_as_task(session, id, &server, map)).await;
        }
        self.forward(session, id, &server, method, Outgoing::Map(map), call_sink)
            .await
    }

    /// A task-augmented `tools/call`: passed through to a server that runs tasks itself,
    /// otherwise run by Corral (see [`tasks`]), answering at once with the new task.
    async fn call_as_task(
        &self,
        session: &Arc<Session>,
        id: &RawValue,
        server: &str,
        mut map: ParamMap,
    ) -> Option<Vec<u8>> {
        let upstream_runs_tasks = self.sup.get(server).is_ok_and(|s| {
            s.capabilities()
                .pointer("/tasks/requests/tools/call")
                .is_some()
        });
        if upstream_runs_tasks {
            let resp = self
                .forward(session, id, server, "tools/call", Outgoing::Map(map), None)
                .await?;
            if let Ok(mut v) = serde_json::from_slice::<Value>(&resp)
                && let Some(upstream) = v
                    .pointer("/result/task/taskId")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            {
                let ours = self.tasks.adopt_remote(session.id, server, &upstream);
                tasks::swap_task_id(&mut v, &upstream, &ours);
                return Some(v.to_string().into_bytes());
            }
            return Some(resp);
        }
        let ttl = map
            .remove("task")
            .and_then(|t| serde_json::from_str::<Value>(t.get()).ok())
            .and_then(|t| t.get("ttl")?.as_u64());
        let (task_id, created) = match self.tasks.create(session.id, ttl) {
            Ok(created) => created,
            Err(e) => return Some(jsonrpc::error(Some(id), code::BUSY, &e.to_string())),
        };
        let (sup, tasks, server) = (self.sup.clone(), self.tasks.clone(), server.to_string());
        tokio::spawn(async move {
            let outcome = run_task_call(&sup, &tasks, &task_id, &server, map).await;
            if let Some(outcome) = outcome {
                tasks.finish(&task_id, outcome);
            }
        });
        Some(jsonrpc::result(id, &created))
    }

    /// `tasks/get`, `tasks/result`, `tasks/cancel` and `tasks/list`.
    async fn task_request(
        &self,
        session: &Arc<Session>,
        id: &RawValue,
        method: &str,
        params: Option<&RawValue>,
    ) -> Vec<u8> {
        use tasks::{Outcome, TaskError};
        let params_value: Value = params
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or(Value::Null);
        if method == "tasks/list" {
            let mut all = self.tasks.list(session.id);
            for server in self.tasks.remote_servers() {
                let Some(conn) = self
                    .sup
                    .get(&server)
                    .ok()
                    .and_then(|s| s.ready_connection())
                else {
                    continue;
                };
                let listed = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    conn.request("tasks/list", None),
                )
                .await;
                if let Ok(Ok(jsonrpc::Reply::Result(r))) = listed
                    && let Ok(v) = serde_json::from_str::<Value>(r.get())
                    && let Some(items) = v.get("tasks").and_then(Value::as_array)
                {
                    // Only this client's tasks, under the ids it knows them by.
                    for item in items {
                        let Some(upstream) = item.get("taskId").and_then(Value::as_str) else {
                            continue;
                        };
                        if let Some((ours, owner)) = self.tasks.by_upstream(&server, upstream)
                            && owner == session.id
                        {
                            let mut item = item.clone();
                            tasks::swap_task_id(&mut item, upstream, &ours);
                            all.push(item);
                        }
                    }
                }
            }
            return jsonrpc::result(id, &json!({ "tasks": all }));
        }
        let Some(task_id) = params_value.get("taskId").and_then(Value::as_str) else {
            return jsonrpc::error(
                Some(id),
                code::INVALID_PARAMS,
                &format!("Invalid params: `{method}` needs a string `taskId`"),
            );
        };
        if !self.tasks.is_local(task_id)
            && let Some(remote) = self.tasks.remote(task_id)
        {
            let mut upstream_params = params_value.clone();
            tasks::swap_task_id(&mut upstream_params, task_id, &remote.upstream);
            let _collecting = self.tasks.collecting(task_id, session.id);
            let resp = self
                .forward(
                    session,
                    id,
                    &remote.server,
                    method,
                    Outgoing::Raw(upstream_params.to_string()),
                    None,
                )
                .await;
            return match resp {
                Some(resp) => match serde_json::from_slice::<Value>(&resp) {
                    Ok(mut v) => {
                        tasks::swap_task_id(&mut v, &remote.upstream, task_id);
                        v.to_string().into_bytes()
                    }
                    Err(_) => resp,
                },
                None => jsonrpc::error(Some(id), code::REQUEST_CANCELLED, "request cancelled"),
            };
        }
        let invalid = |e: TaskError| jsonrpc::error(Some(id), code::INVALID_PARAMS, &e.to_string());
        match method {
            "tasks/get" => match self.tasks.get(task_id) {
                Ok(task) => jsonrpc::result(id, &task),
                Err(e) => invalid(e),
            },
            "tasks/cancel" => match self.tasks.cancel(task_id) {
                Ok(task) => jsonrpc::result(id, &task),
                Err(e) => invalid(e),
            },
            _ => match self.tasks.result(task_id).await {
                Ok(Outcome::Result(raw)) => {
                    jsonrpc::response_raw(id, "result", &tasks::with_related_task(&raw, task_id))
                }
                Ok(Outcome::Error(raw)) => jsonrpc::response_raw(id, "error", &raw),
                Err(e @ TaskError::Cancelled(_)) => {
                    jsonrpc::error(Some(id), code::REQUEST_CANCELLED, &e.to_string())
                }
                Err(e) => invalid(e),
            },
        }
    }

    /// A `tools/call` or `prompts/get` that [`FastCall::scan`] took apart without serde_json.
    async fn call_fast(
        &self,
        session: &Arc<Session>,
        call: FastCall<'_>,
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        // Ids are short (a number or a short string), so this parse is cheap; the error and
        // reply builders take a `RawValue`.
        let id: &RawValue = serde_json::from_str(call.id).ok()?;
        session.last_active.store(
            self.activity.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.call_spliced(
            session,
            id,
            call.method,
            call.kind,
            call.params,
            call.name_range,
            call.name,
            call_sink,
        )
        .await
    }

    /// Without a progress token nothing but the name changes on the way upstream, so the
    /// server's own name is spliced into the raw params instead of rebuilding them.
    #[allow(clippy::too_many_arguments)]
    async fn call_spliced(
        &self,
        session: &Arc<Session>,
        id: &RawValue,
        method: &str,
        kind: Named,
        params: &str,
        name_range: std::ops::Range<usize>,
        name: &str,
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        let owner = match self.owner_or_discover(name, kind).await {
            Ok(owner) => owner,
            Err(msg) => return Some(jsonrpc::error(Some(id), code::SERVER_UNAVAILABLE, &msg)),
        };
        let Some((server, original)) = owner else {
            return Some(unknown_name(id, kind, name));
        };
        let quoted = serde_json::to_string(&original).unwrap_or_default();
        let mut spliced = String::with_capacity(params.len() + quoted.len());
        spliced.push_str(&params[..name_range.start]);
        spliced.push_str(&quoted);
        spliced.push_str(&params[name_range.end..]);
        self.forward(
            session,
            id,
            &server,
            method,
            Outgoing::Raw(spliced),
            call_sink,
        )
        .await
    }

    fn owner_of_name(&self, name: &str, kind: Named) -> Option<(String, String)> {
        let catalog = self.catalog();
        let table = match kind {
            Named::Tool => &catalog.tool_owner,
            Named::Prompt => &catalog.prompt_owner,
        };
        table.get(name).cloned()
    }

    /// The owner of `name`, discovering servers never listed before if needed; `Err` when the
    /// server the name points at could not start.
    async fn owner_or_discover(
        &self,
        name: &str,
        kind: Named,
    ) -> Result<Option<(String, String)>, String> {
        if let Some(owner) = self.owner_of_name(name, kind) {
            return Ok(Some(owner));
        }
        // Boxed: a rare path with a large future, kept out of every call's state machine.
        match Box::pin(self.discover_for(name)).await {
            Discovery::Found => Ok(self.owner_of_name(name, kind)),
            Discovery::Nothing => Ok(None),
            Discovery::Failed(msg) => Err(msg),
        }
    }

    /// A name that is not in the catalog may belong to a server whose lists Corral has never
    /// seen (first run, discovery still going). Start those servers (only the one whose id
    /// prefixes the name, when names are namespaced) so their lists arrive; true if any did.
    async fn discover_for(&self, name: &str) -> Discovery {
        let unknown: Vec<String> = self
            .sup
            .all()
            .into_iter()
            .filter(|s| s.config.enabled && !s.lists().known)
            .filter(|s| match self.namespace.mode {
                NamespaceMode::Always => {
                    name.starts_with(&format!("{}{}", s.id(), self.namespace.separator))
                }
                NamespaceMode::Never => true,
            })
            .map(|s| s.id().to_string())
            .collect();
        if unknown.is_empty() {
            return Discovery::Nothing;
        }
        let started =
            futures::future::join_all(unknown.iter().map(|id| self.sup.connection(id))).await;
        if started.iter().all(Result::is_err) {
            // The one server the name points at could not start: say so, not "unknown tool".
            if let [Err(e)] = started.as_slice() {
                return Discovery::Failed(e.to_string());
            }
            return Discovery::Nothing;
        }
        // The lists notice may still be on its way to the catalog task: rebuild here.
        self.on_notice(None);
        Discovery::Found
    }

    async fn call_by_uri(
        &self,
        session: &Arc<Session>,
        id: &RawValue,
        method: &str,
        params: Option<&RawValue>,
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        let (map, uri) = match string_member(id, params, "uri") {
            Ok(found) => found,
            Err(error) => return Some(error),
        };
        let Some(server) = self.catalog().owner_of_uri(&uri) else {
            return Some(jsonrpc::error(
                Some(id),
                code::INVALID_PARAMS,
                &format!("Resource not found: {uri}"),
            ));
        };
        // One upstream subscription per (server, uri), shared by every subscribed client.
        let key = (server.clone(), uri.clone());
        match method {
            "resources/subscribe" => {
                if !self.add_subscriber(session.id, &server, &uri) {
                    return Some(jsonrpc::response_raw(id, "result", "{}"));
                }
                let resp = self
                    .forward(session, id, &server, method, Outgoing::Map(map), call_sink)
                    .await;
                if resp
                    .as_ref()
                    .is_none_or(|r| r.windows(8).any(|w| w == b"\"error\":"))
                {
                    // The server refused: nobody is subscribed after all.
                    lock(&self.subscriptions).remove(&key);
                } else {
                    self.subscribed_via(&server);
                }
                resp
            }
            "resources/unsubscribe" => {
                let last = {
                    let mut subs = lock(&self.subscriptions);
                    let Some(set) = subs.get_mut(&key) else {
                        return Some(jsonrpc::response_raw(id, "result", "{}"));
                    };
                    set.remove(&session.id);
                    let last = set.is_empty();
                    if last {
                        subs.remove(&key);
                    }
                    last
                };
                if !last {
                    return Some(jsonrpc::response_raw(id, "result", "{}"));
                }
                self.forward(session, id, &server, method, Outgoing::Map(map), call_sink)
                    .await
            }
            _ => {
                self.forward(session, id, &server, method, Outgoing::Map(map), call_sink)
                    .await
            }
        }
    }

    /// Notes the connection `server`'s subscriptions now live on.
    fn subscribed_via(&self, server: &str) {
        if let Some(conn) = self.sup.get(server).ok().and_then(|s| s.connection()) {
            lock(&self.subscribed_on).insert(server.to_string(), Arc::as_ptr(&conn) as usize);
        }
    }

    /// After `server` (re)started, makes its subscriptions again on the new connection.
    fn renew_subscriptions(&self, server: &str) {
        let Some(conn) = self.sup.get(server).ok().and_then(|s| s.ready_connection()) else {
            return;
        };
        let now = Arc::as_ptr(&conn) as usize;
        let uris: Vec<String> = lock(&self.subscriptions)
            .keys()
            .filter(|(s, _)| s == server)
            .map(|(_, uri)| uri.clone())
            .collect();
        let before = lock(&self.subscribed_on).insert(server.to_string(), now);
        if uris.is_empty() || before == Some(now) {
            return;
        }
        tracing::info!(
            server,
            count = uris.len(),
            "renewing resource subscriptions"
        );
        tokio::spawn(async move {
            for uri in uris {
                let params = json!({ "uri": uri }).to_string();
                let _ = conn.request("resources/subscribe", Some(&params)).await;
            }
        });
    }

    /// Records `key` (a session or a listen stream) as subscribed to `uri` on `server`; true when
    /// it is the first subscriber, i.e. the upstream subscription must be made.
    fn add_subscriber(&self, key: u64, server: &str, uri: &str) -> bool {
        let mut subs = lock(&self.subscriptions);
        let set = subs
            .entry((server.to_string(), uri.to_string()))
            .or_default();
        let first = set.is_empty();
        set.insert(key);
        first
    }

    /// Removes a subscriber (a session or a listen stream) from every resource subscription,
    /// unsubscribing upstream where it was the last one.
    fn drop_subscriber(&self, key: u64) {
        let emptied: Vec<(String, String)> = {
            let mut subs = lock(&self.subscriptions);
            for set in subs.values_mut() {
                set.remove(&key);
            }
            let empty: Vec<_> = subs
                .iter()
                .filter(|(_, s)| s.is_empty())
                .map(|(k, _)| k.clone())
                .collect();
            for k in &empty {
                subs.remove(k);
            }
            empty
        };
        for (server, uri) in emptied {
            if let Some(conn) = self.sup.get(&server).ok().and_then(|s| s.connection()) {
                let params = json!({ "uri": uri }).to_string();
                tokio::spawn(async move {
                    let _ = conn.request("resources/unsubscribe", Some(&params)).await;
                });
            }
        }
    }

    /// The session to ask on behalf of the task a server's request belongs to (its
    /// `_meta["io.modelcontextprotocol/related-task"]`), with the server's task id in the request
    /// replaced by Corral's: the newest session waiting on that task (the task id is the
    /// capability, so a client that reconnected can collect), else the one that created it.
    /// `Ok(None)`: not about a task Corral handed out. `Err(id)`: Corral's id of a task that no
    /// connected client can be asked about.
    fn task_of(&self, server: &str, request: &mut ServerRequest) -> Result<Option<u64>, String> {
        let Some(raw) = request.params.as_deref().map(RawValue::get) else {
            return Ok(None);
        };
        if !raw.contains(tasks::RELATED_TASK) {
            return Ok(None);
        }
        let Ok(mut params) = serde_json::from_str::<Value>(raw) else {
            return Ok(None);
        };
        let Some(upstream) = params
            .get("_meta")
            .and_then(|m| m.get(tasks::RELATED_TASK))
            .and_then(|t| t.get("taskId"))
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return Ok(None);
        };
        let Some((ours, owner)) = self.tasks.by_upstream(server, &upstream) else {
            return Ok(None);
        };
        tasks::swap_task_id(&mut params, &upstream, &ours);
        request.params = RawValue::from_string(params.to_string()).ok();
        match self.tasks.collector(&ours) {
            Some(waiting) => Ok(Some(waiting)),
            None if self.session(owner).is_some() => Ok(Some(owner)),
            None => Err(ours),
        }
    }

    /// A task's status goes only to the client whose task it is, under Corral's id for it; the
    /// status of a task Corral did not hand out goes nowhere.
    fn task_status(&self, server: &str, params: Option<&RawValue>) {
        let Some(mut params) = params.and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
        else {
            return;
        };
        let Some(upstream) = params
            .get("taskId")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return;
        };
        let Some((ours, owner)) = self.tasks.by_upstream(server, &upstream) else {
            return;
        };
        tasks::swap_task_id(&mut params, &upstream, &ours);
        if let Ok(raw) = RawValue::from_string(params.to_string()) {
            self.notify(owner, "notifications/tasks/status", Some(&raw));
        }
    }

    fn remember_url_elicitation(&self, server: &str, id: String, session: u64) {
        // Any increasing number orders arrivals; the forwarded-request counter is one.
        let seq = self.next_forwarded.fetch_add(1, Ordering::Relaxed);
        let mut open = lock(&self.url_elicitations);
        // Completions are optional, so entries can outlive their flows: keep the newest.
        if open.len() >= MAX_URL_ELICITATIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, (_, seq))| *seq)
                .map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert((server.to_string(), id), (session, seq));
    }

    /// The end of a URL-mode elicitation goes to the client that was sent it, and to nobody if
    /// Corral did not forward it.
    fn url_elicitation_complete(&self, server: &str, params: Option<&RawValue>) {
        let Some(id) = elicitation_id(params.map(RawValue::get)) else {
            return;
        };
        let Some((session, _)) = lock(&self.url_elicitations).remove(&(server.to_string(), id))
        else {
            return;
        };
        self.notify(session, "notifications/elicitation/complete", params);
    }

    /// A server gave up on a request it sent through Corral: the client that was asked hears
    /// of it under the id Corral gave the request, nobody else does, and its late answer is
    /// dropped (the server expects none). A cancellation of anything else concerns no client.
    fn server_cancelled(&self, server: &str, params: Option<&RawValue>) {
        let Some(mut params) = params.and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
        else {
            return;
        };
        let Some(theirs) = params.get("requestId").cloned() else {
            return;
        };
        let found = {
            let mut fwd = lock(&self.forwarded);
            let ours = fwd.iter().find_map(|(ours, f)| match &f.asker {
                Asker::Server(r)
                    if r.conn.server() == server
                        && serde_json::from_str::<Value>(r.id.get()).ok().as_ref()
                            == Some(&theirs) =>
                {
                    Some(ours.clone())
                }
                _ => None,
            });
            ours.and_then(|k| fwd.remove(&k).map(|f| (k, f.session)))
        };
        let Some((ours, session)) = found else {
            return;
        };
        let Ok(ours) = serde_json::from_str::<Value>(&ours) else {
            return;
        };
        params["requestId"] = ours;
        if let Ok(raw) = RawValue::from_string(params.to_string()) {
            self.notify(session, "notifications/cancelled", Some(&raw));
        }
    }

    /// Sends a notification to one subscriber: a session's stream, or else the
    /// `subscriptions/listen` stream with that key.
    fn notify(&self, key: u64, method: &str, params: Option<&RawValue>) {
        match self.session(key).and_then(|s| s.out()) {
            Some(sink) => {
                let _ = sink.try_send(jsonrpc::notification_raw(method, params.map(RawValue::get)));
            }
            None => self.to_listener(key, method, params),
        }
    }

    /// `notifications/resources/updated` goes only to the clients subscribed to that resource.
    fn resource_updated(&self, server: &str, params: Option<&RawValue>) {
        let Some(uri) = params
            .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
            .and_then(|p| p.get("uri")?.as_str().map(str::to_string))
        else {
            return;
        };
        let targets: Vec<u64> = lock(&self.subscriptions)
            .get(&(server.to_string(), uri))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for key in targets {
            self.notify(key, "notifications/resources/updated", params);
        }
    }

    async fn complete(
        &self,
        session: &Arc<Session>,
        id: &RawValue,
        params: Option<&RawValue>,
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        let Some(mut map) = params.and_then(|p| serde_json::from_str::<ParamMap>(p.get()).ok())
        else {
            return Some(jsonrpc::error(
                Some(id),
                code::INVALID_PARAMS,
                "Invalid params: expected an object with `ref`",
            ));
        };
        let Some(mut reference) = map
            .get("ref")
            .and_then(|r| serde_json::from_str::<serde_json::Map<String, Value>>(r.get()).ok())
        else {
            return Some(jsonrpc::error(
                Some(id),
                code::INVALID_PARAMS,
                "Invalid params: `ref` must be an object",
            ));
        };
        let catalog = self.catalog();
        let server = match reference.get("type").and_then(Value::as_str) {
            Some("ref/prompt") => {
                let name = reference
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let Some((server, original)) = catalog.prompt_owner.get(&name).cloned() else {
                    return Some(jsonrpc::error(
                        Some(id),
                        code::INVALID_PARAMS,
                        &format!("Unknown prompt: {name}"),
                    ));
                };
                reference.insert("name".into(), Value::String(original));
                server
            }
            Some("ref/resource") => {
                let uri = reference
                    .get("uri")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                match catalog.owner_of_uri(&uri) {
                    Some(s) => s,
                    None => {
                        return Some(jsonrpc::error(
                            Some(id),
                            code::INVALID_PARAMS,
                            &format!("Resource not found: {uri}"),
                        ));
                    }
                }
            }
            _ => {
                return Some(jsonrpc::error(
                    Some(id),
                    code::INVALID_PARAMS,
                    "Invalid params: `ref.type` must be `ref/prompt` or `ref/resource`",
                ));
            }
        };
        map.insert("ref".into(), jsonrpc::to_raw(&reference));
        self.forward(
            session,
            id,
            &server,
            "completion/complete",
            Outgoing::Map(map),
            call_sink,
        )
        .await
    }

    /// Calls `tool` (the server's own name for it) on `server` for the management API; returns
    /// the JSON-RPC response.
    pub async fn call_tool(&self, server: &str, tool: &str, arguments: Value) -> Vec<u8> {
        let session = self
            .api_session
            .get_or_init(|| self.open_session(None))
            .clone();
        let id = jsonrpc::to_raw(&self.next_api_id.fetch_add(1, Ordering::Relaxed));
        let mut params = ParamMap::new();
        params.insert("name".into(), jsonrpc::to_raw(&tool));
        params.insert("arguments".into(), jsonrpc::to_raw(&arguments));
        self.forward(
            &session,
            &id,
            server,
            "tools/call",
            Outgoing::Map(params),
            None,
        )
        .await
        .unwrap_or_else(|| jsonrpc::error(Some(&id), code::REQUEST_CANCELLED, "Request cancelled"))
    }

    /// `logging/setLevel` applies to every running server that supports logging.
    async fn set_level(&self, id: &RawValue, params: Option<&RawValue>) -> Vec<u8> {
        let params = params.map(|p| p.get().to_string());
        let servers = self.sup.all();
        let calls = servers
            .iter()
            .filter(|s| s.capabilities().get("logging").is_some())
            .filter_map(|s| s.connection())
            .map(|conn| {
                let params = params.clone();
                async move {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        conn.request("logging/setLevel", params.as_deref()),
                    )
                    .await;
                }
            });
        futures::future::join_all(calls).await;
        jsonrpc::response_raw(id, "result", "{}")
    }

    /// Sends a request to `server` and returns its reply under the caller's id.
    async fn forward(
        &self,
        session: &Arc<Session>,
        id: &RawValue,
        server: &str,
        method: &str,
        params: Outgoing,
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        let handle = match self.sup.get(server) {
            Ok(h) => h,
            Err(e) => {
                return Some(jsonrpc::error(
                    Some(id),
                    code::SERVER_UNAVAILABLE,
                    &e.to_string(),
                ));
            }
        };
        // A running server's connection is at hand; starting one is the rare, boxed path.
        let conn = match handle.ready_connection() {
            Some(c) => Ok(c),
            None => Box::pin(self.sup.connection_of(&handle)).await,
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                return Some(jsonrpc::error(
                    Some(id),
                    code::SERVER_UNAVAILABLE,
                    &e.to_string(),
                ));
            }
        };
        let timeout = handle.config.call_timeout;
        let input_scope = if session.stateless.load(Ordering::Relaxed) {
            input::INPUT_SCOPE.try_with(Arc::clone).ok()
        } else {
            None
        };
        if conn.is_stateless() && input_scope.is_none() {
            let call = input::Bridged {
                conn,
                server,
                method,
                timeout,
            };
            return Box::pin(self.call_resolving_input(session, id, call, params, call_sink)).await;
        }
        let started = match params {
            Outgoing::Raw(text) => conn.start_call(method, Params::Raw(&text), None, Some(timeout)),
            Outgoing::Map(mut map) => {
                let progress = take_progress_token(&mut map).and_then(|token| {
                    let sink = call_sink.cloned().or_else(|| session.out())?;
                    Some(ProgressRoute { sink, token })
                });
                conn.start_call(method, Params::Object(map), progress, Some(timeout))
            }
        };
        let handle = match started {
            Ok(h) => h,
            Err(e) => return Some(jsonrpc::error(Some(id), e.code(), &e.to_string())),
        };
        if let Some(capabilities) = input_scope {
            let ex = input::Exchange::new(
                conn,
                handle.id,
                server,
                method,
                timeout,
                handle.reply,
                capabilities,
            );
            return self.finish_exchange(session, id, ex, call_sink).await;
        }
        let key = (session.id, id.get().to_string());
        let outcome = self.await_in_flight(&key, &conn, handle, call_sink).await;
        reply_to_response(outcome, id, server, method, timeout)
    }

    /// Awaits a call's reply while it is listed in flight under the caller's key, so the
    /// caller's `notifications/cancelled` and the server's requests can find it.
    async fn await_in_flight(
        &self,
        key: &CallKey,
        conn: &Arc<Connection>,
        handle: crate::upstream::CallHandle,
        call_sink: Option<&Sink>,
    ) -> Result<Result<jsonrpc::Reply, CallError>, tokio::sync::oneshot::error::RecvError> {
        lock(&self.inflight).insert(
            key.clone(),
            UpstreamCall {
                conn: conn.clone(),
                id: handle.id,
                sink: call_sink.cloned(),
                input: None,
            },
        );
        let outcome = handle.reply.await;
        lock(&self.inflight).remove(key);
        outcome
    }
}

/// The response to a forwarded call, under the caller's id; `None` when the caller cancelled it.
fn reply_to_response(
    outcome: Result<Result<jsonrpc::Reply, CallError>, tokio::sync::oneshot::error::RecvError>,
    id: &RawValue,
    server: &str,
    method: &str,
    timeout: std::time::Duration,
) -> Option<Vec<u8>> {
    match outcome {
        Ok(Ok(reply)) => Some(reply.to_response(id)),
        Ok(Err(CallError::Cancelled)) => None,
        Ok(Err(CallError::TimedOut { .. })) => {
            let msg = format!(
                "server `{server}` did not answer `{method}` within {} s (limits.timeout)",
                timeout.as_secs()
            );
            Some(jsonrpc::error_with_data(
                Some(id),
                code::REQUEST_TIMEOUT,
                &msg,
                Some(json!({ "server": server, "limit": "timeout", "seconds": timeout.as_secs() })),
            ))
        }
        Ok(Err(e)) => Some(jsonrpc::error(Some(id), e.code(), &e.to_string())),
        Err(_) => Some(jsonrpc::error(
            Some(id),
            code::SERVER_UNAVAILABLE,
            &format!("server `{server}` dropped the call"),
        )),
    }
}

/// Runs the upstream call behind a Corral-run task; `None` when the task was cancelled (its
/// status is already final).
async fn run_task_call(
    sup: &Supervisor,
    tasks: &tasks::Tasks,
    task_id: &str,
    server: &str,
    map: ParamMap,
) -> Option<tasks::Outcome> {
    use tasks::Outcome;
    let failed = |code: i64, msg: &str| {
        Some(Outcome::Error(
            jsonrpc::error_object(code, msg).get().to_string(),
        ))
    };
    let handle = match sup.get(server) {
        Ok(h) => h,
        Err(e) => return failed(code::SERVER_UNAVAILABLE, &e.to_string()),
    };
    let conn = match sup.connection_of(&handle).await {
        Ok(c) => c,
        Err(e) => return failed(code::SERVER_UNAVAILABLE, &e.to_string()),
    };
    let timeout = handle.config.call_timeout;
    let call = match conn.start_call("tools/call", Params::Object(map), None, Some(timeout)) {
        Ok(call) => call,
        Err(e) => return failed(e.code(), &e.to_string()),
    };
    tasks.attach(task_id, conn.clone(), call.id);
    match call.reply.await {
        Ok(Ok(jsonrpc::Reply::Result(r))) => Some(Outcome::Result(r.get().to_string())),
        Ok(Ok(jsonrpc::Reply::Error(e))) => Some(Outcome::Error(e.get().to_string())),
        Ok(Err(CallError::Cancelled)) => None,
        Ok(Err(e)) => failed(e.code(), &e.to_string()),
        Err(_) => failed(
            code::SERVER_UNAVAILABLE,
            &format!("server `{server}` dropped the call"),
        ),
    }
}

impl RequestRouter for Gateway {
    fn route(&self, server: &str, request: ServerRequest) {
        let Some(wanted) = Wanted::of(
            &request.method,
            request.params.as_deref().map(RawValue::get),
        ) else {
            let msg = format!("Method not found: {}", request.method);
            request.fail(code::METHOD_NOT_FOUND, &msg);
            return;
        };
        let capability = wanted.capability;
        if capability == "roots" {
            lock(&self.roots_askers).insert(server.to_string());
        }
        let mut request = request;
        let owner = match self.task_of(server, &mut request) {
            Ok(owner) => owner,
            Err(task) => {
                let msg = format!(
                    "no connected client is waiting on task {task} or created it (`{}`)",
                    request.method
                );
                request.fail(code::METHOD_NOT_FOUND, &msg);
                return;
            }
        };
        let (session, sink) = match self.pick_client(&request.conn, wanted, owner) {
            Some(Asked::Session(session, sink)) => (session, sink),
            Some(Asked::Call(route)) => {
                if let Err(request) = route.send(request) {
                    request.fail(code::INTERNAL_ERROR, "the call that asked has ended");
                }
                return;
            }
            None => {
                let who = match owner {
                    Some(_) => "the client waiting on this task does not support",
                    None => "no connected client supports",
                };
                let msg = match wanted.mode {
                    Some(mode) => format!(
                        "{who} `{}` in {mode} mode (capability `{capability}.{mode}`)",
                        request.method
                    ),
                    None => format!("{who} `{}` (capability `{capability}`)", request.method),
                };
                request.fail(code::METHOD_NOT_FOUND, &msg);
                return;
            }
        };
        let method = request.method.clone();
        let params = request
            .params
            .as_deref()
            .map(RawValue::get)
            .map(str::to_string);
        if wanted.mode == Some("url")
            && let Some(id) = elicitation_id(params.as_deref())
        {
            self.remember_url_elicitation(server, id, session.id);
        }
        self.ask_client(
            session.id,
            &sink,
            &method,
            params.as_deref(),
            Asker::Server(request),
        );
    }
}

/// What a server's request needs the client to have declared.
#[derive(Clone, Copy)]
pub(super) struct Wanted {
    pub capability: &'static str,
    /// The elicitation mode, for `elicitation/create`.
    pub mode: Option<&'static str>,
}

impl Wanted {
    /// For a request with `method` and `params` (JSON text); `None` for a method no client
    /// capability covers.
    pub(super) fn of(method: &str, params: Option<&str>) -> Option<Wanted> {
        let (capability, mode) = match method {
            "sampling/createMessage" => ("sampling", None),
            "roots/list" => ("roots", None),
            "elicitation/create" => {
                let url = params.is_some_and(|p| {
                    p.contains("\"url\"")
                        && serde_json::from_str::<Value>(p)
                            .is_ok_and(|v| v.get("mode").and_then(Value::as_str) == Some("url"))
                });
                ("elicitation", Some(if url { "url" } else { "form" }))
            }
            _ => return None,
        };
        Some(Wanted { capability, mode })
    }

    /// Whether client capabilities `caps` cover this. An `elicitation` object that names no
    /// mode means form mode only (the 2025-06-18 shape).
    pub(super) fn declared_in(&self, caps: &Value) -> bool {
        let Some(c) = caps.get(self.capability) else {
            return false;
        };
        match self.mode {
            Some("url") => c.get("url").is_some(),
            Some("form") => c.get("form").is_some() || c.get("url").is_none(),
            _ => true,
        }
    }
}

/// The `elicitationId` of URL-mode elicitation params (JSON text).
fn elicitation_id(params: Option<&str>) -> Option<String> {
    let params: Value = serde_json::from_str(params?).ok()?;
    params.get("elicitationId")?.as_str().map(str::to_string)
}

/// URL-mode elicitations remembered for their completion notice.
const MAX_URL_ELICITATIONS: usize = 1024;

/// Who answers a server's request.
enum Asked {
    /// A session that can take requests, on this stream.
    Session(Arc<Session>, Sink),
    /// A stateless client's call, which turns it into `input_required`.
    Call(input::InputRoute),
}

enum Discovery {
    Found,
    Nothing,
    Failed(String),
}

#[derive(Clone, Copy)]
enum Named {
    Tool,
    Prompt,
}

/// Params on their way upstream: rebuilt from members, or already-spliced text.
enum Outgoing {
    Map(ParamMap),
    Raw(String),
}

fn unknown_name(id: &RawValue, kind: Named, name: &str) -> Vec<u8> {
    let what = match kind {
        Named::Tool => "Unknown tool",
        Named::Prompt => "Unknown prompt",
    };
    jsonrpc::error(Some(id), code::INVALID_PARAMS, &format!("{what}: {name}"))
}

/// Where the top-level `name` string sits in `params`, and its value, when the params can be
/// forwarded by splicing in a new name: an object with a plain `name` string and no `_meta`
/// (which may carry a progress token to remap, or a 2026-07-28 protocol version).
fn plain_name(params: &str) -> Option<(std::ops::Range<usize>, &str)> {
    let mut name = None;
    let mut special = false;
    scan::object_members(params, |m| {
        match m.key {
            "name" if name.is_some() => return Err(Scan::Unsupported),
            "name" => name = Some(m.value),
            // Progress tokens and 2026-07-28 versions live in `_meta`; `task` asks for a task.
            "_meta" | "task" => special = true,
            _ => {}
        }
        Ok(())
    })
    .ok()?;
    let range = name.filter(|_| !special)?;
    let value = scan::plain_str(&params[range.clone()])?;
    Some((range, value))
}

/// A request on the per-call fast path: `tools/call` or `prompts/get` whose envelope and name
/// the scanner took apart in one pass (see [`scan`]). Anything unusual (escaped keys, repeated
/// members, `_meta`, another method) goes the general way through serde_json instead.
struct FastCall<'a> {
    id: &'a str,
    method: &'static str,
    kind: Named,
    params: &'a str,
    name_range: std::ops::Range<usize>,
    name: &'a str,
}

impl<'a> FastCall<'a> {
    fn scan(msg: &'a [u8]) -> Option<FastCall<'a>> {
        let text = std::str::from_utf8(msg).ok()?;
        let (mut version, mut id, mut method, mut params) = (None, None, None, None);
        scan::object_members(text, |m| {
            let slot = match m.key {
                "jsonrpc" => &mut version,
                "id" => &mut id,
                // Stop scanning as soon as the method rules the fast path out.
                "method"
                    if !matches!(
                        &text[m.value.clone()],
                        r#""tools/call""# | r#""prompts/get""#
                    ) =>
                {
                    return Err(Scan::Unsupported);
                }
                "method" => &mut method,
                "params" => &mut params,
                // A request never carries these; let the general path classify it.
                "result" | "error" => return Err(Scan::Unsupported),
                _ => return Ok(()),
            };
            if slot.replace(m.value).is_some() {
                return Err(Scan::Unsupported);
            }
            Ok(())
        })
        .ok()?;
        if &text[version?] != "\"2.0\"" {
            return None;
        }
        let (method, kind) = match scan::plain_str(&text[method?])? {
            "tools/call" => ("tools/call", Named::Tool),
            "prompts/get" => ("prompts/get", Named::Prompt),
            _ => return None,
        };
        let params = &text[params?];
        let (name_range, name) = plain_name(params)?;
        Some(FastCall {
            id: &text[id?],
            method,
            kind,
            params,
            name_range,
            name,
        })
    }
}

/// Parses `params` as an object whose `field` is a string; the error is the JSON-RPC answer.
fn string_member(
    id: &RawValue,
    params: Option<&RawValue>,
    field: &str,
) -> Result<(ParamMap, String), Vec<u8>> {
    let Some(map) = params.and_then(|p| serde_json::from_str::<ParamMap>(p.get()).ok()) else {
        return Err(jsonrpc::error(
            Some(id),
            code::INVALID_PARAMS,
            &format!("Invalid params: expected an object with `{field}`"),
        ));
    };
    let Some(value) = map
        .get(field)
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    else {
        return Err(jsonrpc::error(
            Some(id),
            code::INVALID_PARAMS,
            &format!("Invalid params: `{field}` must be a string"),
        ));
    };
    Ok((map, value))
}

/// Removes the caller's progress token from `_meta` (the connection substitutes its own).
fn take_progress_token(params: &mut ParamMap) -> Option<Box<RawValue>> {
    let meta_raw = params.get("_meta")?;
    let mut meta: serde_json::Map<String, Value> = serde_json::from_str(meta_raw.get()).ok()?;
    let token = meta.remove("progressToken")?;
    if meta.is_empty() {
        params.remove("_meta");
    } else {
        params.insert("_meta".into(), jsonrpc::to_raw(&meta));
    }
    Some(jsonrpc::to_raw(&token))
}
