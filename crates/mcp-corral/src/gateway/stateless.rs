//! The 2026-07-28 (stateless) protocol revision on the client side.
//!
//! A request is stateless when its `_meta` carries `io.modelcontextprotocol/protocolVersion`:
//! no `initialize`, capabilities on every request. Corral answers `server/discover`, rejects
//! versions it does not speak (`-32022`), marks results `resultType: "complete"`, adds cache hints
//! (`ttlMs`, `cacheScope`) to list results, and serves `subscriptions/listen` streams. Upstream
//! servers keep speaking their own revision: the rest of the request is routed as usual.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{Gateway, LATEST_VERSION, SUPPORTED_VERSIONS, Session};
use crate::jsonrpc::{self, Envelope, code};
use crate::upstream::{Sink, lock};

pub use crate::jsonrpc::STATELESS_VERSION;
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";
/// How long a client may reuse a list: Corral's lists change when servers come and go, which
/// listeners hear about at once; others re-list after this.
const LIST_TTL_MS: u64 = 30_000;
/// `-32020`: HTTP headers disagree with the body (or a required one is missing).
pub const HEADER_MISMATCH: i64 = -32020;
pub use crate::jsonrpc::code::UNSUPPORTED_PROTOCOL_VERSION;

/// Every revision Corral speaks with clients, oldest first.
pub fn all_versions() -> Vec<&'static str> {
    let mut v = SUPPORTED_VERSIONS.to_vec();
    v.push(STATELESS_VERSION);
    v
}

/// The protocol version in a request's `_meta`, when it is a stateless-era request.
pub fn request_version(params: Option<&RawValue>) -> Option<String> {
    let params = params?;
    // Cheap pre-check: most traffic is the initialize era. The searcher is built once.
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    let finder = FINDER.get_or_init(|| memchr::memmem::Finder::new(META_VERSION.as_bytes()));
    finder.find(params.get().as_bytes())?;
    let v: Value = serde_json::from_str(params.get()).ok()?;
    v.get("_meta")?
        .get(META_VERSION)?
        .as_str()
        .map(str::to_string)
}

/// What the HTTP front checks for a stateless request: the version header must equal the body's,
/// and `Mcp-Method` / `Mcp-Name`, when sent, must match the request. `Err` is the error message.
pub fn check_headers(
    body: &[u8],
    version_header: Option<&str>,
    method_header: Option<&str>,
    name_header: Option<&str>,
) -> Result<(), String> {
    let Ok(env) = Envelope::parse(body) else {
        return Ok(());
    };
    let Some(version) = request_version(env.params) else {
        return Ok(());
    };
    match version_header {
        None => {
            return Err("MCP-Protocol-Version header is required for 2026-07-28 requests".into());
        }
        Some(h) if h != version => {
            return Err(format!(
                "MCP-Protocol-Version header `{h}` does not match `_meta` `{version}`"
            ));
        }
        _ => {}
    }
    if let Some(m) = method_header
        && m != env.method()
    {
        return Err(format!(
            "Mcp-Method header `{m}` does not match method `{}`",
            env.method()
        ));
    }
    if let Some(n) = name_header {
        let params: Value = env
            .params
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or_default();
        let named = params
            .get("name")
            .or_else(|| params.get("uri"))
            .and_then(Value::as_str);
        if named.is_some_and(|v| v != n) {
            return Err(format!(
                "Mcp-Name header `{n}` does not match the request's `{}`",
                named.unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// Marks a result as complete (and cacheable, for `resources/read`); errors and results that
/// carry their own `resultType` pass as they are.
fn mark_complete(id: &RawValue, method: &str, resp: Vec<u8>) -> Vec<u8> {
    let Ok(env) = Envelope::parse(&resp) else {
        return resp;
    };
    match env.result {
        Some(r) if !r.get().contains("\"resultType\"") => {
            let raw = if method == "resources/read" {
                cacheable(r.get())
            } else {
                with_result_type(r.get())
            };
            jsonrpc::response_raw(id, "result", &raw)
        }
        _ => resp,
    }
}

/// `{"resultType":"complete", …}` unless the result says otherwise already.
fn with_result_type(raw: &str) -> String {
    if raw.contains("\"resultType\"") || !raw.starts_with('{') {
        return raw.to_string();
    }
    let rest = raw[1..].trim_start();
    if rest.starts_with('}') {
        "{\"resultType\":\"complete\"}".to_string()
    } else {
        format!("{{\"resultType\":\"complete\",{rest}")
    }
}

/// A list result with cache hints added.
fn cacheable(raw: &str) -> String {
    let rest = raw.get(1..).unwrap_or("}");
    format!(
        "{{\"resultType\":\"complete\",\"ttlMs\":{LIST_TTL_MS},\"cacheScope\":\"private\",{rest}"
    )
}

/// An open `subscriptions/listen` stream.
pub struct Listener {
    pub session: u64,
    /// The listen request's id: the subscription's id.
    id: Box<RawValue>,
    tools: bool,
    prompts: bool,
    resources: bool,
    sink: Sink,
    done: Arc<Notify>,
}

impl Gateway {
    pub(super) async fn handle_stateless(
        &self,
        session: &Arc<Session>,
        id: &RawValue,
        method: &str,
        params: Option<&RawValue>,
        version: &str,
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        if version != STATELESS_VERSION && !SUPPORTED_VERSIONS.contains(&version) {
            let data = json!({ "supported": all_versions(), "requested": version });
            return Some(jsonrpc::error_with_data(
                Some(id),
                UNSUPPORTED_PROTOCOL_VERSION,
                &format!("Unsupported protocol version: {version}"),
                Some(data),
            ));
        }
        session.stateless.store(true, Ordering::Relaxed);
        let listed = match method {
            "server/discover" => return Some(jsonrpc::result(id, &self.discover())),
            "subscriptions/listen" => return self.listen(session, id, params, call_sink).await,
            "tools/list" => Some(self.listed().await.tools.raw().to_string()),
            "prompts/list" => Some(self.listed().await.prompts.raw().to_string()),
            "resources/list" => Some(self.listed().await.resources.raw().to_string()),
            "resources/templates/list" => Some(self.listed().await.templates.raw().to_string()),
            _ => None,
        };
        if let Some(raw) = listed {
            return Some(jsonrpc::response_raw(id, "result", &cacheable(&raw)));
        }
        if let Some(resumed) = self.resume(session, id, method, params, call_sink).await {
            return resumed.map(|r| mark_complete(id, method, r));
        }
        let capabilities = super::input::declared_capabilities(params);
        let resp = super::input::INPUT_SCOPE
            .scope(
                capabilities,
                self.dispatch(session, id, method, params, call_sink),
            )
            .await?;
        Some(mark_complete(id, method, resp))
    }

    fn discover(&self) -> Value {
        json!({
            "resultType": "complete",
            "supportedVersions": all_versions(),
            "capabilities": {
                "tools": { "listChanged": true },
                "resources": { "listChanged": true, "subscribe": true },
                "prompts": { "listChanged": true },
                "completions": {},
                "logging": {},
                "tasks": super::tasks::capability(),
            },
            "instructions": "Corral aggregates several MCP servers. Tool and prompt names are prefixed with the id of the server that owns them.",
            "ttlMs": LIST_TTL_MS,
            "cacheScope": "private",
            "_meta": { "io.modelcontextprotocol/serverInfo": { "name": "corral", "version": env!("CARGO_PKG_VERSION") } },
            "latestWithInitialize": LATEST_VERSION,
        })
    }

    /// `subscriptions/listen`: acknowledge, then deliver the requested notifications (tagged with
    /// the subscription id) until the client cancels or goes away.
    async fn listen(
        &self,
        session: &Arc<Session>,
        id: &RawValue,
        params: Option<&RawValue>,
        call_sink: Option<&Sink>,
    ) -> Option<Vec<u8>> {
        let Some(sink) = call_sink.cloned().or_else(|| session.out()) else {
            return Some(jsonrpc::error(
                Some(id),
                code::INVALID_REQUEST,
                "subscriptions/listen needs a stream: send Accept: text/event-stream",
            ));
        };
        let filter = params
            .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
            .and_then(|p| p.get("notifications").cloned())
            .unwrap_or_default();
        let flag = |k: &str| filter.get(k).and_then(Value::as_bool).unwrap_or(false);
        let uris: Vec<String> = filter
            .get("resourceSubscriptions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let key = self.next_session.fetch_add(1, Ordering::Relaxed);
        // Subscribe upstream for each resource whose owner is known.
        let catalog = self.catalog();
        let mut agreed_uris = Vec::new();
        for uri in uris {
            let Some(server) = catalog.owner_of_uri(&uri) else {
                continue;
            };
            if self.add_subscriber(key, &server, &uri)
                && let Ok(conn) = self.sup.connection(&server).await
            {
                let _ = conn
                    .request(
                        "resources/subscribe",
                        Some(&json!({ "uri": uri }).to_string()),
                    )
                    .await;
                self.subscribed_via(&server);
            }
            agreed_uris.push(uri);
        }
        let mut agreed = serde_json::Map::new();
        for k in [
            "toolsListChanged",
            "promptsListChanged",
            "resourcesListChanged",
        ] {
            if flag(k) {
                agreed.insert(k.into(), Value::Bool(true));
            }
        }
        if !agreed_uris.is_empty() {
            agreed.insert("resourceSubscriptions".into(), json!(agreed_uris));
        }
        let subscription: Value = serde_json::from_str(id.get()).unwrap_or(Value::Null);
        let ack = json!({ "notifications": agreed, "_meta": { META_SUBSCRIPTION: subscription } });
        let _ = sink
            .send(jsonrpc::notification_raw(
                "notifications/subscriptions/acknowledged",
                Some(&ack.to_string()),
            ))
            .await;
        let done = Arc::new(Notify::new());
        lock(&self.listeners).insert(
            key,
            Listener {
                session: session.id,
                id: id.to_owned(),
                tools: flag("toolsListChanged"),
                prompts: flag("promptsListChanged"),
                resources: flag("resourcesListChanged"),
                sink,
                done: done.clone(),
            },
        );
        done.notified().await;
        // Ended by the client (cancel, disconnect): nothing more to say on this stream.
        None
    }

    /// Delivers a list-change notification to every listener that asked for that kind.
    pub(super) fn to_listeners(&self, method: &str, params: Option<&RawValue>) {
        let keys: Vec<u64> = lock(&self.listeners)
            .iter()
            .filter(|(_, l)| match method {
                "notifications/tools/list_changed" => l.tools,
                "notifications/prompts/list_changed" => l.prompts,
                "notifications/resources/list_changed" => l.resources,
                _ => false,
            })
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.to_listener(key, method, params);
        }
    }

    /// Sends one notification on a listen stream, tagged with its subscription id; a closed
    /// stream ends the listener.
    pub(super) fn to_listener(&self, key: u64, method: &str, params: Option<&RawValue>) {
        let (sink, id) = match lock(&self.listeners).get(&key) {
            Some(l) => (l.sink.clone(), l.id.clone()),
            None => return,
        };
        let mut body: serde_json::Map<String, Value> = params
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or_default();
        let mut meta = body
            .get("_meta")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        meta.insert(
            META_SUBSCRIPTION.into(),
            serde_json::from_str(id.get()).unwrap_or(Value::Null),
        );
        body.insert("_meta".into(), Value::Object(meta));
        let line = jsonrpc::notification_raw(method, Some(&Value::Object(body).to_string()));
        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = sink.try_send(line) {
            self.remove_listener(key);
        }
    }

    /// Ends the listen stream `request_id` of `session`, if there is one.
    pub(super) fn end_listener(&self, session: u64, request_id: &str) {
        let key = lock(&self.listeners)
            .iter()
            .find(|(_, l)| l.session == session && l.id.get() == request_id)
            .map(|(k, _)| *k);
        if let Some(key) = key {
            self.remove_listener(key);
        }
    }

    pub(super) fn remove_listener(&self, key: u64) {
        if let Some(l) = lock(&self.listeners).remove(&key) {
            l.done.notify_one();
        }
        self.drop_subscriber(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_marked_complete_and_lists_cacheable() {
        assert_eq!(with_result_type("{}"), r#"{"resultType":"complete"}"#);
        assert_eq!(
            with_result_type(r#"{"content":[]}"#),
            r#"{"resultType":"complete","content":[]}"#
        );
        assert_eq!(
            with_result_type(r#"{"resultType":"input_required"}"#),
            r#"{"resultType":"input_required"}"#
        );
        let c: Value = serde_json::from_str(&cacheable(r#"{"tools":[]}"#)).unwrap();
        assert_eq!(
            c,
            json!({"resultType": "complete", "ttlMs": 30000, "cacheScope": "private", "tools": []})
        );
    }

    #[test]
    fn headers_must_agree_with_the_body() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
        assert!(check_headers(body, Some("2026-07-28"), Some("tools/call"), Some("a__b")).is_ok());
        assert!(
            check_headers(body, None, None, None)
                .unwrap_err()
                .contains("required")
        );
        assert!(check_headers(body, Some("2025-11-25"), None, None).is_err());
        assert!(check_headers(body, Some("2026-07-28"), Some("tools/list"), None).is_err());
        assert!(check_headers(body, Some("2026-07-28"), None, Some("x__y")).is_err());
        let legacy = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert!(check_headers(legacy, None, None, None).is_ok());
    }
}
