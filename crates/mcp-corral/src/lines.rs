//! A newline-delimited message writer shared by many tasks, with write combining.
//!
//! Each caller queues its line and then takes the lock; whoever holds the lock writes everything
//! queued so far and flushes once. An uncontended write costs one syscall and no task hand-off;
//! under load, many messages share one syscall. Used for upstream servers' stdin and for
//! Corral's own stdout.

use std::sync::Mutex;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use crate::upstream::lock;

pub struct LineWriter<W> {
    queue: Mutex<Vec<Vec<u8>>>,
    /// `None` once closed or broken.
    out: tokio::sync::Mutex<Option<BufWriter<W>>>,
}

impl<W: AsyncWrite + Unpin> LineWriter<W> {
    pub fn new(w: W) -> LineWriter<W> {
        LineWriter {
            queue: Mutex::new(Vec::new()),
            out: tokio::sync::Mutex::new(Some(BufWriter::with_capacity(64 * 1024, w))),
        }
    }

    /// Writes `line` and a newline. Returns once it was written (by this task or another).
    pub async fn write(&self, line: Vec<u8>) -> std::io::Result<()> {
        lock(&self.queue).push(line);
        let mut guard = self.out.lock().await;
        let batch = std::mem::take(&mut *lock(&self.queue));
        if batch.is_empty() {
            // A task ahead of us in the lock queue already wrote our line.
            return if guard.is_some() {
                Ok(())
            } else {
                Err(std::io::ErrorKind::BrokenPipe.into())
            };
        }
        let Some(w) = guard.as_mut() else {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        };
        let result = async {
            for line in &batch {
                w.write_all(line).await?;
                w.write_all(b"\n").await?;
            }
            w.flush().await
        }
        .await;
        if result.is_err() {
            // A broken pipe stays broken: later writes fail fast.
            *guard = None;
        }
        result
    }

    /// Flushes and closes the stream (for a stdio server: the polite stop signal).
    pub async fn close(&self) {
        if let Some(mut w) = self.out.lock().await.take() {
            let _ = w.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn concurrent_lines_arrive_whole_and_once() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let w = Arc::new(LineWriter::new(a));
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
}
