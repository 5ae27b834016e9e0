//! The producers: records to Kafka (herald, KafkaSSE), POSTs to nchan's
//! publisher (nchan) or Pushpin's (`POST /publish/`, one item each), or only
//! a rate for herald-baseline, which generates its own.
//!
//! It owns offering records at a rate that the engine sets and changes,
//! round-robin over the streams (one key each), and counting what was
//! produced and what failed to publish. It does not know who receives the
//! records or check them (the workers do). The decision to know: the rate is
//! offered, not negotiated: records are stamped with their send time when
//! they are due (herald_bench::pace), whether or not the server keeps up,
//! so an overloaded server shows as latency and lost deliveries, never as a
//! lower offered rate; and the last sequence number of each stream is
//! returned at the end so the clients' tails can be checked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use herald_bench::encoding::{write_encoded, Encoding};
use herald_bench::pace::Pacer;
use herald_bench::record::now_us;
use rdkafka::producer::ThreadedProducer;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::client::http_json;
use crate::servers::{Kind, Server};

/// Keep-alive connections to nchan's publisher, at most.
const MAX_HTTP_LANES: usize = 4;
/// A lane writes what is queued in one go, up to about this much.
const LANE_BATCH: usize = 60 * 1024;
const LANE_BUF: usize = 64 * 1024;
/// How often a lane's reader looks whether the writer is done.
const LANE_POLL: Duration = Duration::from_millis(200);
/// How long the last answers, or Kafka's last deliveries, may take at the end.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(15);
/// Tries of a control request to the baseline.
const CONTROL_TRIES: usize = 4;
/// librdkafka's queue (queue.buffering.max.messages).
const KAFKA_QUEUE_MESSAGES: &str = "1000000";

struct DeliveryCount {
    failed: Arc<AtomicU64>,
}

impl ClientContext for DeliveryCount {}

impl ProducerContext for DeliveryCount {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

enum Sink {
    Kafka {
        producer: ThreadedProducer<DeliveryCount>,
        topic: String,
    },
    Http {
        lanes: Vec<UnboundedSender<Vec<u8>>>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
        style: Publish,
    },
}

/// Which publisher an HTTP sink speaks.
#[derive(Clone, Copy)]
enum Publish {
    /// nchan: `POST /pub/KEY`, the value as the body.
    Nchan,
    /// Pushpin (GRIP): `POST /publish/`, one item on channel KEY whose
    /// `http-stream` content is the SSE event.
    Grip,
}

/// The request publishing `value` to `key`.
fn publish_request(style: Publish, key: &str, value: &[u8]) -> Vec<u8> {
    let (path, body) = match style {
        Publish::Nchan => (format!("/pub/{key}"), value.to_vec()),
        Publish::Grip => {
            let content = format!("data: {}\n\n", String::from_utf8_lossy(value));
            let item = serde_json::json!({
                "channel": key,
                "formats": {"http-stream": {"content": content}},
            });
            let body = serde_json::json!({ "items": [item] }).to_string();
            ("/publish/".to_owned(), body.into_bytes())
        }
    };
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

/// One keep-alive HTTP/1.1 connection to nchan's publisher, pipelined: the
/// writer sends requests as they come, the reader counts the responses.
async fn http_lane(addr: SocketAddr, mut rx: UnboundedReceiver<Vec<u8>>, failed: Arc<AtomicU64>) {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(_) => {
            while rx.recv().await.is_some() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let done_writing = Arc::new(AtomicBool::new(false));
    let reader = {
        let (failed, sent, done_writing) = (failed.clone(), sent.clone(), done_writing.clone());
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(LANE_BUF);
            let mut chunk = vec![0u8; LANE_BUF];
            let mut answered = 0u64;
            loop {
                if done_writing.load(Ordering::Acquire) && answered >= sent.load(Ordering::Acquire)
                {
                    return;
                }
                let n = match tokio::time::timeout(LANE_POLL, rd.read(&mut chunk)).await {
                    Err(_) => continue,
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(answer) = take_response(&mut buf) {
                    if !answer.ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    answered += 1;
                }
            }
            let lost = sent.load(Ordering::Acquire).saturating_sub(answered);
            failed.fetch_add(lost, Ordering::Relaxed);
        })
    };
    let mut out = Vec::with_capacity(LANE_BUF);
    while let Some(first) = rx.recv().await {
        out.clear();
        out.extend_from_slice(&first);
        let mut count = 1;
        while out.len() < LANE_BATCH {
            match rx.try_recv() {
                Ok(m) => {
                    out.extend_from_slice(&m);
                    count += 1;
                }
                Err(_) => break,
            }
        }
        sent.fetch_add(count, Ordering::Release);
        if wr.write_all(&out).await.is_err() {
            failed.fetch_add(count, Ordering::Relaxed);
        }
    }
    done_writing.store(true, Ordering::Release);
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, reader).await;
}

/// One HTTP response read off a connection.
pub struct Answer {
    /// Its status was 2xx.
    pub ok: bool,
    /// The server closes the connection after it.
    pub close: bool,
}

/// Takes the complete response (head and Content-Length body) at the start
/// of `buf` out of it; None while it is incomplete.
pub fn take_response(buf: &mut Vec<u8>) -> Option<Answer> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let total = end + 4 + len;
    if buf.len() < total {
        return None;
    }
    let answer = Answer {
        ok: head.get(9..10) == Some("2"),
        close: head.lines().any(|l| l.trim() == "connection: close"),
    };
    buf.drain(..total);
    Some(answer)
}

/// Reads until one response is complete (see [`take_response`]); None
/// when the connection ended first.
pub async fn read_response<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Option<Answer> {
    loop {
        if let Some(answer) = take_response(buf) {
            return Some(answer);
        }
        match rd.read(chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Requests to Pushpin's publisher, one at a time (it takes no pipelined
/// requests: the next would read as the body), on one connection while the
/// server keeps it open (Pushpin 1.36 closes each after its answer).
async fn serial_lane(addr: SocketAddr, mut rx: UnboundedReceiver<Vec<u8>>, failed: Arc<AtomicU64>) {
    let mut conn = None;
    let (mut buf, mut chunk) = (Vec::with_capacity(LANE_BUF), vec![0u8; LANE_BUF]);
    while let Some(req) = rx.recv().await {
        let mut ok = false;
        for _ in 0..2 {
            if conn.is_none() {
                conn = TcpStream::connect(addr).await.ok().map(|s| {
                    let _ = s.set_nodelay(true);
                    s.into_split()
                });
                buf.clear();
            }
            let Some((rd, wr)) = conn.as_mut() else {
                break;
            };
            if wr.write_all(&req).await.is_ok() {
                if let Some(answer) = read_response(rd, &mut buf, &mut chunk).await {
                    ok = answer.ok;
                    if answer.close {
                        conn = None;
                    }
                    break;
                }
            }
            // Closed meanwhile (an idle keep-alive timeout): once more on a new one.
            conn = None;
        }
        if !ok {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Sink {
    fn kafka(server: &Server, linger_ms: u64, failed: &Arc<AtomicU64>) -> anyhow::Result<Sink> {
        let brokers = server
            .brokers
            .clone()
            .context("no Kafka bootstrap servers")?;
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", linger_ms.to_string())
            .set("queue.buffering.max.messages", KAFKA_QUEUE_MESSAGES)
            .create_with_context(DeliveryCount {
                failed: failed.clone(),
            })?;
        Ok(Sink::Kafka {
            producer,
            topic: server.topic.clone(),
        })
    }

    fn http(addr: SocketAddr, streams: usize, failed: &Arc<AtomicU64>, style: Publish) -> Sink {
        let (mut lanes, mut tasks) = (Vec::new(), Vec::new());
        for _ in 0..streams.clamp(1, MAX_HTTP_LANES) {
            let (tx, rx) = unbounded_channel();
            lanes.push(tx);
            tasks.push(match style {
                Publish::Nchan => tokio::spawn(http_lane(addr, rx, failed.clone())),
                Publish::Grip => tokio::spawn(serial_lane(addr, rx, failed.clone())),
            });
        }
        Sink::Http {
            lanes,
            tasks,
            style,
        }
    }

    fn send(&self, key: &str, lane: usize, value: &[u8]) -> bool {
        match self {
            Sink::Kafka { producer, topic } => producer
                .send(BaseRecord::to(topic).key(key).payload(value))
                .is_ok(),
            Sink::Http { lanes, style, .. } => lanes[lane % lanes.len()]
                .send(publish_request(*style, key, value))
                .is_ok(),
        }
    }

    async fn finish(self) {
        match self {
            Sink::Kafka { producer, .. } => {
                tokio::task::block_in_place(|| {
                    let _ = producer.flush(FLUSH_TIMEOUT);
                });
            }
            Sink::Http { lanes, tasks, .. } => {
                drop(lanes);
                for t in tasks {
                    let _ = t.await;
                }
            }
        }
    }
}

/// A control request to an overloaded server (the baseline past its
/// capacity answers late): retried, each try with the usual timeout.
async fn control(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let mut last = None;
    for _ in 0..CONTROL_TRIES {
        match http_json(addr, path).await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow!("no attempt"))
        .context(format!("GET {path}")))
}

/// A count the baseline reports (0 if absent).
fn count(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or(0)
}

/// Drives records at a settable rate, round-robin over streams.
pub struct Producer {
    rate_milli: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<Vec<u64>>>,
    /// The baseline generates its own records; we only set its rate.
    baseline: Option<SocketAddr>,
}

impl Producer {
    /// Starts at rate 0: one stream per key, values of `size` bytes.
    pub fn start(
        server: &Server,
        keys: Vec<String>,
        size: usize,
        linger_ms: u64,
        encoding: Encoding,
    ) -> anyhow::Result<Producer> {
        let mut producer = Producer {
            rate_milli: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            produced: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            task: None,
            baseline: None,
        };
        let sink = match server.kind {
            Kind::Baseline => {
                if keys.len() != 1 {
                    bail!("the baseline serves one stream only (broadcast)");
                }
                producer.baseline = Some(server.addr());
                return Ok(producer);
            }
            Kind::Nchan => Sink::http(server.addr(), keys.len(), &producer.failed, Publish::Nchan),
            Kind::Pushpin => {
                let addr = server.publish_addr().context("Pushpin's publisher")?;
                Sink::http(addr, keys.len(), &producer.failed, Publish::Grip)
            }
            Kind::KafkaSse if encoding != Encoding::Json => {
                bail!("KafkaSSE's deserializer takes JSON values: pass --encoding json")
            }
            Kind::Herald | Kind::KafkaSse | Kind::External => {
                Sink::kafka(server, linger_ms, &producer.failed)?
            }
        };
        let (rate_milli, stop, produced, failed) = (
            producer.rate_milli.clone(),
            producer.stop.clone(),
            producer.produced.clone(),
            producer.failed.clone(),
        );
        producer.task = Some(tokio::spawn(async move {
            let mut seqs = vec![0u64; keys.len()];
            let (mut next, mut n) = (0usize, 0u64);
            let mut pacer = Pacer::new();
            while !stop.load(Ordering::Acquire) {
                if !pacer.due(rate_milli.load(Ordering::Acquire), n).await {
                    continue;
                }
                let s = next;
                next = (next + 1) % keys.len();
                let mut value = Vec::with_capacity(size + 16);
                write_encoded(&mut value, encoding, now_us(), s, seqs[s], size);
                if !sink.send(&keys[s], s, &value) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                seqs[s] += 1;
                n += 1;
                produced.fetch_add(1, Ordering::Relaxed);
            }
            sink.finish().await;
            seqs
        }));
        Ok(producer)
    }

    pub async fn set_rate(&self, rate: f64) -> anyhow::Result<()> {
        if let Some(addr) = self.baseline {
            let v = control(addr, &format!("/rate?r={rate}")).await?;
            self.produced
                .store(count(&v, "produced"), Ordering::Release);
        } else {
            self.rate_milli
                .store((rate * 1000.0).round() as u64, Ordering::Release);
        }
        Ok(())
    }

    /// Records produced so far.
    pub async fn produced(&self) -> u64 {
        if let Some(addr) = self.baseline {
            if let Ok(v) = http_json(addr, "/stats").await {
                return count(&v, "produced");
            }
        }
        self.produced.load(Ordering::Acquire)
    }

    /// Stops; returns records produced per stream and publish failures.
    pub async fn finish(mut self) -> anyhow::Result<(Vec<u64>, u64)> {
        if let Some(addr) = self.baseline {
            let v = control(addr, "/rate?r=0").await?;
            return Ok((vec![count(&v, "produced")], count(&v, "lagged")));
        }
        self.stop.store(true, Ordering::Release);
        let seqs = self.task.take().context("producer task")?.await?;
        Ok((seqs, self.failed.load(Ordering::Acquire)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(req: &[u8]) -> (String, Vec<u8>) {
        let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&req[..end]).into_owned(),
            req[end + 4..].to_vec(),
        )
    }

    #[test]
    fn responses_are_taken_whole_one_at_a_time() {
        let mut buf = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 400 Bad\r\nConnection: close\r\nContent-Length: 2\r\n\r\nx".to_vec();
        let a = take_response(&mut buf).unwrap();
        assert!(a.ok && !a.close);
        // The second one's body is not all there yet.
        assert!(take_response(&mut buf).is_none());
        buf.push(b'y');
        let b = take_response(&mut buf).unwrap();
        assert!(!b.ok && b.close);
        assert!(buf.is_empty());
    }

    #[test]
    fn nchan_gets_the_value_as_the_body() {
        let (head, body) = split(&publish_request(Publish::Nchan, "k1", b"1 2 3 xx"));
        assert!(head.starts_with("POST /pub/k1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Content-Length: 8"), "{head}");
        assert_eq!(body, b"1 2 3 xx");
    }

    #[test]
    fn pushpin_gets_one_item_whose_content_is_the_sse_event() {
        let value = br#"{"v":"1 2 3 x","q":"a\b"}"#;
        let (head, body) = split(&publish_request(Publish::Grip, "hot", value));
        assert!(head.starts_with("POST /publish/ HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["items"][0]["channel"], "hot");
        let content = v["items"][0]["formats"]["http-stream"]["content"]
            .as_str()
            .unwrap();
        assert_eq!(
            content.as_bytes(),
            [&b"data: "[..], value, b"\n\n"].concat()
        );
    }
}
