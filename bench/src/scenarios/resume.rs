//! `resume` (herald only): keyed clients take a cursor, disconnect, stay
//! away while records flow, then all reconnect at once with their last ids;
//! how long until every one is live again, and whether any record was lost,
//! repeated or reordered across the gap.
//!
//! It owns the disconnect/reconnect choreography and the catch-up figures
//! (herald's catch-up readers, Kafka reads and replay-buffer hits, from its
//! /metrics). The decision to know: a client counts as live at its first
//! record sent after the moment of the reconnect (`back`); everything before
//! it is replay, so "all live after N ms" is the time herald took to replay
//! what each client missed and reach the live edge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use herald_bench::record::now_us;
use serde_json::{json, Value};

use crate::engine::{print_problems, round2, Session};
use crate::fleet::Fleet;
use crate::procfs::{self, cpu_pct};
use crate::producer::Producer;
use crate::servers::{self, Server};
use crate::worker::Command;
use crate::ResumeArgs;

/// Pause between connecting and producing.
const SETTLE: Duration = Duration::from_millis(500);
/// How long clients may take to get their first record (and so an id).
const FIRST_ID_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_ID_POLL: Duration = Duration::from_millis(250);
/// How often herald's catch-up readers are sampled during the resume.
const READERS_POLL: Duration = Duration::from_millis(50);
/// Records keep flowing this long after the resume before the producer stops.
const AFTER_RESUME: Duration = Duration::from_millis(500);
/// How long the clients may take to see the producer's last records.
const TAIL_TIMEOUT: Duration = Duration::from_secs(15);
const TAIL_POLL: Duration = Duration::from_millis(200);

pub async fn resume(a: ResumeArgs) -> anyhow::Result<Value> {
    let s = Session::start(&a.server, &a.run, 1).await?;
    let result = match s.server.is_herald() {
        true => resume_on(&s.server, &a, "r").await,
        false => Err(anyhow!("resume runs against herald only")),
    };
    s.finish(result, print_resume).await
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

/// The resume on a running herald; keys are `prefix` followed by a number.
pub async fn resume_on(server: &Server, a: &ResumeArgs, prefix: &str) -> anyhow::Result<Value> {
    let keys: Vec<String> = (0..a.keys.max(1)).map(|i| format!("{prefix}{i}")).collect();
    let client_keys: Vec<&String> = (0..a.clients).map(|i| &keys[i % keys.len()]).collect();
    let paths = server.paths(&client_keys)?;
    let mut problems = Vec::new();
    let (mut fleet, ready) = Fleet::connect(server.addr(), paths, &a.run, true).await?;
    if ready.r.failed > 0 {
        problems.push(format!(
            "{} connections failed: {:?}",
            ready.r.failed, ready.r.errors
        ));
    }
    tokio::time::sleep(SETTLE).await;
    let producer = Producer::start(
        server,
        keys.clone(),
        a.size,
        0,
        herald_bench::encoding::Encoding::Raw,
    )?;
    producer.set_rate(a.rate).await?;
    // Everyone takes a cursor from at least one record of its key.
    let deadline = Instant::now() + FIRST_ID_TIMEOUT;
    loop {
        let s = fleet.snap().await?;
        if s.r.seen >= ready.r.connected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(FIRST_ID_POLL).await;
    }
    let before = servers::metrics(server.addr()).await;
    let dropped = fleet.cmd(&Command::Drop).await?;
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
                let m = servers::metrics(addr).await;
                max = max.max(m.get("herald_catchup_readers").copied().unwrap_or(0.0));
                tokio::time::sleep(READERS_POLL).await;
            }
            max
        })
    };
    let (x0, procs, started) = (
        procfs::machine_busy_ticks(),
        server.all_procs(),
        Instant::now(),
    );
    let s0 = procs.ticks();
    let resumed = fleet
        .cmd(&Command::Resume {
            back_us: now_us(),
            timeout_s: a.timeout,
        })
        .await?;
    sampling.store(false, Ordering::Release);
    let secs = started.elapsed().as_secs_f64();
    let server_cpu = cpu_pct(procs.ticks().saturating_sub(s0), secs);
    let machine_cpu = cpu_pct(procfs::machine_busy_ticks().saturating_sub(x0), secs);
    let readers_max = sampler.await.unwrap_or(0.0);
    let after = servers::metrics(server.addr()).await;
    // Keep producing a moment, then stop and let the tails arrive.
    tokio::time::sleep(AFTER_RESUME).await;
    let (seqs, publish_failures) = producer.finish().await?;
    let deadline = Instant::now() + TAIL_TIMEOUT;
    let mut tail = fleet.tail(&seqs).await?;
    while tail.r.tail_missing > 0 && Instant::now() < deadline {
        tokio::time::sleep(TAIL_POLL).await;
        tail = fleet.tail(&seqs).await?;
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
        "all_live_ms": round2(resumed.live_hist.max_ms()),
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
