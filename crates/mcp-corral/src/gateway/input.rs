//! Multi-round-trip input (`resultType: "input_required"`) for 2026-07-28 clients.
//!
//! A stateless client cannot receive requests, so when the server behind its call asks for
//! sampling, elicitation or roots, Corral answers the client's call with `input_required`: the
//! server's requests under keys Corral chose, and an opaque `requestState`. The upstream call stays
//! open meanwhile (the server is stateful and is blocked on its request). When the client retries
//! the same request with `inputResponses` and that `requestState`, Corral answers the server's
//! requests and goes on waiting for the call's outcome, which may be another round.
//!
//! The other direction too: a server on the stateless revision answers `input_required` itself.
//! For a client on an initialize-era session Corral sends each of those input requests to the
//! client as an ordinary request, collects the answers and retries the call with them
//! ([`Gateway::call_resolving_input`]). A stateless client gets the server's `input_required` as
//! it is and retries by itself.
//!
//! Seams: [`super::stateless`] sets [`INPUT_SCOPE`] around dispatching a stateless request;
//! [`Gateway::forward`] sees it and registers an [`InputRoute`] with the call; the request
//! router sends server requests into that route instead of to a session.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{Asker, Gateway, Outgoing, Session, UpstreamCall, tasks};
use crate::jsonrpc::{self, Reply, code};
use crate::upstream::{
    CallError, Connection, ParamMap, Params, ProgressRoute, ServerRequest, Sink, lock,
};

/// How many `input_required` rounds one call may take before Corral gives up on it.
const MAX_INPUT_ROUNDS: usize = 16;

/// A call to a server on the stateless revision, on behalf of an initialize-era client.
pub(super) struct Bridged<'a> {
    pub conn: Arc<Connection>,
    pub server: &'a str,
    pub method: &'a str,
    pub timeout: Duration,
}

/// Prefix of Corral's `requestState` tokens, so a stale one is told apart from a server's own.
const STATE_PREFIX: &str = "corral-input-";

tokio::task_local! {
    /// The capabilities a stateless request declared, while it is being dispatched.
    pub(super) static INPUT_SCOPE: Arc<Value>;
}

/// Where a server's requests go while a stateless client's call is in flight.
#[derive(Clone)]
pub(super) struct InputRoute {
    tx: mpsc::UnboundedSender<ServerRequest>,
    capabilities: Arc<Value>,
}

impl InputRoute {
    pub(super) fn accepts(&self, wanted: super::Wanted) -> bool {
        wanted.declared_in(&self.capabilities)
    }

    /// Hands the request to the waiting call; gives it back when the call has ended.
    pub(super) fn send(&self, request: ServerRequest) -> Result<(), ServerRequest> {
        self.tx.send(request).map_err(|e| e.0)
    }
}

/// An upstream call of a stateless client, with the server's requests it may raise.
pub(super) struct Exchange {
    pub conn: Arc<Connection>,
    pub upstream_id: u64,
    pub server: String,
    pub method: String,
    pub timeout: Duration,
    pub reply: oneshot::Receiver<Result<Reply, CallError>>,
    route: InputRoute,
    requests: mpsc::UnboundedReceiver<ServerRequest>,
}

impl Exchange {
    /// Starts routing server requests for this call to the client, under `capabilities`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        conn: Arc<Connection>,
        upstream_id: u64,
        server: &str,
        method: &str,
        timeout: Duration,
        reply: oneshot::Receiver<Result<Reply, CallError>>,
        capabilities: Arc<Value>,
    ) -> Exchange {
        let (tx, requests) = mpsc::unbounded_channel();
        let route = InputRoute { tx, capabilities };
        Exchange {
            conn,
            upstream_id,
            server: server.to_string(),
            method: method.to_string(),
            timeout,
            reply,
            route,
            requests,
        }
    }
}

/// A call waiting for its client to come back with input.
pub(super) struct Parked {
    exchange: Exchange,
    /// The server's requests the client was asked to answer, by key.
    waiting: Vec<(String, ServerRequest)>,
    /// The `inflight` key the call is kept under meanwhile (so the session's end cancels it).
    key: (u64, String),
}

/// What came of waiting on an exchange.
pub(super) enum Waited {
    Reply(
        Result<Result<Reply, CallError>, oneshot::error::RecvError>,
        Exchange,
    ),
    /// The response to send: `input_required`, the call parked.
    Input(Vec<u8>),
}

/// The capabilities a stateless request declared in its `_meta`.
pub(super) fn declared_capabilities(params: Option<&RawValue>) -> Arc<Value> {
    let caps = params
        .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
        .and_then(|p| {
            p.get("_meta")?
                .get("io.modelcontextprotocol/clientCapabilities")
                .cloned()
        })
        .unwrap_or(Value::Null);
    Arc::new(caps)
}

impl Gateway {
    /// Waits for the call's reply, or parks it and returns `input_required` when the server asks
    /// for something first.
    pub(super) async fn wait_or_ask(
        &self,
        session: &Session,
        id: &RawValue,
        mut ex: Exchange,
        call_sink: Option<&Sink>,
    ) -> Waited {
        let key = (session.id, id.get().to_string());
        lock(&self.inflight).insert(
            key.clone(),
            UpstreamCall {
                conn: ex.conn.clone(),
                id: ex.upstream_id,
                sink: call_sink.cloned(),
                input: Some(ex.route.clone()),
            },
        );
        let first = tokio::select! {
            biased;
            outcome = &mut ex.reply => {
                lock(&self.inflight).remove(&key);
                return Waited::Reply(outcome, ex);
            }
            Some(first) = ex.requests.recv() => first,
        };
        let mut asked = vec![first];
        while let Ok(more) = ex.requests.try_recv() {
            asked.push(more);
        }
        let waiting: Vec<(String, ServerRequest)> = asked
            .into_iter()
            .enumerate()
            .map(|(i, r)| (format!("{}-{}", short_name(&r.method), i + 1), r))
            .collect();
        Waited::Input(self.park(session, id, key, ex, waiting))
    }

    /// Keeps the call until the client retries with the answers (or the server's timeout
    /// passes), and builds the `input_required` result that tells the client what to answer.
    fn park(
        &self,
        session: &Session,
        id: &RawValue,
        key: (u64, String),
        ex: Exchange,
        waiting: Vec<(String, ServerRequest)>,
    ) -> Vec<u8> {
        let token = format!("{STATE_PREFIX}{}", tasks::new_id());
        let mut requests = Map::new();
        for (k, r) in &waiting {
            let params = r
                .params
                .as_deref()
                .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
                .unwrap_or_else(|| json!({}));
            requests.insert(k.clone(), json!({ "method": r.method, "params": params }));
        }
        // Move the in-flight entry to a key no client id can collide with.
        let parked_key = (session.id, format!("parked:{token}"));
        {
            let mut inflight = lock(&self.inflight);
            if let Some(call) = inflight.remove(&key) {
                inflight.insert(parked_key.clone(), call);
            }
        }
        let expiry = ex.timeout;
        lock(&self.parked).insert(
            token.clone(),
            Parked {
                exchange: ex,
                waiting,
                key: parked_key,
            },
        );
        if let Some(gw) = self.me.get().and_then(std::sync::Weak::upgrade) {
            let token = token.clone();
            tokio::spawn(async move {
                tokio::time::sleep(expiry).await;
                gw.expire_parked(&token);
            });
        }
        jsonrpc::result(
            id,
            &json!({
                "resultType": "input_required",
                "inputRequests": requests,
                "requestState": token,
            }),
        )
    }

    /// A parked call whose client never came back: the server stops waiting too.
    fn expire_parked(&self, token: &str) {
        let Some(p) = lock(&self.parked).remove(token) else {
            return;
        };
        lock(&self.inflight).remove(&p.key);
        for (_, r) in &p.waiting {
            r.fail(
                code::REQUEST_TIMEOUT,
                "the client did not answer within the server's limits.timeout",
            );
        }
        p.exchange.conn.cancel(
            p.exchange.upstream_id,
            "the client did not come back with input",
        );
    }

    /// A stateless request carrying a `requestState`: `Some(answer)` when it resumes (or names
    /// a stale) parked call of Corral's, `None` when it is not one (it is forwarded as usual).
    pub(super) async fn resume(
        &self,
        session: &Session,
        id: &RawValue,
        method: &str,
        params: Option<&RawValue>,
        call_sink: Option<&Sink>,
    ) -> Option<Option<Vec<u8>>> {
        let raw = params?.get();
        if !raw.contains(STATE_PREFIX) {
            return None;
        }
        let p: Value = serde_json::from_str(raw).ok()?;
        let token = p.get("requestState")?.as_str()?;
        if !token.starts_with(STATE_PREFIX) {
            return None;
        }
        let parked = {
            let mut map = lock(&self.parked);
            match map.get(token) {
                Some(found) if found.exchange.method != method => {
                    let msg = format!(
                        "requestState belongs to a `{}` request, not `{method}`",
                        found.exchange.method
                    );
                    return Some(Some(jsonrpc::error(Some(id), code::INVALID_PARAMS, &msg)));
                }
                Some(_) => map.remove(token),
                None => None,
            }
        };
        let Some(parked) = parked else {
            return Some(Some(jsonrpc::error(
                Some(id),
                code::INVALID_PARAMS,
                "unknown or expired requestState: the call it belonged to has ended; send the request again without it",
            )));
        };
        lock(&self.inflight).remove(&parked.key);
        let empty = Map::new();
        let answers = p
            .get("inputResponses")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut missing = Vec::new();
        for (k, request) in parked.waiting {
            match answers.get(&k) {
                Some(answer) => request.respond("result", &answer.to_string()),
                None => missing.push((k, request)),
            }
        }
        let key = (session.id, id.get().to_string());
        if !missing.is_empty() {
            // Ask again for what is still unanswered, under a fresh state token.
            return Some(Some(self.park(session, id, key, parked.exchange, missing)));
        }
        Some(
            self.finish_exchange(session, id, parked.exchange, call_sink)
                .await,
        )
    }

    /// Waits for a stateless client's call to end, parking it whenever the server asks.
    pub(super) async fn finish_exchange(
        &self,
        session: &Session,
        id: &RawValue,
        ex: Exchange,
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        match self.wait_or_ask(session, id, ex, call_sink).await {
            Waited::Input(resp) => Some(resp),
            Waited::Reply(outcome, ex) => {
                super::reply_to_response(outcome, id, &ex.server, &ex.method, ex.timeout)
            }
        }
    }
}

impl Gateway {
    /// Calls a stateless-revision server and answers its `input_required` results through the
    /// (initialize-era) client, retrying with `inputResponses` until the call completes.
    pub(super) async fn call_resolving_input(
        &self,
        session: &Session,
        id: &RawValue,
        call: Bridged<'_>,
        params: Outgoing,
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        let Bridged {
            conn,
            server,
            method,
            timeout,
        } = call;
        let mut map: ParamMap = match params {
            Outgoing::Raw(text) => serde_json::from_str(&text).unwrap_or_default(),
            Outgoing::Map(map) => map,
        };
        let token = super::take_progress_token(&mut map);
        let key = (session.id, id.get().to_string());
        for _ in 0..MAX_INPUT_ROUNDS {
            let progress = token.clone().and_then(|token| {
                let sink = call_sink.cloned().or_else(|| session.out())?;
                Some(ProgressRoute { sink, token })
            });
            let handle =
                match conn.start_call(method, Params::Object(map.clone()), progress, Some(timeout))
                {
                    Ok(h) => h,
                    Err(e) => return Some(jsonrpc::error(Some(id), e.code(), &e.to_string())),
                };
            let outcome = self.await_in_flight(&key, &conn, handle, call_sink).await;
            let asked = match &outcome {
                Ok(Ok(Reply::Result(r))) => input_required(r.get()),
                _ => None,
            };
            let Some(asked) = asked else {
                return super::reply_to_response(outcome, id, server, method, timeout);
            };
            let answers = match self
                .ask_for_input(session, call_sink, server, &asked, timeout)
                .await
            {
                Ok(answers) => answers,
                Err(msg) => return Some(jsonrpc::error(Some(id), code::INTERNAL_ERROR, &msg)),
            };
            map.insert("inputResponses".into(), jsonrpc::to_raw(&answers));
            match asked.get("requestState") {
                Some(state) => map.insert("requestState".into(), jsonrpc::to_raw(state)),
                None => map.remove("requestState"),
            };
        }
        let msg = format!(
            "server `{server}` asked for input {MAX_INPUT_ROUNDS} times in one `{method}`; giving up"
        );
        Some(jsonrpc::error(Some(id), code::INTERNAL_ERROR, &msg))
    }

    /// Sends each of a server's input requests to the client and collects the answers by key.
    async fn ask_for_input(
        &self,
        session: &Session,
        call_sink: Option<&Sink>,
        server: &str,
        asked: &Value,
        timeout: Duration,
    ) -> Result<Map<String, Value>, String> {
        let Some(sink) = call_sink.cloned().or_else(|| session.out()) else {
            return Err(format!(
                "server `{server}` needs input from the client, which has no stream for requests"
            ));
        };
        let requests = asked
            .get("inputRequests")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        // Check every request before sending any, so a refusal never leaves one half-asked.
        let mut asks = Vec::new();
        for (key, request) in requests {
            let method = request
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let params = request.get("params").map(Value::to_string);
            let declared = super::Wanted::of(&method, params.as_deref())
                .is_some_and(|w| w.declared_in(&lock(&session.capabilities)));
            if !declared {
                let capability = short_name(&method);
                return Err(format!(
                    "server `{server}` asked for `{method}`, which this client did not declare (capability `{capability}`)"
                ));
            }
            asks.push((key, method, params));
        }
        let waiting: Vec<_> = asks
            .into_iter()
            .map(|(key, method, params)| {
                let (tx, rx) = oneshot::channel();
                let id = self.ask_client(
                    session.id,
                    &sink,
                    &method,
                    params.as_deref(),
                    Asker::Corral(tx),
                );
                (key, method, rx, id)
            })
            .collect();
        let mut answers = Map::new();
        let mut waiting = waiting.into_iter();
        while let Some((key, method, rx, id)) = waiting.next() {
            let failure = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(raw))) => {
                    let value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                    answers.insert(key, value);
                    continue;
                }
                Ok(Ok(Err(e))) => format!("the client refused `{method}`: {e}"),
                Ok(Err(_)) => format!("the client did not answer `{method}`"),
                Err(_) => format!(
                    "the client did not answer `{method}` within {} s",
                    timeout.as_secs()
                ),
            };
            // The call fails: what the client has not answered yet is no longer wanted.
            let unanswered = std::iter::once(id).chain(waiting.map(|(.., id)| id));
            self.withdraw(&sink, unanswered, &failure);
            return Err(failure);
        }
        Ok(answers)
    }
}

/// The parsed result when it is `input_required`.
fn input_required(raw: &str) -> Option<Value> {
    if !raw.contains("input_required") {
        return None;
    }
    let v: Value = serde_json::from_str(raw).ok()?;
    (v.get("resultType")? == "input_required").then_some(v)
}

/// A short key stem for a server request's method (`elicitation`, `sampling`, `roots`).
fn short_name(method: &str) -> &str {
    super::Wanted::of(method, None).map_or_else(
        || method.split('/').next().unwrap_or("input"),
        |w| w.capability,
    )
}
