//! The stdio front: one session over Corral's own stdin/stdout, so an MCP client can launch
//! `corral serve --stdio` like any stdio server.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::gateway::Gateway;
use crate::lines::LineWriter;

/// Serves one client on stdin/stdout until stdin closes.
///
/// tokio's `stdin()`/`stdout()` read and write on a blocking thread pool, a thread hop per
/// message; pipes and sockets are registered with the reactor instead. Files and terminals (no
/// readiness notifications) fall back to tokio's blocking stdio.
pub async fn serve(gw: Arc<Gateway>) -> std::io::Result<()> {
    serve_io(gw, async_fd_reader(0), async_fd_writer(1)).await
}

type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

fn dup_fd(fd: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::BorrowedFd;
    // SAFETY: fds 0 and 1 stay open for the life of the process; we only borrow them to dup.
    unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .ok()
}

fn is_socket(fd: &std::os::fd::OwnedFd) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fd.try_clone().is_ok_and(|dup| {
        std::fs::File::from(dup)
            .metadata()
            .is_ok_and(|m| m.file_type().is_socket())
    })
}

/// What fd 0 or 1 is: a socket or a pipe can be registered with the reactor.
enum Fd {
    Socket(tokio::net::UnixStream),
    Pipe(std::os::fd::OwnedFd),
    Other,
}

fn classify(fd: i32) -> Fd {
    let Some(owned) = dup_fd(fd) else {
        return Fd::Other;
    };
    if !is_socket(&owned) {
        return Fd::Pipe(owned);
    }
    let std = std::os::unix::net::UnixStream::from(owned);
    match std
        .set_nonblocking(true)
        .map(|_| tokio::net::UnixStream::from_std(std))
    {
        Ok(Ok(s)) => Fd::Socket(s),
        _ => Fd::Other,
    }
}

fn async_fd_reader(fd: i32) -> Reader {
    use tokio::net::unix::pipe;
    match classify(fd) {
        Fd::Socket(s) => Box::new(s),
        Fd::Pipe(p) => pipe::Receiver::from_owned_fd(p)
            .map_or_else(|_| Box::new(tokio::io::stdin()) as Reader, |r| Box::new(r)),
        Fd::Other => Box::new(tokio::io::stdin()),
    }
}

fn async_fd_writer(fd: i32) -> Writer {
    use tokio::net::unix::pipe;
    match classify(fd) {
        Fd::Socket(s) => Box::new(s),
        Fd::Pipe(p) => pipe::Sender::from_owned_fd(p)
            .map_or_else(|_| Box::new(tokio::io::stdout()) as Writer, |w| Box::new(w)),
        Fd::Other => Box::new(tokio::io::stdout()),
    }
}

pub async fn serve_io<R, W>(gw: Arc<Gateway>, input: R, output: W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let out = Arc::new(LineWriter::new(output, |_| {}));
    // Notifications (progress, list_changed, log messages) arrive on a queue; replies are
    // queued on the writer by the task that produced them.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4096);
    let session = gw.open_session(Some(tx));
    let notifier = {
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if out.write(msg).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::with_capacity(4096);
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        let msg = trim(&line);
        if msg.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if is_request(msg) {
            let (gw, session, out, msg) = (gw.clone(), session.clone(), out.clone(), msg.to_vec());
            // Boxed: the task then holds a pointer, not the whole call state machine, which
            // tokio would otherwise copy around several times per request.
            inflight.spawn(Box::pin(async move {
                if let Some(resp) = gw.handle(&session, &msg, None).await {
                    let _ = out.write(resp).await;
                }
            }));
            // Reap finished tasks as we go so the set stays small.
            while inflight.try_join_next().is_some() {}
        } else if let Some(resp) = gw.handle(&session, msg, None).await {
            // Notifications (cancellation) are handled in order, before later requests.
            let _ = out.write(resp).await;
        }
    }
    gw.close_session(session.id);
    session.set_out(None);
    // Let answers that are still being computed finish writing (calls closed above end at once).
    while inflight.join_next().await.is_some() {}
    notifier.abort();
    out.flush().await;
    Ok(())
}

/// Cheap check for `"id"` so notifications stay in order and requests run concurrently; a
/// wrong guess only changes scheduling, never the answer.
fn is_request(msg: &[u8]) -> bool {
    msg.windows(4).any(|w| w == b"\"id\"") && msg.windows(8).any(|w| w == b"\"method\"")
}

fn trim(line: &[u8]) -> &[u8] {
    let mut s = line;
    while let [rest @ .., b'\n' | b'\r'] = s {
        s = rest;
    }
    s.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(s)
}
