//! `presence-churn`: what presence costs a node under connection churn
//! (herald only).
//!
//! The light load (1,000 clients, one key each, 1,000 records/s), measured
//! alone and then beside `--churn-streams` other streams that this process
//! keeps opening and closing at `--churn-rate` a second (over
//! `--churn-selectors` selectors), alternating, `--rounds` times. Reports
//! the light load's p99 in both, and the presence records the node wrote a
//! second while churning.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{open_stream, Sources};
use crate::engine::{round2, run_flow, Flow, Session};
use crate::ChurnArgs;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Keeps about `held` streams open on `addr`, replacing `rate` of them a
/// second, until `stop`. Returns the streams opened.
async fn churn(
    addr: SocketAddr,
    topic: String,
    held: usize,
    rate: usize,
    selectors: usize,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
) {
    let mut sources = Sources::new();
    let addrs = sources.take(held.max(1), 1000);
    let mut open: VecDeque<tokio::net::TcpStream> = VecDeque::new();
    let mut n = 0usize;
    let per_tick = (rate / 20).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // Fill up to `held` first, then replace `per_tick` each tick.
        let want = if open.len() < held {
            (held - open.len()).min(500)
        } else {
            per_tick
        };
        for _ in 0..want {
            let path = format!("/v1/events?topic={topic}/c{}", (n / 3) % selectors.max(1));
            let source = addrs[(n / 1000) % addrs.len()];
            n += 1;
            if let Ok((s, _)) = open_stream(addr, source, &path).await {
                open.push_back(s);
                opened.fetch_add(1, Ordering::Relaxed);
            }
            if open.len() > held {
                open.pop_front();
            }
        }
    }
}

async fn presence_records(addr: SocketAddr) -> f64 {
    crate::servers::metrics(addr)
        .await
        .get("herald_presence_records_total")
        .copied()
        .unwrap_or(0.0)
}

pub async fn churn_scenario(a: ChurnArgs) -> anyhow::Result<Value> {
    let s = Session::start(&a.server, &a.run, 1).await?;
    let result = async {
        if !s.server.is_herald() {
            anyhow::bail!("presence is herald's");
        }
        let addr = s.server.addr();
        let keys: Vec<String> = (0..a.light.clients).map(|i| format!("k{i}")).collect();
        let mut rounds = Vec::new();
        for round in 0..a.light.rounds {
            for churning in [false, true] {
                let stop = Arc::new(AtomicBool::new(false));
                let opened = Arc::new(AtomicUsize::new(0));
                let task = churning.then(|| {
                    tokio::spawn(churn(
                        addr,
                        a.server.topic.clone(),
                        a.churn_streams,
                        a.churn_rate,
                        a.churn_selectors,
                        stop.clone(),
                        opened.clone(),
                    ))
                });
                if churning {
                    // Until the churn holds its streams.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while opened.load(Ordering::Relaxed) < a.churn_streams
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let records_before = presence_records(addr).await;
                let opened_before = opened.load(Ordering::Relaxed);
                let started = Instant::now();
                let flow = Flow::per_key("light", &a.flow, &s.server, keys.clone())?
                    .steps(vec![a.light.rate], a.light.seconds);
                let r = run_flow(&s.server, flow, &a.run).await?;
                let secs = started.elapsed().as_secs_f64();
                let records = presence_records(addr).await - records_before;
                let churned = opened.load(Ordering::Relaxed) - opened_before;
                stop.store(true, Ordering::Relaxed);
                if let Some(t) = task {
                    let _ = t.await;
                }
                let step = r["steps"].get(0).cloned().unwrap_or(Value::Null);
                rounds.push(json!({
                    "round": round + 1,
                    "churning": churning,
                    "p50_ms": step["p50_ms"],
                    "p99_ms": step["p99_ms"],
                    "deliveries_per_s": step["deliveries_per_s"],
                    "ok": r["ok"],
                    "churned_per_s": round2(churned as f64 / secs.max(1e-9)),
                    "presence_records_per_s": round2(records / secs.max(1e-9)),
                }));
                println!(
                    "presence-churn: {}",
                    rounds.last().cloned().unwrap_or_default()
                );
            }
        }
        let p99 = |c: bool| {
            median(
                rounds
                    .iter()
                    .filter(|r| r["churning"] == c)
                    .filter_map(|r| r["p99_ms"].as_f64())
                    .collect(),
            )
        };
        let ratio = p99(true) / p99(false).max(1e-9);
        let ok = rounds.iter().all(|r| r["ok"] != false);
        anyhow::Ok(json!({
            "scenario": "presence-churn",
            "ok": ok,
            "clients": a.light.clients,
            "rate": a.light.rate,
            "churn_streams": a.churn_streams,
            "churn_rate": a.churn_rate,
            "churn_selectors": a.churn_selectors,
            "rounds": rounds,
            "p99_ms_alone": p99(false),
            "p99_ms_churning": p99(true),
            "p99_ratio": round2(ratio),
        }))
    }
    .await;
    s.finish(result, |_| {}).await
}
