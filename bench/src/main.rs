//! herald-bench: herald's load generator and the scenarios of DESIGN §6.
//!
//! One command runs one scenario end to end. It starts the server under test
//! (`--server herald`: a node with its embedded Kafka; `nchan`: nginx with
//! bench/nchan.conf; `baseline`: the speed-of-light writer herald-baseline;
//! or `--target ADDR` for a herald already running), spreads the SSE clients
//! over worker processes (itself, as the hidden `worker` command, at most
//! 18,000 sockets each: a process may open 20,000 files) and over 127.x.y.z
//! source addresses (about 2,000 each), drives the producer, prints a table
//! and, with `--json FILE`, writes the whole result.
//!
//! Every record value is `<send time, µs> <stream> <seq> <padding>`. Clients
//! take produce→receive latency from the first field and check each stream's
//! order from the other two: a hole is a gap, a repeat a duplicate, an older
//! one a reorder. At the end the producer's last sequence number per stream
//! is compared with what every client last saw, and the deliveries with what
//! was produced, so a lost record shows even at the tail. Clients speak
//! HTTP/1.0 (the body is the raw event stream) and read `data:`, `id:` and
//! `event:` lines.
//!
//! CPU comes from /proc/PID/stat: the server's (with its child processes, for
//! nginx's workers) and the load generator's (the workers and this process,
//! which produces). Memory is PSS from /proc/PID/smaps_rollup.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rdkafka::producer::ThreadedProducer;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Sockets one worker process holds at most (20,000 files per process).
const MAX_PER_WORKER: usize = 18_000;

#[derive(Parser)]
#[command(about = "Load generator for herald (and nchan, and a speed-of-light baseline)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Idle SSE connections on one or several nodes: memory per connection.
    Idle(IdleArgs),
    /// Many clients on one key, rising record rates until p99 passes the limit.
    Broadcast(BroadcastArgs),
    /// One client per key over a topic's partitions; checks which partitions
    /// the node assigned (herald only).
    Keyed(KeyedArgs),
    /// Light load: one client per key, a steady rate (defaults: 1,000 clients,
    /// 1,000 records/s).
    Light(KeyedArgs),
    /// M clients on one topic or key at R records/s (one step).
    Latency(LatencyArgs),
    /// Keyed clients disconnect, stay away while records flow, reconnect at
    /// once with their last ids: time until every one is live (herald only).
    Resume(ResumeArgs),
    /// A few hundred connections for a few seconds: broadcast, keyed and
    /// resume on one herald node; exits non-zero on any lost, duplicated or
    /// reordered record or failed connection.
    Smoke(SmokeArgs),
    /// Event id (cursor) sizes for subscriptions of 1, 16 and 64 partitions.
    CursorSizes,
    /// Internal: one client process, driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// herald serve with its embedded Kafka (started here).
    Herald,
    /// nginx + nchan from bench/nchan.conf (started here).
    Nchan,
    /// herald-baseline, the speed-of-light writer (started here).
    Baseline,
    /// A herald node already running at --target.
    External,
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// Server under test (with --target: external).
    #[arg(long, value_enum, default_value = "herald")]
    server: Kind,
    /// Address of a running herald node (implies --server external).
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Process id(s) of the external server, for CPU and memory.
    #[arg(long)]
    pid: Vec<u32>,
    /// Kafka bootstrap servers of the external node (default: its /v1/stats).
    #[arg(long)]
    brokers: Option<String>,
    /// The herald binary (default: next to this one).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// The herald-baseline binary (default: next to this one).
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// nginx configuration template (@LISTEN@ is replaced); default bench/nchan.conf.
    #[arg(long)]
    nchan_conf: Option<PathBuf>,
    /// Topic the records go to (a started node creates it; `make run`'s is demo).
    #[arg(long, default_value = "demo")]
    topic: String,
    /// Partitions of the topic (created by the embedded Kafka of a started node).
    #[arg(long, default_value_t = 64)]
    partitions: i32,
    /// Extra argument for `herald serve` (repeatable), e.g. --herald-arg=--queue-bytes=4194304.
    #[arg(long = "herald-arg", allow_hyphen_values = true)]
    herald_args: Vec<String>,
    /// Directory for server logs and nginx's files (default: a temporary one, removed).
    #[arg(long)]
    scratch: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Write the result as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Client processes (default: enough for 18,000 sockets each, at least 2).
    #[arg(long)]
    workers: Option<usize>,
    /// Client sockets per source address.
    #[arg(long, default_value_t = 2000)]
    per_source: usize,
    /// Free-form label copied into the JSON (e.g. the run number).
    #[arg(long)]
    label: Option<String>,
    /// Before starting, wait up to this many seconds for the machine to be
    /// quiet (other work below --quiet-below % of one core).
    #[arg(long, default_value_t = 0.0)]
    quiet_wait: f64,
    #[arg(long, default_value_t = 30.0)]
    quiet_below: f64,
}

/// Waits for a quiet machine if asked; what it saw goes into the result.
async fn quiet(run: &RunArgs) -> Value {
    if run.quiet_wait <= 0.0 {
        return Value::Null;
    }
    let (busy, waited) = wait_quiet(run.quiet_wait, run.quiet_below).await;
    if busy >= run.quiet_below {
        eprintln!("herald-bench: the machine is busy ({busy:.0} % of a core) after {waited:.0} s; measuring anyway");
    }
    json!({"busy_pct": busy, "waited_s": waited})
}

#[derive(Args, Clone)]
struct IdleArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Connections in total (over all nodes).
    #[arg(long, default_value_t = 19_000)]
    connections: usize,
    /// Node processes (herald only); connections are split evenly.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Distinct keys the connections subscribe to (0: the whole topic).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Connections opened before the memory baseline is taken, per node.
    #[arg(long, default_value_t = 20)]
    warm: usize,
    /// Seconds to let the server settle before measuring.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Seconds over which idle CPU is measured.
    #[arg(long, default_value_t = 2.0)]
    idle_seconds: f64,
    /// Legacy: source addresses (ignored; --per-source decides).
    #[arg(long, hide = true)]
    sources: Option<u8>,
    /// Legacy: the selector (ignored; --keys decides).
    #[arg(long, hide = true)]
    selector: Option<String>,
}

#[derive(Args, Clone)]
struct FlowArgs {
    /// Record value size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds at each rate before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// p99 limit (ms) for a rate to count as sustained.
    #[arg(long, default_value_t = 50.0)]
    p99_limit_ms: f64,
    /// Seconds to wait after connecting before producing.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// producer linger.ms (herald's Kafka producer).
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
}

#[derive(Args, Clone)]
struct BroadcastArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    flow: FlowArgs,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Record rates to try, records/s (default: from --deliveries).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Offered deliveries/s to try (rate = deliveries / clients).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50000,100000,200000,400000,700000,1000000,1500000,2000000"
    )]
    deliveries: Vec<f64>,
    /// Seconds measured at each rate.
    #[arg(long, default_value_t = 2.5)]
    step_seconds: f64,
    /// Stop rising once p99 passes this (ms) or a rate is not sustained.
    #[arg(long, default_value_t = 1000.0)]
    stop_p99_ms: f64,
    /// Keep going after a rate fails.
    #[arg(long)]
    no_stop: bool,
}

#[derive(Args, Clone)]
struct KeyedArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    flow: FlowArgs,
    /// Clients, one key each (keyed: 15,000; light: 1,000).
    #[arg(long)]
    clients: Option<usize>,
    /// Records/s over all keys (keyed: 5,000; light: 1,000).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds measured (keyed: 8; light: 8).
    #[arg(long)]
    seconds: Option<f64>,
    /// Keys are chosen to fall in this many of the topic's partitions
    /// (keyed: half of them; light: all), to show that only those are fetched.
    #[arg(long)]
    needed_partitions: Option<i32>,
}

#[derive(Args, Clone)]
struct LatencyArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    flow: FlowArgs,
    /// Subscribe to this key only (topic/key) instead of the whole topic.
    #[arg(long)]
    key: Option<String>,
    /// Without --key: keys the producer cycles through.
    #[arg(long, default_value_t = 16)]
    keys: usize,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

#[derive(Args, Clone)]
struct ResumeArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Distinct keys the clients spread over.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Records/s over all keys, while the clients are away and after.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds the clients stay away.
    #[arg(long, default_value_t = 5.0)]
    behind: f64,
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds after which a client that is not live counts as failed.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

#[derive(Args, Clone)]
struct SmokeArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Clients of the broadcast part (the keyed and resume parts use half).
    #[arg(long, default_value_t = 200)]
    clients: usize,
}

// ---------------------------------------------------------------------------
// System calls std does not offer (the crate links libc anyway).

mod sys {
    use std::os::raw::{c_int, c_long, c_ulong, c_void};

    extern "C" {
        fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: u32) -> c_int;
        fn sysconf(name: c_int) -> c_long;
        fn kill(pid: c_int, sig: c_int) -> c_int;
        fn prctl(option: c_int, ...) -> c_int;
    }

    pub const SIGTERM: i32 = 15;
    pub const SIGKILL: i32 = 9;

    /// IP_BIND_ADDRESS_NO_PORT: bind() to a source address picks no port;
    /// connect() picks one unique for the 4-tuple, so ports are shared between
    /// destinations and loopback TIME_WAIT ports are reused.
    pub fn bind_address_no_port(fd: c_int) {
        let one: c_int = 1;
        // SAFETY: fd is an open socket; the option value is a live c_int.
        unsafe {
            setsockopt(fd, 0, 24, (&one as *const c_int).cast(), 4);
        }
    }

    pub fn clock_ticks() -> f64 {
        // SAFETY: sysconf has no preconditions; 2 is _SC_CLK_TCK.
        let v = unsafe { sysconf(2) };
        if v > 0 {
            v as f64
        } else {
            100.0
        }
    }

    pub fn signal(pid: u32, sig: i32) -> bool {
        // SAFETY: kill has no memory preconditions.
        unsafe { kill(pid as c_int, sig) == 0 }
    }

    /// In a child before exec: receive `sig` when the parent thread dies.
    pub fn die_with_parent(sig: i32) -> std::io::Result<()> {
        // SAFETY: PR_SET_PDEATHSIG (1) takes one unsigned long argument.
        unsafe {
            prctl(1, sig as c_ulong);
        }
        Ok(())
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Latency histogram: log-linear, 32 sub-buckets per power of two (≤ 3 %).

const HIST_BUCKETS: usize = 1920;

#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    total: u64,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            counts: vec![0; HIST_BUCKETS],
            total: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 64 {
            v as usize
        } else {
            let e = 63 - v.leading_zeros() as usize;
            64 + (e - 6) * 32 + ((v >> (e - 5)) & 31) as usize
        }
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        if i < 64 {
            return i as u64;
        }
        let e = (i - 64) / 32 + 6;
        let sub = ((i - 64) % 32) as u64;
        let width = 1u64 << (e - 5);
        ((32 + sub) << (e - 5)).saturating_add(width / 2)
    }

    fn add(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
    }

    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        self.max()
    }

    fn max(&self) -> u64 {
        self.counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(0, Self::value)
    }

    fn sparse(&self) -> Vec<(u32, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (i as u32, c))
            .collect()
    }

    fn add_sparse(&mut self, sparse: &[(u32, u64)]) {
        for &(i, c) in sparse {
            if let Some(slot) = self.counts.get_mut(i as usize) {
                *slot += c;
                self.total += c;
            }
        }
    }

    fn ms(&self, q: f64) -> f64 {
        self.quantile(q) as f64 / 1000.0
    }
}

// ---------------------------------------------------------------------------
// /proc: CPU ticks and memory of process sets.

fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    proc_stat_fields(pid)
        .map(|f| {
            let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            get(11) + get(12)
        })
        .unwrap_or(0)
}

/// CPU time used by everything on the machine, in clock ticks (all cores).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    [0usize, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum()
}

/// Waits until the machine is quiet (busy below `below` % of one core over
/// half a second), at most `max` seconds. Returns (busy %, seconds waited).
async fn wait_quiet(max: f64, below: f64) -> (f64, f64) {
    let tck = sys::clock_ticks();
    let start = Instant::now();
    loop {
        let (t, a) = (Instant::now(), machine_busy_ticks());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = (machine_busy_ticks() - a) as f64 / tck / t.elapsed().as_secs_f64() * 100.0;
        let waited = start.elapsed().as_secs_f64();
        if busy < below || waited >= max {
            return ((busy * 10.0).round() / 10.0, (waited * 10.0).round() / 10.0);
        }
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(f) = proc_stat_fields(child) {
                if f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
                    out.push(child);
                }
            }
        }
    }
    out
}

fn status_kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn pss_kib(pid: u32) -> u64 {
    match status_kib(pid, "smaps_rollup", "Pss:") {
        0 => rss_kib(pid),
        v => v,
    }
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "status", "VmRSS:")
}

/// Processes measured together: the roots and their children (nginx's workers).
#[derive(Clone, Default)]
struct ProcSet {
    roots: Vec<u32>,
}

impl ProcSet {
    fn pids(&self) -> Vec<u32> {
        let mut all = self.roots.clone();
        for &r in &self.roots {
            all.extend(children_of(r));
        }
        all
    }
    fn ticks(&self) -> u64 {
        self.pids().into_iter().map(cpu_ticks).sum()
    }
    fn pss(&self) -> u64 {
        self.pids().into_iter().map(pss_kib).sum()
    }
    /// (PSS, anonymous PSS, shared-memory PSS, RSS), KiB.
    fn mem(&self) -> [u64; 4] {
        let mut out = [0; 4];
        for pid in self.pids() {
            out[0] += pss_kib(pid);
            out[1] += status_kib(pid, "smaps_rollup", "Pss_Anon:");
            out[2] += status_kib(pid, "smaps_rollup", "Pss_Shmem:");
            out[3] += rss_kib(pid);
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Client connections (used by the workers and for warm-up).

fn source_addr(j: usize) -> Ipv4Addr {
    let j = j % (250 * 250);
    Ipv4Addr::new(127, 1 + (j / 250) as u8, 0, 2 + (j % 250) as u8)
}

/// Hands out distinct source addresses; starts somewhere new each run.
struct Sources {
    next: usize,
}

impl Sources {
    fn new() -> Sources {
        Sources {
            next: (now_us() / 1_000_000 * 7919) as usize % 62_500,
        }
    }
    fn take(&mut self, connections: usize, per_source: usize) -> Vec<Ipv4Addr> {
        let n = connections.div_ceil(per_source.max(1)).max(1);
        let out = (0..n).map(|k| source_addr(self.next + k)).collect();
        self.next += n;
        out
    }
}

/// Opens one stream: connects from `source`, sends the request and reads the
/// response head. Returns the stream and any body bytes read with the head.
async fn open_stream(
    target: SocketAddr,
    source: Ipv4Addr,
    path: &str,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    use std::os::fd::AsRawFd;
    let socket = TcpSocket::new_v4()?;
    sys::bind_address_no_port(socket.as_raw_fd());
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let mut stream = tokio::time::timeout(Duration::from_secs(15), socket.connect(target))
        .await
        .context("connect timed out")??;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: bench\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut got = Vec::with_capacity(512);
    let mut buf = [0u8; 2048];
    let head = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!(
                    "closed before the response head: {:?}",
                    String::from_utf8_lossy(&got)
                );
            }
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(end);
            }
            if got.len() > 16 * 1024 {
                bail!("response head too long");
            }
        }
    })
    .await
    .context("response head timed out")??;
    if got.get(9..12) != Some(b"200") {
        let line = got.split(|&b| b == b'\r').next().unwrap_or_default();
        bail!("not 200: {}", String::from_utf8_lossy(line));
    }
    let body = got.split_off(head + 4);
    Ok((stream, body))
}

/// A small HTTP/1.0 GET for control endpoints: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .context("HTTP request timed out")?
}

async fn http_json(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let (status, body) = http_get(addr, path).await?;
    if status != 200 {
        bail!("GET {path}: {status}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// `value` of a record: send time, stream, sequence number, padding.
fn make_value(ts: u64, stream: usize, seq: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{ts} {stream} {seq} ").into_bytes();
    if v.len() < size {
        v.resize(size, b'x');
    }
    v
}

fn parse_value(v: &[u8]) -> Option<(u64, u32, u64)> {
    let mut it = v.split(|&b| b == b' ');
    let mut num = |max_len: usize| -> Option<u64> {
        let f = it.next()?;
        if f.is_empty() || f.len() > max_len || !f.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(f.iter().fold(0u64, |a, &b| a * 10 + u64::from(b - b'0')))
    };
    let ts = num(19)?;
    let stream = num(9)?;
    let seq = num(19)?;
    Some((ts, stream as u32, seq))
}

// ---------------------------------------------------------------------------
// Worker process: holds connections, parses events, answers commands.

#[derive(Serialize, Deserialize)]
struct WorkerSpec {
    target: SocketAddr,
    /// One request path per connection.
    paths: Vec<String>,
    sources: Vec<Ipv4Addr>,
    /// Remember each connection's last `id:` (for resume).
    track_ids: bool,
    /// Connections being opened at once.
    concurrency: usize,
}

/// What a worker reports. Counters are cumulative; `hist` and `live_hist`
/// hold what arrived since the previous report.
#[derive(Default, Serialize, Deserialize, Clone, Debug)]
#[serde(default)]
struct Report {
    connected: u64,
    failed: u64,
    open: u64,
    closed: u64,
    connect_ms: u64,
    deliveries: u64,
    gaps: u64,
    dups: u64,
    reorders: u64,
    bad: u64,
    signals: u64,
    gap_signals: u64,
    seen: u64,
    without_id: u64,
    cpu_ticks: u64,
    rss_kib: u64,
    reconnected: u64,
    live: u64,
    replayed: u64,
    tail_missing: u64,
    silent: u64,
    hist: Vec<(u32, u64)>,
    live_hist: Vec<(u32, u64)>,
    errors: Vec<String>,
}

impl Report {
    fn absorb(&mut self, o: &Report) {
        self.connected += o.connected;
        self.failed += o.failed;
        self.open += o.open;
        self.closed += o.closed;
        self.connect_ms = self.connect_ms.max(o.connect_ms);
        self.deliveries += o.deliveries;
        self.gaps += o.gaps;
        self.dups += o.dups;
        self.reorders += o.reorders;
        self.bad += o.bad;
        self.signals += o.signals;
        self.gap_signals += o.gap_signals;
        self.seen += o.seen;
        self.without_id += o.without_id;
        self.cpu_ticks += o.cpu_ticks;
        self.rss_kib += o.rss_kib;
        self.reconnected += o.reconnected;
        self.live += o.live;
        self.replayed += o.replayed;
        self.tail_missing += o.tail_missing;
        self.silent += o.silent;
        for e in &o.errors {
            if self.errors.len() < 8 {
                self.errors.push(e.clone());
            }
        }
    }

    /// Records received once, in order (what was not a duplicate or reorder).
    fn unique(&self) -> u64 {
        self.deliveries.saturating_sub(self.dups + self.reorders)
    }
}

#[derive(Default)]
struct Conn {
    path: String,
    /// (stream, last sequence number seen)
    streams: Vec<(u32, u64)>,
    last_id: Option<String>,
    partial: Vec<u8>,
    in_signal: bool,
    /// After a resume: records sent at or after this time (µs) are live.
    resume_from: u64,
    live: bool,
}

#[derive(Default)]
struct Counters {
    open: u64,
    closed: u64,
    deliveries: u64,
    gaps: u64,
    dups: u64,
    reorders: u64,
    bad: u64,
    signals: u64,
    gap_signals: u64,
    live: u64,
    replayed: u64,
}

struct WorkerState {
    spec: WorkerSpec,
    conns: RefCell<Vec<Conn>>,
    c: RefCell<Counters>,
    hist: RefCell<Hist>,
    live_hist: RefCell<Hist>,
    tasks: RefCell<Vec<Option<tokio::task::JoinHandle<()>>>>,
    buf: RefCell<Vec<u8>>,
}

struct OpenGuard(Rc<WorkerState>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.c.borrow_mut().open -= 1;
    }
}

impl WorkerState {
    /// Feeds bytes read from connection `idx`, received at `now` (µs).
    fn feed(&self, idx: usize, data: &[u8], now: u64) {
        let mut conns = self.conns.borrow_mut();
        let conn = &mut conns[idx];
        let mut c = self.c.borrow_mut();
        let mut hist = self.hist.borrow_mut();
        let mut live_hist = self.live_hist.borrow_mut();
        let track = self.spec.track_ids;
        let mut rest = data;
        if !conn.partial.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(p) => {
                    let mut line = std::mem::take(&mut conn.partial);
                    line.extend_from_slice(&rest[..p]);
                    line_event(conn, &mut c, &mut hist, &mut live_hist, &line, now, track);
                    line.clear();
                    conn.partial = line;
                    rest = &rest[p + 1..];
                }
                None => {
                    conn.partial.extend_from_slice(rest);
                    return;
                }
            }
        }
        while let Some(p) = rest.iter().position(|&b| b == b'\n') {
            line_event(
                conn,
                &mut c,
                &mut hist,
                &mut live_hist,
                &rest[..p],
                now,
                track,
            );
            rest = &rest[p + 1..];
        }
        conn.partial.extend_from_slice(rest);
    }

    fn report(&self) -> Report {
        let c = self.c.borrow();
        let conns = self.conns.borrow();
        let mut hist = self.hist.borrow_mut();
        let mut live_hist = self.live_hist.borrow_mut();
        let me = std::process::id();
        let r = Report {
            open: c.open,
            closed: c.closed,
            deliveries: c.deliveries,
            gaps: c.gaps,
            dups: c.dups,
            reorders: c.reorders,
            bad: c.bad,
            signals: c.signals,
            gap_signals: c.gap_signals,
            live: c.live,
            replayed: c.replayed,
            seen: conns.iter().filter(|k| !k.streams.is_empty()).count() as u64,
            without_id: conns.iter().filter(|k| k.last_id.is_none()).count() as u64,
            cpu_ticks: cpu_ticks(me),
            rss_kib: rss_kib(me),
            hist: hist.sparse(),
            live_hist: live_hist.sparse(),
            ..Report::default()
        };
        *hist = Hist::new();
        *live_hist = Hist::new();
        r
    }
}

fn line_event(
    conn: &mut Conn,
    c: &mut Counters,
    hist: &mut Hist,
    live_hist: &mut Hist,
    line: &[u8],
    now: u64,
    track_ids: bool,
) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        conn.in_signal = false;
        return;
    }
    let field = |name: &[u8]| -> Option<&[u8]> {
        let v = line.strip_prefix(name)?;
        Some(v.strip_prefix(b" ").unwrap_or(v))
    };
    if let Some(v) = field(b"data:") {
        if conn.in_signal {
            return;
        }
        let Some((ts, stream, seq)) = parse_value(v) else {
            c.bad += 1;
            return;
        };
        c.deliveries += 1;
        hist.add(now.saturating_sub(ts));
        match conn.streams.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, last)) => {
                if seq == *last + 1 {
                } else if seq > *last + 1 {
                    c.gaps += seq - *last - 1;
                } else if seq == *last {
                    c.dups += 1;
                } else {
                    c.reorders += 1;
                }
                if seq > *last {
                    *last = seq;
                }
            }
            None => conn.streams.push((stream, seq)),
        }
        if conn.resume_from > 0 && !conn.live {
            if ts >= conn.resume_from {
                conn.live = true;
                c.live += 1;
                live_hist.add(now.saturating_sub(conn.resume_from));
            } else {
                c.replayed += 1;
            }
        }
    } else if let Some(v) = field(b"id:") {
        if track_ids {
            conn.last_id = Some(String::from_utf8_lossy(v).into_owned());
        }
    } else if let Some(v) = field(b"event:") {
        if v.starts_with(b"herald.") {
            conn.in_signal = true;
            c.signals += 1;
            if v == b"herald.gap" {
                c.gap_signals += 1;
            }
        }
    }
}

async fn conn_task(ws: Rc<WorkerState>, idx: usize, stream: TcpStream, first: Vec<u8>) {
    ws.c.borrow_mut().open += 1;
    let _guard = OpenGuard(ws.clone());
    if !first.is_empty() {
        ws.feed(idx, &first, now_us());
    }
    loop {
        if stream.readable().await.is_err() {
            ws.c.borrow_mut().closed += 1;
            return;
        }
        let mut buf = ws.buf.borrow_mut();
        match stream.try_read(&mut buf) {
            Ok(0) => {
                ws.c.borrow_mut().closed += 1;
                return;
            }
            Ok(n) => ws.feed(idx, &buf[..n], now_us()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                ws.c.borrow_mut().closed += 1;
                return;
            }
        }
    }
}

/// Opens the connections `indices` (with `resume`, from their last ids).
/// Returns (opened, failed, first errors).
async fn connect_set(
    ws: &Rc<WorkerState>,
    indices: Vec<usize>,
    resume: bool,
    concurrency: usize,
) -> (u64, u64, Vec<String>) {
    let mut set = tokio::task::JoinSet::new();
    let mut queue = indices.into_iter();
    let (mut ok, mut failed, mut errors) = (0u64, 0u64, Vec::new());
    loop {
        while set.len() < concurrency.max(1) {
            let Some(i) = queue.next() else { break };
            let (path, source, target) = {
                let conns = ws.conns.borrow();
                let conn = &conns[i];
                let mut path = conn.path.clone();
                if resume {
                    if let Some(id) = &conn.last_id {
                        let sep = if path.contains('?') { '&' } else { '?' };
                        path = format!("{path}{sep}lastEventId={id}");
                    }
                }
                let sources = &ws.spec.sources;
                (path, sources[i % sources.len()], ws.spec.target)
            };
            set.spawn_local(async move { (i, open_stream(target, source, &path).await) });
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        match done {
            Ok((i, Ok((stream, first)))) => {
                ok += 1;
                let handle = tokio::task::spawn_local(conn_task(ws.clone(), i, stream, first));
                ws.tasks.borrow_mut()[i] = Some(handle);
            }
            Ok((_, Err(e))) => {
                failed += 1;
                if errors.len() < 4 {
                    errors.push(format!("{e:#}"));
                }
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 4 {
                    errors.push(format!("task: {e}"));
                }
            }
        }
    }
    (ok, failed, errors)
}

fn emit(report: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, report);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

async fn worker_run() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let spec_line = lines
        .next_line()
        .await?
        .context("no worker spec on stdin")?;
    let spec: WorkerSpec = serde_json::from_str(&spec_line)?;
    let n = spec.paths.len();
    let conns = spec
        .paths
        .iter()
        .map(|p| Conn {
            path: p.clone(),
            ..Conn::default()
        })
        .collect();
    let concurrency = spec.concurrency;
    let ws = Rc::new(WorkerState {
        spec,
        conns: RefCell::new(conns),
        c: RefCell::new(Counters::default()),
        hist: RefCell::new(Hist::new()),
        live_hist: RefCell::new(Hist::new()),
        tasks: RefCell::new((0..n).map(|_| None).collect()),
        buf: RefCell::new(vec![0; 256 * 1024]),
    });
    let started = Instant::now();
    let (ok, failed, errors) = connect_set(&ws, (0..n).collect(), false, concurrency).await;
    let mut ready = ws.report();
    ready.connected = ok;
    ready.failed = failed;
    ready.errors = errors;
    ready.connect_ms = started.elapsed().as_millis() as u64;
    emit(&ready);

    while let Some(line) = lines.next_line().await? {
        let (cmd, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match cmd {
            "snap" => emit(&ws.report()),
            "drop" => {
                let handles: Vec<_> = ws.tasks.borrow_mut().iter_mut().map(Option::take).collect();
                for h in handles.iter().flatten() {
                    h.abort();
                }
                for h in handles.into_iter().flatten() {
                    let _ = h.await;
                }
                for conn in ws.conns.borrow_mut().iter_mut() {
                    conn.partial.clear();
                    conn.in_signal = false;
                }
                emit(&ws.report());
            }
            "resume" => {
                let mut args = arg.split_whitespace();
                let back: u64 = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .context("resume BACK_US TIMEOUT_S")?;
                let timeout: f64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(60.0);
                for conn in ws.conns.borrow_mut().iter_mut() {
                    conn.resume_from = back;
                    conn.live = false;
                }
                let closed_before = ws.c.borrow().closed;
                let (ok, failed, errors) = connect_set(&ws, (0..n).collect(), true, n).await;
                let deadline = Instant::now() + Duration::from_secs_f64(timeout);
                loop {
                    let (live, gone) = {
                        let c = ws.c.borrow();
                        (c.live, c.closed - closed_before)
                    };
                    if live + gone >= ok || Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let mut r = ws.report();
                r.reconnected = ok;
                r.failed = failed;
                r.errors = errors;
                emit(&r);
            }
            "tail" => {
                // The producer's last sequence number per stream (-1: none).
                let expected: Vec<i64> = serde_json::from_str(arg)?;
                let mut r = ws.report();
                for conn in ws.conns.borrow().iter() {
                    if conn.streams.is_empty() {
                        r.silent += 1;
                    }
                    for &(s, last) in &conn.streams {
                        if let Some(&e) = expected.get(s as usize) {
                            if e > last as i64 {
                                r.tail_missing += (e - last as i64) as u64;
                            }
                        }
                    }
                }
                emit(&r);
            }
            "quit" => break,
            other => bail!("unknown worker command {other:?}"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The coordinator's side of the workers.

struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
}

struct Fleet {
    workers: Vec<WorkerProc>,
}

/// A fleet-wide report: summed counters, merged histograms.
struct Snap {
    r: Report,
    hist: Hist,
    live_hist: Hist,
    /// Each worker's own report, in the order they were started.
    per: Vec<Report>,
}

impl Fleet {
    async fn start(specs: Vec<WorkerSpec>) -> anyhow::Result<(Fleet, Snap)> {
        let exe = std::env::current_exe()?;
        let mut workers = Vec::new();
        for spec in &specs {
            let mut cmd = Command::new(&exe);
            cmd.arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| sys::die_with_parent(sys::SIGKILL));
            }
            let mut child = cmd.spawn().context("spawning a worker")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_vec(spec)?;
            line.push(b'\n');
            stdin.write_all(&line).await?;
            stdin.flush().await?;
            workers.push(WorkerProc {
                child,
                stdin,
                out: BufReader::new(stdout).lines(),
            });
        }
        let mut fleet = Fleet { workers };
        let ready = fleet.collect(Duration::from_secs(600)).await?;
        Ok((fleet, ready))
    }

    async fn collect(&mut self, timeout: Duration) -> anyhow::Result<Snap> {
        let mut snap = Snap {
            r: Report::default(),
            hist: Hist::new(),
            live_hist: Hist::new(),
            per: Vec::new(),
        };
        for w in &mut self.workers {
            let line = tokio::time::timeout(timeout, w.out.next_line())
                .await
                .context("worker did not answer")??
                .ok_or_else(|| anyhow!("worker exited"))?;
            let r: Report = serde_json::from_str(&line)?;
            snap.hist.add_sparse(&r.hist);
            snap.live_hist.add_sparse(&r.live_hist);
            snap.r.absorb(&r);
            snap.per.push(r);
        }
        Ok(snap)
    }

    async fn cmd(&mut self, cmd: &str) -> anyhow::Result<Snap> {
        for w in &mut self.workers {
            w.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
            w.stdin.flush().await?;
        }
        self.collect(Duration::from_secs(300)).await
    }

    async fn snap(&mut self) -> anyhow::Result<Snap> {
        self.cmd("snap").await
    }

    async fn quit(mut self) {
        for w in &mut self.workers {
            let _ = w.stdin.write_all(b"quit\n").await;
        }
        for w in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(5), w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.kill().await;
            }
        }
    }
}

/// Splits `paths` over workers; all of them to `target`.
fn plan_workers(
    target: SocketAddr,
    paths: Vec<String>,
    workers: usize,
    per_source: usize,
    sources: &mut Sources,
    track_ids: bool,
) -> Vec<WorkerSpec> {
    let n = paths.len();
    let workers = workers.max(n.div_ceil(MAX_PER_WORKER)).max(1);
    let mut specs = Vec::with_capacity(workers);
    let mut it = paths.into_iter();
    for w in 0..workers {
        let count = n / workers + usize::from(w < n % workers);
        let mine: Vec<String> = it.by_ref().take(count).collect();
        specs.push(WorkerSpec {
            target,
            sources: sources.take(mine.len(), per_source),
            paths: mine,
            track_ids,
            concurrency: 256,
        });
    }
    specs
}

fn default_workers(run: &RunArgs, clients: usize) -> usize {
    run.workers
        .unwrap_or(if clients >= 200 { 2 } else { 1 })
        .max(clients.div_ceil(MAX_PER_WORKER))
}

// ---------------------------------------------------------------------------
// Servers under test.

struct Node {
    addr: SocketAddr,
    pid: Option<u32>,
    child: Option<Child>,
}

struct Server {
    kind: Kind,
    nodes: Vec<Node>,
    brokers: Option<String>,
    topic: String,
    scratch: Option<(PathBuf, bool)>,
    external_pids: Vec<u32>,
}

/// A free loopback port below the ephemeral range (32768–60999), so that no
/// socket bound to port 0 meanwhile (the embedded Kafka's brokers, clients)
/// can take it between this check and the server's bind.
fn free_port() -> anyhow::Result<u16> {
    let seed = now_us() ^ (u64::from(std::process::id()) << 20);
    for i in 0..500u64 {
        let port = 20_000 + ((seed / 7 + i * 7919) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn nchan_template(args: &ServerArgs) -> anyhow::Result<String> {
    let candidates = match &args.nchan_conf {
        Some(p) => vec![p.clone()],
        None => {
            let mut v = vec![PathBuf::from("bench/nchan.conf")];
            if let Ok(exe) = std::env::current_exe() {
                // target/release/herald-bench → repo/bench/nchan.conf
                if let Some(root) = exe.ancestors().nth(3) {
                    v.push(root.join("bench/nchan.conf"));
                }
            }
            v
        }
    };
    for c in &candidates {
        if let Ok(text) = std::fs::read_to_string(c) {
            return Ok(text);
        }
    }
    bail!("nginx configuration not found (tried {candidates:?}); pass --nchan-conf")
}

fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Server {
    async fn start(args: &ServerArgs, nodes: usize) -> anyhow::Result<Server> {
        let kind = if args.target.is_some() {
            Kind::External
        } else {
            args.server
        };
        if kind != Kind::Herald && kind != Kind::External && nodes > 1 {
            bail!("several nodes only for herald");
        }
        let scratch = match &args.scratch {
            Some(p) => (p.clone(), false),
            None => (
                std::env::temp_dir().join(format!("herald-bench-{}", std::process::id())),
                true,
            ),
        };
        let mut server = Server {
            kind,
            nodes: Vec::new(),
            brokers: args.brokers.clone(),
            topic: args.topic.clone(),
            scratch: None,
            external_pids: args.pid.clone(),
        };
        if kind == Kind::External {
            let addr = args.target.context("--target")?;
            if server.brokers.is_none() {
                let stats = http_json(addr, "/v1/stats").await?;
                server.brokers = stats["kafka"]["bootstrap_servers"]
                    .as_str()
                    .map(str::to_owned);
            }
            server.nodes.push(Node {
                addr,
                pid: args.pid.first().copied(),
                child: None,
            });
            return Ok(server);
        }
        std::fs::create_dir_all(&scratch.0)?;
        server.scratch = Some(scratch.clone());
        let dir = scratch.0;
        let mut n = 0;
        let mut attempts = 0;
        'node: while n < nodes {
            let port = free_port()?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            let log_path = dir.join(format!("{}-{n}.log", format!("{kind:?}").to_lowercase()));
            let log = std::fs::File::create(&log_path)?;
            let (mut cmd, ready_path, pdeath) = match kind {
                Kind::Herald => {
                    let bin = args.herald_bin.clone().unwrap_or_else(|| sibling("herald"));
                    let mut cmd = Command::new(bin);
                    cmd.args(["serve", "--listen", &addr.to_string()])
                        .args(["--node-id", &format!("bench-{n}")]);
                    match (n, &server.brokers) {
                        (0, None) => {
                            cmd.args(["--demo-topic", &args.topic])
                                .args(["--embedded-partitions", &args.partitions.to_string()]);
                        }
                        (_, Some(b)) => {
                            cmd.args(["--brokers", b]);
                        }
                        (_, None) => bail!("no brokers for node {n}"),
                    }
                    cmd.args(&args.herald_args);
                    if std::env::var_os("HERALD_LOG").is_none() {
                        cmd.env("HERALD_LOG", "warn");
                    }
                    (cmd, "/readyz", sys::SIGKILL)
                }
                Kind::Baseline => {
                    let bin = args
                        .baseline_bin
                        .clone()
                        .unwrap_or_else(|| sibling("herald-baseline"));
                    let mut cmd = Command::new(bin);
                    cmd.args(["--listen", &addr.to_string()]);
                    (cmd, "/stats", sys::SIGKILL)
                }
                Kind::Nchan => {
                    let conf = nchan_template(args)?.replace("@LISTEN@", &addr.to_string());
                    let prefix = dir.join(format!("nchan-{n}"));
                    for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                        std::fs::create_dir_all(prefix.join("tmp").join(t))?;
                    }
                    let conf_path = prefix.join("nginx.conf");
                    std::fs::write(&conf_path, conf)?;
                    let mut cmd = Command::new(&args.nginx);
                    cmd.arg("-p")
                        .arg(&prefix)
                        .arg("-c")
                        .arg(&conf_path)
                        .arg("-e")
                        .arg(prefix.join("error.log"))
                        .args(["-g", "daemon off;"]);
                    (cmd, "/status", sys::SIGTERM)
                }
                Kind::External => unreachable!(),
            };
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true);
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || sys::die_with_parent(pdeath));
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting {kind:?} ({:?})", cmd.as_std().get_program()))?;
            let pid = child.id();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if let Some(status) = child.try_wait()? {
                    let tail = log_tail(&log_path);
                    if tail.contains("Address already in use") && attempts < 3 {
                        attempts += 1;
                        continue 'node;
                    }
                    bail!(
                        "{kind:?} exited during start-up ({status}); {}:\n{}",
                        log_path.display(),
                        log_tail(&log_path)
                    );
                }
                if let Ok((200, _)) = http_get(addr, ready_path).await {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{kind:?} not ready on {addr} after 120 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if kind == Kind::Herald && n == 0 && server.brokers.is_none() {
                let stats = http_json(addr, "/v1/stats").await?;
                server.brokers = stats["kafka"]["bootstrap_servers"]
                    .as_str()
                    .map(str::to_owned);
            }
            server.nodes.push(Node {
                addr,
                pid,
                child: Some(child),
            });
            n += 1;
        }
        Ok(server)
    }

    fn is_herald(&self) -> bool {
        matches!(self.kind, Kind::Herald | Kind::External)
    }

    fn addr(&self) -> SocketAddr {
        self.nodes[0].addr
    }

    fn procs(&self, node: usize) -> ProcSet {
        if self.kind == Kind::External {
            return ProcSet {
                roots: self.external_pids.clone(),
            };
        }
        ProcSet {
            roots: self.nodes[node].pid.into_iter().collect(),
        }
    }

    fn all_procs(&self) -> ProcSet {
        if self.kind == Kind::External {
            return self.procs(0);
        }
        ProcSet {
            roots: self.nodes.iter().filter_map(|n| n.pid).collect(),
        }
    }

    /// The request path for one key (None: the whole topic).
    fn path(&self, key: Option<&str>) -> anyhow::Result<String> {
        Ok(match (self.kind, key) {
            (Kind::Herald | Kind::External, Some(k)) => {
                format!("/v1/events?topic={}/{k}", self.topic)
            }
            (Kind::Herald | Kind::External, None) => format!("/v1/events?topic={}", self.topic),
            (_, Some(k)) => format!("/sub/{k}"),
            (_, None) => bail!("{:?} has no whole-topic subscription", self.kind),
        })
    }

    /// Connections the server itself counts.
    async fn reported_connections(&self) -> u64 {
        let mut total = 0;
        for node in &self.nodes {
            total += match self.kind {
                Kind::Herald | Kind::External => http_json(node.addr, "/v1/stats")
                    .await
                    .ok()
                    .and_then(|v| v["connections"].as_u64())
                    .unwrap_or(0),
                Kind::Baseline => http_json(node.addr, "/stats")
                    .await
                    .ok()
                    .and_then(|v| v["connections"].as_u64())
                    .unwrap_or(0),
                Kind::Nchan => http_get(node.addr, "/status")
                    .await
                    .ok()
                    .and_then(|(_, b)| {
                        b.lines()
                            .find_map(|l| l.strip_prefix("subscribers:"))
                            .and_then(|v| v.trim().parse().ok())
                    })
                    .unwrap_or(0),
            };
        }
        total
    }

    async fn stop(mut self) {
        // Node 0 holds the embedded Kafka the others use: it goes last.
        for node in self.nodes.iter_mut().rev() {
            if let Some(child) = node.child.as_mut() {
                if self.kind == Kind::Nchan {
                    if let Some(pid) = node.pid {
                        sys::signal(pid, sys::SIGTERM);
                    }
                    if tokio::time::timeout(Duration::from_secs(10), child.wait())
                        .await
                        .is_ok()
                    {
                        continue;
                    }
                }
                let _ = child.kill().await;
            }
        }
        self.nodes.clear();
        if let Some((dir, true)) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Error paths: nginx's workers must not outlive their master.
        if self.kind == Kind::Nchan {
            for node in &self.nodes {
                if let Some(pid) = node.pid {
                    for c in children_of(pid) {
                        sys::signal(c, sys::SIGTERM);
                    }
                    sys::signal(pid, sys::SIGTERM);
                }
            }
        }
        if let Some((dir, true)) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// ---------------------------------------------------------------------------
// Producers: Kafka (herald), HTTP publisher (nchan), rate control (baseline).

struct DeliveryCount {
    failed: Arc<AtomicU64>,
}

impl ClientContext for DeliveryCount {}

impl ProducerContext for DeliveryCount {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

enum Sink {
    Kafka {
        producer: ThreadedProducer<DeliveryCount>,
        topic: String,
    },
    Http {
        lanes: Vec<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
}

/// One keep-alive HTTP/1.1 connection to nchan's publisher, pipelined: the
/// writer sends requests as they come, the reader counts the responses.
async fn http_lane(
    addr: SocketAddr,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    failed: Arc<AtomicU64>,
) {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(_) => {
            while rx.recv().await.is_some() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let done_writing = Arc::new(AtomicBool::new(false));
    let reader = {
        let (failed, sent, done_writing) = (failed.clone(), sent.clone(), done_writing.clone());
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            let mut answered = 0u64;
            loop {
                if done_writing.load(Ordering::Acquire) && answered >= sent.load(Ordering::Acquire)
                {
                    return;
                }
                let n = match tokio::time::timeout(Duration::from_millis(200), rd.read(&mut chunk))
                    .await
                {
                    Err(_) => continue,
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        break;
                    }
                    let ok = head.get(9..10) == Some("2");
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    answered += 1;
                    buf.drain(..end + 4 + len);
                }
            }
            let lost = sent.load(Ordering::Acquire).saturating_sub(answered);
            failed.fetch_add(lost, Ordering::Relaxed);
        })
    };
    let mut out = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        out.clear();
        out.extend_from_slice(&first);
        let mut count = 1;
        while out.len() < 60 * 1024 {
            match rx.try_recv() {
                Ok(m) => {
                    out.extend_from_slice(&m);
                    count += 1;
                }
                Err(_) => break,
            }
        }
        sent.fetch_add(count, Ordering::Release);
        if wr.write_all(&out).await.is_err() {
            failed.fetch_add(count, Ordering::Relaxed);
        }
    }
    done_writing.store(true, Ordering::Release);
    let _ = tokio::time::timeout(Duration::from_secs(15), reader).await;
}

impl Sink {
    fn send(&self, key: &str, lane: usize, value: &[u8]) -> bool {
        match self {
            Sink::Kafka { producer, topic } => producer
                .send(BaseRecord::to(topic).key(key).payload(value))
                .is_ok(),
            Sink::Http { lanes, .. } => {
                let mut req = format!(
                    "POST /pub/{key} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n",
                    value.len()
                )
                .into_bytes();
                req.extend_from_slice(value);
                lanes[lane % lanes.len()].send(req).is_ok()
            }
        }
    }

    async fn finish(self) {
        match self {
            Sink::Kafka { producer, .. } => {
                tokio::task::block_in_place(|| {
                    let _ = producer.flush(Duration::from_secs(15));
                });
            }
            Sink::Http { lanes, tasks } => {
                drop(lanes);
                for t in tasks {
                    let _ = t.await;
                }
            }
        }
    }
}

/// A control request to an overloaded server (the baseline past its
/// capacity answers late): retried, each try with the usual timeout.
async fn control(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let mut last = None;
    for _ in 0..4 {
        match http_json(addr, path).await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow!("no attempt"))
        .context(format!("GET {path}")))
}

/// Drives records at a settable rate, round-robin over streams.
struct Producer {
    rate_milli: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<Vec<u64>>>,
    /// The baseline generates its own records; we only set its rate.
    baseline: Option<SocketAddr>,
}

impl Producer {
    fn start(
        server: &Server,
        keys: Vec<String>,
        size: usize,
        linger_ms: u64,
    ) -> anyhow::Result<Producer> {
        let rate_milli = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let produced = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        if server.kind == Kind::Baseline {
            if keys.len() != 1 {
                bail!("the baseline serves one stream only (broadcast)");
            }
            return Ok(Producer {
                rate_milli,
                stop,
                produced,
                failed,
                task: None,
                baseline: Some(server.addr()),
            });
        }
        let sink = if server.kind == Kind::Nchan {
            let lanes_n = keys.len().clamp(1, 4);
            let mut lanes = Vec::new();
            let mut tasks = Vec::new();
            for _ in 0..lanes_n {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                lanes.push(tx);
                tasks.push(tokio::spawn(http_lane(server.addr(), rx, failed.clone())));
            }
            Sink::Http { lanes, tasks }
        } else {
            let brokers = server
                .brokers
                .clone()
                .context("no Kafka bootstrap servers")?;
            let producer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("partitioner", "murmur2_random")
                .set("linger.ms", linger_ms.to_string())
                .set("queue.buffering.max.messages", "1000000")
                .create_with_context(DeliveryCount {
                    failed: failed.clone(),
                })?;
            Sink::Kafka {
                producer,
                topic: server.topic.clone(),
            }
        };
        let task = {
            let (rate_milli, stop, produced, failed) = (
                rate_milli.clone(),
                stop.clone(),
                produced.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                let mut seqs = vec![0u64; keys.len()];
                let (mut next, mut n) = (0usize, 0u64);
                let (mut cur, mut base_t, mut base_n) = (0u64, Instant::now(), 0u64);
                while !stop.load(Ordering::Acquire) {
                    let r = rate_milli.load(Ordering::Acquire);
                    if r != cur {
                        (cur, base_t, base_n) = (r, Instant::now(), n);
                    }
                    if r == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    let due =
                        base_t + Duration::from_secs_f64((n - base_n) as f64 * 1000.0 / r as f64);
                    let now = Instant::now();
                    if due > now {
                        let wake = due.min(now + Duration::from_millis(5));
                        tokio::time::sleep_until(wake.into()).await;
                        continue;
                    }
                    let s = next;
                    next = (next + 1) % keys.len();
                    let value = make_value(now_us(), s, seqs[s], size);
                    if !sink.send(&keys[s], s, &value) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    seqs[s] += 1;
                    n += 1;
                    produced.fetch_add(1, Ordering::Relaxed);
                }
                sink.finish().await;
                seqs
            })
        };
        Ok(Producer {
            rate_milli,
            stop,
            produced,
            failed,
            task: Some(task),
            baseline: None,
        })
    }

    async fn set_rate(&self, rate: f64) -> anyhow::Result<()> {
        if let Some(addr) = self.baseline {
            let v = control(addr, &format!("/rate?r={rate}")).await?;
            self.produced
                .store(v["produced"].as_u64().unwrap_or(0), Ordering::Release);
        } else {
            self.rate_milli
                .store((rate * 1000.0).round() as u64, Ordering::Release);
        }
        Ok(())
    }

    async fn produced(&self) -> u64 {
        if let Some(addr) = self.baseline {
            if let Ok(v) = http_json(addr, "/stats").await {
                return v["produced"].as_u64().unwrap_or(0);
            }
        }
        self.produced.load(Ordering::Acquire)
    }

    /// Stops; returns records produced per stream and publish failures.
    async fn finish(mut self) -> anyhow::Result<(Vec<u64>, u64)> {
        if let Some(addr) = self.baseline {
            let v = control(addr, "/rate?r=0").await?;
            let produced = v["produced"].as_u64().unwrap_or(0);
            return Ok((vec![produced], v["lagged"].as_u64().unwrap_or(0)));
        }
        self.stop.store(true, Ordering::Release);
        let seqs = self.task.take().context("producer task")?.await?;
        Ok((seqs, self.failed.load(Ordering::Acquire)))
    }
}

// ---------------------------------------------------------------------------
// Scenario engine: clients on paths, a producer over streams, rate steps.

struct Flow {
    scenario: &'static str,
    paths: Vec<String>,
    keys: Vec<String>,
    /// Clients per stream (to know how many deliveries a record makes).
    subs: Vec<u64>,
    rates: Vec<f64>,
    warmup: f64,
    step_seconds: f64,
    size: usize,
    p99_limit_ms: f64,
    /// Stop the steps once one is not sustained or its p99 passes this (ms).
    stop_p99_ms: Option<f64>,
    settle: f64,
    linger_ms: u64,
    /// herald: partitions that must be assigned before producing.
    expect_partitions: Option<BTreeSet<i32>>,
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

async fn herald_assigned(server: &Server) -> Option<BTreeSet<i32>> {
    let stats = http_json(server.addr(), "/v1/stats").await.ok()?;
    Some(
        stats["assigned_partitions"]
            .as_array()?
            .iter()
            .filter(|p| p["topic"].as_str() == Some(server.topic.as_str()))
            .filter_map(|p| p["partition"].as_i64().map(|v| v as i32))
            .collect(),
    )
}

async fn run_flow(server: &Server, flow: Flow, run: &RunArgs) -> anyhow::Result<Value> {
    let clients = flow.paths.len();
    let mut problems: Vec<String> = Vec::new();
    let workers = default_workers(run, clients);
    let mut sources = Sources::new();
    let specs = plan_workers(
        server.addr(),
        flow.paths.clone(),
        workers,
        run.per_source,
        &mut sources,
        false,
    );
    let n_workers = specs.len();
    let t0 = Instant::now();
    let (mut fleet, ready) = Fleet::start(specs).await?;
    let connect_s = t0.elapsed().as_secs_f64();
    if ready.r.failed > 0 {
        problems.push(format!(
            "{} of {clients} connections failed: {:?}",
            ready.r.failed, ready.r.errors
        ));
    }
    tokio::time::sleep(Duration::from_secs_f64(flow.settle)).await;
    let mut assigned = None;
    if server.is_herald() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            assigned = herald_assigned(server).await;
            let ok = match (&flow.expect_partitions, &assigned) {
                (Some(want), Some(have)) => want.is_subset(have),
                _ => true,
            };
            if ok || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let producer = Producer::start(server, flow.keys.clone(), flow.size, flow.linger_ms)?;
    let procs = server.all_procs();
    let me = std::process::id();
    let tck = sys::clock_ticks();
    let mean_subs = flow.subs.iter().sum::<u64>() as f64 / flow.subs.len().max(1) as f64;
    let mut steps = Vec::new();
    let before_records = fleet.snap().await?;
    if before_records.r.closed > 0 {
        problems.push(format!(
            "{} streams closed by the server before any record was sent",
            before_records.r.closed
        ));
    }
    for &rate in &flow.rates {
        producer.set_rate(rate).await?;
        tokio::time::sleep(Duration::from_secs_f64(flow.warmup)).await;
        let a = fleet.snap().await?;
        let (ta, sa, ma, pa, xa) = (
            Instant::now(),
            procs.ticks(),
            cpu_ticks(me),
            producer.produced().await,
            machine_busy_ticks(),
        );
        tokio::time::sleep(Duration::from_secs_f64(flow.step_seconds)).await;
        let b = fleet.snap().await?;
        let (secs, sb, mb, pb, xb) = (
            ta.elapsed().as_secs_f64(),
            procs.ticks(),
            cpu_ticks(me),
            producer.produced().await,
            machine_busy_ticks(),
        );
        let pct = |ticks: u64| round2(ticks as f64 / tck / secs * 100.0);
        let (server_cpu, loadgen_cpu, machine_cpu) = (
            pct(sb - sa),
            pct((b.r.cpu_ticks + mb) - (a.r.cpu_ticks + ma)),
            pct(xb - xa),
        );
        let deliveries = b.r.deliveries - a.r.deliveries;
        let per_s = deliveries as f64 / secs;
        let offered = rate * mean_subs;
        let produced = pb.saturating_sub(pa);
        let p99 = b.hist.ms(0.99);
        let closed = b.r.closed - a.r.closed;
        let sustained = per_s >= 0.9 * offered && closed == 0;
        let pass = sustained && p99 <= flow.p99_limit_ms;
        let step = json!({
            "rate": rate,
            "seconds": round2(secs),
            "produced": produced,
            "produced_per_s": round2(produced as f64 / secs),
            "offered_per_s": offered.round(),
            "deliveries": deliveries,
            "deliveries_per_s": per_s.round(),
            "p50_ms": round2(b.hist.ms(0.5)),
            "p99_ms": round2(p99),
            "max_ms": round2(b.hist.max() as f64 / 1000.0),
            "server_cpu_pct": server_cpu,
            "loadgen_cpu_pct": loadgen_cpu,
            "machine_cpu_pct": machine_cpu,
            // Everything else: other processes, and kernel work no process was charged for.
            "other_cpu_pct": round2((machine_cpu - server_cpu - loadgen_cpu).max(0.0)),
            "closed": closed,
            "sustained": sustained,
            "pass": pass,
        });
        eprintln!(
            "{} on {:?}: {:>8} rec/s  {:>10} deliveries/s  p50 {:>8.2} ms  p99 {:>8.2} ms  server {:>5.0}%  loadgen {:>5.0}%  other {:>4.0}%{}",
            flow.scenario,
            server.kind,
            rate,
            step["deliveries_per_s"],
            step["p50_ms"].as_f64().unwrap_or(0.0),
            p99,
            step["server_cpu_pct"].as_f64().unwrap_or(0.0),
            step["loadgen_cpu_pct"].as_f64().unwrap_or(0.0),
            step["other_cpu_pct"].as_f64().unwrap_or(0.0),
            if pass { "" } else { "  (fails)" }
        );
        steps.push(step);
        if let Some(stop) = flow.stop_p99_ms {
            if !sustained || p99 > stop {
                break;
            }
        }
    }
    let (seqs, publish_failures) = producer.finish().await?;
    let expected: u64 = seqs.iter().zip(&flow.subs).map(|(n, s)| n * s).sum();
    // Drain: wait for what is still on its way.
    let drain_start = Instant::now();
    let (mut last, mut last_change) = (0u64, Instant::now());
    let mut fin = fleet.snap().await?;
    while fin.r.unique() < expected
        && drain_start.elapsed() < Duration::from_secs(20)
        && last_change.elapsed() < Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        fin = fleet.snap().await?;
        if fin.r.deliveries != last {
            (last, last_change) = (fin.r.deliveries, Instant::now());
        }
    }
    let last_seqs: Vec<i64> = seqs.iter().map(|&n| n as i64 - 1).collect();
    let tail = fleet
        .cmd(&format!("tail {}", serde_json::to_string(&last_seqs)?))
        .await?;
    let pss = procs.pss();
    fleet.quit().await;

    let r = &tail.r;
    let lost = expected.saturating_sub(r.unique());
    let overloaded = steps
        .iter()
        .any(|s| !s["sustained"].as_bool().unwrap_or(true));
    if r.gaps + r.dups + r.reorders > 0 {
        problems.push(format!(
            "order: {} missing in gaps, {} duplicates, {} reordered",
            r.gaps, r.dups, r.reorders
        ));
    }
    if r.gap_signals > 0 {
        problems.push(format!("{} herald.gap signals", r.gap_signals));
    }
    // Past the server's capacity it may cut slow streams (herald's queue
    // bound): a note, not a fault. Anything else lost or cut is a fault.
    let mut notes = Vec::new();
    let cut = r.closed - before_records.r.closed;
    if lost > 0 {
        let text = format!("{lost} of {expected} deliveries lost");
        if overloaded && cut > 0 {
            notes.push(format!(
                "{text} after the server cut {cut} slow streams past its capacity"
            ));
        } else {
            problems.push(text);
        }
    }
    if cut > 0 {
        let text = format!("{cut} streams closed by the server while records flowed");
        if overloaded {
            notes.push(text);
        } else {
            problems.push(text);
        }
    }
    if r.bad > 0 {
        problems.push(format!("{} unparseable data lines", r.bad));
    }
    if publish_failures > 0 {
        problems.push(format!("{publish_failures} publish failures"));
    }
    if let (Some(want), Some(have)) = (&flow.expect_partitions, &assigned) {
        if want != have {
            problems.push(format!(
                "assigned partitions {:?} differ from the needed {:?}",
                have, want
            ));
        }
    }
    let passing = steps.iter().filter(|s| s["pass"].as_bool() == Some(true));
    let best_pass = passing.max_by(|a, b| {
        a["deliveries_per_s"]
            .as_f64()
            .partial_cmp(&b["deliveries_per_s"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let best_any = steps.iter().max_by(|a, b| {
        a["deliveries_per_s"]
            .as_f64()
            .partial_cmp(&b["deliveries_per_s"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(json!({
        "scenario": flow.scenario,
        "server": server.kind,
        "label": run.label,
        "clients": clients,
        "streams": flow.keys.len(),
        "size": flow.size,
        "workers": n_workers,
        "connected": ready.r.connected,
        "failed": ready.r.failed,
        "connect_s": round2(connect_s),
        "p99_limit_ms": flow.p99_limit_ms,
        "steps": steps,
        "capacity_per_s": best_pass.map(|s| s["deliveries_per_s"].clone()),
        "capacity_p99_ms": best_pass.map(|s| s["p99_ms"].clone()),
        "best_per_s": best_any.map(|s| s["deliveries_per_s"].clone()),
        "best_p99_ms": best_any.map(|s| s["p99_ms"].clone()),
        "expected": expected,
        "delivered": r.deliveries,
        "lost": lost,
        "gaps": r.gaps,
        "dups": r.dups,
        "reorders": r.reorders,
        "closed": r.closed,
        "tail_missing": r.tail_missing,
        "silent": r.silent,
        "publish_failures": publish_failures,
        "needed_partitions": flow.expect_partitions,
        "assigned_partitions": assigned,
        "server_pss_kib": pss,
        "loadgen_rss_kib": r.rss_kib,
        "ok": problems.is_empty(),
        "problems": problems,
        "notes": notes,
    }))
}

// ---------------------------------------------------------------------------
// Scenarios.

fn write_result(run: &RunArgs, result: &Value) -> anyhow::Result<()> {
    match &run.json {
        Some(p) if p.as_os_str() == "-" => println!("{result}"),
        Some(p) => {
            if let Some(dir) = p.parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)?;
                }
            }
            std::fs::write(p, serde_json::to_vec_pretty(result)?)?;
        }
        None => {}
    }
    Ok(())
}

fn print_flow(result: &Value) {
    println!(
        "{} on {}: {} clients ({} connected, {} failed), {} streams, {}-byte records",
        result["scenario"].as_str().unwrap_or(""),
        result["server"].as_str().unwrap_or(""),
        result["clients"],
        result["connected"],
        result["failed"],
        result["streams"],
        result["size"],
    );
    println!(
        "{:>10} {:>11} {:>12} {:>12} {:>9} {:>9} {:>9} {:>8} {:>8}  p99 ok",
        "rec/s",
        "produced/s",
        "offered/s",
        "delivered/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv cpu",
        "gen cpu"
    );
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    for s in result["steps"].as_array().into_iter().flatten() {
        println!(
            "{:>10.1} {:>11.1} {:>12.0} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>7.0}% {:>7.0}% {:>7.0}%  {}",
            f(&s["rate"]),
            f(&s["produced_per_s"]),
            f(&s["offered_per_s"]),
            f(&s["deliveries_per_s"]),
            f(&s["p50_ms"]),
            f(&s["p99_ms"]),
            f(&s["max_ms"]),
            f(&s["server_cpu_pct"]),
            f(&s["loadgen_cpu_pct"]),
            f(&s["other_cpu_pct"]),
            match (s["pass"].as_bool(), s["sustained"].as_bool()) {
                (Some(true), _) => "yes",
                (_, Some(false)) => "no (not sustained)",
                _ => "no",
            }
        );
    }
    println!(
        "deliveries/s at p99 ≤ {} ms: {}; expected {} delivered {} lost {} gaps {} dups {} reorders {} closed {}",
        result["p99_limit_ms"],
        result["capacity_per_s"],
        result["expected"],
        result["delivered"],
        result["lost"],
        result["gaps"],
        result["dups"],
        result["reorders"],
        result["closed"],
    );
    if !result["assigned_partitions"].is_null() && !result["needed_partitions"].is_null() {
        println!(
            "needed partitions {}; assigned {}",
            result["needed_partitions"], result["assigned_partitions"]
        );
    }
    print_problems(result);
}

fn print_problems(result: &Value) {
    for p in result["problems"].as_array().into_iter().flatten() {
        println!("PROBLEM: {}", p.as_str().unwrap_or(""));
    }
    for p in result["notes"].as_array().into_iter().flatten() {
        println!("note: {}", p.as_str().unwrap_or(""));
    }
}

async fn broadcast(a: BroadcastArgs) -> anyhow::Result<Value> {
    let quiet_seen = quiet(&a.run).await;
    let server = Server::start(&a.server, 1).await?;
    let key = "hot";
    let path = server.path(Some(key))?;
    let rates = if a.rates.is_empty() {
        a.deliveries
            .iter()
            .map(|d| round2(d / a.clients.max(1) as f64))
            .collect()
    } else {
        a.rates.clone()
    };
    let flow = Flow {
        scenario: "broadcast",
        paths: vec![path; a.clients],
        keys: vec![key.to_owned()],
        subs: vec![a.clients as u64],
        rates,
        warmup: a.flow.warmup,
        step_seconds: a.step_seconds,
        size: a.flow.size,
        p99_limit_ms: a.flow.p99_limit_ms,
        stop_p99_ms: (!a.no_stop).then_some(a.stop_p99_ms),
        settle: a.flow.settle,
        linger_ms: a.flow.linger_ms,
        expect_partitions: None,
    };
    let result = run_flow(&server, flow, &a.run).await;
    server.stop().await;
    let mut result = result?;
    result["machine_before"] = quiet_seen;
    print_flow(&result);
    write_result(&a.run, &result)?;
    Ok(result)
}

/// Keys k0, k1, ... falling in `needed` of `partitions` partitions (spread evenly).
fn keys_in_partitions(count: usize, partitions: i32, needed: i32) -> (Vec<String>, BTreeSet<i32>) {
    let needed = needed.clamp(1, partitions);
    let stride = (partitions / needed).max(1);
    let wanted: BTreeSet<i32> = (0..needed).map(|i| i * stride).collect();
    let mut keys = Vec::with_capacity(count);
    let mut used = BTreeSet::new();
    let mut i = 0u64;
    while keys.len() < count {
        let k = format!("k{i}");
        let p = herald::partitioner::partition_for_key(k.as_bytes(), partitions);
        if wanted.contains(&p) {
            keys.push(k);
            used.insert(p);
        }
        i += 1;
    }
    (keys, used)
}

async fn keyed(a: KeyedArgs, light: bool) -> anyhow::Result<Value> {
    let clients = a.clients.unwrap_or(if light { 1000 } else { 15_000 });
    let rate = a.rate.unwrap_or(if light { 1000.0 } else { 5000.0 });
    let seconds = a.seconds.unwrap_or(8.0);
    let partitions = a.server.partitions;
    let needed = a
        .needed_partitions
        .unwrap_or(if light { partitions } else { partitions / 2 });
    let quiet_seen = quiet(&a.run).await;
    let server = Server::start(&a.server, 1).await?;
    let (keys, used) = keys_in_partitions(clients, partitions, needed);
    let paths = keys
        .iter()
        .map(|k| server.path(Some(k)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let flow = Flow {
        scenario: if light { "light" } else { "keyed" },
        paths,
        subs: vec![1; keys.len()],
        keys,
        rates: vec![rate],
        warmup: a.flow.warmup,
        step_seconds: seconds,
        size: a.flow.size,
        p99_limit_ms: a.flow.p99_limit_ms,
        stop_p99_ms: None,
        settle: a.flow.settle,
        linger_ms: a.flow.linger_ms,
        expect_partitions: server.is_herald().then_some(used),
    };
    let result = run_flow(&server, flow, &a.run).await;
    server.stop().await;
    let mut result = result?;
    result["machine_before"] = quiet_seen;
    result["partitions"] = json!(partitions);
    print_flow(&result);
    write_result(&a.run, &result)?;
    Ok(result)
}

async fn latency(a: LatencyArgs) -> anyhow::Result<Value> {
    let quiet_seen = quiet(&a.run).await;
    let server = Server::start(&a.server, 1).await?;
    let (keys, path) = match &a.key {
        Some(k) => (vec![k.clone()], server.path(Some(k))?),
        None => (
            (0..a.keys.max(1)).map(|i| format!("k{i}")).collect(),
            server.path(None)?,
        ),
    };
    let flow = Flow {
        scenario: "latency",
        paths: vec![path; a.clients],
        subs: vec![a.clients as u64; keys.len()],
        keys,
        rates: vec![a.rate],
        warmup: a.flow.warmup,
        step_seconds: a.seconds,
        size: a.flow.size,
        p99_limit_ms: a.flow.p99_limit_ms,
        stop_p99_ms: None,
        settle: a.flow.settle,
        linger_ms: a.flow.linger_ms,
        expect_partitions: None,
    };
    let result = run_flow(&server, flow, &a.run).await;
    server.stop().await;
    let mut result = result?;
    result["machine_before"] = quiet_seen;
    print_flow(&result);
    write_result(&a.run, &result)?;
    Ok(result)
}

async fn idle(a: IdleArgs) -> anyhow::Result<Value> {
    let quiet_seen = quiet(&a.run).await;
    let server = Server::start(&a.server, a.nodes.max(1)).await?;
    let result = idle_on(&server, &a).await;
    server.stop().await;
    let mut result = result?;
    result["machine_before"] = quiet_seen;
    println!(
        "idle on {} ({} node(s)): {} of {} connections open ({} failed) in {:.1} s; {} KiB per connection; server CPU {}% while idle; load generator {} KiB per connection",
        result["server"].as_str().unwrap_or(""),
        result["nodes"],
        result["open"],
        result["target"],
        result["failed"],
        result["connect_s"].as_f64().unwrap_or(0.0),
        result["kib_per_connection"],
        result["server_cpu_pct_idle"],
        result["loadgen_kib_per_connection"],
    );
    for n in result["per_node"].as_array().into_iter().flatten() {
        println!(
            "  node {}: {} connections, PSS {} → {} KiB, {} KiB per connection",
            n["node"],
            n["connections"],
            n["pss_before_kib"],
            n["pss_after_kib"],
            n["kib_per_connection"]
        );
    }
    print_problems(&result);
    write_result(&a.run, &result)?;
    Ok(result)
}

async fn idle_on(server: &Server, a: &IdleArgs) -> anyhow::Result<Value> {
    let nodes = server.nodes.len();
    let per_node = a.connections.div_ceil(nodes);
    let key = |i: usize| (a.keys > 0).then(|| format!("k{}", i % a.keys));
    let mut sources = Sources::new();
    // Warm up: the first streams assign partitions and allocate shared state.
    let mut warm = Vec::new();
    for (n, node) in server.nodes.iter().enumerate() {
        let src = sources.take(1, 1)[0];
        for i in 0..a.warm.min(per_node) {
            let path = server.path(key(n * per_node + i).as_deref())?;
            warm.push(open_stream(node.addr, src, &path).await?.0);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_all: Vec<[u64; 4]> = (0..nodes).map(|n| server.procs(n).mem()).collect();
    let before: Vec<u64> = before_all.iter().map(|m| m[0]).collect();
    let mut specs = Vec::new();
    let mut fleet_per_node = Vec::new();
    for (n, node) in server.nodes.iter().enumerate() {
        let count = per_node.saturating_sub(a.warm.min(per_node));
        let paths = (0..count)
            .map(|i| server.path(key(n * per_node + a.warm + i).as_deref()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let workers = count
            .div_ceil(MAX_PER_WORKER)
            .max(a.run.workers.unwrap_or(1));
        let s = plan_workers(
            node.addr,
            paths,
            workers,
            a.run.per_source,
            &mut sources,
            false,
        );
        fleet_per_node.push(s.len());
        specs.extend(s);
    }
    let n_workers = specs.len();
    let t0 = Instant::now();
    let (mut fleet, ready) = Fleet::start(specs).await?;
    let connect_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    let after_all: Vec<[u64; 4]> = (0..nodes).map(|n| server.procs(n).mem()).collect();
    let after: Vec<u64> = after_all.iter().map(|m| m[0]).collect();
    let growth_of = |k: usize| -> u64 {
        (0..nodes)
            .map(|n| after_all[n][k].saturating_sub(before_all[n][k]))
            .sum()
    };
    let rss_after: u64 = after_all.iter().map(|m| m[3]).sum();
    let procs = server.all_procs();
    let tck = sys::clock_ticks();
    let (t, s0, x0) = (Instant::now(), procs.ticks(), machine_busy_ticks());
    tokio::time::sleep(Duration::from_secs_f64(a.idle_seconds)).await;
    let secs = t.elapsed().as_secs_f64();
    let idle_cpu = (procs.ticks() - s0) as f64 / tck / secs * 100.0;
    let machine_cpu = (machine_busy_ticks() - x0) as f64 / tck / secs * 100.0;
    let snap = fleet.snap().await?;
    let reported = server.reported_connections().await;
    fleet.quit().await;
    drop(warm);

    // Per node: the workers were started node by node.
    let open_total = snap.r.open;
    let fleet_total: u64 = ready.r.connected;
    let mut nodes_out = Vec::new();
    let mut growth = 0u64;
    let mut first = 0;
    for n in 0..nodes {
        let mine = &snap.per[first..first + fleet_per_node[n]];
        first += fleet_per_node[n];
        let conns: u64 = mine.iter().map(|r| r.open).sum();
        let g = after[n].saturating_sub(before[n]);
        growth += g;
        nodes_out.push(json!({
            "node": n,
            "pid": server.nodes[n].pid,
            "connections": conns + a.warm.min(per_node) as u64,
            "pss_before_kib": before[n],
            "pss_after_kib": after[n],
            "kib_per_connection": round2(g as f64 / conns.max(1) as f64),
        }));
    }
    let mut problems = Vec::new();
    if ready.r.failed > 0 {
        problems.push(format!(
            "{} connections failed: {:?}",
            ready.r.failed, ready.r.errors
        ));
    }
    if snap.r.closed > 0 {
        problems.push(format!("{} streams closed by the server", snap.r.closed));
    }
    let warm_total = (a.warm.min(per_node) * nodes) as u64;
    Ok(json!({
        "scenario": "idle",
        "server": server.kind,
        "label": a.run.label,
        "nodes": nodes,
        "target": a.connections,
        "keys": a.keys,
        "workers": n_workers,
        "connected": fleet_total + warm_total,
        "failed": ready.r.failed,
        "open": open_total + warm_total,
        "server_reported": reported,
        "connect_s": round2(connect_s),
        "connections_per_s": (fleet_total as f64 / connect_s).round(),
        "kib_per_connection": round2(growth as f64 / open_total.max(1) as f64),
        "anon_kib_per_connection": round2(growth_of(1) as f64 / open_total.max(1) as f64),
        "shmem_kib_per_connection": round2(growth_of(2) as f64 / open_total.max(1) as f64),
        "rss_kib_per_connection": round2(growth_of(3) as f64 / open_total.max(1) as f64),
        "server_pss_kib": after.iter().sum::<u64>(),
        "server_rss_kib": rss_after,
        "server_cpu_pct_idle": round2(idle_cpu),
        "machine_cpu_pct_idle": round2(machine_cpu),
        "loadgen_kib_per_connection": round2(snap.r.rss_kib as f64 / open_total.max(1) as f64),
        "per_node": nodes_out,
        "ok": problems.is_empty(),
        "problems": problems,
    }))
}

async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    if let Ok((200, body)) = http_get(addr, "/metrics").await {
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = name.split('{').next().unwrap_or(name).to_owned();
            if let Ok(v) = value.parse::<f64>() {
                *out.entry(name).or_insert(0.0) += v;
            }
        }
    }
    out
}

async fn resume(a: ResumeArgs) -> anyhow::Result<Value> {
    let quiet_seen = quiet(&a.run).await;
    let server = Server::start(&a.server, 1).await?;
    if !server.is_herald() {
        bail!("resume runs against herald only");
    }
    let result = resume_on(&server, &a, "r").await;
    server.stop().await;
    let mut result = result?;
    result["machine_before"] = quiet_seen;
    print_resume(&result);
    write_result(&a.run, &result)?;
    Ok(result)
}

fn print_resume(r: &Value) {
    println!(
        "resume on {}: {} clients over {} keys, {} s behind at {} rec/s: {} reconnected ({} failed), {} live; all live after {} ms (p50 {} ms, p99 {} ms); {} records replayed; gaps {} dups {} reorders {} tail missing {}; catch-up readers busy at most {}, Kafka catch-up reads {}, replay-buffer hits {}",
        r["server"].as_str().unwrap_or(""),
        r["clients"], r["keys"], r["behind_s"], r["rate"], r["reconnected"], r["failed"], r["live"],
        r["all_live_ms"], r["p50_live_ms"], r["p99_live_ms"], r["replayed"], r["gaps"], r["dups"],
        r["reorders"], r["tail_missing"], r["catchup_readers_max"], r["catchup_kafka_reads"],
        r["replay_buffer_hits"],
    );
    print_problems(r);
}

async fn resume_on(server: &Server, a: &ResumeArgs, prefix: &str) -> anyhow::Result<Value> {
    let keys: Vec<String> = (0..a.keys.max(1)).map(|i| format!("{prefix}{i}")).collect();
    let paths = (0..a.clients)
        .map(|i| server.path(Some(&keys[i % keys.len()])))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut problems = Vec::new();
    let mut sources = Sources::new();
    let specs = plan_workers(
        server.addr(),
        paths,
        default_workers(&a.run, a.clients),
        a.run.per_source,
        &mut sources,
        true,
    );
    let (mut fleet, ready) = Fleet::start(specs).await?;
    if ready.r.failed > 0 {
        problems.push(format!(
            "{} connections failed: {:?}",
            ready.r.failed, ready.r.errors
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let producer = Producer::start(server, keys.clone(), a.size, 0)?;
    producer.set_rate(a.rate).await?;
    // Everyone takes a cursor from at least one record of its key.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = fleet.snap().await?;
        if s.r.seen >= ready.r.connected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let before = scrape(server.addr()).await;
    let dropped = fleet.cmd("drop").await?;
    if dropped.r.without_id > 0 {
        problems.push(format!(
            "{} clients had no id to resume from",
            dropped.r.without_id
        ));
    }
    tokio::time::sleep(Duration::from_secs_f64(a.behind)).await;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (addr, sampling) = (server.addr(), sampling.clone());
        tokio::spawn(async move {
            let mut max = 0.0f64;
            while sampling.load(Ordering::Acquire) {
                let m = scrape(addr).await;
                max = max.max(m.get("herald_catchup_readers").copied().unwrap_or(0.0));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max
        })
    };
    let (x0, procs, started) = (machine_busy_ticks(), server.all_procs(), Instant::now());
    let s0 = procs.ticks();
    let back = now_us();
    let resumed = fleet.cmd(&format!("resume {back} {}", a.timeout)).await?;
    sampling.store(false, Ordering::Release);
    let (tck, secs) = (sys::clock_ticks(), started.elapsed().as_secs_f64());
    let server_cpu = (procs.ticks() - s0) as f64 / tck / secs * 100.0;
    let machine_cpu = (machine_busy_ticks() - x0) as f64 / tck / secs * 100.0;
    let readers_max = sampler.await.unwrap_or(0.0);
    let after = scrape(server.addr()).await;
    // Keep producing a moment, then stop and let the tails arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (seqs, publish_failures) = producer.finish().await?;
    let last_seqs: Vec<i64> = seqs.iter().map(|&n| n as i64 - 1).collect();
    let tail_cmd = format!("tail {}", serde_json::to_string(&last_seqs)?);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut tail = fleet.cmd(&tail_cmd).await?;
    while tail.r.tail_missing > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tail = fleet.cmd(&tail_cmd).await?;
    }
    fleet.quit().await;
    let delta = |name: &str| {
        after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
    };
    let live = resumed.r.live;
    let r = &tail.r;
    if resumed.r.failed > 0 {
        problems.push(format!(
            "{} reconnects failed: {:?}",
            resumed.r.failed, resumed.r.errors
        ));
    }
    if live < ready.r.connected {
        problems.push(format!(
            "{} of {} clients not live within the timeout",
            ready.r.connected - live,
            ready.r.connected
        ));
    }
    if r.gaps + r.dups + r.reorders + r.tail_missing > 0 {
        problems.push(format!(
            "order: {} missing in gaps, {} duplicates, {} reordered, {} missing at the tail",
            r.gaps, r.dups, r.reorders, r.tail_missing
        ));
    }
    if r.gap_signals > 0 {
        problems.push(format!("{} herald.gap signals", r.gap_signals));
    }
    if publish_failures > 0 {
        problems.push(format!("{publish_failures} publish failures"));
    }
    Ok(json!({
        "scenario": "resume",
        "server": server.kind,
        "label": a.run.label,
        "clients": a.clients,
        "keys": keys.len(),
        "behind_s": a.behind,
        "rate": a.rate,
        "connected": ready.r.connected,
        "reconnected": resumed.r.reconnected,
        "failed": ready.r.failed + resumed.r.failed,
        "live": live,
        "all_live_ms": round2(resumed.live_hist.max() as f64 / 1000.0),
        "p50_live_ms": round2(resumed.live_hist.ms(0.5)),
        "p99_live_ms": round2(resumed.live_hist.ms(0.99)),
        "replayed": resumed.r.replayed,
        "gaps": r.gaps,
        "dups": r.dups,
        "reorders": r.reorders,
        "tail_missing": r.tail_missing,
        "gap_signals": r.gap_signals,
        "catchup_readers_max": readers_max,
        "server_cpu_pct": round2(server_cpu),
        "machine_cpu_pct": round2(machine_cpu),
        "catchup_kafka_reads": delta("herald_catchup_kafka_reads_total"),
        "replay_buffer_hits": delta("herald_replay_buffer_hits_total"),
        "slow_disconnects": delta("herald_slow_disconnects_total"),
        "ok": problems.is_empty(),
        "problems": problems,
    }))
}

async fn smoke(a: SmokeArgs) -> anyhow::Result<bool> {
    let server = Server::start(&a.server, 1).await?;
    let outcome = smoke_on(&server, &a).await;
    server.stop().await;
    let results = outcome?;
    let mut ok = true;
    for r in &results {
        let strict = r["ok"].as_bool() == Some(true)
            && r["failed"].as_u64() == Some(0)
            && r["lost"].as_u64().unwrap_or(0) == 0
            && r["closed"].as_u64().unwrap_or(0) == 0;
        let detail = if r["scenario"] == "resume" {
            format!(
                "{} of {} live after {} ms, {} replayed",
                r["live"], r["connected"], r["all_live_ms"], r["replayed"]
            )
        } else {
            format!(
                "{} delivered of {}, lost {}, closed {}",
                r["delivered"], r["expected"], r["lost"], r["closed"]
            )
        };
        println!(
            "smoke {}: {} ({} clients, {detail}; gaps {}, dups {}, reorders {}, failed connections {})",
            r["scenario"].as_str().unwrap_or(""),
            if strict { "ok" } else { "FAILED" },
            r["clients"],
            r["gaps"],
            r["dups"],
            r["reorders"],
            r["failed"],
        );
        print_problems(r);
        ok &= strict;
    }
    // One machine-readable line last, for tests that run the smoke.
    let summary: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "scenario": r["scenario"], "ok": r["ok"], "clients": r["clients"],
                "failed": r["failed"], "lost": r["lost"], "closed": r["closed"],
                "gaps": r["gaps"], "dups": r["dups"], "reorders": r["reorders"],
                "live": r["live"], "problems": r["problems"],
            })
        })
        .collect();
    println!(
        "{}",
        json!({"scenario": "smoke", "ok": ok, "parts": summary})
    );
    write_result(
        &a.run,
        &json!({"scenario": "smoke", "ok": ok, "parts": results}),
    )?;
    Ok(ok)
}

async fn smoke_on(server: &Server, a: &SmokeArgs) -> anyhow::Result<Vec<Value>> {
    let n = a.clients.max(2);
    let mut run = a.run.clone();
    run.workers = Some(run.workers.unwrap_or(2));
    let base = |scenario, paths: Vec<String>, keys: Vec<String>, subs, rate| Flow {
        scenario,
        paths,
        keys,
        subs,
        rates: vec![rate],
        warmup: 0.3,
        step_seconds: 2.0,
        size: 100,
        // Debug builds and a busy machine: order and loss are what count here.
        p99_limit_ms: 5_000.0,
        stop_p99_ms: None,
        settle: 0.5,
        linger_ms: 0,
        expect_partitions: None,
    };
    let mut out = Vec::new();
    let path = server.path(Some("smoke-hot"))?;
    let flow = base(
        "broadcast",
        vec![path; n],
        vec!["smoke-hot".into()],
        vec![n as u64],
        50.0,
    );
    out.push(run_flow(server, flow, &run).await?);
    let keys: Vec<String> = (0..n / 2).map(|i| format!("smoke-k{i}")).collect();
    let paths = keys
        .iter()
        .map(|k| server.path(Some(k)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let flow = base("keyed", paths, keys.clone(), vec![1; keys.len()], 200.0);
    out.push(run_flow(server, flow, &run).await?);
    if server.is_herald() {
        let r = ResumeArgs {
            server: a.server.clone(),
            run,
            clients: n / 2,
            keys: (n / 10).max(1),
            rate: 100.0,
            behind: 1.0,
            size: 100,
            timeout: 30.0,
        };
        out.push(resume_on(server, &r, "smoke-r").await?);
    }
    Ok(out)
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

fn exit_on(result: anyhow::Result<Value>) -> anyhow::Result<()> {
    let v = result?;
    if v["ok"].as_bool() == Some(false) {
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Worker = cli.command {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        let r = local.block_on(&rt, worker_run());
        if let Err(e) = &r {
            eprintln!("herald-bench worker: {e:#}");
            std::process::exit(1);
        }
        // The blocking stdin reader would keep the runtime from shutting down.
        std::process::exit(0);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Idle(a) => exit_on(idle(a).await),
            Cmd::Broadcast(a) => exit_on(broadcast(a).await),
            Cmd::Keyed(a) => exit_on(keyed(a, false).await),
            Cmd::Light(a) => exit_on(keyed(a, true).await),
            Cmd::Latency(a) => exit_on(latency(a).await),
            Cmd::Resume(a) => exit_on(resume(a).await),
            Cmd::Smoke(a) => {
                if !smoke(a).await? {
                    std::process::exit(1);
                }
                Ok(())
            }
            Cmd::CursorSizes => {
                cursor_sizes();
                Ok(())
            }
            Cmd::Worker => unreachable!(),
        }
    })
}
