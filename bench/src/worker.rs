//! The worker process (`herald-bench worker`, hidden): holds up to 18,000
//! client connections, checks every record they receive, and answers the
//! coordinator's commands with [`Report`]s.
//!
//! It owns the coordinator↔worker protocol (a [`WorkerSpec`] line, then
//! [`Command`] lines in and one JSON [`Report`] line out per command) and the
//! per-connection checks: latency from the record's send time, order per
//! stream, herald's signal events, the last id for resume. It does not
//! decide what to connect to or when (fleet.rs and the engine do), and the
//! line splitting is herald's own client-side reader
//! (`herald::sse::read::LineReader`), the one the test harness uses too.
//! The decision to know: a worker is one thread (a current-thread runtime
//! and a LocalSet), so its state is in `RefCell`s, not locks, and reading a
//! line allocates nothing: 18,000 streams share one read buffer.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herald::sse::read::{Line, LineReader};
use herald_bench::encoding::text_of;
use herald_bench::record::{now_us, parse_value};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

use crate::client::open_stream;
use crate::hist::Hist;
use crate::procfs;

/// The one read buffer all connections of a worker share.
const READ_BUF: usize = 256 * 1024;
/// Errors a report carries at most (the first ones).
const MAX_ERRORS: usize = 8;
/// Connect errors a worker keeps at most.
const MAX_CONNECT_ERRORS: usize = 4;
/// A resume command's timeout when it names none, seconds.
const DEFAULT_RESUME_TIMEOUT_S: f64 = 60.0;

/// What a worker is to do: its first line on stdin.
#[derive(Serialize, Deserialize)]
pub struct WorkerSpec {
    pub target: SocketAddr,
    /// One request path per connection.
    pub paths: Vec<String>,
    pub sources: Vec<Ipv4Addr>,
    /// Remember each connection's last `id:` (for resume).
    pub track_ids: bool,
    /// Connections being opened at once.
    pub concurrency: usize,
}

/// The coordinator's commands, one line each on the worker's stdin; each
/// is answered with one [`Report`].
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Report the counters.
    Snap,
    /// Close every connection (keeping its last id).
    Drop,
    /// Reopen every connection from its last id; records sent at or after
    /// `back_us` count as live. Answers once all are live or `timeout_s` passed.
    Resume { back_us: u64, timeout_s: f64 },
    /// The producer's last sequence number per stream (-1: none): report
    /// how many each connection has not seen.
    Tail(Vec<i64>),
    /// Exit (no report).
    Quit,
}

impl Command {
    /// The command as the line the worker reads (without the newline).
    pub fn line(&self) -> String {
        match self {
            Command::Snap => "snap".into(),
            Command::Drop => "drop".into(),
            Command::Resume { back_us, timeout_s } => format!("resume {back_us} {timeout_s}"),
            Command::Tail(last) => format!("tail {}", serde_json::json!(last)),
            Command::Quit => "quit".into(),
        }
    }

    fn parse(line: &str) -> anyhow::Result<Command> {
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        Ok(match cmd {
            "snap" => Command::Snap,
            "drop" => Command::Drop,
            "resume" => {
                let mut args = arg.split_whitespace();
                let back_us = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .context("resume BACK_US TIMEOUT_S")?;
                let timeout_s = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(DEFAULT_RESUME_TIMEOUT_S);
                Command::Resume { back_us, timeout_s }
            }
            "tail" => Command::Tail(serde_json::from_str(arg)?),
            "quit" => Command::Quit,
            other => bail!("unknown worker command {other:?}"),
        })
    }
}

/// What a worker reports. Counters are cumulative; `hist` and `live_hist`
/// hold what arrived since the previous report.
#[derive(Default, Serialize, Deserialize, Clone, Debug)]
#[serde(default)]
pub struct Report {
    pub connected: u64,
    pub failed: u64,
    pub open: u64,
    pub closed: u64,
    pub connect_ms: u64,
    pub deliveries: u64,
    pub gaps: u64,
    pub dups: u64,
    pub reorders: u64,
    pub bad: u64,
    pub signals: u64,
    pub gap_signals: u64,
    pub seen: u64,
    pub without_id: u64,
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub reconnected: u64,
    pub live: u64,
    pub replayed: u64,
    pub tail_missing: u64,
    pub silent: u64,
    pub hist: Vec<(u32, u64)>,
    pub live_hist: Vec<(u32, u64)>,
    pub errors: Vec<String>,
}

impl Report {
    /// Adds another worker's report (the histograms are merged by the fleet).
    pub fn absorb(&mut self, o: &Report) {
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
            if self.errors.len() < MAX_ERRORS {
                self.errors.push(e.clone());
            }
        }
    }

    /// Records received once, in order (what was not a duplicate or reorder).
    pub fn unique(&self) -> u64 {
        self.deliveries.saturating_sub(self.dups + self.reorders)
    }
}

/// One client connection.
struct Conn {
    path: String,
    lines: LineReader,
    seen: Seen,
}

/// What one connection has seen so far.
#[derive(Default)]
struct Seen {
    /// (stream, last sequence number seen)
    streams: Vec<(u32, u64)>,
    last_id: Option<String>,
    /// Inside a `herald.*` signal event: its data is not a record.
    in_signal: bool,
    /// After a resume: records sent at or after this time (µs) are live.
    resume_from: u64,
    live: bool,
}

/// The worker's counters and the histograms since the last report.
#[derive(Default)]
struct Tally {
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
    /// Produce → receive latency, µs.
    hist: Hist,
    /// Resume → first live record, µs.
    live_hist: Hist,
}

impl Seen {
    /// One line of the stream, received at `now` (µs).
    fn line(&mut self, line: Line<'_>, t: &mut Tally, now: u64, track_ids: bool) {
        match line {
            Line::Dispatch => self.in_signal = false,
            Line::Field(b"data", v) if !self.in_signal => self.record(v, t, now),
            Line::Field(b"id", v) if track_ids => {
                let id = String::from_utf8_lossy(v);
                match &mut self.last_id {
                    Some(last) => {
                        last.clear();
                        last.push_str(&id);
                    }
                    None => self.last_id = Some(id.into_owned()),
                }
            }
            Line::Field(b"event", v) if v.starts_with(b"herald.") => {
                self.in_signal = true;
                t.signals += 1;
                if v == b"herald.gap" {
                    t.gap_signals += 1;
                }
            }
            Line::Field(..) | Line::Comment(_) => {}
        }
    }

    /// A `data:` value: one record, checked against its stream's last one.
    fn record(&mut self, value: &[u8], t: &mut Tally, now: u64) {
        let Some((ts, stream, seq)) = parse_value(text_of(value)) else {
            t.bad += 1;
            return;
        };
        t.deliveries += 1;
        t.hist.add(now.saturating_sub(ts));
        match self.streams.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, last)) => {
                if seq == *last + 1 {
                } else if seq > *last + 1 {
                    t.gaps += seq - *last - 1;
                } else if seq == *last {
                    t.dups += 1;
                } else {
                    t.reorders += 1;
                }
                if seq > *last {
                    *last = seq;
                }
            }
            None => self.streams.push((stream, seq)),
        }
        if self.resume_from > 0 && !self.live {
            if ts >= self.resume_from {
                self.live = true;
                t.live += 1;
                t.live_hist.add(now.saturating_sub(self.resume_from));
            } else {
                t.replayed += 1;
            }
        }
    }
}

struct WorkerState {
    spec: WorkerSpec,
    conns: RefCell<Vec<Conn>>,
    tally: RefCell<Tally>,
    tasks: RefCell<Vec<Option<tokio::task::JoinHandle<()>>>>,
    buf: RefCell<Vec<u8>>,
}

/// Counts a connection as open while it lives.
struct OpenGuard(Rc<WorkerState>);

impl OpenGuard {
    fn new(ws: Rc<WorkerState>) -> OpenGuard {
        ws.tally.borrow_mut().open += 1;
        OpenGuard(ws)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.tally.borrow_mut().open -= 1;
    }
}

impl WorkerState {
    /// Feeds bytes read from connection `idx`, received at `now` (µs).
    fn feed(&self, idx: usize, data: &[u8], now: u64) {
        let mut conns = self.conns.borrow_mut();
        let Conn { lines, seen, .. } = &mut conns[idx];
        let mut tally = self.tally.borrow_mut();
        let track = self.spec.track_ids;
        lines.feed(data, |line| seen.line(line, &mut tally, now, track));
    }

    fn report(&self) -> Report {
        let mut t = self.tally.borrow_mut();
        let conns = self.conns.borrow();
        let me = std::process::id();
        let r = Report {
            open: t.open,
            closed: t.closed,
            deliveries: t.deliveries,
            gaps: t.gaps,
            dups: t.dups,
            reorders: t.reorders,
            bad: t.bad,
            signals: t.signals,
            gap_signals: t.gap_signals,
            live: t.live,
            replayed: t.replayed,
            seen: conns.iter().filter(|k| !k.seen.streams.is_empty()).count() as u64,
            without_id: conns.iter().filter(|k| k.seen.last_id.is_none()).count() as u64,
            cpu_ticks: procfs::cpu_ticks(me),
            rss_kib: procfs::rss_kib(me),
            hist: t.hist.sparse(),
            live_hist: t.live_hist.sparse(),
            ..Report::default()
        };
        t.hist = Hist::new();
        t.live_hist = Hist::new();
        r
    }

    /// Closes every connection; each keeps what it has seen.
    async fn drop_all(&self) {
        let handles: Vec<_> = self
            .tasks
            .borrow_mut()
            .iter_mut()
            .map(Option::take)
            .collect();
        for h in handles.iter().flatten() {
            h.abort();
        }
        for h in handles.into_iter().flatten() {
            let _ = h.await;
        }
        for conn in self.conns.borrow_mut().iter_mut() {
            conn.lines = LineReader::default();
            conn.seen.in_signal = false;
        }
    }

    /// The producer's last sequence numbers against what each connection saw.
    fn tail(&self, expected: &[i64]) -> Report {
        let mut r = self.report();
        for conn in self.conns.borrow().iter() {
            if conn.seen.streams.is_empty() {
                r.silent += 1;
            }
            for &(s, last) in &conn.seen.streams {
                if let Some(&e) = expected.get(s as usize) {
                    if e > last as i64 {
                        r.tail_missing += (e - last as i64) as u64;
                    }
                }
            }
        }
        r
    }
}

async fn conn_task(ws: Rc<WorkerState>, idx: usize, stream: TcpStream, first: Vec<u8>) {
    let _open = OpenGuard::new(ws.clone());
    if !first.is_empty() {
        ws.feed(idx, &first, now_us());
    }
    loop {
        if stream.readable().await.is_err() {
            break;
        }
        let mut buf = ws.buf.borrow_mut();
        match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => ws.feed(idx, &buf[..n], now_us()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    ws.tally.borrow_mut().closed += 1;
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
                    if let Some(id) = &conn.seen.last_id {
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
        let error = match done {
            Ok((i, Ok((stream, first)))) => {
                ok += 1;
                let handle = tokio::task::spawn_local(conn_task(ws.clone(), i, stream, first));
                ws.tasks.borrow_mut()[i] = Some(handle);
                continue;
            }
            Ok((_, Err(e))) => format!("{e:#}"),
            Err(e) => format!("task: {e}"),
        };
        failed += 1;
        if errors.len() < MAX_CONNECT_ERRORS {
            errors.push(error);
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

/// The `worker` command: runs until `quit` or the end of stdin, then exits
/// the process (the blocking stdin reader would keep a runtime from shutting
/// down).
pub fn main() -> ! {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| tokio::task::LocalSet::new().block_on(&rt, run()));
    if let Err(e) = result {
        eprintln!("herald-bench worker: {e:#}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

async fn run() -> anyhow::Result<()> {
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
            lines: LineReader::default(),
            seen: Seen::default(),
        })
        .collect();
    let concurrency = spec.concurrency;
    let ws = Rc::new(WorkerState {
        spec,
        conns: RefCell::new(conns),
        tally: RefCell::new(Tally::default()),
        tasks: RefCell::new((0..n).map(|_| None).collect()),
        buf: RefCell::new(vec![0; READ_BUF]),
    });
    let started = Instant::now();
    let (ok, failed, errors) = connect_set(&ws, (0..n).collect(), false, concurrency).await;
    emit(&Report {
        connected: ok,
        failed,
        errors,
        connect_ms: started.elapsed().as_millis() as u64,
        ..ws.report()
    });

    while let Some(line) = lines.next_line().await? {
        match Command::parse(&line)? {
            Command::Snap => emit(&ws.report()),
            Command::Drop => {
                ws.drop_all().await;
                emit(&ws.report());
            }
            Command::Resume { back_us, timeout_s } => {
                for conn in ws.conns.borrow_mut().iter_mut() {
                    conn.seen.resume_from = back_us;
                    conn.seen.live = false;
                }
                let closed_before = ws.tally.borrow().closed;
                let (ok, failed, errors) = connect_set(&ws, (0..n).collect(), true, n).await;
                let deadline = Instant::now() + Duration::from_secs_f64(timeout_s);
                loop {
                    let (live, gone) = {
                        let t = ws.tally.borrow();
                        (t.live, t.closed - closed_before)
                    };
                    if live + gone >= ok || Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                emit(&Report {
                    reconnected: ok,
                    failed,
                    errors,
                    ..ws.report()
                });
            }
            Command::Tail(expected) => emit(&ws.tail(&expected)),
            Command::Quit => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_bench::record::make_value;

    #[test]
    fn commands_read_back_as_written() {
        for c in [
            Command::Snap,
            Command::Drop,
            Command::Resume {
                back_us: 1_700_000_000_000_000,
                timeout_s: 30.0,
            },
            Command::Tail(vec![-1, 0, 41]),
            Command::Quit,
        ] {
            assert_eq!(
                Command::parse(&c.line()).ok(),
                Some(c.clone()),
                "{}",
                c.line()
            );
        }
        assert_eq!(
            Command::parse("resume 5").ok(),
            Some(Command::Resume {
                back_us: 5,
                timeout_s: DEFAULT_RESUME_TIMEOUT_S
            })
        );
        assert!(Command::parse("resume").is_err());
        assert!(Command::parse("tail [x]").is_err());
        assert!(Command::parse("hello").is_err());
    }

    /// Feeds `chunks` to one connection the way `WorkerState::feed` does.
    fn feed(seen: &mut Seen, t: &mut Tally, chunks: &[&[u8]], track: bool) {
        let mut lines = LineReader::default();
        for c in chunks {
            lines.feed(c, |line| seen.line(line, t, 10_000_000, track));
        }
    }

    fn event(id: &str, stream: usize, seq: u64) -> Vec<u8> {
        let mut v = format!("id: {id}\r\ndata: ").into_bytes();
        v.extend(make_value(9_000_000, stream, seq, 40));
        v.extend_from_slice(b"\r\n\r\n");
        v
    }

    #[test]
    fn records_are_checked_for_order_whatever_the_reads() {
        let mut text = Vec::new();
        for (stream, seq) in [(0, 0), (0, 1), (1, 7), (0, 3), (0, 3), (0, 2), (1, 8)] {
            text.extend(event(&format!("c{seq}"), stream, seq));
        }
        text.extend_from_slice(b": heartbeat\n\nevent: herald.gap\ndata: {\"x\":1}\n\n");
        text.extend_from_slice(b"event: other\ndata: junk\n\n");
        for cut in 0..text.len() {
            let (mut seen, mut t) = (Seen::default(), Tally::default());
            feed(&mut seen, &mut t, &[&text[..cut], &text[cut..]], true);
            assert_eq!(t.deliveries, 7, "cut at {cut}");
            assert_eq!((t.gaps, t.dups, t.reorders), (1, 1, 1), "cut at {cut}");
            assert_eq!((t.signals, t.gap_signals, t.bad), (1, 1, 1), "cut at {cut}");
            assert_eq!(seen.streams, vec![(0, 3), (1, 8)]);
            assert_eq!(seen.last_id.as_deref(), Some("c8"));
            assert!((t.hist.ms(0.5) - 1000.0).abs() < 30.0);
        }
    }

    #[test]
    fn ids_are_kept_only_when_tracked_and_liveness_follows_the_resume_time() {
        let (mut seen, mut t) = (Seen::default(), Tally::default());
        feed(&mut seen, &mut t, &[&event("a", 0, 0)], false);
        assert_eq!(seen.last_id, None);
        seen.resume_from = 9_000_001;
        feed(&mut seen, &mut t, &[&event("b", 0, 1)], true);
        assert_eq!((t.replayed, t.live), (1, 0));
        seen.resume_from = 9_000_000;
        feed(
            &mut seen,
            &mut t,
            &[&event("c", 0, 2), &event("d", 0, 3)],
            true,
        );
        assert_eq!((t.replayed, t.live), (1, 1), "live once");
        assert_eq!(seen.last_id.as_deref(), Some("d"));
    }
}
