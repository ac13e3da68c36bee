//! Running one program: a fresh store and instance per run, under limits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, InstancePre, Linker, Module, ResourceLimiter, Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

use crate::capture::Capture;
use crate::runtimes::{self, InstallError, Runtime};

/// How often the epoch ticks: the resolution of the wall-clock limit.
const TICK: Duration = Duration::from_millis(10);
/// Part of every `.cwasm` name: artifacts only load into an engine configured the same way.
const ENGINE_TAG: &str = "w48-epoch-cranelift-1";

/// What one run may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: usize,
    /// Per stream (stdout, stderr); `tty` holds up to twice this.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            memory_bytes: 256 << 20,
            output_bytes: 1 << 20,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The program exited; see the exit code.
    Completed,
    /// It trapped (a bug in the program or the interpreter).
    Crashed,
    /// A resource limit ended it.
    Terminated,
    /// It ran out of wall-clock time.
    Timeout,
}

/// The result of a run, in the shape of Runno's `run_code` plus what fired.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// stdout and stderr interleaved in the order written.
    pub tty: String,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    /// Which limit ended the run: `timeout`, `memory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'static str>,
    /// The trap, for `crashed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Instantiation and run, milliseconds.
    pub duration_ms: f64,
    /// Loading (or compiling) the interpreter when it was not ready yet, milliseconds.
    pub prepare_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("{0}")]
    Engine(String),
}

struct State {
    wasi: WasiP1Ctx,
    limiter: MemoryCeiling,
}

/// Refuses memory growth past the ceiling by trapping, and remembers that it did.
struct MemoryCeiling {
    max: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryCeiling {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Err(wasmtime::format_err!("memory limit of {} bytes", self.max));
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The engine, the interpreters ready to instantiate, and the epoch ticker.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<State>,
    cache: PathBuf,
    ready: Mutex<HashMap<Runtime, InstancePre<State>>>,
}

impl Sandbox {
    /// An engine over the runtime cache `cache` (see [`runtimes::default_cache`]).
    pub fn new(cache: &Path) -> Result<Arc<Sandbox>, RunError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| RunError::Engine(e.to_string()))?;
        let mut linker: Linker<State> = Linker::new(&engine);
        p1::add_to_linker_sync(&mut linker, |s: &mut State| &mut s.wasi)
            .map_err(|e| RunError::Engine(e.to_string()))?;
        let sandbox = Arc::new(Sandbox {
            engine,
            linker,
            cache: cache.to_path_buf(),
            ready: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&sandbox);
        std::thread::Builder::new()
            .name("corral-wasm-epoch".into())
            .spawn(move || {
                while let Some(s) = weak.upgrade() {
                    s.engine.increment_epoch();
                    drop(s);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| RunError::Engine(e.to_string()))?;
        Ok(sandbox)
    }

    /// Loads a runtime (compiling it to the cache the first time) so runs start at once.
    pub fn prepare(&self, runtime: Runtime) -> Result<(), RunError> {
        self.instance_pre(runtime).map(drop)
    }

    fn instance_pre(&self, runtime: Runtime) -> Result<InstancePre<State>, RunError> {
        if let Some(pre) = self.lock().get(&runtime) {
            return Ok(pre.clone());
        }
        let module = self.load(runtime)?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| RunError::Engine(e.to_string()))?;
        self.lock().insert(runtime, pre.clone());
        Ok(pre)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Runtime, InstancePre<State>>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compiled module: from its `.cwasm` when one exists for this engine, else compiled
    /// from the verified interpreter and saved.
    fn load(&self, runtime: Runtime) -> Result<Module, RunError> {
        runtimes::verify(runtime, &self.cache)?;
        let src = runtime.source();
        let compiled = self.cache.join(runtime.name()).join(format!(
            "{}-{}-{}.cwasm",
            runtime.name(),
            &src.sha256[..16],
            ENGINE_TAG
        ));
        if compiled.is_file() {
            // SAFETY: the file is one this code wrote into Corral's own cache, for an engine
            // configured the same way (the name carries the configuration and wasmtime
            // checks its version and settings on load).
            if let Ok(m) = unsafe { Module::deserialize_file(&self.engine, &compiled) } {
                return Ok(m);
            }
        }
        let wasm = std::fs::read(runtime.path(&self.cache)).map_err(|e| {
            RunError::Engine(format!("{}: {e}", runtime.path(&self.cache).display()))
        })?;
        let bytes = self
            .engine
            .precompile_module(&wasm)
            .map_err(|e| RunError::Engine(e.to_string()))?;
        let staged = compiled.with_extension("part");
        if std::fs::write(&staged, &bytes).is_ok() {
            let _ = std::fs::rename(&staged, &compiled);
        }
        // SAFETY: `bytes` came from this engine's own `precompile_module` just above.
        unsafe { Module::deserialize(&self.engine, &bytes) }
            .map_err(|e| RunError::Engine(e.to_string()))
    }

    /// Runs `code` with `stdin` under `limits`. Blocking: call it off the async runtime.
    pub fn run(
        &self,
        runtime: Runtime,
        code: &str,
        stdin: &[u8],
        limits: Limits,
    ) -> Result<Outcome, RunError> {
        let prepared = Instant::now();
        let pre = self.instance_pre(runtime)?;
        let prepare_ms = prepared.elapsed().as_secs_f64() * 1000.0;
        let (out, err, captured) = Capture::pair(limits.output_bytes);
        let wasi = WasiCtxBuilder::new()
            .args(&runtime.argv(code))
            .stdin(MemoryInputPipe::new(stdin.to_vec()))
            .stdout(out)
            .stderr(err)
            .build_p1();
        let mut store = Store::new(
            &self.engine,
            State {
                wasi,
                limiter: MemoryCeiling {
                    max: limits.memory_bytes,
                    hit: false,
                },
            },
        );
        store.limiter(|s| &mut s.limiter);
        let ticks = (limits.timeout.as_millis() / TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let started = Instant::now();
        let result = pre.instantiate(&mut store).and_then(|instance| {
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call(&mut store, ())
        });
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let memory_hit = store.data().limiter.hit;
        drop(store);
        let (status, exit_code, limit, error) = match result {
            Ok(()) => (Status::Completed, Some(0), None, None),
            Err(e) => {
                if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    (Status::Completed, Some(exit.0), None, None)
                } else if memory_hit {
                    (
                        Status::Terminated,
                        None,
                        Some("memory"),
                        Some(e.to_string()),
                    )
                } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    (Status::Timeout, None, Some("timeout"), None)
                } else {
                    (Status::Crashed, None, None, Some(format!("{e:#}")))
                }
            }
        };
        let c = captured.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Outcome {
            status,
            exit_code,
            tty: String::from_utf8_lossy(&c.tty).into_owned(),
            stdout: String::from_utf8_lossy(&c.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&c.stderr).into_owned(),
            truncated: c.truncated,
            limit,
            error,
            duration_ms,
            prepare_ms,
        })
    }
}
