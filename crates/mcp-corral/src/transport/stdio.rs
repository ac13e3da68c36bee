//! The stdio front: one session over Corral's own stdin/stdout, so an MCP client can launch
//! `corral serve --stdio` like any stdio server.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::gateway::Gateway;

/// Serves one client on stdin/stdout until stdin closes.
pub async fn serve(gw: Arc<Gateway>) -> std::io::Result<()> {
    serve_io(gw, tokio::io::stdin(), tokio::io::stdout()).await
}

pub async fn serve_io<R, W>(gw: Arc<Gateway>, input: R, output: W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4096);
    let session = gw.open_session(Some(tx.clone()));
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, output);
        while let Some(mut msg) = rx.recv().await {
            msg.push(b'\n');
            out.write_all(&msg).await?;
            // Write everything already queued before paying for a flush.
            while let Ok(mut more) = rx.try_recv() {
                more.push(b'\n');
                out.write_all(&more).await?;
            }
            out.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::with_capacity(4096);
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
            let (gw, session, tx, msg) = (gw.clone(), session.clone(), tx.clone(), msg.to_vec());
            tokio::spawn(async move {
                if let Some(resp) = gw.handle(&session, &msg, None).await {
                    let _ = tx.send(resp).await;
                }
            });
        } else if let Some(resp) = gw.handle(&session, msg, None).await {
            // Notifications (cancellation) are handled in order, before later requests.
            let _ = tx.send(resp).await;
        }
    }
    gw.close_session(session.id);
    session.set_out(None);
    drop(tx);
    // Let answers that are still being computed finish writing (bounded by call timeouts).
    let _ = writer.await;
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
