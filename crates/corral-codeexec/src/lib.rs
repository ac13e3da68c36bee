//! Untrusted code in WebAssembly: the engine behind Corral's `run_code`.
//!
//! Each language is a WASI interpreter (CPython, QuickJS, Ruby, php-cgi) or, for C and C++, a
//! compiler (clang and wasm-ld built for WebAssembly) fetched from a package registry with its
//! own client and verified against a pinned digest ([`runtimes`]). It is compiled once to
//! wasmtime's native format (a `.cwasm` keyed by the interpreter's digest and this engine's
//! configuration) and kept as an `InstancePre`; every run gets a fresh `Store` and instance
//! with no host directories (only its own code, read-only), no sockets, an empty environment, a wall-clock deadline (epoch
//! interruption), a memory ceiling and capped output ([`Sandbox::run`]).
//!
//! Seams: the `corral` binary calls [`runtimes::install`] and [`Sandbox::run`]; nothing here
//! knows about MCP.

mod capture;
pub mod runtimes;
mod sandbox;

pub use runtimes::Runtime;
pub use sandbox::{Compile, Job, Limits, Outcome, RunError, Sandbox, Status, Stdin};
