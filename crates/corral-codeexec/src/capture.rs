//! Guest stdout and stderr: kept apart and, interleaved in write order, as one `tty` stream,
//! each capped; writes past the cap are dropped quietly and the run is marked truncated.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamError};

#[derive(Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub tty: Vec<u8>,
    pub truncated: bool,
}

/// One of the two streams, writing into the shared capture.
#[derive(Clone)]
pub struct Capture {
    shared: Arc<Mutex<Captured>>,
    stderr: bool,
    cap: usize,
}

impl Capture {
    pub fn pair(cap: usize) -> (Capture, Capture, Arc<Mutex<Captured>>) {
        let shared = Arc::new(Mutex::new(Captured::default()));
        let out = Capture {
            shared: shared.clone(),
            stderr: false,
            cap,
        };
        let err = Capture {
            stderr: true,
            ..out.clone()
        };
        (out, err, shared)
    }

    fn put(&self, bytes: &[u8]) {
        let mut c = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let own = if self.stderr {
            &mut c.stderr
        } else {
            &mut c.stdout
        };
        let room = self.cap.saturating_sub(own.len());
        let kept = &bytes[..bytes.len().min(room)];
        own.extend_from_slice(kept);
        let tty_room = (2 * self.cap).saturating_sub(c.tty.len());
        let shown = &kept[..kept.len().min(tty_room)];
        c.tty.extend_from_slice(shown);
        if kept.len() < bytes.len() {
            c.truncated = true;
        }
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.put(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always room: what is over the cap is dropped, not refused (a refused write would
        // make the guest fail in its own way and hide the program's real outcome).
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.put(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
