//! Running one program: a fresh store and instance per run, under limits.
//!
//! Interpreters and the C toolchain run on a Cranelift engine from precompiled `.cwasm`
//! artifacts; user C/C++ programs, compiled on demand and run once, go through Winch, whose
//! compile is several times faster. Both engines share one epoch ticker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Strategy, Trap,
};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::capture::Capture;
use crate::runtimes::{self, Artifact, InstallError, Launch, Runtime};

/// How often the epoch ticks: the resolution of the wall-clock limit.
const TICK: Duration = Duration::from_millis(10);
/// Part of every `.cwasm` name: artifacts only load into an engine configured the same way.
const ENGINE_TAG: &str = "w48-epoch-cranelift-1";
const METERED_ENGINE_TAG: &str = "w48-epoch-fuel-cranelift-1";
/// Gives php-cgi the stream constants of the PHP command line. This build cannot open
/// `php://stdin` or `php://stderr` (both `dup()` a descriptor, which WASI lacks), so STDIN reads
/// a read-only copy of the run's stdin, and STDERR writes lines through `error_log()`, which
/// php-cgi sends to its stderr.
const PHP_PRELUDE: &str = r#"<?php
final class CorralStderrStream {
    public $context;
    private $pending = '';
    function stream_open($path, $mode, $options, &$opened) { return true; }
    function stream_write($data) {
        $this->pending .= $data;
        while (($i = strpos($this->pending, "\n")) !== false) {
            error_log(substr($this->pending, 0, $i));
            $this->pending = substr($this->pending, $i + 1);
        }
        return strlen($data);
    }
    function stream_flush() { return true; }
    function stream_eof() { return true; }
    function stream_stat() { return []; }
    function stream_close() {
        if ($this->pending !== '') { error_log($this->pending); $this->pending = ''; }
    }
}
stream_wrapper_register('corral-stderr', 'CorralStderrStream');
define('STDIN', fopen('/code/stdin', 'rb'));
define('STDOUT', fopen('php://output', 'wb'));
define('STDERR', fopen('corral-stderr://', 'wb'));
"#;
/// Runs the program as `python -c` would, minus two costs of a warm run (measured with the
/// same hello world: 34 ms → about 25 ms):
/// - `-S` skips `site`, whose work here is importing `os` (3 ms; a program that wants it still
///   imports it) and defining the `exit`/`quit` builtins, given back below. The build has no
///   site-packages directory, so `sys.path` is the same either way.
/// - At the end, instead of tearing the interpreter down (5.5 ms of freeing every object), it
///   runs the `atexit` handlers, flushes the streams and exits at once.
///
/// The program arrives as `sys.argv[1]` and is removed from it, so `sys.argv == ['-c']` as under
/// `python -c`. It runs through `exec` of the string, as `-c` does: the `compile()` builtin would
/// first build Python's AST classes, 4 ms. Tracebacks leave out this wrapper's frame, and
/// `SystemExit` keeps its meaning.
const PYTHON_MAIN: &str = r#"def _corral_main():
    import sys, atexit, builtins, posix
    del globals()['_corral_main']
    builtins.exit = builtins.quit = sys.exit
    source = sys.argv.pop(1)
    status = 0
    try:
        exec(source, sys.modules['__main__'].__dict__)
    except SystemExit as e:
        if e.code is None:
            status = 0
        elif isinstance(e.code, int):
            status = e.code
        else:
            print(e.code, file=sys.stderr)
            status = 1
    except BaseException as e:
        if e.__traceback__ is not None:
            e.__traceback__ = e.__traceback__.tb_next
        sys.excepthook(type(e), e, e.__traceback__)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    posix._exit(status & 0xff)
_corral_main()
"#;
/// Instance slots per engine: twice the runs Corral lets run at once (one per core), each of
/// which has one instance at a time (a C build runs clang, then wasm-ld, then the program),
/// and at least 16 for callers of this crate that bound their runs differently. A run that
/// finds no free slot fails with an engine error.
fn pool_slots() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
    cores.saturating_mul(2).max(16)
}
/// Slots kept warm (mapped) after use, and how much of each stays resident.
const WARM_SLOTS: u32 = 4;
const KEEP_RESIDENT: usize = 32 << 20;
/// Compiled user programs kept, by source digest: at most this many, and at most
/// [`PROGRAM_CACHE_BYTES`] of native code (a C++ program with iostream is about 4 MB).
const PROGRAM_CACHE: usize = 64;
const PROGRAM_CACHE_BYTES: usize = 32 << 20;
/// What clang.wasm and wasm-ld.wasm may use, apart from the program's own limits: a large
/// C++ translation unit needs far more memory than the program it produces.
const COMPILER_LIMITS: Limits = Limits {
    timeout: Duration::from_secs(30),
    memory_bytes: 1 << 30,
    output_bytes: 1 << 20,
    fuel: None,
};

/// What one run may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    /// Linear memory; at most 1 GiB (the size of an instance slot, see `pool`).
    pub memory_bytes: usize,
    /// Wasm work allowed (wasmtime fuel: about one unit per instruction), or `None` for no
    /// count. Runs with fuel use a second set of engines whose code counts it, compiled on
    /// first use (a few seconds per interpreter, then cached like the others).
    pub fuel: Option<u64>,
    /// Per stream (stdout, stderr); `tty` holds up to twice this.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            memory_bytes: 256 << 20,
            output_bytes: 1 << 20,
            fuel: None,
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
    /// Which limit ended the run: `timeout`, `memory`, `fuel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'static str>,
    /// The trap, for `crashed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Instantiation and run, milliseconds.
    pub duration_ms: f64,
    /// Loading (or compiling) the interpreter when it was not ready yet, milliseconds.
    pub prepare_ms: f64,
    /// For C and C++: building the program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compile: Option<Compile>,
}

/// How a C or C++ program was built.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Compile {
    /// clang, wasm-ld and the Winch compile, milliseconds (0 when cached).
    pub ms: f64,
    /// The same source was built before and its program reused.
    pub cached: bool,
}

/// What the program reads as standard input.
#[derive(Debug, Clone, Copy)]
pub enum Stdin<'a> {
    Bytes(&'a [u8]),
    /// This process's own stdin, read only as the program reads it (`corral run`).
    Inherit,
}

/// One thing to run.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub runtime: Runtime,
    pub code: &'a str,
    pub stdin: Stdin<'a>,
    pub limits: Limits,
    /// Ruby only: load RubyGems (about 50 ms more per run).
    pub ruby_gems: bool,
}

/// A host directory the guest sees at `guest`.
struct Mount<'a> {
    host: &'a Path,
    guest: &'a str,
    perms: FsPerms,
}

/// A built C/C++ program and what the compiler said while building it.
#[derive(Clone)]
struct Program {
    pre: InstancePre<State>,
    diagnostics: Vec<u8>,
    /// Size of its compiled image, for the cache's byte budget.
    bytes: usize,
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

/// The engines, the modules ready to instantiate, and the epoch ticker.
pub struct Sandbox {
    /// For every run without fuel, and for the compilers.
    plain: Engines,
    /// For runs with fuel, made on first use.
    metered: std::sync::OnceLock<Result<Engines, String>>,
    cache: PathBuf,
    /// Parent of the per-run directories: memory-backed when the host has `/dev/shm`.
    scratch: PathBuf,
}

/// One wasmtime configuration: Cranelift for the interpreters and compilers, Winch for the
/// programs they build, each with its linker, and what has been loaded into them.
struct Engines {
    /// Part of each `.cwasm` name (see [`ENGINE_TAG`]).
    tag: &'static str,
    cranelift: Engine,
    cranelift_linker: Linker<State>,
    winch: Engine,
    winch_linker: Linker<State>,
    modules: Mutex<HashMap<&'static str, InstancePre<State>>>,
    programs: Mutex<ProgramCache>,
}

impl Engines {
    fn new(fuel: bool) -> Result<Engines, RunError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(fuel);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool()));
        let cranelift = Engine::new(&config).map_err(engine_error)?;
        config.strategy(Strategy::Winch);
        let winch = Engine::new(&config).map_err(engine_error)?;
        Ok(Engines {
            tag: if fuel { METERED_ENGINE_TAG } else { ENGINE_TAG },
            cranelift_linker: wasi_linker(&cranelift)?,
            winch_linker: wasi_linker(&winch)?,
            cranelift,
            winch,
            modules: Mutex::new(HashMap::new()),
            programs: Mutex::new(ProgramCache::default()),
        })
    }

    fn tick(&self) {
        self.cranelift.increment_epoch();
        self.winch.increment_epoch();
    }
}

/// Least-recently-used compiled programs.
#[derive(Default)]
struct ProgramCache {
    entries: HashMap<String, (Program, u64)>,
    clock: u64,
}

impl ProgramCache {
    fn get(&mut self, key: &str) -> Option<Program> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(key).map(|(p, used)| {
            *used = now;
            p.clone()
        })
    }

    fn put(&mut self, key: String, program: Program) {
        let held =
            |e: &HashMap<String, (Program, u64)>| e.values().map(|(p, _)| p.bytes).sum::<usize>();
        while !self.entries.is_empty()
            && (self.entries.len() >= PROGRAM_CACHE
                || held(&self.entries) + program.bytes > PROGRAM_CACHE_BYTES)
        {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.clock += 1;
        self.entries.insert(key, (program, self.clock));
    }
}

fn engine_error(e: impl std::fmt::Display) -> RunError {
    RunError::Engine(e.to_string())
}

/// A linker with both WASI generations: the interpreters speak preview 1, clang.wasm and the
/// programs it builds speak preview 0.
fn wasi_linker(engine: &Engine) -> Result<Linker<State>, RunError> {
    let mut linker: Linker<State> = Linker::new(engine);
    p1::add_to_linker_sync(&mut linker, |s: &mut State| &mut s.wasi).map_err(engine_error)?;
    wasmtime_wasi::p0::add_to_linker_sync(&mut linker, |s: &mut State| &mut s.wasi)
        .map_err(engine_error)?;
    // wasmtime-wasi turns an exit status of 126 or more into an error that loses the status;
    // php-cgi exits 255 after a fatal error, and a program may `exit(200)`. Keep the number.
    linker.allow_shadowing(true);
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        linker
            .func_wrap(module, "proc_exit", |status: i32| -> wasmtime::Result<()> {
                Err(wasmtime_wasi::I32Exit(status).into())
            })
            .map_err(engine_error)?;
    }
    Ok(linker)
}

/// Instances come from a pool of preallocated slots instead of fresh mappings. A slot keeps
/// its first [`KEEP_RESIDENT`] bytes mapped between runs and, where the kernel can report
/// which pages a run wrote (`PAGEMAP_SCAN`, Linux 6.7), zeroes only those: the next run of the
/// same interpreter takes far fewer page faults (measured: Python hello world 26.6 → 24.8 ms,
/// Ruby 33.6 → 29.6 ms against fresh mappings).
fn pool() -> PoolingAllocationConfig {
    let slots = pool_slots();
    let mut pool = PoolingAllocationConfig::new();
    pool.total_memories(slots)
        .total_tables(slots)
        .total_core_instances(slots)
        .total_stacks(slots)
        .total_component_instances(0)
        .total_gc_heaps(0)
        // The compiler's limit is the largest any run gets.
        .max_memory_size(COMPILER_LIMITS.memory_bytes)
        // clang.wasm's function table is the largest here.
        .table_elements(200_000)
        .max_core_instance_size(16 << 20)
        .max_unused_warm_slots(WARM_SLOTS)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(1 << 20)
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

impl Sandbox {
    /// Engines over the runtime cache `cache` (see [`runtimes::default_cache`]).
    pub fn new(cache: &Path) -> Result<Arc<Sandbox>, RunError> {
        let plain = Engines::new(false)?;
        let shm = Path::new("/dev/shm");
        let scratch = if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let sandbox = Arc::new(Sandbox {
            plain,
            metered: std::sync::OnceLock::new(),
            cache: cache.to_path_buf(),
            scratch,
        });
        let weak = Arc::downgrade(&sandbox);
        std::thread::Builder::new()
            .name("corral-wasm-epoch".into())
            .spawn(move || {
                while let Some(s) = weak.upgrade() {
                    s.plain.tick();
                    if let Some(Ok(metered)) = s.metered.get() {
                        metered.tick();
                    }
                    drop(s);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(engine_error)?;
        Ok(sandbox)
    }

    /// Loads a runtime (compiling it to the cache the first time) so runs start at once.
    pub fn prepare(&self, runtime: Runtime) -> Result<(), RunError> {
        match runtime.launch() {
            Launch::Interpreter(artifact) => self.module(&self.plain, runtime, artifact).map(drop),
            Launch::Compiler { .. } => {
                runtimes::unpack_sysroot(&self.cache)?;
                self.module(&self.plain, runtime, &runtimes::CLANG)?;
                self.module(&self.plain, runtime, &runtimes::WASM_LD)
                    .map(drop)
            }
        }
    }

    /// Loads every installed runtime, so that no caller waits for the first load.
    pub fn warm_up(&self) {
        for runtime in Runtime::ALL {
            let dir = runtime.dir(&self.cache);
            if runtime.artifacts().iter().all(|a| a.path(&dir).is_file()) {
                let _ = self.prepare(runtime);
            }
        }
    }

    fn module(
        &self,
        engines: &Engines,
        runtime: Runtime,
        artifact: &'static Artifact,
    ) -> Result<InstancePre<State>, RunError> {
        if let Some(pre) = lock(&engines.modules).get(artifact.file) {
            return Ok(pre.clone());
        }
        let module = self.load(engines, runtime, artifact)?;
        let pre = engines
            .cranelift_linker
            .instantiate_pre(&module)
            .map_err(engine_error)?;
        lock(&engines.modules).insert(artifact.file, pre.clone());
        Ok(pre)
    }

    /// The engines for a run with these limits.
    fn engines(&self, limits: &Limits) -> Result<&Engines, RunError> {
        if limits.fuel.is_none() {
            return Ok(&self.plain);
        }
        self.metered
            .get_or_init(|| Engines::new(true).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| RunError::Engine(e.clone()))
    }

    /// The compiled module: from its `.cwasm` when one exists for this engine, else compiled
    /// from the verified file and saved.
    fn load(
        &self,
        engines: &Engines,
        runtime: Runtime,
        artifact: &'static Artifact,
    ) -> Result<Module, RunError> {
        let dir = runtime.dir(&self.cache);
        let stem = artifact.file.trim_end_matches(".wasm");
        let compiled = dir.join(format!(
            "{stem}-{}-{}.cwasm",
            &artifact.sha256[..16],
            engines.tag
        ));
        // The artifact was compiled from a verified file, so loading it needs no second hash
        // of the interpreter (up to 31 MB); `corral runtimes verify` still checks them.
        if compiled.is_file() {
            // SAFETY: the file is one this code wrote into Corral's own cache, for an engine
            // configured the same way (the name carries the configuration and wasmtime
            // checks its version and settings on load).
            if let Ok(m) = unsafe { Module::deserialize_file(&engines.cranelift, &compiled) } {
                return Ok(m);
            }
        }
        runtimes::verify_artifact(runtime, artifact, &dir)?;
        let path = artifact.path(&dir);
        let wasm = std::fs::read(&path)
            .map_err(|e| RunError::Engine(format!("{}: {e}", path.display())))?;
        let bytes = engines
            .cranelift
            .precompile_module(&wasm)
            .map_err(engine_error)?;
        let staged = compiled.with_extension("part");
        if std::fs::write(&staged, &bytes).is_ok() {
            let _ = std::fs::rename(&staged, &compiled);
        }
        // SAFETY: `bytes` came from this engine's own `precompile_module` just above.
        unsafe { Module::deserialize(&engines.cranelift, &bytes) }.map_err(engine_error)
    }

    /// A fresh private directory holding `files`, removed when dropped.
    fn workdir(&self, files: &[(&str, &[u8])]) -> Result<tempfile::TempDir, RunError> {
        let dir = tempfile::Builder::new()
            .prefix("corral-run-")
            .tempdir_in(&self.scratch)
            .map_err(|e| RunError::Engine(format!("scratch directory: {e}")))?;
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text)
                .map_err(|e| RunError::Engine(format!("scratch directory: {e}")))?;
        }
        Ok(dir)
    }

    /// Runs a job. Blocking: call it off the async runtime.
    pub fn run(&self, job: Job<'_>) -> Result<Outcome, RunError> {
        let prepared = Instant::now();
        let runtime = job.runtime;
        let engines = self.engines(&job.limits)?;
        let (pre, program) = match runtime.launch() {
            Launch::Interpreter(artifact) => (self.module(engines, runtime, artifact)?, None),
            Launch::Compiler { cpp } => match self.build(engines, runtime, cpp, job.code)? {
                Ok(built) => (built.0.pre.clone(), Some(built)),
                Err(failed) => return Ok(failed),
            },
        };
        let prepare_ms = prepared.elapsed().as_secs_f64() * 1000.0;
        // Ruby and PHP read the program from a per-run directory mounted read-only at /code,
        // so that stdin stays the program's own.
        let mut code_dir = None;
        let mut stdin = job.stdin;
        let argv: Vec<String> = match runtime {
            Runtime::Python => ["python", "-S", "-c", PYTHON_MAIN, job.code]
                .map(String::from)
                .to_vec(),
            Runtime::Quickjs => vec!["qjs".into(), "--std".into(), "-e".into(), job.code.into()],
            Runtime::Ruby => {
                code_dir = Some(self.workdir(&[
                    ("main.rb", job.code.as_bytes()),
                    ("sync.rb", b"$stdout.sync = true\n"),
                ])?);
                let mut argv = vec!["ruby".to_string()];
                if !job.ruby_gems {
                    argv.push("--disable-gems".into());
                }
                argv.extend(["-r/code/sync.rb".into(), "/code/main.rb".into()]);
                argv
            }
            // php-cgi behaves like the PHP command line: no CGI headers (`-q`), plain-text
            // errors, and the STDIN/STDOUT/STDERR constants that only the CLI build defines.
            Runtime::PhpCgi => {
                // PHP reads stdin from a file (see PHP_PRELUDE), so it is read up front.
                let mut inherited = Vec::new();
                let input = match job.stdin {
                    Stdin::Bytes(b) => b,
                    Stdin::Inherit => {
                        std::io::Read::read_to_end(&mut std::io::stdin(), &mut inherited)
                            .map_err(|e| RunError::Engine(format!("reading stdin: {e}")))?;
                        &inherited
                    }
                };
                code_dir = Some(self.workdir(&[
                    ("main.php", job.code.as_bytes()),
                    ("prelude.php", PHP_PRELUDE.as_bytes()),
                    ("stdin", input),
                ])?);
                stdin = Stdin::Bytes(b"");
                [
                    "php-cgi",
                    "-q",
                    "-d",
                    "html_errors=0",
                    "-d",
                    "auto_prepend_file=/code/prelude.php",
                    "/code/main.php",
                ]
                .map(String::from)
                .to_vec()
            }
            Runtime::Clang | Runtime::Clangpp => vec!["program".into()],
        };
        let mounts: Vec<Mount> = code_dir
            .iter()
            .map(|dir| Mount {
                host: dir.path(),
                guest: "/code",
                perms: FsPerms::ReadOnly,
            })
            .collect();
        let engine = if program.is_some() {
            &engines.winch
        } else {
            &engines.cranelift
        };
        let mut outcome = execute(engine, &pre, &argv, stdin, &mounts, job.limits)?;
        outcome.prepare_ms = prepare_ms;
        if let Some((built, compile)) = program {
            outcome.compile = Some(compile);
            if !built.diagnostics.is_empty() {
                let warnings = String::from_utf8_lossy(&built.diagnostics);
                outcome.stderr.insert_str(0, &warnings);
                outcome.tty.insert_str(0, &warnings);
            }
        }
        Ok(outcome)
    }

    /// Builds a C or C++ program inside WebAssembly, or finds it built. The inner `Err` is
    /// the outcome to report when compiling or linking failed.
    fn build(
        &self,
        engines: &Engines,
        runtime: Runtime,
        cpp: bool,
        code: &str,
    ) -> Result<Result<(Program, Compile), Outcome>, RunError> {
        let key = runtimes::sha256_hex(format!("{}\0{code}", runtime.name()).as_bytes());
        if let Some(program) = lock(&engines.programs).get(&key) {
            return Ok(Ok((
                program,
                Compile {
                    ms: 0.0,
                    cached: true,
                },
            )));
        }
        let started = Instant::now();
        // The compilers always run on the plain engines: fuel is for the program.
        let clang = self.module(&self.plain, runtime, &runtimes::CLANG)?;
        let wasm_ld = self.module(&self.plain, runtime, &runtimes::WASM_LD)?;
        let sys = runtimes::unpack_sysroot(&self.cache)?.join("sys");
        let source = if cpp { "program.cpp" } else { "program.c" };
        let work = self.workdir(&[(source, code.as_bytes())])?;
        let mounts = [
            Mount {
                host: &sys,
                guest: "/sys",
                perms: FsPerms::ReadOnly,
            },
            Mount {
                host: work.path(),
                guest: "/work",
                perms: FsPerms::ReadWrite,
            },
        ];
        let mut cc: Vec<&str> = vec![
            "clang",
            "-cc1",
            "-triple",
            "wasm32-unknown-wasi",
            "-isysroot",
            "/sys",
        ];
        if cpp {
            cc.extend([
                "-internal-isystem",
                "/sys/include/c++/v1",
                "-std=c++17",
                "-x",
                "c++",
            ]);
        }
        cc.extend([
            "-internal-isystem",
            "/sys/include",
            "-internal-isystem",
            "/sys/lib/clang/8.0.1/include",
            "-ferror-limit",
            "20",
            "-disable-free",
            "-O2",
            "-emit-obj",
            "-o",
            "/work/program.o",
        ]);
        let source_path = format!("/work/{source}");
        cc.push(&source_path);
        let mut ld = vec![
            "wasm-ld",
            "--no-threads",
            "--export-dynamic",
            "-z",
            "stack-size=1048576",
            "-L/sys/lib/wasm32-wasi",
            "/sys/lib/wasm32-wasi/crt1.o",
            "/work/program.o",
            "-lc",
        ];
        if cpp {
            ld.extend(["-lc++", "-lc++abi"]);
        }
        ld.extend(["-o", "/work/program.wasm"]);
        let mut diagnostics = Vec::new();
        for (tool, pre, argv) in [("clang", &clang, cc), ("wasm-ld", &wasm_ld, ld)] {
            let argv: Vec<String> = argv.into_iter().map(String::from).collect();
            let mut step = execute(
                &self.plain.cranelift,
                pre,
                &argv,
                Stdin::Bytes(b""),
                &mounts,
                COMPILER_LIMITS,
            )?;
            diagnostics.extend_from_slice(step.tty.as_bytes());
            if step.status != Status::Completed || step.exit_code != Some(0) {
                let why = match step.status {
                    Status::Completed => {
                        format!("exited with code {}", step.exit_code.unwrap_or(-1))
                    }
                    _ => step
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("{:?}", step.status).to_lowercase()),
                };
                step.error = Some(format!("compilation failed: {tool} {why}"));
                if step.status == Status::Completed {
                    step.status = Status::Crashed;
                }
                step.exit_code = None;
                step.tty = String::from_utf8_lossy(&diagnostics).into_owned();
                step.stderr = step.tty.clone();
                step.stdout.clear();
                step.compile = Some(Compile {
                    ms: started.elapsed().as_secs_f64() * 1000.0,
                    cached: false,
                });
                return Ok(Err(step));
            }
        }
        let built = work.path().join("program.wasm");
        let wasm = std::fs::read(&built)
            .map_err(|e| RunError::Engine(format!("{}: {e}", built.display())))?;
        let module = Module::new(&engines.winch, &wasm).map_err(engine_error)?;
        let image = module.image_range();
        let bytes = (image.end as usize).saturating_sub(image.start as usize);
        let pre = engines
            .winch_linker
            .instantiate_pre(&module)
            .map_err(engine_error)?;
        let program = Program {
            pre,
            diagnostics,
            bytes,
        };
        lock(&engines.programs).put(key, program.clone());
        let compile = Compile {
            ms: started.elapsed().as_secs_f64() * 1000.0,
            cached: false,
        };
        Ok(Ok((program, compile)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One instance of `pre` in a fresh store: the guest's argv, stdin, mounts and limits.
fn execute(
    engine: &Engine,
    pre: &InstancePre<State>,
    argv: &[String],
    stdin: Stdin<'_>,
    mounts: &[Mount<'_>],
    limits: Limits,
) -> Result<Outcome, RunError> {
    let (out, err, captured) = Capture::pair(limits.output_bytes);
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(argv).stdout(out).stderr(err);
    match stdin {
        Stdin::Bytes(bytes) => wasi.stdin(MemoryInputPipe::new(bytes.to_vec())),
        Stdin::Inherit => wasi.inherit_stdin(),
    };
    for m in mounts {
        wasi.preopened_dir(m.host, m.guest, m.perms)
            .map_err(|e| RunError::Engine(format!("{}: {e}", m.host.display())))?;
    }
    let mut store = Store::new(
        engine,
        State {
            wasi: wasi.build_p1(),
            limiter: MemoryCeiling {
                max: limits.memory_bytes,
                hit: false,
            },
        },
    );
    store.limiter(|s| &mut s.limiter);
    if let Some(fuel) = limits.fuel {
        store.set_fuel(fuel).map_err(engine_error)?;
    }
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
            } else if e.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
                (
                    Status::Terminated,
                    None,
                    Some("fuel"),
                    Some(format!(
                        "fuel limit of {} ran out",
                        limits.fuel.unwrap_or(0)
                    )),
                )
            } else {
                (Status::Crashed, None, None, Some(format!("{e:#}")))
            }
        }
    };
    let c = lock(&captured);
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
        prepare_ms: 0.0,
        compile: None,
    })
}
