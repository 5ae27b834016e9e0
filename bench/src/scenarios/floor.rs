//! `floor`: Kafka's latency floor beside herald's (herald only).
//!
//! In one run, alternating `--rounds` times:
//!
//! - **herald**: the light load (`--clients` clients, one key each, at
//!   `--rate` records/s) produce→client, and herald's own share (consume →
//!   socket write) from the node's `herald_own_latency_seconds` histogram;
//! - **floor**: meanwhile, a bare librdkafka consumer in this process on
//!   the same topic, with herald's fetch settings, timing the very same
//!   records from their produce to `poll` returning them.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

use herald_bench::record::now_us;

use crate::engine::{median, quantile as pct, round2, run_flow, Flow, Session};
use crate::FloorArgs;

/// A bare librdkafka consumer on the whole topic, from its end, with
/// herald's fetch settings: the produce → `poll` latency (ms) of every
/// record the light load's producer writes meanwhile (their values carry
/// their send time), until `stop`.
fn bare_floor(
    brokers: &str,
    fetch_wait_ms: u32,
    topic: &str,
    partitions: i32,
    stop: &std::sync::atomic::AtomicBool,
    ready: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<Vec<f64>> {
    use std::sync::atomic::Ordering;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "herald-bench-floor")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // herald's settings for this broker (see herald's kafka.rs).
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("fetch.queue.backoff.ms", "5")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(500) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    ready.store(true, Ordering::Release);
    let mut out = Vec::new();
    while !stop.load(Ordering::Acquire) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
            let got = now_us();
            if let Some((at, _, _)) = m.payload().and_then(herald_bench::record::parse_value) {
                out.push(got.saturating_sub(at) as f64 / 1000.0);
            }
        }
    }
    Ok(out)
}

/// Quantile `q` of a Prometheus histogram from bucket counts taken before
/// and after (upper bound of the bucket it falls in, ms).
fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, n - was)
        })
        .collect();
    let total = counts.iter().map(|(_, n)| *n).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    counts
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| le * 1000.0)
}

/// What each thread pool of the node did per second between two
/// readings: `{"name": {"run": ms/s, "wait": ms/s}}`. A
/// thread that ended meanwhile is missing; one that started counts whole.
fn sched_delta(
    before: &std::collections::BTreeMap<u32, (String, u64, u64)>,
    after: &std::collections::BTreeMap<u32, (String, u64, u64)>,
    secs: f64,
) -> Value {
    let mut pools: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for (tid, (name, run, wait)) in after {
        let (r0, w0) = before.get(tid).map_or((0, 0), |(_, r, w)| (*r, *w));
        // Numbered threads of one pool (rdk:broker12) count as one.
        let pool = name
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_owned();
        let e = pools.entry(pool).or_default();
        e.0 += run.saturating_sub(r0);
        e.1 += wait.saturating_sub(w0);
    }
    let per_s = |ns: u64| round2(ns as f64 / 1e6 / secs.max(1e-3));
    let rows: Vec<(String, f64, f64)> = pools
        .into_iter()
        .map(|(name, (run, wait))| (name, per_s(run), per_s(wait)))
        .filter(|(_, run, wait)| *run + *wait > 0.0)
        .collect();
    let mut out = serde_json::Map::new();
    for (name, run, wait) in rows {
        out.insert(name, json!({"run": run, "wait": wait}));
    }
    Value::Object(out)
}

async fn own_buckets(addr: std::net::SocketAddr) -> Vec<(f64, f64)> {
    let Ok((_, text)) = crate::client::http_get(addr, "/metrics").await else {
        return Vec::new();
    };
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("herald_own_latency_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, value) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.trim().parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

pub async fn floor(a: FloorArgs) -> anyhow::Result<Value> {
    let s = Session::start(&a.server, &a.run, 1).await?;
    let result = async {
        if !s.server.is_herald() {
            anyhow::bail!("the floor scenario compares herald with a bare consumer");
        }
        let addr = s.server.addr();
        let brokers = s
            .server
            .brokers
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the node's Kafka"))?;
        let keys: Vec<String> = (0..a.light.clients).map(|i| format!("k{i}")).collect();
        let mut rounds = Vec::new();
        for round in 0..a.light.rounds {
            // The floor reads what the light load's producer writes.
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reader = {
                let (b, t, p) = (brokers.clone(), a.server.topic.clone(), a.server.partitions);
                let (stop, ready) = (stop.clone(), ready.clone());
                let wait = if s.server.embedded_kafka { 5 } else { 10 };
                tokio::task::spawn_blocking(move || bare_floor(&b, wait, &t, p, &stop, &ready))
            };
            while !ready.load(std::sync::atomic::Ordering::Acquire) && !reader.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let before = own_buckets(addr).await;
            let node_pid = s.server.nodes.first().and_then(|n| n.pid);
            let sched_before = node_pid.map(crate::procfs::sched_ns).unwrap_or_default();
            let sched_at = Instant::now();
            let flow = Flow::per_key("light", &a.flow, &s.server, keys.clone())?
                .steps(vec![a.light.rate], a.light.seconds);
            let res = run_flow(&s.server, flow, &a.run).await;
            let after = own_buckets(addr).await;
            let sched = sched_delta(
                &sched_before,
                &node_pid.map(crate::procfs::sched_ns).unwrap_or_default(),
                sched_at.elapsed().as_secs_f64(),
            );
            stop.store(true, std::sync::atomic::Ordering::Release);
            let mut lat = reader.await??;
            let res = res?;
            lat.sort_by(|x, y| x.total_cmp(y));
            let step = res["steps"].get(0).cloned().unwrap_or(Value::Null);
            let row = json!({
                "round": round + 1,
                "floor_p50_ms": round2(pct(&lat, 0.5)),
                "floor_p99_ms": round2(pct(&lat, 0.99)),
                "floor_records": lat.len(),
                "herald_p50_ms": step["p50_ms"],
                "herald_p99_ms": step["p99_ms"],
                "own_p50_ms_at_most": histogram_quantile(&before, &after, 0.5),
                "own_p99_ms_at_most": histogram_quantile(&before, &after, 0.99),
                "ok": res["ok"],
                // Per thread pool of the node: ms per second on a CPU, and
                // runnable but waiting for one (the scheduler's share).
                "node_threads_ms_per_s": sched,
            });
            println!("floor: {row}");
            rounds.push(row);
        }
        let m = |k: &str| median(rounds.iter().filter_map(|r| r[k].as_f64()).collect());
        anyhow::Ok(json!({
            "scenario": "floor",
            "broker": if s.server.embedded_kafka { "embedded" } else { "tansu" },
            "ok": rounds.iter().all(|r| r["ok"] != false),
            "clients": a.light.clients,
            "rate": a.light.rate,
            "rounds": rounds,
            "floor_p50_ms": m("floor_p50_ms"),
            "floor_p99_ms": m("floor_p99_ms"),
            "herald_p50_ms": m("herald_p50_ms"),
            "herald_p99_ms": m("herald_p99_ms"),
            "own_p50_ms_at_most": m("own_p50_ms_at_most"),
            "own_p99_ms_at_most": m("own_p99_ms_at_most"),
        }))
    }
    .await;
    s.finish(result, |_| {}).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_time_is_per_pool_per_second_and_survives_threads_coming_and_going() {
        let t = |name: &str, run: u64, wait: u64| (name.to_owned(), run, wait);
        let before = [
            (1, t("tokio-rt-worker", 0, 0)),
            (2, t("rdk:broker1", 10_000_000, 0)),
            (3, t("gone", 5, 5)),
        ]
        .into_iter()
        .collect();
        let after = [
            (1, t("tokio-rt-worker", 4_000_000, 2_000_000)),
            (2, t("rdk:broker1", 12_000_000, 0)),
            (4, t("rdk:broker2", 2_000_000, 6_000_000)),
        ]
        .into_iter()
        .collect();
        let v = sched_delta(&before, &after, 2.0);
        assert_eq!(v["tokio-rt-worker"], json!({"run": 2.0, "wait": 1.0}));
        // Two brokers' threads are one pool; the new one counts whole.
        assert_eq!(v["rdk:broker"], json!({"run": 2.0, "wait": 3.0}));
        assert!(v.get("gone").is_none());
    }
}
