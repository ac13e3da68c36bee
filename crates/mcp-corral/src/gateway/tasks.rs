//! Tasks (the 2025-11-25 extension): `tools/call` with a `task` member returns at once with a
//! task id; the client polls `tasks/get`, collects `tasks/result`, or calls `tasks/cancel`.
//!
//! Servers that support tasks themselves (they declare `tasks.requests.tools.call`) get the
//! request unchanged, but their task ids do not reach clients: Corral gives each such task an
//! id of its own (random, like its own tasks) and translates both ways, so two servers that
//! issue the same id cannot be confused, and a client neither lists nor hears about another
//! client's tasks on a server they share. For every other server Corral is the task receiver: it sends the plain
//! call upstream, keeps the outcome here, and answers the `tasks/*` requests itself.
//!
//! Retention (documented in docs/protocol.md): a task lives for the `ttl` the client asked for
//! (default 5 min, at most 1 h), counted from its creation, and in any case until 60 s after it
//! finished; working tasks are never dropped. At most 1,000 tasks are kept; past that, new
//! task-augmented calls are refused with a "busy" error. Tasks live in memory: a restart of
//! Corral forgets them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::time::rfc3339;
use crate::upstream::{Connection, lock};

/// The `_meta` key that ties a message to a task.
pub const RELATED_TASK: &str = "io.modelcontextprotocol/related-task";
const DEFAULT_TTL_MS: u64 = 5 * 60 * 1000;
const MAX_TTL_MS: u64 = 60 * 60 * 1000;
const KEEP_AFTER_DONE: Duration = Duration::from_secs(60);
const MAX_TASKS: usize = 1000;
const POLL_INTERVAL_MS: u64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Working,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Working => "working",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != Status::Working
    }
}

/// How the underlying call ended: its result or its JSON-RPC error object, as raw JSON.
#[derive(Debug, Clone)]
pub enum Outcome {
    Result(String),
    Error(String),
}

struct Task {
    session: u64,
    status: Status,
    message: Option<String>,
    created: SystemTime,
    updated: SystemTime,
    created_at: Instant,
    finished_at: Option<Instant>,
    ttl_ms: u64,
    outcome: Option<Outcome>,
    /// The upstream call running it, so a cancel reaches the server.
    upstream: Option<(Arc<Connection>, u64)>,
    /// Turns true when the task reaches a final status.
    done: watch::Sender<bool>,
}

impl Task {
    fn to_json(&self, id: &str) -> Value {
        let mut v = json!({
            "taskId": id,
            "status": self.status.as_str(),
            "createdAt": rfc3339(self.created),
            "lastUpdatedAt": rfc3339(self.updated),
            "ttl": self.ttl_ms,
            "pollInterval": POLL_INTERVAL_MS,
        });
        if let Some(m) = &self.message {
            v["statusMessage"] = Value::String(m.clone());
        }
        v
    }

    fn expired(&self, now: Instant) -> bool {
        let Some(finished) = self.finished_at else {
            return false;
        };
        let by_ttl = self.created_at + Duration::from_millis(self.ttl_ms);
        now >= by_ttl.max(finished + KEEP_AFTER_DONE)
    }
}

/// Why a `tasks/*` request cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("unknown task `{0}` (it may have expired; see the task's ttl)")]
    Unknown(String),
    #[error("task `{0}` already ended ({1}); only working tasks can be cancelled")]
    Terminal(String, &'static str),
    #[error("Corral keeps at most {MAX_TASKS} tasks; wait for some to finish or expire")]
    Full,
    #[error("task `{0}` was cancelled")]
    Cancelled(String),
}

#[derive(Default)]
pub struct Tasks {
    local: Mutex<HashMap<String, Task>>,
    /// Corral's ids for tasks that upstream servers run themselves.
    remote: Mutex<HashMap<String, RemoteTask>>,
    /// Sessions with a `tasks/*` request in flight for a server-run task, by Corral's id,
    /// oldest first: a request the server sends on that task's behalf goes to them.
    collecting: Mutex<HashMap<String, Vec<u64>>>,
}

/// Marks a session as waiting on a server-run task until dropped.
pub struct Collecting<'a> {
    tasks: &'a Tasks,
    id: String,
    session: u64,
}

impl Drop for Collecting<'_> {
    fn drop(&mut self) {
        let mut collecting = lock(&self.tasks.collecting);
        if let Some(sessions) = collecting.get_mut(&self.id) {
            if let Some(at) = sessions.iter().rposition(|s| *s == self.session) {
                sessions.remove(at);
            }
            if sessions.is_empty() {
                collecting.remove(&self.id);
            }
        }
    }
}

/// A task an upstream server runs, known to the client by Corral's id.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteTask {
    pub server: String,
    /// The server's own id for it.
    pub upstream: String,
    /// The session that created it.
    pub session: u64,
    created: Instant,
}

impl Tasks {
    /// Registers a new working task for `session`; returns its id and the `CreateTaskResult`.
    pub fn create(&self, session: u64, ttl_ms: Option<u64>) -> Result<(String, Value), TaskError> {
        let now = Instant::now();
        let mut local = lock(&self.local);
        local.retain(|_, t| !t.expired(now));
        if local.len() >= MAX_TASKS {
            return Err(TaskError::Full);
        }
        let id = new_id();
        let created = SystemTime::now();
        let task = Task {
            session,
            status: Status::Working,
            message: None,
            created,
            updated: created,
            created_at: now,
            finished_at: None,
            ttl_ms: ttl_ms.unwrap_or(DEFAULT_TTL_MS).clamp(1, MAX_TTL_MS),
            outcome: None,
            upstream: None,
            done: watch::Sender::new(false),
        };
        let result = json!({ "task": task.to_json(&id) });
        local.insert(id.clone(), task);
        Ok((id, result))
    }

    /// Records the upstream call that runs task `id`.
    pub fn attach(&self, id: &str, conn: Arc<Connection>, upstream_id: u64) {
        if let Some(t) = lock(&self.local).get_mut(id) {
            t.upstream = Some((conn, upstream_id));
        }
    }

    /// Stores how the call ended. A cancelled task stays cancelled.
    pub fn finish(&self, id: &str, outcome: Outcome) {
        let mut local = lock(&self.local);
        let Some(t) = local.get_mut(id) else { return };
        if t.status.is_terminal() {
            return;
        }
        t.status = match &outcome {
            Outcome::Error(_) => Status::Failed,
            // A tool that reports `isError` failed, although its result is still the answer.
            Outcome::Result(raw) if tool_error(raw) => Status::Failed,
            Outcome::Result(_) => Status::Completed,
        };
        if let Outcome::Error(raw) = &outcome {
            t.message = serde_json::from_str::<Value>(raw)
                .ok()
                .and_then(|e| e.get("message")?.as_str().map(str::to_string));
        }
        t.outcome = Some(outcome);
        t.updated = SystemTime::now();
        t.finished_at = Some(Instant::now());
        t.upstream = None;
        t.done.send_replace(true);
    }

    pub fn is_local(&self, id: &str) -> bool {
        lock(&self.local).contains_key(id)
    }

    pub fn get(&self, id: &str) -> Result<Value, TaskError> {
        let local = lock(&self.local);
        let t = local
            .get(id)
            .filter(|t| !t.expired(Instant::now()))
            .ok_or_else(|| TaskError::Unknown(id.to_string()))?;
        Ok(t.to_json(id))
    }

    /// Waits for task `id` to end and returns the underlying call's outcome.
    pub async fn result(&self, id: &str) -> Result<Outcome, TaskError> {
        let mut done = lock(&self.local)
            .get(id)
            .ok_or_else(|| TaskError::Unknown(id.to_string()))?
            .done
            .subscribe();
        // A sender dropped with its expired task ends the wait too; the lookup below says so.
        let _ = done.wait_for(|finished| *finished).await;
        let local = lock(&self.local);
        let t = local
            .get(id)
            .ok_or_else(|| TaskError::Unknown(id.to_string()))?;
        match (&t.outcome, t.status) {
            (_, Status::Cancelled) => Err(TaskError::Cancelled(id.to_string())),
            (Some(o), _) => Ok(o.clone()),
            (None, _) => Err(TaskError::Unknown(id.to_string())),
        }
    }

    /// Cancels a working task and tells its server to stop.
    pub fn cancel(&self, id: &str) -> Result<Value, TaskError> {
        let (snapshot, upstream) = {
            let mut local = lock(&self.local);
            let t = local
                .get_mut(id)
                .ok_or_else(|| TaskError::Unknown(id.to_string()))?;
            if t.status.is_terminal() {
                return Err(TaskError::Terminal(id.to_string(), t.status.as_str()));
            }
            t.status = Status::Cancelled;
            t.message = Some("cancelled by the client".into());
            t.updated = SystemTime::now();
            t.finished_at = Some(Instant::now());
            t.done.send_replace(true);
            (t.to_json(id), t.upstream.take())
        };
        if let Some((conn, upstream_id)) = upstream {
            conn.cancel(upstream_id, "task cancelled by the client");
        }
        Ok(snapshot)
    }

    /// The tasks `session` created, newest first.
    pub fn list(&self, session: u64) -> Vec<Value> {
        let now = Instant::now();
        let mut local = lock(&self.local);
        local.retain(|_, t| !t.expired(now));
        let mut mine: Vec<(&String, &Task)> =
            local.iter().filter(|(_, t)| t.session == session).collect();
        mine.sort_by_key(|(_, t)| std::cmp::Reverse(t.created_at));
        mine.into_iter().map(|(id, t)| t.to_json(id)).collect()
    }

    /// Gives the task `upstream` that `server` created for `session` an id of Corral's own.
    pub fn adopt_remote(&self, session: u64, server: &str, upstream: &str) -> String {
        let now = Instant::now();
        let mut remote = lock(&self.remote);
        // A server keeps a task at most as long as a client may ask (MAX_TTL_MS), plus the
        // time to collect it; past that the mapping is no use.
        let keep = Duration::from_millis(MAX_TTL_MS) + KEEP_AFTER_DONE;
        remote.retain(|_, t| now.duration_since(t.created) < keep);
        let id = new_id();
        remote.insert(
            id.clone(),
            RemoteTask {
                server: server.to_string(),
                upstream: upstream.to_string(),
                session,
                created: now,
            },
        );
        id
    }

    pub fn remote(&self, id: &str) -> Option<RemoteTask> {
        lock(&self.remote).get(id).cloned()
    }

    /// Corral's id and owner of the task `server` knows as `upstream`.
    pub fn by_upstream(&self, server: &str, upstream: &str) -> Option<(String, u64)> {
        lock(&self.remote)
            .iter()
            .find(|(_, t)| t.server == server && t.upstream == upstream)
            .map(|(id, t)| (id.clone(), t.session))
    }

    /// Records that `session` waits on the server-run task `id` while the guard lives.
    pub fn collecting(&self, id: &str, session: u64) -> Collecting<'_> {
        lock(&self.collecting)
            .entry(id.to_string())
            .or_default()
            .push(session);
        Collecting {
            tasks: self,
            id: id.to_string(),
            session,
        }
    }

    /// The session that most recently started waiting on task `id`, if one still waits.
    pub fn collector(&self, id: &str) -> Option<u64> {
        lock(&self.collecting).get(id)?.last().copied()
    }

    pub fn remote_servers(&self) -> Vec<String> {
        let mut servers: Vec<String> = lock(&self.remote)
            .values()
            .map(|t| t.server.clone())
            .collect();
        servers.sort();
        servers.dedup();
        servers
    }
}

/// Replaces every `"taskId": from` in `v` (at any depth) with `to`.
pub fn swap_task_id(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "taskId" && child.as_str() == Some(from) {
                    *child = Value::String(to.to_string());
                } else {
                    swap_task_id(child, from, to);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| swap_task_id(c, from, to)),
        _ => {}
    }
}

/// What Corral declares under `capabilities.tasks`.
pub fn capability() -> Value {
    json!({ "list": {}, "cancel": {}, "requests": { "tools": { "call": {} } } })
}

fn tool_error(raw: &str) -> bool {
    serde_json::from_str::<Value>(raw)
        .ok()
        .and_then(|v| v.get("isError")?.as_bool())
        .unwrap_or(false)
}

/// 128 random bits: a task id is also the capability to read its result.
pub(super) fn new_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Adds the related-task marker to a result object's `_meta`.
pub fn with_related_task(raw: &str, id: &str) -> String {
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(raw) else {
        return raw.to_string();
    };
    let meta = obj
        .entry("_meta")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(meta) = meta {
        meta.insert(RELATED_TASK.into(), json!({ "taskId": id }));
    }
    Value::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_moves_from_working_to_completed_and_keeps_its_result() {
        let tasks = Tasks::default();
        let (id, created) = tasks.create(1, Some(60_000)).unwrap();
        assert_eq!(created["task"]["status"], "working");
        assert_eq!(created["task"]["ttl"], 60_000);
        assert_eq!(created["task"]["taskId"], id.as_str());
        let tasks = Arc::new(tasks);
        let h = {
            let (id, tasks) = (id.clone(), tasks.clone());
            tokio::spawn(async move { tasks.result(&id).await })
        };
        tokio::task::yield_now().await;
        tasks.finish(&id, Outcome::Result(r#"{"content":[]}"#.into()));
        match h.await.unwrap().unwrap() {
            Outcome::Result(r) => assert_eq!(r, r#"{"content":[]}"#),
            other => panic!("{other:?}"),
        }
        assert_eq!(tasks.get(&id).unwrap()["status"], "completed");
        assert_eq!(tasks.list(1).len(), 1);
        assert!(tasks.list(2).is_empty(), "other sessions do not see it");
    }

    #[test]
    fn the_newest_waiting_session_collects_until_it_stops_waiting() {
        let tasks = Tasks::default();
        assert_eq!(tasks.collector("t"), None);
        let first = tasks.collecting("t", 1);
        {
            let _second = tasks.collecting("t", 2);
            assert_eq!(tasks.collector("t"), Some(2));
        }
        assert_eq!(tasks.collector("t"), Some(1));
        drop(first);
        assert_eq!(tasks.collector("t"), None);
        assert!(lock(&tasks.collecting).is_empty(), "nothing lingers");
    }

    #[test]
    fn tool_errors_fail_the_task_and_cancel_is_sticky() {
        let tasks = Tasks::default();
        let (a, _) = tasks.create(1, None).unwrap();
        tasks.finish(
            &a,
            Outcome::Result(r#"{"content":[],"isError":true}"#.into()),
        );
        assert_eq!(tasks.get(&a).unwrap()["status"], "failed");
        assert!(matches!(tasks.cancel(&a), Err(TaskError::Terminal(..))));
        let (b, _) = tasks.create(1, None).unwrap();
        assert_eq!(tasks.cancel(&b).unwrap()["status"], "cancelled");
        tasks.finish(&b, Outcome::Result("{}".into()));
        assert_eq!(tasks.get(&b).unwrap()["status"], "cancelled");
    }

    #[test]
    fn related_task_marker_joins_existing_meta() {
        let out = with_related_task(r#"{"content":[],"_meta":{"x":1}}"#, "t1");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["_meta"]["x"], 1);
        assert_eq!(v["_meta"][RELATED_TASK]["taskId"], "t1");
        let mut v = json!({"result": {"taskId": "u1", "_meta": {RELATED_TASK: {"taskId": "u1"}}, "other": "u1"}});
        swap_task_id(&mut v, "u1", "c9");
        assert_eq!(v["result"]["taskId"], "c9");
        assert_eq!(v["result"]["_meta"][RELATED_TASK]["taskId"], "c9");
        assert_eq!(v["result"]["other"], "u1", "only taskId members change");
    }
}
