//! Server lifecycle: start, handshake, list, health-check, restart with backoff, stop the tree.
//!
//! Each server has one manager task (see `run.rs`) that owns its process and performs every state
//! transition, so transitions never race. Everything else talks to it through [`Server`]: commands
//! go in over a channel, state comes out through a watch channel, a bounded event history, the log
//! ring and [`Notice`]s that the gateway subscribes to.
//!
//! Seams: built from [`crate::config::ServerConfig`]s; hands [`Connection`]s to the gateway;
//! persists lists through [`crate::catalog::Store`].

pub mod keeper;
pub mod logs;
pub mod process;
mod run;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};

use crate::catalog::{Lists, Store};
use crate::config::ServerConfig;
use crate::upstream::{Connection, ServerRequest, lock};
use logs::LogRing;
use process::ExitInfo;

/// Lifecycle states. See docs/architecture.md for the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Stopped,
    Starting,
    Running,
    Unhealthy,
    Restarting,
    Crashed,
    Failed,
    Stopping,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Unhealthy => "unhealthy",
            State::Restarting => "restarting",
            State::Crashed => "crashed",
            State::Failed => "failed",
            State::Stopping => "stopping",
        }
    }

    /// States in which the server process is up and answering.
    pub fn is_up(self) -> bool {
        matches!(self, State::Running | State::Unhealthy)
    }
}

/// One state transition.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at: String,
    pub from: State,
    pub to: State,
    pub reason: String,
    /// For a refusal by the sandbox (the state does not change): the permission or limit that
    /// refused, e.g. `permissions.spawn` or `limits.pids`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// What the gateway needs to hear from the supervisor.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A server's lists changed (it started, was re-listed, or was removed).
    ListsChanged { server: String },
    /// A server notification that is not tied to a call, such as `notifications/message`.
    Notification {
        server: String,
        method: String,
        params: Option<Box<RawValue>>,
    },
}

/// A snapshot of one server for the API and CLI.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub id: String,
    pub name: String,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Seconds since the current process started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<f64>,
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_latency_ms: Option<f64>,
    pub tools: usize,
    pub resources: usize,
    pub prompts: usize,
    pub in_flight: usize,
    pub auto_start: bool,
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_info: Option<serde_json::Value>,
    /// How many times each permission or limit refused something, since Corral started.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub refusals: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Live {
    pid: Option<u32>,
    started: Option<Instant>,
    restarts: u32,
    last_exit: Option<ExitInfo>,
    last_error: Option<String>,
    health_latency: Option<Duration>,
    connection: Option<Arc<Connection>>,
    protocol_version: Option<String>,
    server_info: Option<serde_json::Value>,
    capabilities: serde_json::Value,
    refusals: BTreeMap<String, u64>,
}

enum Control {
    Start,
    Stop(Option<oneshot::Sender<()>>),
    Restart,
}

const HISTORY: usize = 200;

/// One configured server and its live state.
pub struct Server {
    pub config: ServerConfig,
    pub logs: LogRing,
    live: Mutex<Live>,
    history: Mutex<VecDeque<Event>>,
    state: watch::Sender<State>,
    control: mpsc::UnboundedSender<Control>,
    lists: RwLock<Arc<Lists>>,
    /// Counts start requests from users and callers, so a discovery run can tell whether
    /// somebody wants the server kept running.
    demand: std::sync::atomic::AtomicU64,
}

/// Why a server could not be used for a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SupervisorError {
    #[error("unknown server `{0}`")]
    UnknownServer(String),
    #[error("server `{0}` is disabled in the configuration")]
    Disabled(String),
    #[error("server `{id}` is {state}: {reason}")]
    Unavailable {
        id: String,
        state: &'static str,
        reason: String,
    },
    #[error("server `{0}` did not become ready within {1:?}")]
    StartTimeout(String, Duration),
    #[error("a server with id `{0}` already exists")]
    Exists(String),
}

impl Server {
    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    pub fn lists(&self) -> Arc<Lists> {
        self.lists.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn connection(&self) -> Option<Arc<Connection>> {
        lock(&self.live).connection.clone()
    }

    /// The connection of a server that is up, without waiting for anything.
    pub fn ready_connection(&self) -> Option<Arc<Connection>> {
        if self.state().is_up() {
            self.connection()
        } else {
            None
        }
    }

    /// The capabilities the running (or last run) server declared in `initialize`.
    pub fn capabilities(&self) -> serde_json::Value {
        lock(&self.live).capabilities.clone()
    }

    pub fn history(&self) -> Vec<Event> {
        lock(&self.history).iter().cloned().collect()
    }

    pub fn status(&self) -> Status {
        let live = lock(&self.live);
        let lists = self.lists();
        let state = self.state();
        Status {
            id: self.config.id.clone(),
            name: self.config.name.clone(),
            state,
            pid: live
                .pid
                .filter(|_| state.is_up() || state == State::Starting || state == State::Stopping),
            uptime_secs: live
                .started
                .filter(|_| state.is_up())
                .map(|s| (s.elapsed().as_millis() as f64) / 1000.0),
            restarts: live.restarts,
            last_exit: live.last_exit.clone(),
            last_error: live.last_error.clone(),
            health_latency_ms: live.health_latency.map(|d| d.as_secs_f64() * 1000.0),
            tools: lists.tools.len(),
            resources: lists.resources.len(),
            prompts: lists.prompts.len(),
            in_flight: live.connection.as_ref().map_or(0, |c| c.in_flight()),
            auto_start: self.config.auto_start,
            enabled: self.config.enabled,
            protocol_version: live.protocol_version.clone(),
            server_info: live.server_info.clone(),
            refusals: live.refusals.clone(),
        }
    }

    /// Something the sandbox refused: counted in the status, logged, and kept as an event.
    pub(crate) fn refused(&self, r: &crate::sandbox::monitor::Refusal) {
        // A summary line ("N more refused") carries its count; any other line is one refusal.
        let count = r
            .detail
            .split_once(" more refused")
            .and_then(|(n, _)| n.parse::<u64>().ok())
            .unwrap_or(1);
        *lock(&self.live).refusals.entry(r.key.clone()).or_default() += count;
        let text = format!("sandbox ({}): {}", r.key, r.detail);
        tracing::warn!(server = %self.config.id, refused_by = %r.key, "{}", r.detail);
        self.logs.push("corral", &text);
        let state = self.state();
        self.remember(Event {
            at: crate::time::now(),
            from: state,
            to: state,
            reason: r.detail.clone(),
            refused_by: Some(r.key.clone()),
            exit_code: None,
            signal: None,
        });
    }

    fn remember(&self, event: Event) {
        let mut h = lock(&self.history);
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(event);
    }

    fn set_state(&self, to: State, reason: &str, exit: Option<&ExitInfo>) {
        let from = self.state();
        if from == to && exit.is_none() {
            return;
        }
        let event = Event {
            at: crate::time::now(),
            from,
            to,
            reason: reason.to_string(),
            refused_by: None,
            exit_code: exit.and_then(|e| e.code),
            signal: exit.and_then(|e| e.signal),
        };
        tracing::info!(server = %self.config.id, from = from.as_str(), to = to.as_str(), reason, "state");
        self.logs.push(
            "corral",
            &format!("{} → {}: {reason}", from.as_str(), to.as_str()),
        );
        self.remember(event);
        self.state.send_replace(to);
    }
}

/// Where server-to-client requests go: the gateway, which knows the clients.
pub trait RequestRouter: Send + Sync {
    fn route(&self, server: &str, request: ServerRequest);
}

struct Shared {
    notices: broadcast::Sender<Notice>,
    router: RwLock<Option<std::sync::Weak<dyn RequestRouter>>>,
    store: Option<Store>,
    stored: Mutex<std::collections::HashMap<String, Lists>>,
}

/// All servers. Cheap to share behind an `Arc`.
pub struct Supervisor {
    servers: RwLock<BTreeMap<String, Arc<Server>>>,
    shared: Arc<Shared>,
    discovery: Arc<Semaphore>,
    /// Discovery runs still going; list requests wait (bounded) until it is zero.
    discovering: watch::Sender<usize>,
}

/// How long a lazy start may take before the call gets an error.
const START_TIMEOUT: Duration = Duration::from_secs(120);

impl Supervisor {
    pub fn new(store: Option<Store>) -> Arc<Supervisor> {
        let stored = store.as_ref().and_then(|s| match s.load_all() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("cannot load persisted lists: {e}");
                None
            }
        });
        let (notices, _) = broadcast::channel(1024);
        Arc::new(Supervisor {
            servers: RwLock::new(BTreeMap::new()),
            shared: Arc::new(Shared {
                notices,
                router: RwLock::new(None),
                store,
                stored: Mutex::new(stored.unwrap_or_default()),
            }),
            discovery: Arc::new(Semaphore::new(4)),
            discovering: watch::Sender::new(0),
        })
    }

    /// Sets who answers servers' requests to clients (sampling, elicitation, roots).
    pub fn set_router(&self, router: std::sync::Weak<dyn RequestRouter>) {
        *self
            .shared
            .router
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(router);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.shared.notices.subscribe()
    }

    /// Registers a server and starts its manager task (the server itself stays stopped).
    pub fn add(&self, config: ServerConfig) -> Result<Arc<Server>, SupervisorError> {
        let mut servers = self.servers.write().unwrap_or_else(|e| e.into_inner());
        if servers.contains_key(&config.id) {
            return Err(SupervisorError::Exists(config.id));
        }
        let stored = lock(&self.shared.stored)
            .get(&config.id)
            .cloned()
            .unwrap_or_default();
        let (control, rx) = mpsc::unbounded_channel();
        let server = Arc::new(Server {
            logs: LogRing::new(config.log_lines),
            config,
            live: Mutex::new(Live::default()),
            history: Mutex::new(VecDeque::new()),
            state: watch::Sender::new(State::Stopped),
            control,
            lists: RwLock::new(Arc::new(stored)),
            demand: std::sync::atomic::AtomicU64::new(0),
        });
        servers.insert(server.config.id.clone(), server.clone());
        tokio::spawn(run::manage(server.clone(), self.shared.clone(), rx));
        let _ = self.shared.notices.send(Notice::ListsChanged {
            server: server.config.id.clone(),
        });
        Ok(server)
    }

    /// Stops and forgets a server.
    pub async fn remove(&self, id: &str) -> Result<(), SupervisorError> {
        let server = self.get(id)?;
        self.stop(id).await?;
        self.servers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        // Dropping the last control sender ends the manager task.
        drop(server);
        let _ = self.shared.notices.send(Notice::ListsChanged {
            server: id.to_string(),
        });
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Arc<Server>, SupervisorError> {
        self.servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| SupervisorError::UnknownServer(id.to_string()))
    }

    pub fn all(&self) -> Vec<Arc<Server>> {
        self.servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Asks a server to start; returns once the request is queued.
    pub fn start(&self, id: &str) -> Result<(), SupervisorError> {
        let s = self.get(id)?;
        if !s.config.enabled {
            return Err(SupervisorError::Disabled(id.to_string()));
        }
        s.demand.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = s.control.send(Control::Start);
        Ok(())
    }

    /// Starts a server and waits until it is running (or has failed to start).
    pub async fn start_and_wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Arc<Connection>, SupervisorError> {
        let s = self.get(id)?;
        if !s.config.enabled {
            return Err(SupervisorError::Disabled(id.to_string()));
        }
        let mut rx = s.state.subscribe();
        s.demand.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = s.control.send(Control::Start);
        wait_up(&s, &mut rx, timeout).await
    }

    /// The live connection of a server, starting it on demand (lazy start).
    pub async fn connection(&self, id: &str) -> Result<Arc<Connection>, SupervisorError> {
        self.connection_of(&self.get(id)?).await
    }

    /// [`Self::connection`] for a server already looked up.
    pub async fn connection_of(&self, s: &Arc<Server>) -> Result<Arc<Connection>, SupervisorError> {
        let id = s.id();
        if let Some(c) = s.ready_connection() {
            return Ok(c);
        }
        if !s.config.enabled {
            return Err(SupervisorError::Disabled(id.to_string()));
        }
        let mut rx = s.state.subscribe();
        match s.state() {
            State::Failed => {
                let reason = lock(&s.live).last_error.clone().unwrap_or_default();
                return Err(SupervisorError::Unavailable {
                    id: id.to_string(),
                    state: "failed",
                    reason: format!("{reason}; run `corral start {id}` to try again"),
                });
            }
            // Queued behind a stop in progress, a start brings the server back afterwards.
            state if !state.is_up() => {
                s.demand.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s.control.send(Control::Start);
            }
            _ => {}
        }
        wait_up(s, &mut rx, START_TIMEOUT).await
    }

    pub async fn stop(&self, id: &str) -> Result<(), SupervisorError> {
        let s = self.get(id)?;
        let (tx, rx) = oneshot::channel();
        let _ = s.control.send(Control::Stop(Some(tx)));
        let _ = rx.await;
        Ok(())
    }

    pub fn restart(&self, id: &str) -> Result<(), SupervisorError> {
        let s = self.get(id)?;
        let _ = s.control.send(Control::Restart);
        Ok(())
    }

    /// Starts `autoStart` servers and runs a one-time discovery (start, list, stop) for servers
    /// whose lists have never been seen, so their tools can be listed before first use.
    pub fn start_initial(self: &Arc<Self>) {
        for s in self.all() {
            if !s.config.enabled {
                continue;
            }
            if s.config.auto_start {
                let mut rx = s.state.subscribe();
                let _ = s.control.send(Control::Start);
                if !s.lists().known {
                    // Its first lists are on the way: list requests wait for them too.
                    self.discovering.send_modify(|n| *n += 1);
                    let done = DiscoveryDone(self.discovering.clone());
                    let s = s.clone();
                    tokio::spawn(async move {
                        let _done = done;
                        let _ = wait_up(&s, &mut rx, START_TIMEOUT).await;
                    });
                }
            } else if !s.lists().known {
                let sup = self.clone();
                self.discovering.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    let _done = DiscoveryDone(sup.discovering.clone());
                    let Ok(_permit) = sup.discovery.clone().acquire_owned().await else {
                        return;
                    };
                    let id = s.id().to_string();
                    if s.state() != State::Stopped {
                        return;
                    }
                    tracing::info!(server = %id, "discovering tools (first run)");
                    let demand = s.demand.load(std::sync::atomic::Ordering::SeqCst);
                    let mut rx = s.state.subscribe();
                    let _ = s.control.send(Control::Start);
                    match wait_up(&s, &mut rx, START_TIMEOUT).await {
                        Ok(_) => {
                            // Keep it running if anybody asked for it meanwhile.
                            if s.demand.load(std::sync::atomic::Ordering::SeqCst) == demand {
                                let _ = sup.stop(&id).await;
                            }
                        }
                        Err(e) => tracing::warn!(server = %id, "discovery failed: {e}"),
                    }
                });
            }
        }
    }

    pub fn discovery_pending(&self) -> bool {
        *self.discovering.borrow() > 0
    }

    /// Waits until first-run discoveries have finished (or `timeout` passes), so the first
    /// `tools/list` a client sends after start-up is complete rather than partial.
    pub async fn discovered(&self, timeout: Duration) {
        let mut rx = self.discovering.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await;
    }

    /// Stops every server (in parallel) and waits for all of them.
    pub async fn shutdown(&self) {
        let ids: Vec<String> = self.all().iter().map(|s| s.id().to_string()).collect();
        futures::future::join_all(ids.iter().map(|id| self.stop(id))).await;
    }
}

struct DiscoveryDone(watch::Sender<usize>);

impl Drop for DiscoveryDone {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn wait_up(
    s: &Server,
    rx: &mut watch::Receiver<State>,
    timeout: Duration,
) -> Result<Arc<Connection>, SupervisorError> {
    let id = s.id().to_string();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen_starting = false;
    loop {
        let state = *rx.borrow_and_update();
        match state {
            State::Running | State::Unhealthy => {
                if let Some(c) = s.connection() {
                    return Ok(c);
                }
            }
            State::Starting | State::Restarting => seen_starting = true,
            State::Failed | State::Crashed if seen_starting => {
                let reason = lock(&s.live)
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "did not start".into());
                return Err(SupervisorError::Unavailable {
                    id,
                    state: state.as_str(),
                    reason,
                });
            }
            _ => {}
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(SupervisorError::Unavailable {
                    id,
                    state: "removed",
                    reason: "was removed".into(),
                });
            }
            Err(_) => return Err(SupervisorError::StartTimeout(id, timeout)),
        }
    }
}
