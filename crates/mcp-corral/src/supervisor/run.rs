//! The manager task of one server: every state transition happens here, in order.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};

use super::process::{self, ExitInfo, SpawnError};
use super::{Control, Notice, Server, Shared, State};
use crate::catalog::Lists;
use crate::config::model::TransportKind;
use crate::jsonrpc::{Reply, STATELESS_VERSION, code};
use crate::upstream::remote::{self, Flavor};
use crate::upstream::{Connection, Events, ServerRequest, lock};

/// The protocol revision Corral asks upstream servers for; they answer with the one they speak.
pub const UPSTREAM_PROTOCOL: &str = "2025-11-25";
/// How long a server may take from spawn to answering `initialize` (first `npx` runs download).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);
/// A server that stayed up this long has its restart budget reset.
const HEALTHY_RESET: Duration = Duration::from_secs(60);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Pages followed per list before Corral stops (a server returning cursors forever).
const MAX_PAGES: usize = 100;

enum Outcome {
    Stopped(Option<oneshot::Sender<()>>),
    Restart,
    Failed {
        reason: String,
        exit: Option<ExitInfo>,
    },
    ControlClosed,
}

enum LaunchError {
    /// Will not get better by retrying (missing executable or package manager).
    Fatal(String),
    Crash {
        reason: String,
        exit: Option<ExitInfo>,
    },
}

/// What carries a server: a local process tree, or a bridge to a remote server.
enum Proc {
    Local {
        child: Child,
        pgid: i32,
        /// The sandbox limits it runs under, to name the one that ended it.
        limits: Option<Box<process::Confinement>>,
    },
    Remote {
        task: tokio::task::JoinHandle<String>,
    },
}

impl Proc {
    /// Resolves when the process exits or the remote connection ends for good.
    async fn ended(&mut self) -> (String, Option<ExitInfo>) {
        match self {
            Proc::Local { child, limits, .. } => {
                let exit = child.wait().await.ok().map(ExitInfo::from_status);
                let fired = limits
                    .as_ref()
                    .zip(exit.as_ref())
                    .and_then(|(l, e)| l.fired(e));
                let why = fired.unwrap_or_else(|| {
                    exit.as_ref()
                        .map_or_else(|| "exited".to_string(), ExitInfo::describe)
                });
                (why, exit)
            }
            Proc::Remote { task } => {
                let why = task.await.unwrap_or_else(|e| e.to_string());
                (format!("disconnected ({why})"), None)
            }
        }
    }

    /// Stops politely (stdin closed / session deleted), then by force after `grace`.
    async fn stop(&mut self, conn: &Connection, grace: Duration) -> ExitInfo {
        conn.close_stdin().await;
        match self {
            Proc::Local { child, pgid, .. } => process::stop(child, *pgid, grace).await,
            Proc::Remote { task } => {
                if tokio::time::timeout(grace, &mut *task).await.is_err() {
                    task.abort();
                }
                ExitInfo {
                    code: None,
                    signal: None,
                    at: crate::time::now(),
                }
            }
        }
    }

    /// Ends what is left of a local process group after its leader exited.
    async fn reap(&self, grace: Duration) {
        if let Proc::Local { pgid, .. } = self {
            process::reap_group(*pgid, grace).await;
        }
    }
}

struct Running {
    proc: Proc,
    conn: Arc<Connection>,
    eof: oneshot::Receiver<()>,
    since: Instant,
}

pub(super) async fn manage(
    server: Arc<Server>,
    shared: Arc<Shared>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
) {
    while let Some(cmd) = ctl.recv().await {
        match cmd {
            Control::Stop(done) => {
                if let Some(d) = done {
                    let _ = d.send(());
                }
            }
            Control::Start | Control::Restart => {
                // An explicit (or lazy) start gives a failed server a fresh restart budget.
                lock(&server.live).restarts = 0;
                if !run(&server, &shared, &mut ctl).await {
                    return;
                }
            }
        }
    }
}

/// Runs the server until it is stopped, crashes without restart, or fails. Returns false when
/// the supervisor dropped the server (control channel closed).
async fn run(
    server: &Arc<Server>,
    shared: &Arc<Shared>,
    ctl: &mut mpsc::UnboundedReceiver<Control>,
) -> bool {
    let cfg = &server.config;
    let mut reason = "start requested".to_string();
    loop {
        server.set_state(State::Starting, &reason, None);
        let outcome = match launch(server, shared).await {
            Ok(running) => {
                server.set_state(State::Running, "initialized", None);
                supervise(server, running, ctl).await
            }
            Err(LaunchError::Fatal(msg)) => {
                lock(&server.live).last_error = Some(msg.clone());
                server.set_state(State::Failed, &msg, None);
                return true;
            }
            Err(LaunchError::Crash { reason, exit }) => Outcome::Failed { reason, exit },
        };
        match outcome {
            Outcome::Stopped(done) => {
                server.set_state(State::Stopped, "stop requested", None);
                if let Some(d) = done {
                    let _ = d.send(());
                }
                return true;
            }
            Outcome::ControlClosed => {
                server.set_state(State::Stopped, "removed", None);
                return false;
            }
            Outcome::Restart => {
                server.set_state(State::Restarting, "restart requested", None);
                reason = "restart requested".into();
            }
            Outcome::Failed { reason: why, exit } => {
                {
                    let mut live = lock(&server.live);
                    live.last_error = Some(why.clone());
                    if exit.is_some() {
                        live.last_exit = exit.clone();
                    }
                }
                if !cfg.restart_on_failure {
                    server.set_state(State::Crashed, &why, exit.as_ref());
                    return true;
                }
                let restarts = lock(&server.live).restarts;
                if restarts >= cfg.max_restarts {
                    let msg = format!(
                        "{why}; gave up after {restarts} restarts (maxRestarts: {})",
                        cfg.max_restarts
                    );
                    lock(&server.live).last_error = Some(msg.clone());
                    server.set_state(State::Failed, &msg, exit.as_ref());
                    return true;
                }
                lock(&server.live).restarts = restarts + 1;
                let delay = backoff(cfg.restart_delay, restarts);
                let msg = format!(
                    "{why}; restart {}/{} in {} ms",
                    restarts + 1,
                    cfg.max_restarts,
                    delay.as_millis()
                );
                server.set_state(State::Restarting, &msg, exit.as_ref());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    cmd = ctl.recv() => match cmd {
                        Some(Control::Stop(done)) => {
                            server.set_state(State::Stopped, "stop requested while waiting to restart", None);
                            if let Some(d) = done {
                                let _ = d.send(());
                            }
                            return true;
                        }
                        None => return false,
                        Some(_) => {} // start or restart now: skip the rest of the delay
                    }
                }
                reason = "restarting after failure".into();
            }
        }
    }
}

/// `base * 2^attempt`, ±20 % jitter, capped at 30 s.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let jitter = rand::rng().random_range(0.8..1.2);
    exp.mul_f64(jitter).min(BACKOFF_CAP)
}

async fn launch(server: &Arc<Server>, shared: &Arc<Shared>) -> Result<Running, LaunchError> {
    let cfg = &server.config;
    let (eof_tx, eof_rx) = oneshot::channel();
    let events: Arc<dyn Events> = Arc::new(ConnEvents {
        server: Arc::downgrade(server),
        shared: shared.clone(),
    });
    let (mut proc, conn) = match &cfg.remote {
        Some(remote) => {
            let flavor = match remote.kind {
                TransportKind::Sse => Flavor::LegacySse,
                _ => Flavor::StreamableHttp,
            };
            let bridge = remote::connect(
                flavor,
                remote.url.clone(),
                remote.headers.clone(),
                remote::http_client(),
            );
            {
                let mut live = lock(&server.live);
                live.pid = None;
                live.started = Some(Instant::now());
            }
            let conn = Connection::spawn(
                &cfg.id,
                bridge.from_server,
                bridge.to_server,
                events,
                eof_tx,
            );
            (Proc::Remote { task: bridge.task }, conn)
        }
        None => {
            let (log_to, refused_to) = (Arc::downgrade(server), Arc::downgrade(server));
            let log = process::Log {
                warn: Arc::new(move |msg: &str| {
                    if let Some(s) = log_to.upgrade() {
                        tracing::warn!(server = %s.id(), "{msg}");
                        s.logs.push("corral", msg);
                    }
                }),
                refused: Arc::new(move |r| {
                    if let Some(s) = refused_to.upgrade() {
                        s.refused(r);
                    }
                }),
            };
            let spawned = process::spawn(&cfg.launch, cfg.sandbox.as_ref(), &cfg.id, &log)
                .map_err(|e| match e {
                    SpawnError::PackageManagerMissing { .. }
                    | SpawnError::CommandMissing { .. }
                    | SpawnError::Io { .. }
                    | SpawnError::Sandbox(_) => LaunchError::Fatal(e.to_string()),
                })?;
            let (mut child, limits) = (spawned.child, spawned.limits.map(Box::new));
            if let Some(fd) = spawned.reports {
                watch_refusals(server, fd);
            }
            let pid = child.id().unwrap_or(0);
            {
                let mut live = lock(&server.live);
                live.pid = Some(pid);
                live.started = Some(Instant::now());
            }
            let (Some(stdout), Some(stdin), Some(stderr)) =
                (child.stdout.take(), child.stdin.take(), child.stderr.take())
            else {
                // Invariant: `process::spawn` pipes all three streams.
                return Err(LaunchError::Fatal("spawned without pipes".into()));
            };
            let log_target = Arc::downgrade(server);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match log_target.upgrade() {
                        Some(s) => s.logs.push("stderr", &line),
                        None => return,
                    }
                }
            });
            let conn = Connection::spawn(&cfg.id, stdout, stdin, events, eof_tx);
            (
                Proc::Local {
                    child,
                    pgid: pid as i32,
                    limits,
                },
                conn,
            )
        }
    };

    let handshake = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&conn)) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("did not answer `initialize` within {} s", HANDSHAKE_TIMEOUT.as_secs())),
        },
        (what, exit) = proc.ended() => {
            conn.close(&format!("{what} during startup"));
            proc.reap(cfg.stop_grace).await;
            return Err(LaunchError::Crash { reason: format!("{what} during startup{}", last_stderr(server)), exit });
        }
    };
    let init = match handshake {
        Ok(init) => init,
        Err(reason) => {
            conn.close(&reason);
            let exit = proc.stop(&conn, cfg.stop_grace).await;
            return Err(LaunchError::Crash {
                reason: format!("{reason}{}", last_stderr(server)),
                exit: Some(exit),
            });
        }
    };
    {
        let mut live = lock(&server.live);
        live.protocol_version = init
            .get("protocolVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        live.server_info = init.get("serverInfo").cloned();
        live.capabilities = init.get("capabilities").cloned().unwrap_or_default();
        live.last_error = None;
    }
    refresh_lists(server, shared, &conn, ListKind::ALL).await;
    lock(&server.live).connection = Some(conn.clone());
    Ok(Running {
        proc,
        conn,
        eof: eof_rx,
        since: Instant::now(),
    })
}

/// Records what the sandbox refuses, as its monitor reports it (see `sandbox::monitor`).
fn watch_refusals(server: &Arc<Server>, fd: std::os::fd::OwnedFd) {
    let reports = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(r) => r,
        Err(e) => {
            server.logs.push(
                "corral",
                &format!("sandbox refusals will not be reported: {e}"),
            );
            return;
        }
    };
    let target = Arc::downgrade(server);
    tokio::spawn(async move {
        let mut lines = BufReader::new(reports).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Some(server) = target.upgrade() else {
                return;
            };
            if let Some(r) = crate::sandbox::monitor::Refusal::parse(&line) {
                server.refused(&r);
            }
        }
    });
}

fn last_stderr(server: &Server) -> String {
    let lines: Vec<String> = server
        .logs
        .tail(50)
        .into_iter()
        .filter(|l| l.stream == "stderr")
        .map(|l| l.line)
        .collect();
    let last: Vec<&str> = lines
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    if last.is_empty() {
        String::new()
    } else {
        format!("; last stderr: {}", last.join(" | "))
    }
}

/// What Corral can forward to its clients, declared to every server; some servers offer tools
/// only to clients that declare these (server-everything's sampling and elicitation tools).
fn client_capabilities() -> Value {
    json!({
        "sampling": {},
        "elicitation": { "form": {}, "url": {} },
        "roots": { "listChanged": true },
    })
}

fn client_info() -> Value {
    json!({ "name": "corral", "version": env!("CARGO_PKG_VERSION") })
}

/// Opens the session: `initialize` first (every installed server speaks it, and some older
/// SDKs drop a connection whose first request is anything else); a server that refuses it as
/// unknown or as the wrong era is probed with `server/discover` and spoken to statelessly.
/// Returns an initialize-shaped result (protocolVersion, capabilities, serverInfo).
async fn handshake(conn: &Connection) -> Result<Value, String> {
    let params = json!({
        "protocolVersion": UPSTREAM_PROTOCOL,
        "capabilities": client_capabilities(),
        "clientInfo": client_info(),
    })
    .to_string();
    let reply = conn
        .request("initialize", Some(&params))
        .await
        .map_err(|e| e.to_string())?;
    let init: Value = match reply {
        Reply::Result(r) => {
            serde_json::from_str(r.get()).map_err(|e| format!("bad initialize result: {e}"))?
        }
        Reply::Error(e) if refuses_initialize(&e) => return discover(conn, e.get()).await,
        Reply::Error(e) => return Err(format!("`initialize` failed: {}", e.get())),
    };
    conn.notify("notifications/initialized", None)
        .map_err(|e| e.to_string())?;
    Ok(init)
}

/// `initialize` answered as a stateless-era server does: unknown method, invalid request, or
/// "unsupported protocol version" (-32022).
fn refuses_initialize(e: &crate::jsonrpc::RawSlice) -> bool {
    let code = serde_json::from_str::<Value>(e.get())
        .ok()
        .and_then(|v| v.get("code")?.as_i64());
    matches!(
        code,
        Some(code::METHOD_NOT_FOUND | code::INVALID_REQUEST | code::UNSUPPORTED_PROTOCOL_VERSION)
    )
}

/// The stateless handshake: `server/discover` on 2026-07-28.
async fn discover(conn: &Connection, refused: &str) -> Result<Value, String> {
    let mut envelope = serde_json::Map::new();
    envelope.insert(
        "io.modelcontextprotocol/protocolVersion".into(),
        STATELESS_VERSION.into(),
    );
    envelope.insert("io.modelcontextprotocol/clientInfo".into(), client_info());
    envelope.insert(
        "io.modelcontextprotocol/clientCapabilities".into(),
        client_capabilities(),
    );
    conn.set_stateless(envelope);
    let reply = conn
        .request("server/discover", None)
        .await
        .map_err(|e| e.to_string())?;
    let found: Value = match reply {
        Reply::Result(r) => {
            serde_json::from_str(r.get()).map_err(|e| format!("bad server/discover result: {e}"))?
        }
        Reply::Error(e) => {
            return Err(format!(
                "refused `initialize` ({refused}) and `server/discover` ({})",
                e.get()
            ));
        }
    };
    let speaks = found
        .get("supportedVersions")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(|v| v == STATELESS_VERSION));
    if !speaks {
        return Err(format!(
            "refused `initialize` and offers no revision Corral speaks in `server/discover`: {}",
            found.get("supportedVersions").unwrap_or(&Value::Null)
        ));
    }
    let server_info = found
        .get("_meta")
        .and_then(|m| m.get("io.modelcontextprotocol/serverInfo"))
        .or_else(|| found.get("serverInfo"))
        .cloned()
        .unwrap_or(Value::Null);
    let capabilities = found.get("capabilities").cloned().unwrap_or_default();
    listen_for_list_changes(conn, &capabilities);
    Ok(json!({
        "protocolVersion": STATELESS_VERSION,
        "capabilities": capabilities,
        "serverInfo": server_info,
        "instructions": found.get("instructions"),
    }))
}

/// A stateless server sends list changes only on a `subscriptions/listen` stream: open one for
/// the lifetime of the connection.
fn listen_for_list_changes(conn: &Connection, capabilities: &Value) {
    let changes = |kind: &str| {
        capabilities
            .get(kind)
            .and_then(|c| c.get("listChanged"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let filter = json!({
        "toolsListChanged": changes("tools"),
        "promptsListChanged": changes("prompts"),
        "resourcesListChanged": changes("resources"),
    });
    if filter
        .as_object()
        .is_some_and(|f| f.values().any(|v| v == true))
    {
        let params = json!({ "notifications": filter }).to_string();
        let _ = conn.send_untracked(
            "corral-listen",
            "subscriptions/listen",
            crate::upstream::Params::Raw(&params),
        );
    }
}

#[derive(Clone, Copy)]
pub(super) struct ListKind {
    method: &'static str,
    field: &'static str,
    capability: &'static str,
}

impl ListKind {
    const TOOLS: ListKind = ListKind {
        method: "tools/list",
        field: "tools",
        capability: "tools",
    };
    const RESOURCES: ListKind = ListKind {
        method: "resources/list",
        field: "resources",
        capability: "resources",
    };
    const TEMPLATES: ListKind = ListKind {
        method: "resources/templates/list",
        field: "resourceTemplates",
        capability: "resources",
    };
    const PROMPTS: ListKind = ListKind {
        method: "prompts/list",
        field: "prompts",
        capability: "prompts",
    };
    const ALL: &[ListKind] = &[Self::TOOLS, Self::RESOURCES, Self::TEMPLATES, Self::PROMPTS];

    fn slot<'a>(&self, lists: &'a mut Lists) -> &'a mut Vec<Value> {
        match self.field {
            "tools" => &mut lists.tools,
            "resources" => &mut lists.resources,
            "resourceTemplates" => &mut lists.templates,
            _ => &mut lists.prompts,
        }
    }
}

/// Re-lists the given kinds (following cursors), stores the result and tells the gateway.
async fn refresh_lists(server: &Server, shared: &Shared, conn: &Connection, kinds: &[ListKind]) {
    let caps = lock(&server.live).capabilities.clone();
    let mut lists = (*server.lists()).clone();
    for kind in kinds {
        let slot = kind.slot(&mut lists);
        if caps.get(kind.capability).is_none() {
            slot.clear();
            continue;
        }
        match list_all(conn, *kind).await {
            Ok(items) => *slot = items,
            Err(e) => {
                tracing::warn!(server = %server.id(), "{} failed: {e}", kind.method);
                server
                    .logs
                    .push("corral", &format!("{} failed: {e}", kind.method));
            }
        }
    }
    lists.known = true;
    if let Some(store) = &shared.store {
        store.save_in_background(server.id(), &lists);
    }
    *server.lists.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(lists);
    let _ = shared.notices.send(Notice::ListsChanged {
        server: server.id().to_string(),
    });
}

async fn list_all(conn: &Connection, kind: ListKind) -> Result<Vec<Value>, String> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let params = cursor.as_ref().map(|c| json!({ "cursor": c }).to_string());
        let reply = conn
            .request(kind.method, params.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        let page: Value = match reply {
            Reply::Result(r) => serde_json::from_str(r.get()).map_err(|e| e.to_string())?,
            Reply::Error(e) => return Err(e.get().to_string()),
        };
        if let Some(Value::Array(list)) = page.get(kind.field) {
            items.extend(list.iter().cloned());
        }
        match page.get("nextCursor").and_then(Value::as_str) {
            Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
            _ => return Ok(items),
        }
    }
    Ok(items)
}

async fn supervise(
    server: &Arc<Server>,
    mut run: Running,
    ctl: &mut mpsc::UnboundedReceiver<Control>,
) -> Outcome {
    let cfg = &server.config;
    let (health_tx, mut health_rx) = mpsc::channel(4);
    let health = cfg.health.interval.map(|every| {
        tokio::spawn(health_loop(
            run.conn.clone(),
            every,
            cfg.health.timeout,
            health_tx,
        ))
    });
    let _abort = AbortOnDrop(health);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            (reason, exit) = run.proc.ended() => {
                return crashed(server, run, reason, exit).await;
            }
            _ = &mut run.eof => {
                // Closing stdout usually means the process is exiting: give it a moment.
                if let Ok((reason, exit)) = tokio::time::timeout(Duration::from_secs(1), run.proc.ended()).await {
                    return crashed(server, run, reason, exit).await;
                }
                let exit = graceful_stop(server, &mut run, "closed its stdout").await;
                return Outcome::Failed { reason: "closed its stdout".into(), exit: Some(exit) };
            }
            cmd = ctl.recv() => match cmd {
                Some(Control::Stop(done)) => {
                    server.set_state(State::Stopping, "stop requested", None);
                    graceful_stop(server, &mut run, "was stopped").await;
                    return Outcome::Stopped(done);
                }
                Some(Control::Restart) => {
                    server.set_state(State::Stopping, "restart requested", None);
                    graceful_stop(server, &mut run, "is restarting").await;
                    return Outcome::Restart;
                }
                Some(Control::Start) => {}
                None => {
                    graceful_stop(server, &mut run, "was removed").await;
                    return Outcome::ControlClosed;
                }
            },
            Some(check) = health_rx.recv() => match check {
                Ok(latency) => {
                    lock(&server.live).health_latency = Some(latency);
                    failures = 0;
                    if server.state() == State::Unhealthy {
                        server.set_state(State::Running, "health check passed", None);
                    }
                }
                Err(why) => {
                    failures += 1;
                    server.logs.push("corral", &format!("health check {failures}/{} failed: {why}", cfg.health.retries));
                    if failures >= cfg.health.retries {
                        let reason = format!("{failures} consecutive health checks failed (last: {why})");
                        if server.state() != State::Unhealthy {
                            server.set_state(State::Unhealthy, &reason, None);
                        }
                        if cfg.restart_on_failure {
                            let exit = graceful_stop(server, &mut run, "was unhealthy").await;
                            return Outcome::Failed { reason, exit: Some(exit) };
                        }
                    }
                }
            },
        }
    }
}

async fn crashed(server: &Server, run: Running, reason: String, exit: Option<ExitInfo>) -> Outcome {
    run.conn.close(&reason);
    {
        let mut live = lock(&server.live);
        live.connection = None;
        live.health_latency = None;
        // A server that had been healthy for a while gets its full restart budget back.
        if run.since.elapsed() >= HEALTHY_RESET {
            live.restarts = 0;
        }
    }
    run.proc.reap(server.config.stop_grace).await;
    Outcome::Failed { reason, exit }
}

async fn graceful_stop(server: &Server, run: &mut Running, why: &str) -> ExitInfo {
    {
        let mut live = lock(&server.live);
        live.connection = None;
        live.health_latency = None;
    }
    run.conn.close(why);
    let exit = run.proc.stop(&run.conn, server.config.stop_grace).await;
    lock(&server.live).last_exit = Some(exit.clone());
    exit
}

async fn health_loop(
    conn: Arc<Connection>,
    every: Duration,
    timeout: Duration,
    tx: mpsc::Sender<Result<Duration, String>>,
) {
    let mut method = "ping";
    loop {
        tokio::time::sleep(every).await;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, conn.request(method, None)).await {
            Ok(Ok(Reply::Result(_))) => Ok(started.elapsed()),
            Ok(Ok(Reply::Error(e))) if method == "ping" && is_method_not_found(&e) => {
                // Servers without `ping`: listing tools proves the same liveness.
                method = "tools/list";
                continue;
            }
            // Any answer proves the server is alive and reading.
            Ok(Ok(Reply::Error(_))) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer to `{method}` within {} ms",
                timeout.as_millis()
            )),
        };
        if tx.send(result).await.is_err() {
            return;
        }
    }
}

fn is_method_not_found(e: &crate::jsonrpc::RawSlice) -> bool {
    serde_json::from_str::<Value>(e.get())
        .ok()
        .and_then(|v| v.get("code")?.as_i64())
        == Some(code::METHOD_NOT_FOUND)
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// Routes a server's unsolicited traffic: list changes trigger a re-list, log messages go to
/// the log ring, everything else is handed to the gateway.
struct ConnEvents {
    server: Weak<Server>,
    shared: Arc<Shared>,
}

impl Events for ConnEvents {
    fn notification(&self, server_id: &str, method: &str, params: Option<&RawValue>) {
        let Some(server) = self.server.upgrade() else {
            return;
        };
        let kinds: Option<&'static [ListKind]> = match method {
            "notifications/tools/list_changed" => Some(&[ListKind::TOOLS]),
            "notifications/resources/list_changed" => {
                Some(&[ListKind::RESOURCES, ListKind::TEMPLATES])
            }
            "notifications/prompts/list_changed" => Some(&[ListKind::PROMPTS]),
            _ => None,
        };
        if let Some(kinds) = kinds {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                if let Some(conn) = server.connection() {
                    refresh_lists(&server, &shared, &conn, kinds).await;
                }
            });
            return;
        }
        if method == "notifications/message" {
            server.logs.push("mcp", params.map_or("", |p| p.get()));
        }
        // Only Corral subscribes upstream (its `subscriptions/listen` stream of a 2026-07-28
        // server): the acknowledgement is Corral's, never a client's.
        if method == "notifications/subscriptions/acknowledged" {
            return;
        }
        let _ = self.shared.notices.send(Notice::Notification {
            server: server_id.to_string(),
            method: method.to_string(),
            params: params.map(|p| p.to_owned()),
        });
    }

    fn server_request(&self, request: ServerRequest) {
        let router = self
            .shared
            .router
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|w| w.upgrade());
        let server = request.conn.server().to_string();
        match router {
            Some(r) => r.route(&server, request),
            None => {
                tokio::spawn(async move {
                    request.fail(
                        code::METHOD_NOT_FOUND,
                        &format!(
                            "no client is connected to Corral to answer `{}`",
                            request.method
                        ),
                    );
                });
            }
        }
    }

    fn stray_output(&self, _server: &str, line: &str) {
        if let Some(server) = self.server.upgrade() {
            server.logs.push("stdout", line);
        }
    }

    fn limit_fired(&self, server_id: &str, what: &str) {
        tracing::warn!(server = %server_id, "{what}");
        if let Some(server) = self.server.upgrade() {
            server.logs.push("corral", what);
        }
    }
}
