//! herald-baseline: the speed-of-light SSE writer herald is measured against.
//!
//! It does the least a fan-out server can: accepts connections, answers any
//! GET with an event-stream head, and pushes one pre-encoded frame per record
//! to every connection through a tokio broadcast channel (one shared buffer,
//! reference-counted, written with one `write_all` per wake-up). No Kafka, no
//! per-connection ids, no selectors: what is left is the machine's cost of
//! waking tasks and writing to sockets on the same runtime herald uses.
//!
//! The records are generated here, at the rate set by `GET /rate?r=R`, each
//! `data: <send time, µs> 0 <seq> <padding>` like herald-bench's producer, so
//! the same clients measure latency and order. `GET /stats` reports what was
//! produced, how many frames slow connections missed (broadcast lag) and the
//! open connections.
//!
//! It owns its HTTP handling and the fan-out; it does not own the record
//! value or the pacing, which are herald-bench's own (`herald_bench::record`,
//! `herald_bench::pace`), so both sides of a comparison produce the same
//! records at the same pace. The decision to know: a connection that falls more than `--capacity`
//! frames behind misses frames (counted as `lagged`) instead of being
//! disconnected or slowing the others; a baseline run with `lagged` > 0 has
//! lost records by design and herald-bench reports them as failures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use herald_bench::pace::Pacer;
use herald_bench::record::{now_us, write_value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// What every record frame starts with.
const DATA_PREFIX: &[u8] = b"data: ";
/// The response head of a stream, and a first comment so clients see bytes.
const STREAM_HEAD: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n: ok\n\n";
/// A request head must arrive within this, and be no longer than MAX_HEAD.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 8192;
/// A connection that is behind writes what is queued in one go, up to this.
const BATCH_BYTES: usize = 64 * 1024;
/// A batch buffer grown past this is given back after the write.
const BATCH_KEEP: usize = 256 * 1024;
/// The listen backlog: clients connect by the thousand at once.
const BACKLOG: u32 = 4096;
/// Pause after a failed accept (out of files), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Parser)]
#[command(about = "Speed-of-light SSE fan-out writer (herald-bench's baseline)")]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Frames a connection may fall behind before it misses some.
    #[arg(long, default_value_t = 16_384)]
    capacity: usize,
}

struct State {
    tx: broadcast::Sender<Bytes>,
    /// Records per second × 1000.
    rate_milli: AtomicU64,
    size: AtomicUsize,
    produced: AtomicU64,
    lagged: AtomicU64,
    connections: AtomicU64,
}

/// One record as an event: `data: <value>` and the blank line; stream 0.
fn frame(seq: u64, size: usize) -> Bytes {
    let mut v = Vec::with_capacity(DATA_PREFIX.len() + size + 2);
    v.extend_from_slice(DATA_PREFIX);
    write_value(&mut v, now_us(), 0, seq, size);
    v.extend_from_slice(b"\n\n");
    Bytes::from(v)
}

async fn generate(state: Arc<State>) {
    let mut seq = 0u64;
    let mut pacer = Pacer::new();
    loop {
        if !pacer
            .due(state.rate_milli.load(Ordering::Acquire), seq)
            .await
        {
            continue;
        }
        let _ = state
            .tx
            .send(frame(seq, state.size.load(Ordering::Relaxed)));
        seq += 1;
        state.produced.store(seq, Ordering::Release);
    }
}

fn stats(state: &State) -> String {
    format!(
        "{{\"rate\":{},\"produced\":{},\"lagged\":{},\"connections\":{}}}",
        state.rate_milli.load(Ordering::Acquire) as f64 / 1000.0,
        state.produced.load(Ordering::Acquire),
        state.lagged.load(Ordering::Acquire),
        state.connections.load(Ordering::Acquire),
    )
}

async fn reply(mut stream: TcpStream, status: &str, body: &str) {
    let text = format!(
        "HTTP/1.0 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn handle(state: Arc<State>, mut stream: TcpStream) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(());
            }
            if head.len() > MAX_HEAD {
                return None;
            }
        }
    })
    .await;
    if !matches!(read, Ok(Some(()))) {
        return;
    }
    let line = String::from_utf8_lossy(&head);
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    if let Some(query) = target.strip_prefix("/rate?") {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match (&*k, v.parse::<f64>()) {
                ("r", Ok(r)) => state
                    .rate_milli
                    .store((r * 1000.0).round() as u64, Ordering::Release),
                ("size", Ok(s)) => state.size.store(s as usize, Ordering::Relaxed),
                _ => {}
            }
        }
        return reply(stream, "200 OK", &stats(&state)).await;
    }
    if target == "/stats" {
        return reply(stream, "200 OK", &stats(&state)).await;
    }
    // Everything else is a stream.
    let mut rx = state.tx.subscribe();
    if stream.write_all(STREAM_HEAD).await.is_err() {
        return;
    }
    state.connections.fetch_add(1, Ordering::AcqRel);
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let first = match rx.recv().await {
            Ok(b) => b,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                state.lagged.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let result = if rx.is_empty() {
            stream.write_all(&first).await
        } else {
            batch.clear();
            batch.extend_from_slice(&first);
            while batch.len() < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(b) => batch.extend_from_slice(&b),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        state.lagged.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
            stream.write_all(&batch).await
        };
        if result.is_err() {
            break;
        }
        if batch.capacity() > BATCH_KEEP {
            batch = Vec::new();
        }
    }
    state.connections.fetch_sub(1, Ordering::AcqRel);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (tx, _) = broadcast::channel(cli.capacity);
    let state = Arc::new(State {
        tx,
        rate_milli: AtomicU64::new(0),
        size: AtomicUsize::new(cli.size),
        produced: AtomicU64::new(0),
        lagged: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    });
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(cli.listen)?;
    let listener: TcpListener = socket.listen(BACKLOG)?;
    eprintln!("herald-baseline listening on {}", listener.local_addr()?);
    tokio::spawn(generate(state.clone()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of files: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(handle(state.clone(), stream));
    }
}
