//! The management API on the HTTP listener: Hatago Runner routes (`/runner/*`) and the
//! claudemesh supervisor routes (`/load`, `/call`, `/unload`, `/health`, `/list`, `/logs`).
//! JSON in and out; errors are `{"error": "…"}` with a meaningful status. See docs/api.md.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::wrappers::BroadcastStream;

use crate::config::model::ServerSpec;
use crate::supervisor::{Server, SupervisorError};
use crate::transport::http::HttpState;

type St = State<Arc<HttpState>>;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/runner/start", post(runner_start))
        .route("/runner/stop", post(runner_stop))
        .route("/runner/restart", post(runner_restart))
        .route("/runner/status/{id}", get(runner_status))
        .route("/runner/servers", get(runner_servers))
        .route("/load", post(load))
        .route("/call", post(call))
        .route("/unload", post(unload))
        .route("/health", get(health))
        .route("/list", get(list))
        .route("/logs", get(logs))
}

pub fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn sup_error(e: SupervisorError) -> Response {
    let status = match e {
        SupervisorError::UnknownServer(_) => StatusCode::NOT_FOUND,
        SupervisorError::Exists(_) => StatusCode::CONFLICT,
        SupervisorError::Disabled(_) => StatusCode::CONFLICT,
        SupervisorError::Unavailable { .. } | SupervisorError::StartTimeout(..) => {
            StatusCode::BAD_GATEWAY
        }
    };
    error(status, &e.to_string())
}

// Handlers return `Response` anyway; boxing the error side would only add an allocation.
#[allow(clippy::result_large_err)]
/// Parses a JSON body strictly, answering 400 with serde's message (which names the field).
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
}

fn status_json(server: &Server, events: usize) -> Value {
    let mut v = serde_json::to_value(server.status()).unwrap_or_default();
    let history = server.history();
    let skip = history.len().saturating_sub(events);
    v["events"] = serde_json::to_value(&history[skip..]).unwrap_or_default();
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServerIdBody {
    server_id: String,
}

const START_WAIT: Duration = Duration::from_secs(120);

async fn runner_start(State(st): St, body: Bytes) -> Response {
    let b: ServerIdBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let sup = st.gw.supervisor();
    match sup.start_and_wait(&b.server_id, START_WAIT).await {
        Ok(_) => match sup.get(&b.server_id) {
            Ok(s) => axum::Json(status_json(&s, 10)).into_response(),
            Err(e) => sup_error(e),
        },
        Err(e) => sup_error(e),
    }
}

async fn runner_stop(State(st): St, body: Bytes) -> Response {
    let b: ServerIdBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let sup = st.gw.supervisor();
    if let Err(e) = sup.stop(&b.server_id).await {
        return sup_error(e);
    }
    match sup.get(&b.server_id) {
        Ok(s) => axum::Json(status_json(&s, 10)).into_response(),
        Err(e) => sup_error(e),
    }
}

async fn runner_restart(State(st): St, body: Bytes) -> Response {
    let b: ServerIdBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let sup = st.gw.supervisor();
    let server = match sup.get(&b.server_id) {
        Ok(s) => s,
        Err(e) => return sup_error(e),
    };
    let result = if server.state().is_up() {
        sup.restart(&b.server_id).map(|_| ())
    } else {
        sup.start(&b.server_id)
    };
    if let Err(e) = result {
        return sup_error(e);
    }
    // Wait for the new process to be up, like /runner/start does.
    tokio::time::sleep(Duration::from_millis(50)).await;
    match sup.start_and_wait(&b.server_id, START_WAIT).await {
        Ok(_) => axum::Json(status_json(&server, 10)).into_response(),
        Err(e) => sup_error(e),
    }
}

#[derive(Deserialize)]
struct StatusQuery {
    events: Option<usize>,
}

async fn runner_status(
    State(st): St,
    Path(id): Path<String>,
    Query(q): Query<StatusQuery>,
) -> Response {
    match st.gw.supervisor().get(&id) {
        Ok(s) => axum::Json(status_json(&s, q.events.unwrap_or(50))).into_response(),
        Err(e) => sup_error(e),
    }
}

async fn runner_servers(State(st): St) -> Response {
    let all: Vec<Value> = st
        .gw
        .supervisor()
        .all()
        .iter()
        .map(|s| serde_json::to_value(s.status()).unwrap_or_default())
        .collect();
    axum::Json(json!({ "servers": all })).into_response()
}

/// `POST /load`: a server entry in the config-file schema, with `name` as its id.
async fn load(State(st): St, body: Bytes) -> Response {
    let mut spec: ServerSpec = match parse(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(name) = spec.name.clone().or_else(|| spec.id.clone()) else {
        return error(StatusCode::BAD_REQUEST, "`name` is required");
    };
    spec.id = Some(spec.id.clone().unwrap_or_else(|| name.clone()));
    let base = crate::config::Config::embedded_default();
    let config = match crate::config::server_from_spec(spec, &base) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let id = config.id.clone();
    let sup = st.gw.supervisor();
    if let Err(e) = sup.add(config) {
        return sup_error(e);
    }
    match sup.start_and_wait(&id, START_WAIT).await {
        Ok(_) => match sup.get(&id) {
            Ok(s) => (StatusCode::CREATED, axum::Json(status_json(&s, 10))).into_response(),
            Err(e) => sup_error(e),
        },
        Err(e) => {
            let status = sup
                .get(&id)
                .map(|s| status_json(&s, 10))
                .unwrap_or_default();
            (
                StatusCode::BAD_GATEWAY,
                axum::Json(json!({ "error": e.to_string(), "server": status })),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    name: String,
    tool: String,
    #[serde(default)]
    args: Option<Value>,
}

async fn call(State(st): St, body: Bytes) -> Response {
    let b: CallBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(e) = st.gw.supervisor().get(&b.name) {
        return sup_error(e);
    }
    let raw = st
        .gw
        .call_tool(&b.name, &b.tool, b.args.unwrap_or_else(|| json!({})))
        .await;
    let v: Value = serde_json::from_slice(&raw).unwrap_or_default();
    if let Some(err) = v.get("error") {
        let status = match err.get("code").and_then(Value::as_i64) {
            Some(crate::jsonrpc::code::SERVER_UNAVAILABLE) => StatusCode::BAD_GATEWAY,
            Some(crate::jsonrpc::code::REQUEST_TIMEOUT) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("call failed");
        return (status, axum::Json(json!({ "error": msg, "rpcError": err }))).into_response();
    }
    axum::Json(v.get("result").cloned().unwrap_or(Value::Null)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

async fn unload(State(st): St, body: Bytes) -> Response {
    let b: NameBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match st.gw.supervisor().remove(&b.name).await {
        Ok(()) => axum::Json(json!({ "ok": true, "name": b.name })).into_response(),
        Err(e) => sup_error(e),
    }
}

async fn health(State(st): St) -> Response {
    let services: Vec<Value> = st
        .gw
        .supervisor()
        .all()
        .iter()
        .map(|s| {
            let status = s.status();
            json!({
                "name": status.id,
                "state": status.state,
                "pid": status.pid,
                "tools": status.tools,
                "restarts": status.restarts,
                "healthLatencyMs": status.health_latency_ms,
            })
        })
        .collect();
    let ok = !services
        .iter()
        .any(|s| matches!(s["state"].as_str(), Some("failed" | "unhealthy")));
    axum::Json(json!({ "ok": ok, "version": env!("CARGO_PKG_VERSION"), "services": services }))
        .into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    name: Option<String>,
}

async fn list(State(st): St, Query(q): Query<ListQuery>) -> Response {
    let catalog = st.gw.catalog();
    let sup = st.gw.supervisor();
    let servers = match &q.name {
        Some(n) => match sup.get(n) {
            Ok(s) => vec![s],
            Err(e) => return sup_error(e),
        },
        None => sup.all(),
    };
    let out: Vec<Value> = servers
        .iter()
        .map(|s| {
            let tools: Vec<Value> = s
                .lists()
                .tools
                .iter()
                .map(|t| {
                    let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
                    let exposed = catalog.tool_owner.iter().find(|(_, (srv, orig))| srv == s.id() && orig == name).map(|(k, _)| k.clone());
                    json!({ "name": name, "exposedAs": exposed, "description": t.get("description"), "inputSchema": t.get("inputSchema") })
                })
                .collect();
            json!({ "name": s.id(), "state": s.state(), "tools": tools })
        })
        .collect();
    axum::Json(json!({ "servers": out })).into_response()
}

#[derive(Deserialize)]
struct LogsQuery {
    name: String,
    lines: Option<usize>,
    follow: Option<String>,
}

async fn logs(State(st): St, Query(q): Query<LogsQuery>) -> Response {
    let server = match st.gw.supervisor().get(&q.name) {
        Ok(s) => s,
        Err(e) => return sup_error(e),
    };
    let follow = matches!(q.follow.as_deref(), Some("1" | "true" | "yes"));
    // Subscribe before taking the tail so no line falls between the two.
    let rx = server.logs.follow();
    let lines = server.logs.tail(q.lines.unwrap_or(100));
    if !follow {
        return axum::Json(json!({ "name": q.name, "lines": lines })).into_response();
    }
    let live = BroadcastStream::new(rx).filter_map(|r| async move { r.ok() });
    let backlog = futures::stream::iter(lines);
    let stream = backlog.chain(live).map(|line| {
        let data = serde_json::to_string(&line).unwrap_or_default();
        Ok::<_, std::convert::Infallible>(Bytes::from(format!("event: log\ndata: {data}\n\n")))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
