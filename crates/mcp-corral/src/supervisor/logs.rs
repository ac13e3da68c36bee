//! Per-server log ring buffers: stderr lines, stray stdout lines and MCP log messages, each
//! with a timestamp and stream, plus a broadcast so `logs --follow` sees new lines live.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::upstream::lock;

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub at: String,
    /// `stderr`, `stdout` (non-JSON-RPC output), `mcp` (`notifications/message`) or `corral`.
    pub stream: &'static str,
    pub line: String,
}

pub struct LogRing {
    capacity: usize,
    lines: Mutex<VecDeque<LogLine>>,
    live: broadcast::Sender<LogLine>,
}

impl LogRing {
    pub fn new(capacity: usize) -> LogRing {
        let (live, _) = broadcast::channel(256);
        LogRing {
            capacity: capacity.max(1),
            lines: Mutex::new(VecDeque::new()),
            live,
        }
    }

    pub fn push(&self, stream: &'static str, line: &str) {
        // Keep lines bounded too: one runaway line must not hold megabytes per entry.
        const MAX: usize = 16 * 1024;
        let mut text = line.trim_end_matches(['\n', '\r']).to_string();
        if text.len() > MAX {
            let mut cut = MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" …[truncated]");
        }
        let entry = LogLine {
            at: crate::time::now(),
            stream,
            line: text,
        };
        {
            let mut lines = lock(&self.lines);
            if lines.len() == self.capacity {
                lines.pop_front();
            }
            lines.push_back(entry.clone());
        }
        let _ = self.live.send(entry);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let lines = lock(&self.lines);
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Lines pushed from now on.
    pub fn follow(&self) -> broadcast::Receiver<LogLine> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_lines() {
        let ring = LogRing::new(3);
        for i in 0..5 {
            ring.push("stderr", &format!("line {i}\n"));
        }
        let tail: Vec<_> = ring.tail(10).into_iter().map(|l| l.line).collect();
        assert_eq!(tail, vec!["line 2", "line 3", "line 4"]);
        assert_eq!(ring.tail(1)[0].line, "line 4");
    }
}
