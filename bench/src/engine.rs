//! The scenario engine: what every scenario does alike. A [`Session`] waits
//! for a quiet machine, starts the server under test, and at the end stops
//! it, prints the result and writes it as JSON; [`run_flow`] runs a
//! [`Flow`]: clients on paths, a producer over streams, a series of rate
//! steps, each measured, then a drain and a check of every record.
//!
//! It owns the measuring (deliveries, latency, CPU per step), the verdicts
//! (`problems` fail a run, `notes` do not) and the output format of flow
//! results. It does not know any scenario's parameters (scenarios/ does) or
//! how servers, producers and clients work inside. The decision to know:
//! lost, duplicated and reordered records, failed connections and streams
//! the server closed are problems, except that past the server's capacity
//! (a step not sustained) cut streams and what they lost are only notes; a
//! run with any problem exits non-zero, so a figure never comes from a run
//! that lost data unnoticed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fleet::{Fleet, Snap};
use crate::procfs::{self, cpu_pct, ProcSet};
use crate::producer::Producer;
use crate::servers::Server;
use crate::{FlowArgs, RunArgs, ServerArgs};

/// How long herald may take to assign the partitions a flow needs.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(15);
const ASSIGN_POLL: Duration = Duration::from_millis(100);
/// After the producer stops, wait at most this long for the last deliveries,
const DRAIN_MAX: Duration = Duration::from_secs(20);
/// and give up sooner once none has arrived for this long.
const DRAIN_STILL: Duration = Duration::from_secs(3);
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// A step is sustained if it delivers this share of what was offered.
const SUSTAINED_SHARE: f64 = 0.9;

/// Rounds to two decimals, as every figure in the results is.
/// Quantile `q` of sorted values (the nearest rank; 0 when empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The median of `v` (the upper one of an even count; 0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Waits for a quiet machine if asked; what it saw goes into the result.
pub async fn quiet(run: &RunArgs) -> Value {
    if run.quiet_wait <= 0.0 {
        return Value::Null;
    }
    let (busy, waited) = procfs::wait_quiet(run.quiet_wait, run.quiet_below).await;
    if busy >= run.quiet_below {
        eprintln!("herald-bench: the machine is busy ({busy:.0} % of a core) after {waited:.0} s; measuring anyway");
    }
    json!({"busy_pct": busy, "waited_s": waited})
}

/// The set-up and teardown every scenario shares: a quiet machine, the
/// server under test, and at the end the server stopped and the result
/// printed and written.
pub struct Session<'r> {
    pub server: Server,
    run: &'r RunArgs,
    machine_before: Value,
}

impl<'r> Session<'r> {
    /// Waits for a quiet machine (--quiet-wait), then starts `nodes` nodes.
    pub async fn start(
        server: &ServerArgs,
        run: &'r RunArgs,
        nodes: usize,
    ) -> anyhow::Result<Session<'r>> {
        let machine_before = quiet(run).await;
        let server = Server::start(server, nodes).await?;
        Ok(Session {
            server,
            run,
            machine_before,
        })
    }

    /// Stops the server (whatever `result` is), then records what the
    /// machine was like before, prints the result with `print` and writes it
    /// (--json).
    pub async fn finish(
        self,
        result: anyhow::Result<Value>,
        print: impl FnOnce(&Value),
    ) -> anyhow::Result<Value> {
        self.server.stop().await;
        let mut result = result?;
        result["machine_before"] = self.machine_before;
        print(&result);
        write_result(self.run, &result)?;
        Ok(result)
    }
}

/// Writes a result where --json says (`-`: stdout).
pub fn write_result(run: &RunArgs, result: &Value) -> anyhow::Result<()> {
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

pub fn print_problems(result: &Value) {
    for p in result["problems"].as_array().into_iter().flatten() {
        println!("PROBLEM: {}", p.as_str().unwrap_or(""));
    }
    for p in result["notes"].as_array().into_iter().flatten() {
        println!("note: {}", p.as_str().unwrap_or(""));
    }
}

/// Clients on paths, a producer over streams, and the rate steps to take.
pub struct Flow {
    scenario: &'static str,
    /// One request path per client.
    paths: Vec<String>,
    /// One key per stream.
    keys: Vec<String>,
    /// Clients per stream (to know how many deliveries a record makes).
    subs: Vec<u64>,
    /// Records/s of each step (over all streams).
    rates: Vec<f64>,
    step_seconds: f64,
    /// Stop the steps once one is not sustained or its p99 passes this (ms).
    stop_p99_ms: Option<f64>,
    /// herald: partitions that must be assigned before producing.
    expect_partitions: Option<BTreeSet<i32>>,
    knobs: FlowArgs,
}

impl Flow {
    fn new(scenario: &'static str, knobs: &FlowArgs) -> Flow {
        Flow {
            scenario,
            paths: Vec::new(),
            keys: Vec::new(),
            subs: Vec::new(),
            rates: Vec::new(),
            step_seconds: 0.0,
            stop_p99_ms: None,
            expect_partitions: None,
            knobs: knobs.clone(),
        }
    }

    /// `clients` clients on one `path` that carries every stream of `keys`.
    pub fn shared(
        scenario: &'static str,
        knobs: &FlowArgs,
        path: String,
        keys: Vec<String>,
        clients: usize,
    ) -> Flow {
        Flow {
            paths: vec![path; clients],
            subs: vec![clients as u64; keys.len()],
            keys,
            ..Flow::new(scenario, knobs)
        }
    }

    /// Clients on their own paths (`paths`), over streams `keys` with
    /// `subs[i]` clients each.
    pub fn per_path(
        scenario: &'static str,
        knobs: &FlowArgs,
        paths: Vec<String>,
        keys: Vec<String>,
        subs: Vec<u64>,
    ) -> Flow {
        Flow {
            paths,
            keys,
            subs,
            ..Flow::new(scenario, knobs)
        }
    }

    /// One client per key, on `server`'s path for it.
    pub fn per_key(
        scenario: &'static str,
        knobs: &FlowArgs,
        server: &Server,
        keys: Vec<String>,
    ) -> anyhow::Result<Flow> {
        Ok(Flow {
            paths: server.paths(&keys)?,
            subs: vec![1; keys.len()],
            keys,
            ..Flow::new(scenario, knobs)
        })
    }

    /// The steps: each rate (records/s) for `seconds`.
    pub fn steps(self, rates: Vec<f64>, seconds: f64) -> Flow {
        Flow {
            rates,
            step_seconds: seconds,
            ..self
        }
    }

    /// Stop rising once a step is not sustained or its p99 passes `ms`.
    pub fn stop_at_p99(self, ms: Option<f64>) -> Flow {
        Flow {
            stop_p99_ms: ms,
            ..self
        }
    }

    /// herald: wait for these partitions to be assigned, and check that no
    /// others are.
    pub fn expect_partitions(self, partitions: Option<BTreeSet<i32>>) -> Flow {
        Flow {
            expect_partitions: partitions,
            ..self
        }
    }
}

/// The counters a step is measured by, at one moment.
struct Sample {
    at: Instant,
    snap: Snap,
    server_ticks: u64,
    /// This process's ticks (it produces); the workers' are in `snap`.
    own_ticks: u64,
    produced: u64,
    machine_ticks: u64,
}

impl Sample {
    async fn take(
        fleet: &mut Fleet,
        procs: &ProcSet,
        producer: &Producer,
    ) -> anyhow::Result<Sample> {
        let snap = fleet.snap().await?;
        Ok(Sample {
            at: Instant::now(),
            snap,
            server_ticks: procs.ticks(),
            own_ticks: procfs::cpu_ticks(std::process::id()),
            produced: producer.produced().await,
            machine_ticks: procfs::machine_busy_ticks(),
        })
    }
}

/// The step at `rate` between samples `a` and `b`, as a result's step.
fn step(flow: &Flow, rate: f64, mean_subs: f64, a: &Sample, b: &Sample) -> Value {
    let secs = (b.at - a.at).as_secs_f64();
    let pct = |ticks: u64| round2(cpu_pct(ticks, secs));
    let (server_cpu, loadgen_cpu, machine_cpu) = (
        pct(b.server_ticks.saturating_sub(a.server_ticks)),
        pct((b.snap.r.cpu_ticks + b.own_ticks).saturating_sub(a.snap.r.cpu_ticks + a.own_ticks)),
        pct(b.machine_ticks.saturating_sub(a.machine_ticks)),
    );
    let deliveries = b.snap.r.deliveries - a.snap.r.deliveries;
    let per_s = deliveries as f64 / secs;
    let offered = rate * mean_subs;
    let produced = b.produced.saturating_sub(a.produced);
    let hist = &b.snap.hist;
    let p99 = hist.ms(0.99);
    let closed = b.snap.r.closed - a.snap.r.closed;
    let sustained = per_s >= SUSTAINED_SHARE * offered && closed == 0;
    let pass = sustained && p99 <= flow.knobs.p99_limit_ms;
    json!({
        "rate": rate,
        "seconds": round2(secs),
        "produced": produced,
        "produced_per_s": round2(produced as f64 / secs),
        "offered_per_s": offered.round(),
        "deliveries": deliveries,
        "deliveries_per_s": per_s.round(),
        "p50_ms": round2(hist.ms(0.5)),
        "p99_ms": round2(p99),
        "max_ms": round2(hist.max_ms()),
        "server_cpu_pct": server_cpu,
        "loadgen_cpu_pct": loadgen_cpu,
        "machine_cpu_pct": machine_cpu,
        // Everything else: other processes, and kernel work no process was charged for.
        "other_cpu_pct": round2((machine_cpu - server_cpu - loadgen_cpu).max(0.0)),
        "closed": closed,
        "sustained": sustained,
        "pass": pass,
    })
}

/// herald: waits until `want` is assigned (or a while); what is assigned.
async fn wait_assigned(server: &Server, want: Option<&BTreeSet<i32>>) -> Option<BTreeSet<i32>> {
    let deadline = Instant::now() + ASSIGN_TIMEOUT;
    loop {
        let assigned = server.assigned_partitions().await;
        let ok = match (want, &assigned) {
            (Some(want), Some(have)) => want.is_subset(have),
            _ => true,
        };
        if ok || Instant::now() > deadline {
            return assigned;
        }
        tokio::time::sleep(ASSIGN_POLL).await;
    }
}

/// Waits for what is still on its way: until `expected` records arrived,
/// none arrived for a while, or the drain took too long.
async fn drain(fleet: &mut Fleet, expected: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let (mut last, mut last_change) = (0u64, Instant::now());
    let mut fin = fleet.snap().await?;
    while fin.r.unique() < expected
        && start.elapsed() < DRAIN_MAX
        && last_change.elapsed() < DRAIN_STILL
    {
        tokio::time::sleep(DRAIN_POLL).await;
        fin = fleet.snap().await?;
        if fin.r.deliveries != last {
            (last, last_change) = (fin.r.deliveries, Instant::now());
        }
    }
    Ok(())
}

/// The step with the most deliveries/s.
fn best<'a>(steps: impl Iterator<Item = &'a Value>) -> Option<&'a Value> {
    steps.max_by(|a, b| {
        a["deliveries_per_s"]
            .as_f64()
            .partial_cmp(&b["deliveries_per_s"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    })
}

/// Runs `flow` against `server`: connects the clients, takes the steps,
/// drains, checks every stream's tail, and returns the result.
pub async fn run_flow(server: &Server, flow: Flow, run: &RunArgs) -> anyhow::Result<Value> {
    let clients = flow.paths.len();
    let mut problems: Vec<String> = Vec::new();
    // The server's memory before any client: what the clients add is the rest.
    let pss_idle = server.all_procs().pss();
    let (mut fleet, ready) = Fleet::connect(server.addr(), flow.paths.clone(), run, false).await?;
    if ready.r.failed > 0 {
        problems.push(format!(
            "{} of {clients} connections failed: {:?}",
            ready.r.failed, ready.r.errors
        ));
    }
    tokio::time::sleep(Duration::from_secs_f64(flow.knobs.settle)).await;
    let assigned = match server.is_herald() {
        true => wait_assigned(server, flow.expect_partitions.as_ref()).await,
        false => None,
    };
    let producer = Producer::start(
        server,
        flow.keys.clone(),
        flow.knobs.size,
        flow.knobs.linger_ms,
        flow.knobs.encoding,
    )?;
    let procs = server.all_procs();
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
        tokio::time::sleep(Duration::from_secs_f64(flow.knobs.warmup)).await;
        let a = Sample::take(&mut fleet, &procs, &producer).await?;
        tokio::time::sleep(Duration::from_secs_f64(flow.step_seconds)).await;
        let b = Sample::take(&mut fleet, &procs, &producer).await?;
        let step = step(&flow, rate, mean_subs, &a, &b);
        let f = |name: &str| step[name].as_f64().unwrap_or(0.0);
        let (sustained, pass) = (step["sustained"] == true, step["pass"] == true);
        eprintln!(
            "{} on {:?}: {:>8} rec/s  {:>10} deliveries/s  p50 {:>8.2} ms  p99 {:>8.2} ms  server {:>5.0}%  loadgen {:>5.0}%  other {:>4.0}%{}",
            flow.scenario,
            server.kind,
            rate,
            step["deliveries_per_s"],
            f("p50_ms"),
            b.snap.hist.ms(0.99),
            f("server_cpu_pct"),
            f("loadgen_cpu_pct"),
            f("other_cpu_pct"),
            if pass { "" } else { "  (fails)" }
        );
        let stop = flow
            .stop_p99_ms
            .is_some_and(|stop| !sustained || b.snap.hist.ms(0.99) > stop);
        steps.push(step);
        if stop {
            break;
        }
    }
    let (seqs, publish_failures) = producer.finish().await?;
    let expected: u64 = seqs.iter().zip(&flow.subs).map(|(n, s)| n * s).sum();
    drain(&mut fleet, expected).await?;
    let tail = fleet.tail(&seqs).await?;
    let pss = procs.pss();
    let workers = fleet.workers();
    let connect_s = fleet.connect_s;
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
    let best_pass = best(steps.iter().filter(|s| s["pass"].as_bool() == Some(true)));
    let best_any = best(steps.iter());
    Ok(json!({
        "scenario": flow.scenario,
        "server": server.kind,
        "label": run.label,
        "clients": clients,
        "streams": flow.keys.len(),
        "size": flow.knobs.size,
        "encoding": flow.knobs.encoding,
        "workers": workers,
        "connected": ready.r.connected,
        "failed": ready.r.failed,
        "connect_s": round2(connect_s),
        "p99_limit_ms": flow.knobs.p99_limit_ms,
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
        "server_pss_idle_kib": pss_idle,
        "loadgen_rss_kib": r.rss_kib,
        "ok": problems.is_empty(),
        "problems": problems,
        "notes": notes,
    }))
}

/// Prints a flow's result: a line about the clients, a table of the steps,
/// the totals and the problems.
pub fn print_flow(result: &Value) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_step_is_the_one_with_most_deliveries() {
        let steps = [
            json!({"deliveries_per_s": 10.0, "pass": true}),
            json!({"deliveries_per_s": 30.0, "pass": false}),
            json!({"deliveries_per_s": 20.0, "pass": true}),
        ];
        assert_eq!(best(steps.iter()), Some(&steps[1]));
        let passing = steps.iter().filter(|s| s["pass"] == true);
        assert_eq!(best(passing), Some(&steps[2]));
        assert_eq!(best([].iter()), None);
        assert_eq!(round2(1.23456), 1.23);
    }
}
