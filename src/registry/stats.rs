//! Counts of this node's subscriptions and partitions, for `/v1/stats`.

use std::collections::HashMap;
use std::sync::Arc;

use super::partition::Status;
use super::{Filter, PartitionLog, Registry};

#[derive(Debug, Default, serde::Serialize)]
pub struct Snapshot {
    /// Streams per whole topic they read.
    pub topics: HashMap<String, usize>,
    /// Streams per `topic/key` they read.
    pub keys: HashMap<String, usize>,
    pub partitions: Vec<PartitionSnapshot>,
}

#[derive(Debug, serde::Serialize)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: i32,
    /// Has a start offset (the ingest consumer reads it).
    pub assigned: bool,
    pub live_offset: i64,
    pub subscribers: usize,
    pub buffered_records: usize,
}

impl Registry {
    /// The partitions this node reads, sorted (without looking at streams).
    pub fn started_partitions(&self) -> Vec<(Arc<str>, i32)> {
        let logs: Vec<Arc<PartitionLog>> =
            self.partitions.iter().map(|e| e.value().clone()).collect();
        let mut out: Vec<(Arc<str>, i32)> = logs
            .into_iter()
            .filter(|l| l.is_started())
            .map(|l| (l.topic.clone(), l.partition))
            .collect();
        out.sort();
        out
    }

    /// Per-topic, per-key and per-partition counts.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        for connection in self.connections() {
            let Some(sub) = connection.subscriber() else {
                continue;
            };
            let mut whole_topics: Vec<&str> = Vec::new();
            for slot in sub.shape.slots.iter() {
                match &slot.filter {
                    Filter::Whole => whole_topics.push(&slot.log.topic),
                    Filter::Keys(keys) => {
                        for k in keys {
                            let name = format!("{}/{}", slot.log.topic, String::from_utf8_lossy(k));
                            *snap.keys.entry(name).or_default() += 1;
                        }
                    }
                }
            }
            whole_topics.dedup();
            for topic in whole_topics {
                *snap.topics.entry(topic.to_owned()).or_default() += 1;
            }
        }
        let logs: Vec<Arc<PartitionLog>> =
            self.partitions.iter().map(|e| e.value().clone()).collect();
        for log in logs {
            let inner = log.lock();
            snap.partitions.push(PartitionSnapshot {
                topic: log.topic.to_string(),
                partition: log.partition,
                assigned: inner.status == Status::Started,
                live_offset: log.live(),
                subscribers: inner.member_count(),
                buffered_records: inner.recent.len(),
            });
        }
        snap.partitions
            .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        snap
    }
}
