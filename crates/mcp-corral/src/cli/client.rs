//! Commands that talk to a running `corral serve` over its management API.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use super::Remote;
use super::table::{Table, fmt_opt, fmt_uptime};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(String),
    #[error(
        "cannot reach corral at {url}: {reason} (is `corral serve` running? set --url or CORRAL_URL)"
    )]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
    /// `corral run`: the program's own exit code (its output says the rest).
    #[error("the program exited with code {0}")]
    Exit(i32),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Config(_) => 2,
            CliError::Unreachable { .. } => 3,
            CliError::NotFound(_) => 4,
            CliError::Exit(n) => (*n).clamp(1, 255) as u8,
        }
    }
}

fn http(timeout: Option<Duration>) -> reqwest::Client {
    let mut b = reqwest::Client::builder();
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().unwrap_or_default()
}

async fn request(
    r: &Remote,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CliError> {
    let url = format!("{}{path}", r.url.trim_end_matches('/'));
    let mut req = http(Some(Duration::from_secs(300))).request(method, &url);
    if let Some(t) = &r.token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| CliError::Unreachable {
        url: r.url.clone(),
        reason: root_cause(&e),
    })?;
    let status = resp.status();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(value);
    }
    let msg = value
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    Err(match status.as_u16() {
        404 => CliError::NotFound(msg),
        400 => CliError::Config(msg),
        _ => CliError::Failed(msg),
    })
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn ls(r: &Remote) -> Result<(), CliError> {
    let v = request(r, reqwest::Method::GET, "/runner/servers", None).await?;
    if r.json {
        print_json(&v);
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID", "STATE", "PID", "UPTIME", "RESTARTS", "TOOLS", "HEALTH",
    ]);
    for s in v["servers"].as_array().into_iter().flatten() {
        t.row(vec![
            s["id"].as_str().unwrap_or_default().to_string(),
            s["state"].as_str().unwrap_or_default().to_string(),
            fmt_opt(s.get("pid").and_then(Value::as_u64)),
            s.get("uptimeSecs")
                .and_then(Value::as_f64)
                .map_or("-".into(), fmt_uptime),
            s["restarts"].as_u64().unwrap_or(0).to_string(),
            s["tools"].as_u64().unwrap_or(0).to_string(),
            s.get("healthLatencyMs")
                .and_then(Value::as_f64)
                .map_or("-".into(), |ms| format!("{ms:.1} ms")),
        ]);
    }
    print!("{t}");
    Ok(())
}

pub async fn server_action(r: &Remote, action: &str, id: &str) -> Result<(), CliError> {
    let v = request(
        r,
        reqwest::Method::POST,
        &format!("/runner/{action}"),
        Some(json!({ "serverId": id })),
    )
    .await?;
    if r.json {
        print_json(&v);
    } else {
        let pid = v
            .get("pid")
            .and_then(Value::as_u64)
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default();
        println!("{id}: {}{pid}", v["state"].as_str().unwrap_or("?"));
    }
    Ok(())
}

pub async fn status(r: &Remote, id: &str) -> Result<(), CliError> {
    let v = request(
        r,
        reqwest::Method::GET,
        &format!("/runner/status/{id}?events=20"),
        None,
    )
    .await?;
    if r.json {
        print_json(&v);
        return Ok(());
    }
    let field = |k: &str| {
        v.get(k)
            .filter(|x| !x.is_null())
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .unwrap_or_else(|| "-".into())
    };
    println!("id:          {}", field("id"));
    println!("state:       {}", field("state"));
    println!("pid:         {}", field("pid"));
    println!(
        "uptime:      {}",
        v.get("uptimeSecs")
            .and_then(Value::as_f64)
            .map_or("-".into(), fmt_uptime)
    );
    println!("restarts:    {}", field("restarts"));
    println!("tools:       {}", field("tools"));
    println!(
        "health:      {}",
        v.get("healthLatencyMs")
            .and_then(Value::as_f64)
            .map_or("-".into(), |ms| format!("{ms:.1} ms"))
    );
    if let Some(e) = v.get("lastExit").filter(|e| !e.is_null()) {
        println!("last exit:   {e}");
    }
    if let Some(e) = v.get("lastError").and_then(Value::as_str) {
        println!("last error:  {e}");
    }
    if let Some(refusals) = v["refusals"].as_object().filter(|m| !m.is_empty()) {
        let list: Vec<String> = refusals.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        println!("refused:     {}", list.join(", "));
    }
    println!("events:");
    for e in v["events"].as_array().into_iter().flatten() {
        let at = e["at"].as_str().unwrap_or("");
        let reason = e["reason"].as_str().unwrap_or("");
        match e["refusedBy"].as_str() {
            Some(by) => println!("  {at}  refused by {by}: {reason}"),
            None => println!(
                "  {at}  {} → {}  {reason}",
                e["from"].as_str().unwrap_or(""),
                e["to"].as_str().unwrap_or(""),
            ),
        }
    }
    Ok(())
}

fn print_log_line(l: &Value, json: bool) {
    if json {
        println!("{l}");
    } else {
        println!(
            "{} [{}] {}",
            l["at"].as_str().unwrap_or(""),
            l["stream"].as_str().unwrap_or(""),
            l["line"].as_str().unwrap_or("")
        );
    }
}

pub async fn logs(r: &Remote, id: &str, lines: usize, follow: bool) -> Result<(), CliError> {
    if !follow {
        let v = request(
            r,
            reqwest::Method::GET,
            &format!("/logs?name={id}&lines={lines}"),
            None,
        )
        .await?;
        for l in v["lines"].as_array().into_iter().flatten() {
            print_log_line(l, r.json);
        }
        return Ok(());
    }
    let url = format!(
        "{}/logs?name={id}&lines={lines}&follow=1",
        r.url.trim_end_matches('/')
    );
    let mut req = http(None).get(&url);
    if let Some(t) = &r.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| CliError::Unreachable {
        url: r.url.clone(),
        reason: root_cause(&e),
    })?;
    if !resp.status().is_success() {
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        return Err(CliError::NotFound(
            v["error"].as_str().unwrap_or("not found").to_string(),
        ));
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CliError::Failed(format!("log stream ended: {e}")))?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            for data in frame.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if let Ok(l) = serde_json::from_str::<Value>(data) {
                    print_log_line(&l, r.json);
                }
            }
        }
    }
    Ok(())
}

pub async fn tools(r: &Remote, id: Option<&str>) -> Result<(), CliError> {
    let path = match id {
        Some(id) => format!("/list?name={id}"),
        None => "/list".into(),
    };
    let v = request(r, reqwest::Method::GET, &path, None).await?;
    if r.json {
        print_json(&v);
        return Ok(());
    }
    let mut t = Table::new(&["SERVER", "TOOL", "EXPOSED AS", "DESCRIPTION"]);
    for s in v["servers"].as_array().into_iter().flatten() {
        for tool in s["tools"].as_array().into_iter().flatten() {
            let desc = tool["description"]
                .as_str()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("");
            let desc: String = desc.chars().take(60).collect();
            t.row(vec![
                s["name"].as_str().unwrap_or("").into(),
                tool["name"].as_str().unwrap_or("").into(),
                tool["exposedAs"].as_str().unwrap_or("-").into(),
                desc,
            ]);
        }
    }
    print!("{t}");
    Ok(())
}

/// Builds the arguments object from `--args JSON` or `key=value` pairs.
pub fn call_args(json_text: Option<&str>, pairs: &[String]) -> Result<Value, CliError> {
    if let Some(text) = json_text {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| CliError::Config(format!("--args is not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(CliError::Config("--args must be a JSON object".into()));
        }
        return Ok(v);
    }
    let mut map = serde_json::Map::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CliError::Config(format!(
                "argument `{pair}` is not KEY=VALUE"
            )));
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(Value::Object(map))
}

pub async fn call(r: &Remote, server: &str, tool: &str, args: Value) -> Result<(), CliError> {
    let v = request(
        r,
        reqwest::Method::POST,
        "/call",
        Some(json!({ "name": server, "tool": tool, "args": args })),
    )
    .await?;
    if r.json {
        print_json(&v);
    } else {
        let mut printed = false;
        for c in v["content"].as_array().into_iter().flatten() {
            if let Some(text) = c.get("text").and_then(Value::as_str) {
                println!("{text}");
                printed = true;
            } else {
                println!("{c}");
                printed = true;
            }
        }
        if !printed {
            print_json(&v);
        }
    }
    if v.get("isError").and_then(Value::as_bool) == Some(true) {
        return Err(CliError::Failed(format!("tool `{tool}` reported an error")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_arguments_parse_json_values() {
        let v = call_args(
            None,
            &["a=1".into(), "b=hello".into(), "c={\"x\":true}".into()],
        )
        .unwrap();
        assert_eq!(v, json!({"a": 1, "b": "hello", "c": {"x": true}}));
        assert!(call_args(None, &["novalue".into()]).is_err());
        assert!(call_args(Some("[1]"), &[]).is_err());
    }
}
