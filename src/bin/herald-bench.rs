//! herald-bench: load generator for herald (and any SSE server).
//!
//! `idle`: opens N SSE connections spread over 127.0.0.x source addresses and
//! reports the server process's RSS growth per connection.
//! `latency`: M clients on one topic or key; a producer writes R records/s,
//! each carrying its send time; clients report produce→receive latency.
//!
//! Clients speak HTTP/1.0 so the body is the raw event stream (no chunked
//! framing to undo), and parse `data:` lines only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use parking_lot::Mutex;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser)]
#[command(about = "Load generator for herald")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold idle connections and report server RSS per connection.
    Idle {
        #[arg(long, default_value = "127.0.0.1:8080")]
        target: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Selector (topic or topic/key).
        #[arg(long, default_value = "demo")]
        selector: String,
        /// Server process id, for RSS.
        #[arg(long)]
        pid: u32,
        /// Source addresses 127.0.0.2 .. 127.0.0.(1+N).
        #[arg(long, default_value_t = 8)]
        sources: u8,
    },
    /// Produce→receive latency with M clients at R records/s.
    Latency {
        #[arg(long, default_value = "127.0.0.1:8080")]
        target: SocketAddr,
        /// Kafka bootstrap servers to produce to.
        #[arg(long)]
        brokers: String,
        #[arg(long, default_value = "demo")]
        topic: String,
        /// Subscribe to this key only (topic/key) instead of the whole topic.
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Value size in bytes (at least the timestamp).
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// N keyed clients disconnect, stay away S seconds while R records/s flow,
    /// then all reconnect at once with their last ids: time until every one is live.
    Resume {
        #[arg(long, default_value = "127.0.0.1:8080")]
        target: SocketAddr,
        #[arg(long)]
        brokers: String,
        #[arg(long, default_value = "demo")]
        topic: String,
        #[arg(long, default_value_t = 2000)]
        clients: usize,
        /// Distinct keys the clients spread over.
        #[arg(long, default_value_t = 100)]
        keys: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        behind: u64,
    },
    /// Event id (cursor) sizes for subscriptions of 1, 16 and 64 partitions.
    CursorSizes,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/PID/status")
}

/// Opens one stream and reads until the response headers and the first
/// bytes of the body arrived. Returns the stream and what was read.
async fn connect(
    target: SocketAddr,
    source: Ipv4Addr,
    path: &str,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let mut stream = socket.connect(target).await?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!(
                "closed before the stream started: {}",
                String::from_utf8_lossy(&got)
            );
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if !got.starts_with(b"HTTP/1.0 200") && !got.starts_with(b"HTTP/1.1 200") {
                bail!("not 200: {}", String::from_utf8_lossy(&got[..end]));
            }
            if got.len() > end + 4 {
                return Ok((stream, got.split_off(end + 4)));
            }
        }
    }
}

fn source(i: usize, sources: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % sources.max(1) as usize) as u8)
}

async fn idle(
    target: SocketAddr,
    n: usize,
    selector: String,
    pid: u32,
    sources: u8,
) -> anyhow::Result<()> {
    let path = format!("/v1/events?topic={selector}");
    // Warm up: the first connection assigns partitions and allocates shared state.
    let warm = connect(target, source(0, sources), &path).await?;
    let before = rss_kib(pid)?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut failures = 0usize;
    while held.len() + failures < n {
        while pending.len() < 256 && next < n {
            let (p, s) = (path.clone(), source(next + 1, sources));
            pending.spawn(async move { connect(target, s, &p).await });
            next += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok((s, _)))) => held.push(s),
            Some(Ok(Err(e))) => {
                failures += 1;
                if failures < 5 {
                    eprintln!("connect failed: {e}");
                }
            }
            Some(Err(e)) => bail!("task failed: {e}"),
            None => break,
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    // Let the server settle (allocator, lazily grown buffers), then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 / held.len().max(1) as f64;
    println!(
        "{{\"scenario\":\"idle\",\"connections\":{},\"failures\":{failures},\"open_seconds\":{open_secs:.2},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"kib_per_connection\":{per:.2}}}",
        held.len()
    );
    drop(warm);
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[allow(clippy::too_many_arguments)]
async fn latency(
    target: SocketAddr,
    brokers: String,
    topic: String,
    key: Option<String>,
    clients: usize,
    rate: u64,
    seconds: u64,
    size: usize,
) -> anyhow::Result<()> {
    let selector = match &key {
        Some(k) => format!("{topic}/{k}"),
        None => topic.clone(),
    };
    let path = format!("/v1/events?topic={selector}");
    let samples = Arc::new(Mutex::new(Vec::<u64>::with_capacity(
        (rate * seconds) as usize * clients,
    )));
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..clients {
        let (mut stream, first) = connect(target, source(i, 8), &path).await?;
        let samples = samples.clone();
        let received = received.clone();
        readers.spawn(async move {
            let mut pending = first;
            let mut buf = vec![0u8; 64 * 1024];
            let mut local = Vec::new();
            loop {
                while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    let line = &pending[..nl];
                    if let Some(v) = line.strip_prefix(b"data: ") {
                        let ts = v
                            .iter()
                            .take_while(|b| b.is_ascii_digit())
                            .fold(0u64, |a, &b| a * 10 + u64::from(b - b'0'));
                        if ts > 0 {
                            local.push(now_us().saturating_sub(ts));
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    pending.drain(..=nl);
                }
                if !local.is_empty() {
                    samples.lock().append(&mut local);
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
            samples.lock().append(&mut local);
        });
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
        .create()?;
    let total = rate * seconds;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut inflight = tokio::task::JoinSet::new();
    while sent < total {
        let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let mut value = now_us().to_string().into_bytes();
        value.resize(size.max(value.len()), b' ');
        let p = producer.clone();
        let (t, k) = (
            topic.clone(),
            key.clone().unwrap_or_else(|| format!("k{sent}")),
        );
        inflight.spawn(async move {
            let r = FutureRecord::to(&t).key(&k).payload(&value);
            p.send(r, Duration::from_secs(10)).await.is_ok()
        });
        sent += 1;
        while inflight.len() > 10_000 {
            inflight.join_next().await;
        }
    }
    while inflight.join_next().await.is_some() {}
    let expected = total * clients as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    readers.abort_all();
    while readers.join_next().await.is_some() {}
    let mut all = std::mem::take(&mut *samples.lock());
    all.sort_unstable();
    let got = received.load(Ordering::Relaxed);
    println!(
        "{{\"scenario\":\"latency\",\"clients\":{clients},\"rate\":{rate},\"seconds\":{seconds},\"expected\":{expected},\"received\":{got},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        percentile(&all, 0.5) as f64 / 1000.0,
        percentile(&all, 0.99) as f64 / 1000.0,
        all.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    Ok(())
}

/// Reads SSE lines from `stream` until `done` says so; returns the last id seen.
async fn read_until(
    stream: &mut TcpStream,
    mut pending: Vec<u8>,
    mut on_data: impl FnMut(&[u8]) -> bool,
) -> anyhow::Result<Option<String>> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_id = None;
    loop {
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            if let Some(id) = line.strip_prefix(b"id: ") {
                last_id = Some(String::from_utf8_lossy(id).into_owned());
            } else if let Some(v) = line.strip_prefix(b"data: ") {
                if on_data(v) {
                    return Ok(last_id);
                }
            }
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("stream ended");
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

fn leading_number(v: &[u8]) -> u64 {
    v.iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |a, &b| a * 10 + u64::from(b - b'0'))
}

#[allow(clippy::too_many_arguments)]
async fn resume(
    target: SocketAddr,
    brokers: String,
    topic: String,
    clients: usize,
    keys: usize,
    rate: u64,
    behind: u64,
) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producing = {
        let (stop, produced, topic) = (stop.clone(), produced.clone(), topic.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let key = format!("key{}", sent as usize % keys);
                let value = format!("{} {key}", now_us());
                let _ = producer.send_result(FutureRecord::to(&topic).key(&key).payload(&value));
                sent += 1;
                produced.store(sent, Ordering::Relaxed);
            }
            producer
        })
    };
    // Everyone connects and takes a cursor from one record of its key.
    let mut cursors = Vec::with_capacity(clients);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..clients {
        let path = format!("/v1/events?topic={topic}/key{}", i % keys);
        set.spawn(async move {
            let (mut s, first) = connect(target, source(i, 8), &path).await?;
            let id =
                tokio::time::timeout(Duration::from_secs(30), read_until(&mut s, first, |_| true))
                    .await??;
            anyhow::Ok((i, path, id))
        });
        if set.len() >= 256 {
            if let Some(r) = set.join_next().await {
                cursors.push(r??);
            }
        }
    }
    while let Some(r) = set.join_next().await {
        cursors.push(r??);
    }
    // All gone (their sockets were dropped with the tasks); stay away.
    tokio::time::sleep(Duration::from_secs(behind)).await;
    let back_us = now_us();
    let back = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, path, id) in cursors {
        let path = match id {
            Some(id) => format!("{path}&lastEventId={id}"),
            None => path,
        };
        set.spawn(async move {
            let (mut s, first) = connect(target, source(i, 8), &path).await?;
            let mut replayed = 0u64;
            tokio::time::timeout(
                Duration::from_secs(60),
                read_until(&mut s, first, |v| {
                    replayed += 1;
                    leading_number(v) >= back_us
                }),
            )
            .await??;
            anyhow::Ok((back.elapsed(), replayed))
        });
    }
    let mut times = Vec::with_capacity(clients);
    let mut replayed_total = 0;
    let mut failures = 0;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok((t, n)) => {
                times.push(t.as_micros() as u64);
                replayed_total += n;
            }
            Err(e) => {
                failures += 1;
                if failures < 5 {
                    eprintln!("client failed: {e}");
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = producing.await;
    times.sort_unstable();
    println!(
        "{{\"scenario\":\"resume\",\"clients\":{clients},\"behind_s\":{behind},\"rate\":{rate},\"failures\":{failures},\"events_replayed\":{replayed_total},\"all_live_ms\":{:.1},\"p50_live_ms\":{:.1},\"produced\":{}}}",
        times.last().copied().unwrap_or(0) as f64 / 1000.0,
        percentile(&times, 0.5) as f64 / 1000.0,
        produced.load(Ordering::Relaxed)
    );
    Ok(())
}

fn cursor_sizes() {
    // Offsets of a busy topic: around a billion, partitions within a million of each other.
    for n in [1usize, 16, 64] {
        let positions: Vec<i64> = (0..n as i64)
            .map(|i| 1_000_000_000 + (i * 7_919_111) % 1_000_000)
            .collect();
        let mut out = String::new();
        herald::cursor::Cursor::encode_into(0xfeed_f00d, positions.iter().copied(), &mut out);
        let worst: Vec<i64> = (0..n as i64)
            .map(|i| if i % 2 == 0 { (1 << 32) - 1 } else { 0 })
            .collect();
        let mut w = String::new();
        herald::cursor::Cursor::encode_into(0xfeed_f00d, worst.iter().copied(), &mut w);
        println!(
            "{{\"partitions\":{n},\"id_bytes_busy_topic\":{},\"id_bytes_worst_below_2^32\":{}}}",
            out.len(),
            w.len()
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Idle {
            target,
            connections,
            selector,
            pid,
            sources,
        } => idle(target, connections, selector, pid, sources).await,
        Cmd::Latency {
            target,
            brokers,
            topic,
            key,
            clients,
            rate,
            seconds,
            size,
        } => latency(target, brokers, topic, key, clients, rate, seconds, size).await,
        Cmd::Resume {
            target,
            brokers,
            topic,
            clients,
            keys,
            rate,
            behind,
        } => resume(target, brokers, topic, clients, keys, rate, behind).await,
        Cmd::CursorSizes => {
            cursor_sizes();
            Ok(())
        }
    }
}
