//! A newline-delimited message writer shared by many tasks, with write combining.
//!
//! Callers queue lines; one flusher task per stream writes them. The flusher is woken when the
//! queue turns non-empty, and the runtime runs it after every task that was already ready, so
//! all the answers produced from one batch of input leave in one `write` syscall. That matters
//! more than it looks: each write to a pipe wakes the process on the other end, and under load
//! those wake-ups and context switches cost the reader and Corral more than the JSON work. An
//! idle stream pays one task poll (well under a microsecond) for the hand-off.
//!
//! Used for upstream servers' stdin and for Corral's own stdout.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::Notify;

use crate::upstream::lock;

/// Queued bytes past which writers wait for the flusher (a reader that stopped reading must
/// not make Corral buffer without bound).
const HIGH_WATER: usize = 8 * 1024 * 1024;

/// Why [`LineWriter::try_write`] did not queue a line.
pub enum Full {
    /// Closed or broken: the line is dropped.
    Closed,
    /// Over the high-water mark: the line is handed back.
    Over(Vec<u8>),
}

pub struct LineWriter {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the flusher: the queue turned non-empty, or a close was asked for.
    work: Notify,
    /// The flusher finished a batch (or stopped): wakes writers waiting on space or a flush.
    progress: Notify,
}

#[derive(Default)]
struct State {
    queue: Vec<Vec<u8>>,
    queued_bytes: usize,
    /// Lines ever queued, and lines the flusher has written (or given up on).
    queued: u64,
    written: u64,
    closing: bool,
    /// The stream is broken or closed: writes fail fast.
    done: bool,
}

impl LineWriter {
    /// Starts the flusher task over `w`. `on_error` runs once if a write fails (the peer closed
    /// its end), so the owner can fail whatever waits for answers through this stream.
    pub fn new<W, F>(w: W, on_error: F) -> LineWriter
    where
        W: AsyncWrite + Unpin + Send + 'static,
        F: FnOnce(std::io::Error) + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Notify::new(),
            progress: Notify::new(),
        });
        tokio::spawn(flush_loop(
            shared.clone(),
            BufWriter::with_capacity(64 * 1024, w),
            on_error,
        ));
        LineWriter { shared }
    }

    /// Queues `line` and a newline. Returns at once unless the queue is over its high-water mark;
    /// fails if the stream is closed or broken.
    pub async fn write(&self, line: Vec<u8>) -> std::io::Result<()> {
        match self.try_write(line) {
            Ok(()) => Ok(()),
            Err(Full::Closed) => Err(std::io::ErrorKind::BrokenPipe.into()),
            // Boxed: the rare waiting path stays out of every caller's future.
            Err(Full::Over(line)) => Box::pin(self.write_when_drained(line)).await,
        }
    }

    /// Queues `line` without waiting, whatever is queued already: for writers that bound their
    /// own volume (an upstream connection caps the calls in flight). Fails if closed or broken.
    pub fn push(&self, line: Vec<u8>) -> std::io::Result<()> {
        self.enqueue(line, usize::MAX)
            .map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }

    /// Queues `line` unless the stream is closed or over its high-water mark.
    pub fn try_write(&self, line: Vec<u8>) -> Result<(), Full> {
        self.enqueue(line, HIGH_WATER)
    }

    fn enqueue(&self, line: Vec<u8>, limit: usize) -> Result<(), Full> {
        let mut st = lock(&self.shared.state);
        if st.done || st.closing {
            return Err(Full::Closed);
        }
        if st.queued_bytes >= limit && !st.queue.is_empty() {
            return Err(Full::Over(line));
        }
        st.queued_bytes += line.len() + 1;
        st.queued += 1;
        st.queue.push(line);
        if st.queue.len() == 1 {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    async fn write_when_drained(&self, mut line: Vec<u8>) -> std::io::Result<()> {
        loop {
            let space = self.shared.progress.notified();
            match self.try_write(line) {
                Ok(()) => return Ok(()),
                Err(Full::Closed) => return Err(std::io::ErrorKind::BrokenPipe.into()),
                Err(Full::Over(back)) => line = back,
            }
            space.await;
        }
    }

    /// Waits until every line queued so far is written (or the stream broke).
    pub async fn flush(&self) {
        let target = lock(&self.shared.state).queued;
        loop {
            let progress = self.shared.progress.notified();
            {
                let st = lock(&self.shared.state);
                if st.written >= target || st.done {
                    return;
                }
            }
            progress.await;
        }
    }

    /// Writes what is queued, then closes the stream (for a stdio server: the polite stop
    /// signal). Later writes fail.
    pub async fn close(&self) {
        lock(&self.shared.state).closing = true;
        self.shared.work.notify_one();
        loop {
            let progress = self.shared.progress.notified();
            if lock(&self.shared.state).done {
                return;
            }
            progress.await;
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        // The flusher writes what is left, then ends.
        lock(&self.shared.state).closing = true;
        self.shared.work.notify_one();
    }
}

async fn flush_loop<W, F>(shared: Arc<Shared>, mut out: BufWriter<W>, on_error: F)
where
    W: AsyncWrite + Unpin,
    F: FnOnce(std::io::Error),
{
    let mut batch = Vec::new();
    loop {
        shared.work.notified().await;
        let closing = {
            let mut st = lock(&shared.state);
            std::mem::swap(&mut batch, &mut st.queue);
            st.queued_bytes = 0;
            st.closing
        };
        let n = batch.len() as u64;
        let result = async {
            for line in batch.drain(..) {
                out.write_all(&line).await?;
                out.write_all(b"\n").await?;
            }
            out.flush().await
        }
        .await;
        let stop = {
            let mut st = lock(&shared.state);
            st.written += n;
            // Once closing, nothing new is queued, so an empty queue is the end.
            st.done = result.is_err() || (closing && st.queue.is_empty());
            st.done
        };
        if stop {
            batch.clear();
            match result {
                Err(e) => on_error(e),
                Ok(()) => {
                    let _ = out.shutdown().await;
                }
            }
            shared.progress.notify_waiters();
            return;
        }
        shared.progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn concurrent_lines_arrive_whole_and_once() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let w = Arc::new(LineWriter::new(a, |_| {}));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(async move {
                    w.write(format!("line-{i:03}-{}", "x".repeat(i)).into_bytes())
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        w.close().await;
        let mut text = String::new();
        b.read_to_string(&mut text).await.unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(lines.len(), 200);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(*l, format!("line-{i:03}-{}", "x".repeat(i)));
        }
        assert!(
            w.write(b"late".to_vec()).await.is_err(),
            "closed writers refuse"
        );
    }

    #[tokio::test]
    async fn lines_queued_in_one_tick_leave_in_one_write() {
        // A reader that records the size of every chunk it gets.
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let w = LineWriter::new(a, |_| {});
        for i in 0..50 {
            w.write(format!("{i}").into_bytes()).await.unwrap();
        }
        w.flush().await;
        let mut buf = vec![0u8; 1 << 16];
        let n = b.read(&mut buf).await.unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert_eq!(text.lines().count(), 50, "one read sees all 50 lines");
    }

    #[tokio::test]
    async fn a_broken_stream_reports_once_and_refuses_later_writes() {
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let w = LineWriter::new(a, move |e| {
            let _ = tx.send(e.kind());
        });
        w.write(b"hello".to_vec()).await.unwrap();
        assert_eq!(rx.await.unwrap(), std::io::ErrorKind::BrokenPipe);
        assert!(w.write(b"again".to_vec()).await.is_err());
    }
}
