//! `idle`: idle SSE connections on one or several nodes: memory per
//! connection, idle CPU, and how many connections a machine holds.
//!
//! It owns the warm-up, the memory measurement before and after, and the
//! split of connections over nodes. The decision to know: memory per
//! connection is the server's PSS growth between a baseline taken after a
//! few warm-up streams per node (they assign partitions and allocate what
//! all streams share) and the moment all streams are open, divided by the
//! streams the workers opened; so shared start-up costs are not counted as
//! per-connection costs.

use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{open_stream, Sources};
use crate::engine::{print_problems, round2, Session};
use crate::fleet::{plan_workers, Fleet, MAX_PER_WORKER};
use crate::procfs::{self, cpu_pct, Mem};
use crate::servers::Server;
use crate::IdleArgs;

/// Pause after the warm-up streams, before the memory baseline.
const WARM_SETTLE: Duration = Duration::from_secs(1);

pub async fn idle(a: IdleArgs) -> anyhow::Result<Value> {
    let s = Session::start(&a.server, &a.run, a.nodes.max(1)).await?;
    let result = idle_on(&s.server, &a).await;
    s.finish(result, print_idle).await
}

fn print_idle(result: &Value) {
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
    print_problems(result);
}

async fn idle_on(server: &Server, a: &IdleArgs) -> anyhow::Result<Value> {
    let nodes = server.nodes.len();
    let per_node = a.connections.div_ceil(nodes);
    let warm_per_node = a.warm.min(per_node);
    let key = |i: usize| (a.keys > 0).then(|| format!("k{}", i % a.keys));
    let mut sources = Sources::new();
    // Warm up: the first streams assign partitions and allocate shared state.
    let mut warm = Vec::new();
    for (n, node) in server.nodes.iter().enumerate() {
        let src = sources.take(1, 1)[0];
        for i in 0..warm_per_node {
            let path = server.path(key(n * per_node + i).as_deref())?;
            warm.push(open_stream(node.addr, src, &path).await?.0);
        }
    }
    tokio::time::sleep(WARM_SETTLE).await;
    let before: Vec<Mem> = (0..nodes).map(|n| server.procs(n).mem()).collect();
    let mut specs = Vec::new();
    let mut fleet_per_node = Vec::new();
    for (n, node) in server.nodes.iter().enumerate() {
        let count = per_node.saturating_sub(warm_per_node);
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
    let (mut fleet, ready) = Fleet::start(specs).await?;
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    let after: Vec<Mem> = (0..nodes).map(|n| server.procs(n).mem()).collect();
    let growth_of = |field: fn(&Mem) -> u64| -> u64 {
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| field(a).saturating_sub(field(b)))
            .sum()
    };
    let rss_after: u64 = after.iter().map(|m| m.rss).sum();
    let procs = server.all_procs();
    let (t, s0, x0) = (
        std::time::Instant::now(),
        procs.ticks(),
        procfs::machine_busy_ticks(),
    );
    tokio::time::sleep(Duration::from_secs_f64(a.idle_seconds)).await;
    let secs = t.elapsed().as_secs_f64();
    let idle_cpu = cpu_pct(procs.ticks().saturating_sub(s0), secs);
    let machine_cpu = cpu_pct(procfs::machine_busy_ticks().saturating_sub(x0), secs);
    let snap = fleet.snap().await?;
    let reported = server.reported_connections().await;
    let (n_workers, connect_s) = (fleet.workers(), fleet.connect_s);
    fleet.quit().await;
    drop(warm);

    // Per node: the workers were started node by node.
    let open_total = snap.r.open;
    let fleet_total: u64 = ready.r.connected;
    let mut nodes_out = Vec::new();
    let mut first = 0;
    for n in 0..nodes {
        let mine = &snap.per[first..first + fleet_per_node[n]];
        first += fleet_per_node[n];
        let conns: u64 = mine.iter().map(|r| r.open).sum();
        let g = after[n].pss.saturating_sub(before[n].pss);
        nodes_out.push(json!({
            "node": n,
            "pid": server.nodes[n].pid,
            "connections": conns + warm_per_node as u64,
            "pss_before_kib": before[n].pss,
            "pss_after_kib": after[n].pss,
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
    let warm_total = (warm_per_node * nodes) as u64;
    let per_open = |kib: u64| round2(kib as f64 / open_total.max(1) as f64);
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
        "kib_per_connection": per_open(growth_of(|m| m.pss)),
        "anon_kib_per_connection": per_open(growth_of(|m| m.pss_anon)),
        "shmem_kib_per_connection": per_open(growth_of(|m| m.pss_shmem)),
        "rss_kib_per_connection": per_open(growth_of(|m| m.rss)),
        "server_pss_kib": after.iter().map(|m| m.pss).sum::<u64>(),
        "server_rss_kib": rss_after,
        "server_cpu_pct_idle": round2(idle_cpu),
        "machine_cpu_pct_idle": round2(machine_cpu),
        "loadgen_kib_per_connection": per_open(snap.r.rss_kib),
        "per_node": nodes_out,
        "ok": problems.is_empty(),
        "problems": problems,
    }))
}
