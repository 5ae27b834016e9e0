//! Kafka clients and the blocking look-ups herald makes.
//!
//! One consumer per node (polled by the ingest thread) also answers metadata
//! and watermark queries; those calls block, so async code reaches them only
//! through [`Kafka`], which runs them on tokio's blocking pool. The consumer
//! never commits and never auto-resets: positions live in the clients'
//! cursors, and an out-of-range offset must become an explicit gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::Config;

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings shared by every client of a node.
fn base_config(config: &Config, bootstrap: &str, role: &str) -> ClientConfig {
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
        // Send at once: a POST waits for its ack, and librdkafka still batches
        // what queues behind a request in flight. At 1 ms a lone publish took
        // 1.3 ms (p50) instead of 0.16 ms, and 64 concurrent ones made 33,000/s
        // instead of 47,000/s (herald-bench publish, embedded Kafka).
        .set("linger.ms", "0")
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

/// Blocking Kafka look-ups, made safe to call from async code.
///
/// Partition counts come from a table of every topic, refreshed whole by
/// [`Kafka::refresh`] (the readiness check, every two seconds), so that
/// opening a stream on a known topic costs no Kafka round trip; only a
/// topic the table does not know yet (created since) is looked up alone.
#[derive(Clone)]
pub struct Kafka {
    consumer: Arc<BaseConsumer>,
    partition_counts: Arc<Mutex<HashMap<String, i32>>>,
}

impl Kafka {
    pub fn new(consumer: Arc<BaseConsumer>) -> Kafka {
        Kafka {
            consumer,
            partition_counts: Arc::default(),
        }
    }

    /// Partitions of `topic` as the last refresh saw them, if it knew the topic.
    fn known_partition_count(&self, topic: &str) -> Option<i32> {
        self.partition_counts.lock().get(topic).copied()
    }

    /// Partitions of `topic`, or `None` when the topic does not exist.
    pub async fn partition_count(&self, topic: &str) -> Result<Option<i32>, KafkaError> {
        if let Some(n) = self.known_partition_count(topic) {
            return Ok(Some(n));
        }
        let consumer = self.consumer.clone();
        let name = topic.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let md = consumer.fetch_metadata(Some(&name), LOOKUP_TIMEOUT)?;
            Ok::<_, KafkaError>(
                md.topics()
                    .iter()
                    .find(|t| t.name() == name)
                    .and_then(topic_partitions),
            )
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        if let Some(n) = found {
            self.partition_counts.lock().insert(topic.to_owned(), n);
        }
        Ok(found)
    }

    /// Forgets a cached partition count (after a topic was created here).
    pub fn forget(&self, topic: &str) {
        self.partition_counts.lock().remove(topic);
    }

    /// Low and high watermarks of every partition named, in that order, in
    /// two list-offsets requests (per broker) whatever their number.
    pub async fn watermarks(
        &self,
        partitions: Vec<(Arc<str>, i32)>,
    ) -> Result<Vec<Watermarks>, KafkaError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || {
            let lows = list_offsets(&consumer, &partitions, Offset::Beginning)?;
            let highs = list_offsets(&consumer, &partitions, Offset::End)?;
            Ok(lows
                .into_iter()
                .zip(highs)
                .map(|(low, high)| Watermarks { low, high })
                .collect())
        })
        .await
        .map_err(|_| KafkaError::Canceled)?
    }

    /// For each partition named, the first offset at or after `ms` (the high
    /// watermark where no record is that recent).
    pub async fn offsets_for_time(
        &self,
        partitions: Vec<(Arc<str>, i32)>,
        ms: i64,
    ) -> Result<Vec<i64>, KafkaError> {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || {
            let found = list_offsets(&consumer, &partitions, Offset::Offset(ms))?;
            let highs = list_offsets(&consumer, &partitions, Offset::End)?;
            Ok(found
                .into_iter()
                .zip(highs)
                .map(|(offset, high)| if offset >= 0 { offset } else { high })
                .collect())
        })
        .await
        .map_err(|_| KafkaError::Canceled)?
    }

    /// Reads every topic's metadata: refreshes the partition-count table and
    /// says whether any broker answered.
    pub async fn refresh(&self) -> bool {
        let consumer = self.consumer.clone();
        let table = self.partition_counts.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(md) = consumer.fetch_metadata(None, Duration::from_secs(2)) else {
                return false;
            };
            let counts: HashMap<String, i32> = md
                .topics()
                .iter()
                .filter_map(|t| Some((t.name().to_owned(), topic_partitions(t)?)))
                .collect();
            *table.lock() = counts;
            true
        })
        .await
        .unwrap_or(false)
    }
}

/// A topic's partition count, if the metadata says it exists.
fn topic_partitions(t: &rdkafka::metadata::MetadataTopic) -> Option<i32> {
    match t.error() {
        Some(_) => None,
        None if t.partitions().is_empty() => None,
        None => i32::try_from(t.partitions().len()).ok(),
    }
}

/// One list-offsets look-up for many partitions: `at` is a time in
/// milliseconds, or Kafka's `Beginning`/`End` for the watermarks. Returns
/// the offset found per partition, -1 where there is none.
fn list_offsets(
    consumer: &BaseConsumer,
    partitions: &[(Arc<str>, i32)],
    at: Offset,
) -> Result<Vec<i64>, KafkaError> {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        tpl.add_partition_offset(topic, *partition, at)?;
    }
    let found = consumer.offsets_for_times(tpl, LOOKUP_TIMEOUT)?;
    partitions
        .iter()
        .map(|(topic, partition)| {
            let entry = found
                .find_partition(topic, *partition)
                .ok_or(KafkaError::OffsetFetch(RDKafkaErrorCode::UnknownPartition))?;
            entry.error()?;
            Ok(match entry.offset() {
                Offset::Offset(n) => n,
                _ => -1,
            })
        })
        .collect()
}

/// True for errors that mean "the topic or partition is not there".
pub fn is_unknown_topic(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) | Some(RDKafkaErrorCode::UnknownTopic)
    )
}

/// Creates a compacted topic on the brokers (for the node's own topics,
/// such as presence). An existing topic is no error.
pub async fn create_compacted_topic(
    config: &Config,
    bootstrap: &str,
    name: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        base_config(config, bootstrap, "admin").create()?;
    // The brokers' default replication first (-1); brokers that do not
    // take it get one replica.
    let mut last = None;
    for replicas in [-1, 1] {
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replicas))
            .set("cleanup.policy", "compact");
        let options = AdminOptions::new().request_timeout(Some(LOOKUP_TIMEOUT));
        let results = admin.create_topics([&topic], &options).await?;
        match results.into_iter().next() {
            None | Some(Ok(_)) => return Ok(()),
            Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => return Ok(()),
            Some(Err((_, code))) => last = Some(code),
        }
    }
    Err(KafkaError::AdminOp(
        last.unwrap_or(rdkafka::types::RDKafkaErrorCode::Unknown),
    ))
}
