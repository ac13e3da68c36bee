//! Client-facing fronts: stdio and Streamable HTTP. They move bytes and enforce HTTP safety;
//! MCP semantics live in the gateway.

pub mod http;
mod replay;
pub mod stdio;
