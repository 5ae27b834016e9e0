//! The origin behind Pushpin: a GRIP server that holds every stream.
//!
//! Pushpin forwards each subscriber's `GET /sub/CHANNEL` here and keeps the
//! client when the answer says `Grip-Hold: stream`; from then on what is
//! published to CHANNEL goes to the client, and this origin is out of the
//! path. It owns only that answer (and `/status`, which Pushpin passes
//! through, so a 200 there means the whole chain is up). The decision to
//! know: the origin answers from this process's runtime, so the little work
//! it does (once per connection, never per record) counts as the load
//! generator's CPU, not Pushpin's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request head longer than this closes the connection.
const MAX_HEAD: usize = 16 * 1024;

pub struct Origin {
    pub addr: SocketAddr,
    /// Streams held so far (Pushpin's subscribers).
    pub holds: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answer to one request head.
fn answer(head: &[u8], holds: &AtomicU64) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let path = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    let path = String::from_utf8_lossy(path);
    match path.strip_prefix("/sub/") {
        Some(channel) if !channel.is_empty() => {
            holds.fetch_add(1, Ordering::Relaxed);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nGrip-Hold: stream\r\n\
                 Grip-Channel: {channel}\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes()
        }
        _ => {
            let body = format!("{{\"holds\":{}}}", holds.load(Ordering::Relaxed));
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
    }
}

/// One keep-alive connection from Pushpin: GET heads in, answers out.
async fn serve_conn(mut stream: TcpStream, holds: Arc<AtomicU64>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let reply = answer(&buf[..end], &holds);
            buf.drain(..end + 4);
            if stream.write_all(&reply).await.is_err() {
                return;
            }
        }
        if buf.len() > MAX_HEAD {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Starts the origin on a free loopback port.
pub async fn serve() -> anyhow::Result<Origin> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let holds = Arc::new(AtomicU64::new(0));
    let task = {
        let holds = holds.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_conn(stream, holds.clone()));
            }
        })
    };
    Ok(Origin { addr, holds, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_held_on_their_channel_and_status_is_plain() {
        let holds = AtomicU64::new(0);
        let a = String::from_utf8(answer(b"GET /sub/hot HTTP/1.1\r\nHost: x", &holds)).unwrap();
        assert!(a.contains("Grip-Hold: stream\r\n") && a.contains("Grip-Channel: hot\r\n"));
        let s = String::from_utf8(answer(b"GET /status HTTP/1.1", &holds)).unwrap();
        assert!(
            !s.contains("Grip-Hold") && s.ends_with("{\"holds\":1}"),
            "{s}"
        );
    }
}
