//! `corral serve`: load the config, start the supervisor and gateway, run the fronts, and stop
//! every server's process tree on SIGTERM/SIGINT or when the stdio client goes away.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::catalog::Store;
use crate::config::{self, Config};
use crate::gateway::Gateway;
use crate::supervisor::Supervisor;
use crate::transport::http::{Guard, HttpState};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Config file (YAML, JSON or TOML, or a client's `mcpServers` JSON). Repeatable; later files
    /// override earlier ones. Default: ./corral.{yaml,yml,json,toml} if present, else built-in defaults.
    #[arg(short, long = "config", value_name = "FILE")]
    configs: Vec<PathBuf>,
    /// Serve MCP on stdin/stdout (for clients that launch Corral). Disables HTTP unless --listen is given.
    #[arg(long)]
    stdio: bool,
    /// HTTP address for /mcp and the management API. Default: http.listen or 127.0.0.1:8787.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Bearer token required on every HTTP route; needed to listen beyond loopback.
    #[arg(long, env = "CORRAL_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The embedded defaults come with Corral's own tool sets: `run_code` (the `corral sandbox`
/// server, started on first use).
fn with_builtin_tools(mut config: Config) -> Config {
    let Ok(exe) = std::env::current_exe() else {
        return config;
    };
    let spec = crate::config::model::ServerSpec {
        id: Some("sandbox".into()),
        name: Some("run_code (WebAssembly sandbox)".into()),
        command: Some(exe.display().to_string()),
        args: vec!["sandbox".into()],
        ..Default::default()
    };
    match config::server_from_spec(spec, &config) {
        Ok(server) => config.servers.push(server),
        Err(e) => tracing::warn!("built-in run_code tool set unavailable: {e}"),
    }
    config
}

pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let files = if args.configs.is_empty() {
        config::DEFAULT_FILES
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .take(1)
            .collect()
    } else {
        args.configs.clone()
    };
    let config = if files.is_empty() {
        with_builtin_tools(Config::embedded_default())
    } else {
        config::load(&files).map_err(|e| CliError::Config(e.to_string()))?
    };
    let token = args.token.filter(|t| !t.is_empty());
    let http_addr = if args.stdio && args.listen.is_none() {
        None
    } else {
        let text = args
            .listen
            .clone()
            .unwrap_or_else(|| config.http.listen.clone());
        let addr: SocketAddr = text
            .parse()
            .map_err(|e| CliError::Config(format!("--listen `{text}`: {e} (expected IP:PORT)")))?;
        if !addr.ip().is_loopback() && token.is_none() {
            return Err(CliError::Config(format!(
                "refusing to listen on {addr} (not loopback) without a token: pass --token or set CORRAL_TOKEN"
            )));
        }
        Some(addr)
    };

    let store = match Store::open(&config.state_dir) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("{e}; stopped servers' tools will not be remembered");
            None
        }
    };
    let sup = Supervisor::new(store);
    for server in &config.servers {
        sup.add(server.clone())
            .map_err(|e| CliError::Config(e.to_string()))?;
    }
    let gw = Gateway::new(sup.clone(), config.namespace.clone());

    let http = match http_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| CliError::Failed(format!("cannot listen on {addr}: {e}")))?;
            let addr = listener.local_addr().unwrap_or(addr);
            let guard = Guard {
                token,
                listen: addr,
                allowed_hosts: config.http.allowed_hosts.clone(),
                allowed_origins: config.http.allowed_origins.clone(),
                max_body_bytes: config.http.max_body_bytes,
                session_idle: std::time::Duration::from_secs(config.http.session_idle_secs),
            };
            let state = HttpState::new(gw.clone(), guard);
            let app = crate::transport::http::router(state, crate::api::routes());
            tracing::info!(
                "listening on http://{addr}/mcp ({} server(s))",
                config.servers.len()
            );
            Some(tokio::spawn(
                async move { axum::serve(listener, app).await },
            ))
        }
        None => None,
    };
    sup.start_initial();

    let stdio_done = async {
        if args.stdio {
            if let Err(e) = crate::transport::stdio::serve(gw.clone()).await {
                tracing::warn!("stdio front: {e}");
            }
            tracing::info!("stdin closed; shutting down");
        } else {
            std::future::pending::<()>().await;
        }
    };
    let http_failed = async {
        match http {
            Some(handle) => match handle.await {
                Ok(Ok(())) => String::from("HTTP server stopped"),
                Ok(Err(e)) => format!("HTTP server failed: {e}"),
                Err(e) => format!("HTTP server task failed: {e}"),
            },
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = stdio_done => Ok(()),
        _ = shutdown_signal() => Ok(()),
        msg = http_failed => Err(CliError::Failed(msg)),
    };
    sup.shutdown().await;
    outcome
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping servers"),
        _ = int.recv() => tracing::info!("SIGINT: stopping servers"),
    }
}
