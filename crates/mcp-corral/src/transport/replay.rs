//! Resumable event streams for the Streamable HTTP front (`Last-Event-ID`).
//!
//! Every event stream of a session (a POST answered with SSE, or the GET stream) gets a number;
//! its events carry ids `"{stream}-{seq}"`. A pump task owns the gateway's side of the stream:
//! it keeps the newest events in a bounded log and hands each to the HTTP body currently
//! attached, if any. When the client's connection drops, the pump goes on logging, so the rest
//! of a call (its final answer included) is not lost: a `GET /mcp` with `Last-Event-ID` replays
//! what came after that event and attaches the new connection to the same stream.
//!
//! Seams: `http.rs` creates a [`Streams`] per session and calls [`Streams::open`] for each new
//! stream and [`Streams::resume`] for a GET that names an event.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::Stream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::upstream::lock;

/// Events kept per stream for replay.
const KEEP_EVENTS: usize = 512;
/// Bytes kept per stream for replay; the oldest events go first.
const KEEP_BYTES: usize = 4 << 20;
/// How long a finished stream stays resumable.
const KEEP_FINISHED: Duration = Duration::from_secs(300);

/// The event streams of one HTTP session.
#[derive(Default)]
pub struct Streams {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Log>>>,
}

struct Log {
    inner: Mutex<LogInner>,
}

#[derive(Default)]
struct LogInner {
    events: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// The HTTP body reading this stream now, if a client is connected.
    attached: Option<mpsc::Sender<Bytes>>,
    finished: Option<Instant>,
}

/// What a GET with `Last-Event-ID` gets.
pub enum Resumed {
    /// The events after the named one, then the live stream (if it has not finished).
    Stream(Body),
    /// The id names no stream this session still keeps.
    Unknown,
}

pub type Body =
    std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::convert::Infallible>> + Send>>;

impl Streams {
    /// Starts a stream fed by `source` (messages, one JSON-RPC message each) and returns the
    /// body for the connection that opened it.
    pub fn open(self: &Arc<Self>, source: mpsc::Receiver<Vec<u8>>) -> Body {
        self.forget_finished();
        let stream = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let log = Arc::new(Log {
            inner: Mutex::new(LogInner::default()),
        });
        let (tx, rx) = mpsc::channel(1024);
        lock(&log.inner).attached = Some(tx);
        lock(&self.open).insert(stream, log.clone());
        tokio::spawn(pump(stream, source, log));
        Box::pin(ReceiverStream::new(rx).map(Ok))
    }

    /// Resumes after event `last` (`"{stream}-{seq}"`): replays later events and attaches.
    pub fn resume(&self, last: &str) -> Resumed {
        let Some((stream, seq)) = parse_event_id(last) else {
            return Resumed::Unknown;
        };
        let Some(log) = lock(&self.open).get(&stream).cloned() else {
            return Resumed::Unknown;
        };
        let mut inner = lock(&log.inner);
        // An id older than what the log keeps cannot be resumed without a gap.
        if let Some((first, _)) = inner.events.front()
            && *first > seq + 1
        {
            return Resumed::Unknown;
        }
        let replay: Vec<Result<Bytes, std::convert::Infallible>> = inner
            .events
            .iter()
            .filter(|(s, _)| *s > seq)
            .map(|(_, frame)| Ok(frame.clone()))
            .collect();
        let replayed = futures::stream::iter(replay);
        if inner.finished.is_some() {
            return Resumed::Stream(Box::pin(replayed));
        }
        // Under the same lock as the replay, so no event falls between the two.
        let (tx, rx) = mpsc::channel(1024);
        inner.attached = Some(tx);
        Resumed::Stream(Box::pin(replayed.chain(ReceiverStream::new(rx).map(Ok))))
    }

    /// Whether a client is connected to any of the session's streams.
    pub fn connected(&self) -> bool {
        lock(&self.open).values().any(|log| {
            lock(&log.inner)
                .attached
                .as_ref()
                .is_some_and(|tx| !tx.is_closed())
        })
    }

    fn forget_finished(&self) {
        lock(&self.open).retain(|_, log| {
            lock(&log.inner)
                .finished
                .is_none_or(|at| at.elapsed() < KEEP_FINISHED)
        });
    }
}

/// Moves a stream's messages into its log and to the attached connection.
async fn pump(stream: u64, mut source: mpsc::Receiver<Vec<u8>>, log: Arc<Log>) {
    let mut seq = 0u64;
    while let Some(msg) = source.recv().await {
        seq += 1;
        let frame = frame(stream, seq, &msg);
        let attached = {
            let mut inner = lock(&log.inner);
            inner.bytes += frame.len();
            inner.events.push_back((seq, frame.clone()));
            while inner.events.len() > KEEP_EVENTS || inner.bytes > KEEP_BYTES {
                match inner.events.pop_front() {
                    Some((_, old)) => inner.bytes -= old.len(),
                    None => break,
                }
            }
            inner.attached.clone()
        };
        if let Some(tx) = attached
            && tx.send(frame).await.is_err()
        {
            // The client went away; keep logging for a resume. Clear only that connection:
            // a resume may have attached a new one meanwhile.
            let mut inner = lock(&log.inner);
            if inner.attached.as_ref().is_some_and(|a| a.same_channel(&tx)) {
                inner.attached = None;
            }
        }
    }
    let mut inner = lock(&log.inner);
    inner.finished = Some(Instant::now());
    // Ends the attached connection's body.
    inner.attached = None;
}

fn frame(stream: u64, seq: u64, msg: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(msg.len() + 48);
    frame.extend_from_slice(format!("id: {stream}-{seq}\nevent: message\ndata: ").as_bytes());
    frame.extend_from_slice(msg);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (stream, seq) = id.trim().split_once('-')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next_text(body: &mut Body) -> String {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream is open")
            .unwrap_or_else(|e| match e {});
        String::from_utf8_lossy(&chunk).into_owned()
    }

    #[tokio::test]
    async fn a_dropped_connection_resumes_after_its_last_event() {
        let streams = Arc::new(Streams::default());
        let (tx, rx) = mpsc::channel(16);
        let mut body = streams.open(rx);
        tx.send(b"one".to_vec()).await.unwrap();
        let first = next_text(&mut body).await;
        assert!(
            first.starts_with("id: 1-1\n") && first.contains("data: one"),
            "{first}"
        );
        drop(body);
        // Sent while nobody is connected: kept for the resume.
        tx.send(b"two".to_vec()).await.unwrap();
        tx.send(b"three".to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Resumed::Stream(mut body) = streams.resume("1-1") else {
            panic!("stream 1 is resumable");
        };
        assert!(next_text(&mut body).await.contains("data: two"));
        assert!(next_text(&mut body).await.contains("data: three"));
        // Live again after the replay.
        tx.send(b"four".to_vec()).await.unwrap();
        assert!(next_text(&mut body).await.contains("id: 1-4"));
        drop(tx);
        assert!(
            body.next().await.is_none(),
            "the stream ends with its source"
        );
        assert!(matches!(streams.resume("9-1"), Resumed::Unknown));
        assert!(matches!(streams.resume("garbage"), Resumed::Unknown));
    }
}
