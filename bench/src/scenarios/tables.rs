//! `tables`: what table topics cost herald (herald only).
//!
//! 1. **Build**: `--keys` keys (100-byte values) in the node's topic, then one
//!    `snapshot=true` stream: the time until the table is ready (the node's
//!    own `built_ms`) and until that stream's `herald.snapshot` mark, and
//!    the node's memory per key held (RSS growth over the keys, and what the
//!    node accounts).
//! 2. **Snapshots at once**: a second topic of `--snapshot-keys` keys, its
//!    table warmed by one snapshot, then `--clients` streams opened at once,
//!    each reading its whole snapshot to the mark: time to every mark.
//! 3. **Conflation**: a hot third topic (`--hot-rate` records/s over
//!    `--hot-keys` keys) read by `--slow` clients that drain only
//!    `--slow-bytes-per-second` each, half with `conflate=true`: the node's
//!    RSS sampled every second (flat?), and how many of each half are still
//!    connected at the end (the others were cut off as too slow).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{http_json, open_stream, Sources};
use crate::engine::{round2, Session};
use crate::TablesArgs;

const MARK: &[u8] = b"event: herald.snapshot\n";

fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "30000")
        .create()?)
}

/// Creates `topic` on the node's embedded Kafka (its publish endpoint
/// creates topics on first use) with one record.
async fn create_topic(addr: SocketAddr, topic: &str) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "POST /v1/topics/{topic}?key=created HTTP/1.0\r\nHost: bench\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    if out.get(9..12) != Some(b"200") && out.get(9..12) != Some(b"201") {
        bail!("creating {topic}: {}", String::from_utf8_lossy(&out));
    }
    Ok(())
}

/// Produces one record per key `k0..kN`, `size` bytes each.
async fn fill(p: &FutureProducer, topic: &str, keys: usize, size: usize) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    for i in 0..keys {
        let key = format!("k{i}");
        let mut value = format!("{{\"key\":\"{key}\",\"price\":{i},\"pad\":\"");
        while value.len() + 2 < size {
            value.push('x');
        }
        value.push_str("\"}");
        loop {
            match p.send_result(FutureRecord::to(topic).key(&key).payload(&value)) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    // The local queue is full: let deliveries catch up.
                    if pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    for f in pending.drain(..) {
                        f.await.context("delivery")?.map_err(|(e, _)| e)?;
                    }
                }
                Err((e, _)) => bail!("produce: {e}"),
            }
        }
        if pending.len() >= 10_000 {
            for f in pending.drain(..) {
                f.await.context("delivery")?.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in pending {
        f.await.context("delivery")?.map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(30))?;
    Ok(())
}

/// Reads a stream until its `herald.snapshot` mark; the bytes read.
async fn until_mark(
    stream: &mut TcpStream,
    mut seen: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut total = seen.len();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if seen.windows(MARK.len()).any(|w| w == MARK) {
            return Ok(total);
        }
        // Keep only a tail long enough to hold a mark cut in two.
        if seen.len() > MARK.len() {
            seen.drain(..seen.len() - MARK.len());
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .context("no snapshot mark in time")??;
        if n == 0 {
            bail!("the stream ended before its mark");
        }
        total += n;
        seen.extend_from_slice(&buf[..n]);
    }
}

async fn tables_of(addr: SocketAddr, topic: &str) -> anyhow::Result<Vec<Value>> {
    let stats = http_json(addr, "/v1/stats").await?;
    Ok(stats["tables"]["partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["topic"] == topic)
        .collect())
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn tables(a: TablesArgs) -> anyhow::Result<Value> {
    let mut server = a.server.clone();
    server
        .herald_args
        .push(format!("--table-topics={}*", a.server.topic));
    server.herald_args.push("--write-timeout=120s".into());
    let s = Session::start(&server, &a.run, 1).await?;
    let result = async {
        if !s.server.is_herald() {
            bail!("table topics are herald's");
        }
        let addr = s.server.addr();
        let brokers = s.server.brokers.clone().context("the node's Kafka")?;
        let p = producer(&brokers)?;
        let procs = s.server.procs(0);
        let topic = a.server.topic.clone();

        // 1. Build.
        fill(&p, &topic, a.keys, a.size).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_before = procs.mem().rss;
        let started = Instant::now();
        let path = format!("/v1/events?topic={topic}&snapshot=true");
        let (mut one, head) = open_stream(addr, std::net::Ipv4Addr::LOCALHOST, &path).await?;
        let bytes = until_mark(&mut one, head, Duration::from_secs(300)).await?;
        let to_mark = started.elapsed().as_secs_f64();
        drop(one);
        let built = tables_of(addr, &topic).await?;
        let built_ms = built
            .iter()
            .filter_map(|t| t["built_ms"].as_f64())
            .fold(0.0, f64::max);
        let keys_held: u64 = built.iter().filter_map(|t| t["keys"].as_u64()).sum();
        let bytes_held: u64 = built.iter().filter_map(|t| t["bytes"].as_u64()).sum();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = procs.mem().rss;
        let per_key_rss = (rss_after.saturating_sub(rss_before) as f64 * 1024.0) / a.keys.max(1) as f64;
        let build = json!({
            "keys": a.keys,
            "value_bytes": a.size,
            "keys_held": keys_held,
            "built_ms": built_ms,
            "first_snapshot_s": round2(to_mark),
            "first_snapshot_bytes": bytes,
            "rss_growth_bytes_per_key": round2(per_key_rss),
            "accounted_bytes_per_key": round2(bytes_held as f64 / keys_held.max(1) as f64),
        });
        println!("tables build: {build}");

        // 2. Snapshots at once.
        let t2 = format!("{topic}-snapshots");
        create_topic(addr, &t2).await?;
        fill(&p, &t2, a.snapshot_keys, a.size).await?;
        let path2 = format!("/v1/events?topic={t2}&snapshot=true");
        let (mut warm, head) = open_stream(addr, std::net::Ipv4Addr::LOCALHOST, &path2).await?;
        until_mark(&mut warm, head, Duration::from_secs(120)).await?;
        drop(warm);
        let mut sources = Sources::new();
        let addrs = sources.take(a.clients, 1);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for source in addrs {
            let path = path2.clone();
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let (mut st, head) = open_stream(addr, source, &path).await?;
                let n = until_mark(&mut st, head, Duration::from_secs(300)).await?;
                anyhow::Ok((t0.elapsed().as_secs_f64(), n))
            }));
        }
        let mut times = Vec::new();
        let mut failures = 0;
        let mut delivered = 0usize;
        for t in tasks {
            match t.await {
                Ok(Ok((secs, n))) => {
                    times.push(secs);
                    delivered += n;
                }
                _ => failures += 1,
            }
        }
        let all_marks = started.elapsed().as_secs_f64();
        times.sort_by(|x, y| x.total_cmp(y));
        let snapshots = json!({
            "clients": a.clients,
            "keys_each": a.snapshot_keys,
            "all_marks_s": round2(all_marks),
            "p50_s": round2(pct(&times, 0.5)),
            "p99_s": round2(pct(&times, 0.99)),
            "failures": failures,
            "bytes_delivered": delivered,
            "records_per_s": round2((a.clients - failures) as f64 * a.snapshot_keys as f64 / all_marks.max(1e-9)),
        });
        println!("tables snapshots: {snapshots}");

        // 3. Conflation under a hot topic.
        // Not matching `{topic}*` with --hot-plain: the same load on a plain topic.
        let t3 = if a.hot_plain {
            format!("plain-{topic}-hot")
        } else {
            format!("{topic}-hot")
        };
        create_topic(addr, &t3).await?;
        let mut slow = Vec::new();
        let mut sources = Sources::new();
        for (i, source) in sources.take(a.slow, 1).into_iter().enumerate() {
            let conflate = i % 2 == 0 && !a.hot_plain;
            let path = if conflate {
                format!("/v1/events?topic={t3}&conflate=true")
            } else {
                format!("/v1/events?topic={t3}")
            };
            let (st, _) = open_stream(addr, source, &path).await?;
            let rate = a.slow_bytes_per_second;
            slow.push((
                conflate,
                tokio::spawn(async move {
                    // Reads `rate` bytes a second in ten slices; false once the
                    // server ends the stream.
                    let mut st = st;
                    let mut buf = vec![0u8; (rate / 10).max(1)];
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    loop {
                        tick.tick().await;
                        match st.read(&mut buf).await {
                            Ok(0) | Err(_) => return false,
                            Ok(_) => {}
                        }
                    }
                }),
            ));
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let p = p.clone();
            let stop = stop.clone();
            let (t3, rate, keys, size) = (t3.clone(), a.hot_rate, a.hot_keys, a.size);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let per_tick = (rate / 100).max(1);
                let pad = "x".repeat(size.saturating_sub(40));
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    for _ in 0..per_tick {
                        let key = format!("k{}", n % keys.max(1));
                        let value = format!("{{\"n\":{n},\"pad\":\"{pad}\"}}");
                        let _ = p.send_result(FutureRecord::to(&t3).key(&key).payload(&value));
                        n += 1;
                    }
                }
                n
            })
        };
        let slow_before = crate::servers::metrics(addr)
            .await
            .get("herald_slow_disconnects_total")
            .copied()
            .unwrap_or(0.0);
        let mut samples = Vec::new();
        let mut queued = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < a.hot_seconds {
            tokio::time::sleep(Duration::from_secs(1)).await;
            samples.push(procs.mem().rss);
            let m = crate::servers::metrics(addr).await;
            queued.push(m.get("herald_queued_bytes").copied().unwrap_or(-1.0) as i64);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let produced = writer.await.unwrap_or(0);
        let metrics = crate::servers::metrics(addr).await;
        let (mut conflating_alive, mut plain_alive) = (0, 0);
        for (conflate, task) in &slow {
            if !task.is_finished() {
                if *conflate {
                    conflating_alive += 1;
                } else {
                    plain_alive += 1;
                }
            }
        }
        for (_, task) in slow {
            task.abort();
        }
        let settled = &samples[samples.len().min(3)..];
        let (lo, hi) = settled
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let queued_settled = &queued[queued.len().min(3)..];
        let queued_max = queued_settled.iter().copied().max().unwrap_or(0);
        let queued_min = queued_settled.iter().copied().min().unwrap_or(0);
        let slow_cut = metrics
            .get("herald_slow_disconnects_total")
            .copied()
            .unwrap_or(0.0)
            - slow_before;
        let conflation = json!({
            "rate": a.hot_rate,
            "keys": a.hot_keys,
            "seconds": a.hot_seconds,
            "produced": produced,
            "slow_clients_each": a.slow / 2,
            "slow_read_bytes_per_s": a.slow_bytes_per_second,
            "conflating_still_connected": conflating_alive,
            "plain_still_connected": plain_alive,
            "conflated_records": metrics.get("herald_conflated_records_total").copied().unwrap_or(0.0),
            "slow_disconnects": slow_cut,
            "queued_bytes_samples": queued,
            "queued_bytes_after_3s": [queued_min, queued_max],
            "rss_kib_samples": samples,
            "rss_spread_after_3s_kib": hi.saturating_sub(lo),
        });
        println!("tables conflation: {conflation}");
        let ok = failures == 0 && keys_held as usize >= a.keys;
        anyhow::Ok(json!({
            "scenario": "tables",
            "ok": ok,
            "build": build,
            "snapshots": snapshots,
            "conflation": conflation,
        }))
    }
    .await;
    s.finish(result, |_| {}).await
}
