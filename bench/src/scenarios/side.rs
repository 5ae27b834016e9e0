//! `side-by-side`: KafkaSSE and herald at once, on the very same records.
//!
//! KafkaSSE reads the embedded Kafka of a herald node started beside it.
//! A second herald node on that same Kafka serves herald's side, so that
//! neither server is also the other's broker. `--clients` clients open the
//! whole topic on KafkaSSE and as many on that second node, one producer
//! writes each record once, and both fleets are measured over the same
//! step. Unlike the alternating `latency` runs, the two servers and the
//! Kafka share the machine while they work, so each one's figures carry
//! the others' load.

use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::{round2, Session};
use crate::fleet::{Fleet, Snap};
use crate::procfs::{cpu_pct, ProcSet};
use crate::producer::Producer;
use crate::servers::Kind;
use crate::LatencyArgs;

/// Waiting for the last records: at most this long, or this long without any.
const DRAIN_MAX: Duration = Duration::from_secs(20);
const DRAIN_STILL: Duration = Duration::from_secs(3);
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// One fleet's figures over the step and at the end.
fn side(ready: &Snap, a: &Snap, b: &Snap, tail: &Snap, secs: f64, expected: u64) -> Value {
    let deliveries = b.r.deliveries.saturating_sub(a.r.deliveries);
    json!({
        "connected": ready.r.connected,
        "failed": ready.r.failed,
        "errors": ready.r.errors.iter().take(3).collect::<Vec<_>>(),
        "deliveries_per_s": (deliveries as f64 / secs.max(1e-3)).round(),
        "p50_ms": round2(b.hist.ms(0.5)),
        "p99_ms": round2(b.hist.ms(0.99)),
        "expected": expected,
        "delivered": tail.r.unique(),
        "lost": expected.saturating_sub(tail.r.unique()),
        "order_errors": tail.r.gaps + tail.r.dups + tail.r.reorders,
    })
}

async fn drain(fleet: &mut Fleet, expected: u64) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let (mut last, mut changed) = (u64::MAX, tokio::time::Instant::now());
    loop {
        let s = fleet.snap().await?;
        if s.r.unique() >= expected
            || start.elapsed() > DRAIN_MAX
            || changed.elapsed() > DRAIN_STILL
        {
            return Ok(());
        }
        if s.r.deliveries != last {
            (last, changed) = (s.r.deliveries, tokio::time::Instant::now());
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

pub async fn side_by_side(a: LatencyArgs) -> anyhow::Result<Value> {
    let mut args = a.server.clone();
    args.server = Kind::KafkaSse;
    let mut s = Session::start(&args, &a.run, 1).await?;
    let started_herald = s.server.start_herald_on_kafka(&args).await;
    let result = async {
        let (herald_addr, herald_pid) = started_herald?;
        let procs = |pid: Option<u32>| ProcSet {
            roots: pid.into_iter().collect(),
        };
        let (herald_procs, kafka_procs) = (
            procs(herald_pid),
            procs(s.server.herald_beside.and_then(|(_, p)| p)),
        );
        let ks_procs = s.server.procs(0);
        let topic = s.server.topic.clone();
        let (mut ks, ks_ready) = Fleet::connect(
            s.server.addr(),
            vec![s.server.path(None)?; a.clients],
            &a.run,
            false,
        )
        .await?;
        let (mut hd, hd_ready) = Fleet::connect(
            herald_addr,
            vec![format!("/v1/events?topic={topic}"); a.clients],
            &a.run,
            false,
        )
        .await?;
        tokio::time::sleep(Duration::from_secs_f64(a.flow.settle)).await;
        let keys: Vec<String> = (0..a.keys.max(1)).map(|i| format!("k{i}")).collect();
        let producer = Producer::start(
            &s.server,
            keys,
            a.flow.size,
            a.flow.linger_ms,
            a.flow.encoding,
        )?;
        producer.set_rate(a.rate).await?;
        tokio::time::sleep(Duration::from_secs_f64(a.flow.warmup)).await;
        let (ks_a, hd_a) = (ks.snap().await?, hd.snap().await?);
        let ticks = [herald_procs.ticks(), ks_procs.ticks(), kafka_procs.ticks()];
        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
        let (ks_b, hd_b) = (ks.snap().await?, hd.snap().await?);
        let secs = started.elapsed().as_secs_f64();
        let cpu =
            |p: &ProcSet, before: u64| round2(cpu_pct(p.ticks().saturating_sub(before), secs));
        let cpus = [
            cpu(&herald_procs, ticks[0]),
            cpu(&ks_procs, ticks[1]),
            cpu(&kafka_procs, ticks[2]),
        ];
        let (seqs, failures) = producer.finish().await?;
        let expected = seqs.iter().sum::<u64>() * a.clients as u64;
        drain(&mut hd, expected).await?;
        drain(&mut ks, expected).await?;
        let (ks_t, hd_t) = (ks.tail(&seqs).await?, hd.tail(&seqs).await?);
        ks.quit().await;
        hd.quit().await;
        let mut herald = side(&hd_ready, &hd_a, &hd_b, &hd_t, secs, expected);
        let mut kafka_sse = side(&ks_ready, &ks_a, &ks_b, &ks_t, secs, expected);
        herald["server_cpu_pct"] = json!(cpus[0]);
        kafka_sse["server_cpu_pct"] = json!(cpus[1]);
        let mut problems = Vec::new();
        if herald["lost"] != 0 || herald["order_errors"] != 0 || herald["failed"] != 0 {
            problems.push(format!("herald: {herald}"));
        }
        if failures > 0 {
            problems.push(format!("{failures} publish failures"));
        }
        let row = json!({
            "scenario": "side-by-side",
            "label": a.run.label,
            "clients": a.clients,
            "rate": a.rate,
            "seconds": round2(secs),
            "produced": seqs.iter().sum::<u64>(),
            "herald": herald,
            "kafka_sse": kafka_sse,
            // The node holding the embedded Kafka both read (no clients).
            "kafka_cpu_pct": cpus[2],
            // KafkaSSE losing records is the finding, not a fault of the run.
            "ok": problems.is_empty(),
            "problems": problems,
        });
        println!("side-by-side: {row}");
        anyhow::Ok(row)
    }
    .await;
    s.finish(result, |_| {}).await
}
