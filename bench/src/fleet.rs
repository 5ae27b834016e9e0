//! The coordinator's side of the workers: plans which worker holds which
//! connections, starts the worker processes, sends them commands and merges
//! their reports.
//!
//! It owns the worker processes' lives (spawned from this binary as
//! `herald-bench worker`, killed with it) and the merging of their
//! [`Report`]s into one [`Snap`]. It does not parse events or open
//! connections itself (worker.rs does), nor decide when to measure (the
//! engine does). The decision to know: a worker holds at most
//! [`MAX_PER_WORKER`] sockets, because a process may open 20,000 files; so
//! the number of workers follows from the clients, and `--workers` is only
//! a minimum.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::client::Sources;
use crate::hist::Hist;
use crate::sys;
use crate::worker::{self, Report, WorkerSpec};
use crate::RunArgs;

/// Sockets one worker process holds at most (20,000 files per process).
pub const MAX_PER_WORKER: usize = 18_000;
/// Connections a worker opens at once (unless --connect-concurrency).
const CONNECT_CONCURRENCY: usize = 256;
/// How long workers may take to open their connections.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long workers may take to answer a command (a resume waits for its
/// clients to be live).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a worker may take to exit after `quit`.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
}

/// The running workers. Dropping it kills them.
pub struct Fleet {
    workers: Vec<WorkerProc>,
    /// Seconds from the start until every worker had opened its connections.
    pub connect_s: f64,
}

/// A fleet-wide report: summed counters, merged histograms.
pub struct Snap {
    pub r: Report,
    pub hist: Hist,
    pub live_hist: Hist,
    /// Each worker's own report, in the order they were started.
    pub per: Vec<Report>,
}

impl Fleet {
    /// Starts one worker per spec; returns once all of them have opened
    /// their connections, with their first report.
    pub async fn start(specs: Vec<WorkerSpec>) -> anyhow::Result<(Fleet, Snap)> {
        let started = Instant::now();
        let exe = std::env::current_exe()?;
        let mut workers = Vec::new();
        for spec in &specs {
            let mut cmd = Command::new(&exe);
            cmd.arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            sys::die_with_parent(&mut cmd, libc::SIGKILL);
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
        let mut fleet = Fleet {
            workers,
            connect_s: 0.0,
        };
        let ready = fleet.collect(READY_TIMEOUT).await?;
        fleet.connect_s = started.elapsed().as_secs_f64();
        Ok((fleet, ready))
    }

    /// Spreads `paths` over enough workers for `run` (see [`default_workers`])
    /// and starts them, all connecting to `target`.
    pub async fn connect(
        target: SocketAddr,
        paths: Vec<String>,
        run: &RunArgs,
        track_ids: bool,
    ) -> anyhow::Result<(Fleet, Snap)> {
        let workers = default_workers(run, paths.len());
        let mut specs = plan_workers(
            target,
            paths,
            workers,
            run.per_source,
            &mut Sources::new(),
            track_ids,
        );
        for s in &mut specs {
            s.concurrency = run.connect_concurrency.unwrap_or(CONNECT_CONCURRENCY);
        }
        Fleet::start(specs).await
    }

    /// Worker processes.
    pub fn workers(&self) -> usize {
        self.workers.len()
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

    /// Sends `cmd` to every worker; their merged answers.
    pub async fn cmd(&mut self, cmd: &worker::Command) -> anyhow::Result<Snap> {
        let line = format!("{}\n", cmd.line());
        for w in &mut self.workers {
            w.stdin.write_all(line.as_bytes()).await?;
            w.stdin.flush().await?;
        }
        self.collect(COMMAND_TIMEOUT).await
    }

    pub async fn snap(&mut self) -> anyhow::Result<Snap> {
        self.cmd(&worker::Command::Snap).await
    }

    /// What the clients have not seen of what the producer sent: `produced`
    /// records per stream (the report's `tail_missing` and `silent`).
    pub async fn tail(&mut self, produced: &[u64]) -> anyhow::Result<Snap> {
        let last = produced.iter().map(|&n| n as i64 - 1).collect();
        self.cmd(&worker::Command::Tail(last)).await
    }

    /// Asks every worker to exit; kills those that do not.
    pub async fn quit(mut self) {
        let line = format!("{}\n", worker::Command::Quit.line());
        for w in &mut self.workers {
            let _ = w.stdin.write_all(line.as_bytes()).await;
        }
        for w in &mut self.workers {
            if tokio::time::timeout(QUIT_TIMEOUT, w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.kill().await;
            }
        }
    }
}

/// Splits `paths` over `workers` (more if one would hold more than
/// [`MAX_PER_WORKER`]); all of them to `target`.
pub fn plan_workers(
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
            concurrency: CONNECT_CONCURRENCY,
        });
    }
    specs
}

/// Workers for `clients`: `--workers`, or 2 from 200 clients on (1 below),
/// and never fewer than [`MAX_PER_WORKER`] allows.
pub fn default_workers(run: &RunArgs, clients: usize) -> usize {
    run.workers
        .unwrap_or(if clients >= 200 { 2 } else { 1 })
        .max(clients.div_ceil(MAX_PER_WORKER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_spread_evenly_and_no_worker_holds_too_many() {
        let target: SocketAddr = "127.0.0.1:1".parse().expect("an address");
        let paths: Vec<String> = (0..40_001).map(|i| format!("/p{i}")).collect();
        let specs = plan_workers(target, paths, 2, 2000, &mut Sources::new(), false);
        assert_eq!(specs.len(), 3);
        let sizes: Vec<usize> = specs.iter().map(|s| s.paths.len()).collect();
        assert_eq!(sizes, vec![13_334, 13_334, 13_333]);
        assert_eq!(specs[0].paths[0], "/p0");
        assert_eq!(specs[2].paths[13_332], "/p40000");
        assert!(specs.iter().all(|s| s.sources.len() == 7));
    }
}
