//! `publish`: herald's publish endpoint against a direct rdkafka producer
//! (herald only).
//!
//! In one run, alternating `--rounds` times, each for `--seconds` at each
//! concurrency of `--concurrency`:
//!
//! - **http**: that many keep-alive connections, each sending
//!   `POST /v1/topics/T?key=kN` one after another (a publish token), timing
//!   each from writing the request to reading its 200 (Kafka's ack);
//! - **direct**: one rdkafka producer in this process with the settings
//!   herald's publisher uses (murmur2, `acks=all`, `linger.ms=0`), that
//!   many sends in flight, timing each from `send` to its delivery report.
//!
//! Both write the same values to the same topic of the same node's Kafka,
//! so the difference is what the HTTP hop and herald's handling add.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use herald_bench::record::{make_value, now_us};

use crate::engine::{median, quantile as pct, round2, Session};
use crate::producer::read_response;
use crate::PublishArgs;

/// The secret the node is started with, for the bench's publish token.
const SECRET: &str = "herald-bench-publish-secret-0123456789";
/// A publish that takes longer than this counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// What one lane measured: latencies (ms) and failures.
#[derive(Default)]
struct Lane {
    lat: Vec<f64>,
    failed: u64,
}

/// One keep-alive connection publishing until `until`.
async fn http_lane(
    addr: SocketAddr,
    topic: String,
    token: Arc<String>,
    lane: usize,
    size: usize,
    until: Instant,
) -> Lane {
    let mut out = Lane::default();
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        out.failed += 1;
        return out;
    };
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 4096];
    let mut seq = 0u64;
    while Instant::now() < until {
        let value = make_value(now_us(), lane, seq, size);
        let mut req = format!(
            "POST /v1/topics/{topic}?key=k{lane} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
            value.len()
        )
        .into_bytes();
        req.extend_from_slice(&value);
        let sent = Instant::now();
        if stream.write_all(&req).await.is_err() {
            out.failed += 1;
            return out;
        }
        let answer = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            read_response(&mut stream, &mut buf, &mut chunk),
        )
        .await
        .map(|a| a.map(|a| a.ok));
        match answer {
            Ok(Some(true)) => out.lat.push(sent.elapsed().as_secs_f64() * 1000.0),
            Ok(Some(false)) => out.failed += 1,
            _ => {
                out.failed += 1;
                return out;
            }
        }
        seq += 1;
    }
    out
}

/// One task of the direct producer: a send at a time until `until`.
async fn direct_lane(
    producer: FutureProducer,
    topic: String,
    lane: usize,
    size: usize,
    until: Instant,
) -> Lane {
    let mut out = Lane::default();
    let key = format!("k{lane}");
    let mut seq = 0u64;
    while Instant::now() < until {
        let value = make_value(now_us(), lane, seq, size);
        let sent = Instant::now();
        match producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&value),
                PUBLISH_TIMEOUT,
            )
            .await
        {
            Ok(_) => out.lat.push(sent.elapsed().as_secs_f64() * 1000.0),
            Err(_) => out.failed += 1,
        }
        seq += 1;
    }
    out
}

fn summarise(path: &str, concurrency: usize, secs: f64, lanes: Vec<Lane>) -> Value {
    let failed: u64 = lanes.iter().map(|l| l.failed).sum();
    let mut lat: Vec<f64> = lanes.into_iter().flat_map(|l| l.lat).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    json!({
        "path": path,
        "concurrency": concurrency,
        "published": lat.len(),
        "per_s": (lat.len() as f64 / secs).round(),
        "p50_ms": round2(pct(&lat, 0.5)),
        "p99_ms": round2(pct(&lat, 0.99)),
        "failed": failed,
    })
}

pub async fn publish(a: PublishArgs) -> anyhow::Result<Value> {
    let mut server = a.server.clone();
    server
        .herald_args
        .push(format!("--auth-hs256-secret={SECRET}"));
    let topic = a.server.topic.clone();
    let token = Arc::new(herald::auth::mint(&herald::config::TokenArgs {
        secret: SECRET.into(),
        subscribe: Vec::new(),
        publish: vec![format!("{topic}/*"), topic.clone()],
        // The node's stats (its Kafka's address) need the ops grant.
        ops: true,
        ttl: Duration::from_secs(3600),
        issuer: None,
        audience: None,
        filter: None,
        sub: None,
    })?);
    crate::client::set_control_token(token.to_string());
    let s = Session::start(&server, &a.run, 1).await?;
    let result = async {
        if !s.server.is_herald() {
            anyhow::bail!("the publish scenario is herald's endpoint against a direct producer");
        }
        let addr = s.server.addr();
        let brokers = s.server.brokers.clone().context("the node's Kafka")?;
        // herald's publisher's settings (its kafka.rs).
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "0")
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            .create()?;
        let mut rows = Vec::new();
        for round in 0..a.rounds {
            for &c in &a.concurrency {
                for path in ["direct", "http"] {
                    let until = Instant::now() + Duration::from_secs_f64(a.seconds);
                    let started = Instant::now();
                    let ticks = s.server.procs(0).ticks();
                    let mut tasks = tokio::task::JoinSet::new();
                    for lane in 0..c {
                        if path == "http" {
                            tasks.spawn(http_lane(addr, topic.clone(), token.clone(), lane, a.size, until));
                        } else {
                            tasks.spawn(direct_lane(producer.clone(), topic.clone(), lane, a.size, until));
                        }
                    }
                    let mut lanes = Vec::new();
                    while let Some(l) = tasks.join_next().await {
                        lanes.push(l?);
                    }
                    let secs = started.elapsed().as_secs_f64();
                    let mut row = summarise(path, c, secs, lanes);
                    // The node's CPU: all of its work on the HTTP path; on the
                    // direct one only its embedded Kafka taking the records.
                    let used = s.server.procs(0).ticks().saturating_sub(ticks);
                    row["server_cpu_pct"] = json!(round2(crate::procfs::cpu_pct(used, secs)));
                    row["round"] = json!(round + 1);
                    println!("publish: {row}");
                    rows.push(row);
                }
            }
        }
        let mut summary = Vec::new();
        for &c in &a.concurrency {
            let mut entry = json!({"concurrency": c});
            for path in ["direct", "http"] {
                let of = |k: &str| {
                    median(
                        rows.iter()
                            .filter(|r| r["path"] == path && r["concurrency"] == c)
                            .filter_map(|r| r[k].as_f64())
                            .collect(),
                    )
                };
                entry[path] = json!({
                    "per_s": of("per_s"),
                    "p50_ms": of("p50_ms"),
                    "p99_ms": of("p99_ms"),
                    "server_cpu_pct": of("server_cpu_pct"),
                });
            }
            summary.push(entry);
        }
        let failed: u64 = rows.iter().filter_map(|r| r["failed"].as_u64()).sum();
        anyhow::Ok(json!({
            "scenario": "publish",
            "broker": if s.server.embedded_kafka { "embedded" } else { "tansu" },
            "ok": failed == 0,
            "problems": if failed == 0 { Vec::<String>::new() } else { vec![format!("{failed} publishes failed")] },
            "size": a.size,
            "seconds": a.seconds,
            "rounds": rows,
            "summary": summary,
        }))
    }
    .await;
    s.finish(result, |_| {}).await
}
