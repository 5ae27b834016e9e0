//! Kafka clients and the blocking look-ups herald makes.
//!
//! One consumer per node (polled by the ingest thread) also answers metadata
//! and watermark queries; those calls block, so async code reaches them only
//! through [`Kafka`], which runs them on tokio's blocking pool. The consumer
//! never commits and never auto-resets: positions live in the clients'
//! cursors, and an out-of-range offset must become an explicit gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::config::Config;

const METADATA_TTL: Duration = Duration::from_secs(10);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings shared by every client of a node.
pub fn base_config(config: &Config, bootstrap: &str, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", format!("{}-{role}", config.node_id))
        .set("socket.keepalive.enable", "true");
    for (k, v) in &config.kafka_properties {
        c.set(k, v);
    }
    c
}

/// A consumer for manual, explicit-offset assignment.
pub fn consumer_config(config: &Config, bootstrap: &str, role: &str) -> ClientConfig {
    let mut c = base_config(config, bootstrap, role);
    // A group id is required for assign(); it is never joined or committed to.
    c.set(
        "group.id",
        format!("{}-{role}-{}", config.node_id, std::process::id()),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("auto.offset.reset", "error")
    .set("allow.auto.create.topics", "false")
    .set("enable.partition.eof", "false")
    // How long a broker may hold a fetch that found nothing. Kafka answers as
    // soon as a record arrives, so this costs no latency there; the embedded
    // mock cluster never answers early, so there it is the latency floor
    // (p50 at 1,000 rec/s: 6 ms at 10, 3.3 ms at 5; herald-bench light).
    .set(
        "fetch.wait.max.ms",
        if config.brokers.is_none() { "5" } else { "10" },
    )
    .set("fetch.queue.backoff.ms", "5")
    .set("fetch.error.backoff.ms", "100")
    .set("reconnect.backoff.max.ms", "2000");
    for (k, v) in &config.kafka_properties {
        c.set(k, v);
    }
    c
}

pub fn producer(config: &Config, bootstrap: &str) -> Result<FutureProducer, KafkaError> {
    let mut c = base_config(config, bootstrap, "publish");
    c.set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        .set("acks", "all")
        .set("message.timeout.ms", "10000");
    for (k, v) in &config.kafka_properties {
        c.set(k, v);
    }
    c.create()
}

/// Low and high watermark of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

/// Blocking Kafka look-ups, made safe to call from async code, with a short
/// metadata cache so that every subscribe does not cost a round trip.
#[derive(Clone)]
pub struct Kafka {
    consumer: Arc<BaseConsumer>,
    partition_counts: Arc<Mutex<HashMap<String, (i32, Instant)>>>,
}

impl Kafka {
    pub fn new(consumer: Arc<BaseConsumer>) -> Kafka {
        Kafka {
            consumer,
            partition_counts: Arc::default(),
        }
    }

    pub fn consumer(&self) -> &Arc<BaseConsumer> {
        &self.consumer
    }

    /// Partitions of `topic`, or `None` when the topic does not exist.
    pub async fn partition_count(&self, topic: &str) -> Result<Option<i32>, KafkaError> {
        if let Some((n, at)) = self.partition_counts.lock().get(topic) {
            if at.elapsed() < METADATA_TTL {
                return Ok(Some(*n));
            }
        }
        let consumer = self.consumer.clone();
        let name = topic.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let md = consumer.fetch_metadata(Some(&name), LOOKUP_TIMEOUT)?;
            Ok::<_, KafkaError>(md.topics().iter().find(|t| t.name() == name).and_then(|t| {
                match t.error() {
                    Some(_) => None,
                    None if t.partitions().is_empty() => None,
                    None => Some(t.partitions().len() as i32),
                }
            }))
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        if let Some(n) = found {
            self.partition_counts
                .lock()
                .insert(topic.to_owned(), (n, Instant::now()));
        }
        Ok(found)
    }

    /// Forgets a cached partition count (after a topic was created here).
    pub fn forget(&self, topic: &str) {
        self.partition_counts.lock().remove(topic);
    }

    pub async fn watermarks(&self, topic: &str, partition: i32) -> Result<Watermarks, KafkaError> {
        let consumer = self.consumer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, LOOKUP_TIMEOUT)?;
            Ok(Watermarks { low, high })
        })
        .await
        .map_err(|_| KafkaError::Canceled)?
    }

    /// For each slot of `sub`, the first offset at or after `ms` (the high
    /// watermark where no record is that recent).
    pub async fn offsets_for_time(
        &self,
        sub: &crate::registry::Subscriber,
        ms: i64,
    ) -> Result<Vec<i64>, KafkaError> {
        let consumer = self.consumer.clone();
        let slots: Vec<(String, i32)> = sub
            .shape
            .slots
            .iter()
            .map(|s| (s.log.topic.to_string(), s.log.partition))
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut tpl = rdkafka::TopicPartitionList::new();
            for (topic, partition) in &slots {
                tpl.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(ms))?;
            }
            let found = consumer.offsets_for_times(tpl, LOOKUP_TIMEOUT)?;
            let mut out = Vec::with_capacity(slots.len());
            for (topic, partition) in &slots {
                let offset = found
                    .find_partition(topic, *partition)
                    .map(|e| e.offset())
                    .unwrap_or(rdkafka::Offset::End);
                out.push(match offset {
                    rdkafka::Offset::Offset(n) if n >= 0 => n,
                    _ => {
                        consumer
                            .fetch_watermarks(topic, *partition, LOOKUP_TIMEOUT)?
                            .1
                    }
                });
            }
            Ok(out)
        })
        .await
        .map_err(|_| KafkaError::Canceled)?
    }

    /// Whether any broker answers a metadata request.
    pub async fn reachable(&self) -> bool {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

/// True for errors that mean "the topic or partition is not there".
pub fn is_unknown_topic(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) | Some(RDKafkaErrorCode::UnknownTopic)
    )
}
