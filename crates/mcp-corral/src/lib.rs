//! Corral runs a fleet of MCP servers behind one gateway.
//!
//! Data flows one way: a transport (`transport`) reads a client message and hands it to the
//! `gateway`, which answers from its merged catalog or forwards it over an `upstream` connection
//! to a server that the `supervisor` keeps alive. The management `api` and the `cli` sit beside
//! the gateway and call the supervisor. `config` and `launcher` turn files into what to run;
//! `catalog` remembers what each server offers; `sandbox` confines the servers that ask for it.
//! See docs/architecture.md.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod codeexec;
pub mod config;
pub mod gateway;
pub mod jsonrpc;
pub mod launcher;
pub mod lines;
pub mod sandbox;
pub mod sched;
pub mod supervisor;
pub mod time;
pub mod tls;
pub mod transport;
pub mod upstream;
