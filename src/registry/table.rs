//! Table topics: per partition, the latest record of every key.
//!
//! A partition of a table topic keeps, beside its recent buffer, a map from
//! key to the newest record with that key (tombstones delete). When the
//! table begins, the live position is its *target*: from there on the
//! fan-out applies every record to the table as always (remembering the
//! keys it deletes), while a catch-up reader reads the partition from its
//! log start up to the target into a private map, outside any lock. The
//! reader then merges its map under the partition's lock, the fan-out's
//! newer entries and deletions winning. A hot partition therefore never
//! outruns its build: the reader's end is fixed. From then on, at any
//! moment under the lock, the table is the state of the log up to the live
//! position, and a snapshot taken there continues live from exactly there.
//!
//! Every table on the node shares one byte budget (`--table-max-bytes`). A
//! table that would take the node past it fails as a whole: it drops its
//! entries, says so to each stream that asks it for a snapshot, and stays
//! failed until its partition is released. A partial table is never served.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::partition::{LogInner, PartitionLog, Status};
use super::{Filter, Registry, Subscriber};
use crate::pattern::Pattern;
use crate::sse::Encoded;

/// Which topics are tables, the node's budget for them, and who builds them.
pub struct Tables {
    patterns: Vec<Pattern>,
    max_bytes: usize,
    used: AtomicUsize,
    /// Woken whenever a table becomes ready or fails.
    pub changed: tokio::sync::Notify,
    builder: OnceLock<Box<dyn Fn(Arc<PartitionLog>) + Send + Sync>>,
}

impl Tables {
    pub fn new(patterns: &[String], max_bytes: usize) -> Tables {
        Tables {
            patterns: patterns
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| Pattern::new(p))
                .collect(),
            max_bytes,
            used: AtomicUsize::new(0),
            changed: tokio::sync::Notify::new(),
            builder: OnceLock::new(),
        }
    }

    /// No table topics.
    pub fn none() -> Tables {
        Tables::new(&[], 0)
    }

    pub fn is_table(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| p.topic_rank(topic).is_some())
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn used_bytes(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Who reads a table's partition from its start (the catch-up readers).
    pub fn set_builder(&self, build: Box<dyn Fn(Arc<PartitionLog>) + Send + Sync>) {
        let _ = self.builder.set(build);
    }

    fn request_build(&self, log: Arc<PartitionLog>) {
        match self.builder.get() {
            Some(build) => build(log),
            None => tracing::error!(topic = %log.topic, "no table builder set"),
        }
    }

    /// Takes `n` bytes of the budget, if they fit.
    fn reserve(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&t| t <= self.max_bytes)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableStatus {
    Building,
    Ready,
    /// Past the node's budget: empty, and refusing snapshots.
    TooLarge,
}

/// One partition's table.
pub(super) struct Table {
    pub status: TableStatus,
    pub entries: HashMap<Bytes, Arc<Encoded>>,
    pub bytes: usize,
    pub started: Instant,
    pub took: Option<Duration>,
    /// How far the build has read, and the end it aims at: the live
    /// position when the table began (the fan-out applies what follows).
    pub read_to: i64,
    pub target: i64,
    /// While building: keys the fan-out deleted, which the build's older
    /// records must not bring back.
    pub deleted: HashSet<Bytes>,
}

/// Budget bytes an entry costs: the record and its encodings, and its key
/// in the map.
fn cost(record: &Encoded) -> usize {
    record.weight() + record.match_key().map_or(0, |k| k.len()) + 48
}

impl Table {
    fn building(target: i64) -> Table {
        Table {
            status: TableStatus::Building,
            entries: HashMap::new(),
            bytes: 0,
            started: Instant::now(),
            took: None,
            read_to: 0,
            target,
            deleted: HashSet::new(),
        }
    }

    /// Applies one record (a tombstone deletes its key). False if it does
    /// not fit the budget: the table has then failed.
    fn apply(&mut self, tables: &Tables, record: &Arc<Encoded>) -> bool {
        apply_to(&mut self.entries, &mut self.bytes, tables, record)
    }

    fn fail(&mut self, tables: &Tables) {
        tables.release(self.bytes);
        self.entries = HashMap::new();
        self.deleted = HashSet::new();
        self.bytes = 0;
        self.status = TableStatus::TooLarge;
    }

    /// Drops the table's entries and gives back their budget.
    pub fn clear(&mut self, tables: &Tables) {
        tables.release(self.bytes);
        self.entries = HashMap::new();
        self.bytes = 0;
    }
}

fn apply_to(
    entries: &mut HashMap<Bytes, Arc<Encoded>>,
    bytes: &mut usize,
    tables: &Tables,
    record: &Arc<Encoded>,
) -> bool {
    let Some(key) = record.match_key() else {
        return true; // a record without a key is no table entry
    };
    if let Some(old) = entries.remove(key) {
        let c = cost(&old);
        *bytes = bytes.saturating_sub(c);
        tables.release(c);
    }
    if record.record.value.is_none() {
        return true; // a tombstone
    }
    let c = cost(record);
    if !tables.reserve(c) {
        return false;
    }
    *bytes += c;
    entries.insert(key.clone(), record.clone());
    true
}

/// A table being read from Kafka by a catch-up reader, outside any lock.
pub struct TableBuild {
    pub log: Arc<PartitionLog>,
    entries: HashMap<Bytes, Arc<Encoded>>,
    bytes: usize,
    /// The next offset the build needs.
    pub next: i64,
    /// Where the build ends: the fan-out applied everything from here.
    target: i64,
    failed: bool,
}

/// What a build should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStep {
    /// Read more from Kafka, from `next`.
    Read,
    /// Handed over: the table is ready (or failed); nothing more to read.
    Done,
}

/// The outcome of taking a snapshot of a subscriber's slots.
pub enum Capture {
    /// Every slot's table, at one offset per partition (now the
    /// subscriber's positions): the matching entries, by slot.
    Taken(Vec<(usize, Arc<Encoded>)>),
    /// Some table is still being built.
    Building,
    /// This slot's table does not fit the node's budget.
    TooLarge(usize),
    /// A slot's partition is not a table topic.
    NotATable(usize),
}

impl LogInner {
    /// The record the fan-out is delivering, applied to a ready table.
    pub(super) fn update_table(&mut self, tables: &Tables, record: &Arc<Encoded>) -> bool {
        let Some(table) = self.table.as_mut() else {
            return true;
        };
        match table.status {
            TableStatus::TooLarge => return true,
            TableStatus::Ready => {}
            TableStatus::Building => {
                // Newer than anything the build reads: remember deletions.
                if let Some(k) = record.match_key() {
                    if record.record.value.is_none() {
                        table.deleted.insert(k.clone());
                    } else {
                        table.deleted.remove(k);
                    }
                }
            }
        }
        if table.apply(tables, record) {
            return true;
        }
        table.fail(tables);
        false
    }
}

impl Registry {
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// A stream re-synced instead of getting a gap.
    pub fn count_resync(&self) {
        self.metrics.resyncs.inc();
    }

    /// Makes `log`'s table (re)build from the log start, once the partition
    /// has started (a new table, or one the live consumer lost track of).
    pub(super) fn begin_table(&self, log: &Arc<PartitionLog>, inner: &mut LogInner) {
        if !log.is_table {
            return;
        }
        let was_building = match inner.table.as_mut() {
            Some(old) => {
                old.clear(&self.tables);
                old.status == TableStatus::Building
            }
            None => false,
        };
        inner.table = Some(Table::building(log.live()));
        if !was_building {
            self.metrics.tables_building.inc();
        }
        self.tables.request_build(log.clone());
    }

    /// Starts reading `log`'s table from `low` (up to its target).
    pub fn table_build(&self, log: Arc<PartitionLog>, low: i64) -> TableBuild {
        let target = log.lock().table.as_ref().map_or(i64::MAX, |t| t.target);
        TableBuild {
            log,
            entries: HashMap::new(),
            bytes: 0,
            next: low,
            target,
            failed: false,
        }
    }

    /// Retention moved the log start past the build: it starts again there.
    pub fn table_restart(&self, build: &mut TableBuild, low: i64) {
        self.tables.release(build.bytes);
        build.entries = HashMap::new();
        build.bytes = 0;
        build.next = low;
    }

    /// Adds a record the build read; false if the table does not fit.
    pub fn table_add(&self, build: &mut TableBuild, record: &Arc<Encoded>) -> bool {
        if build.failed {
            return false;
        }
        let offset = record.record.offset;
        if offset >= build.target {
            // The fan-out has applied this one and everything after it.
            build.next = build.next.max(build.target);
            return true;
        }
        build.next = offset.saturating_add(1);
        if apply_to(&mut build.entries, &mut build.bytes, &self.tables, record) {
            return true;
        }
        build.failed = true;
        false
    }

    /// Records the build's progress; merges the table in once the build
    /// has read up to its target (or stops it if it failed or is no longer
    /// wanted).
    pub fn table_step(&self, build: &mut TableBuild) -> BuildStep {
        let log = build.log.clone();
        let mut inner = log.lock();
        let started = inner.status == Status::Started;
        let wanted = started
            && inner
                .table
                .as_ref()
                .is_some_and(|t| t.status == TableStatus::Building && t.target == build.target);
        if !wanted {
            self.tables.release(build.bytes);
            build.bytes = 0;
            build.entries = HashMap::new();
            return BuildStep::Done;
        }
        if build.failed {
            self.tables.release(build.bytes);
            build.bytes = 0;
            build.entries = HashMap::new();
            self.finish_table(&mut inner, false);
            return BuildStep::Done;
        }
        let Some(t) = inner.table.as_mut() else {
            return BuildStep::Done;
        };
        t.read_to = build.next.min(t.target);
        if build.next < t.target {
            return BuildStep::Read;
        }
        // Merge: the fan-out's entries and deletions are newer than any
        // record the build read.
        let mut merged = std::mem::take(&mut build.entries);
        let mut bytes = std::mem::take(&mut build.bytes);
        for k in t.deleted.drain() {
            if let Some(old) = merged.remove(&k) {
                let c = cost(&old);
                bytes = bytes.saturating_sub(c);
                self.tables.release(c);
            }
        }
        for (k, r) in t.entries.drain() {
            if let Some(old) = merged.insert(k, r) {
                let c = cost(&old);
                bytes = bytes.saturating_sub(c);
                self.tables.release(c);
            }
        }
        t.entries = merged;
        t.bytes = t.bytes.saturating_add(bytes);
        t.read_to = t.target;
        self.finish_table(&mut inner, true);
        BuildStep::Done
    }

    fn finish_table(&self, inner: &mut LogInner, fits: bool) {
        if let Some(t) = inner.table.as_mut() {
            if fits {
                t.status = TableStatus::Ready;
            } else {
                t.fail(&self.tables);
                self.metrics.table_failures.inc();
            }
            t.took = Some(t.started.elapsed());
        }
        self.metrics.tables_building.dec();
        self.tables.changed.notify_waiters();
    }

    /// Drops the entries of `log`'s table below `low`, the log start:
    /// retention removed those records, and a table built afresh from the
    /// log (on another node, or after a restart) would not have them.
    pub fn prune_table(&self, log: &PartitionLog, low: i64) -> usize {
        let mut inner = log.lock();
        let Some(t) = inner.table.as_mut() else {
            return 0;
        };
        if t.status != TableStatus::Ready {
            return 0;
        }
        let mut freed = 0;
        let before = t.entries.len();
        t.entries.retain(|_, r| {
            let keep = r.record.offset >= low;
            if !keep {
                freed += cost(r);
            }
            keep
        });
        t.bytes = t.bytes.saturating_sub(freed);
        self.tables.release(freed);
        before - t.entries.len()
    }

    /// Whether `log`'s table is ready.
    pub fn table_is_ready(&self, log: &PartitionLog) -> bool {
        log.lock()
            .table
            .as_ref()
            .is_some_and(|t| t.status == TableStatus::Ready)
    }

    /// The records of `log`'s table (empty unless ready).
    pub fn table_records(&self, log: &PartitionLog) -> Vec<Arc<Encoded>> {
        let inner = log.lock();
        match inner.table.as_ref() {
            Some(t) if t.status == TableStatus::Ready => t.entries.values().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Every started table partition, for the pruning sweep.
    pub fn table_logs(&self) -> Vec<Arc<PartitionLog>> {
        self.partitions
            .iter()
            .map(|e| e.value().clone())
            .filter(|l| l.is_table && l.is_started())
            .collect()
    }

    /// Takes a snapshot of every slot of `sub`: under all its partitions'
    /// locks at once (in slot order), the entries its slots select, and each
    /// slot's position set to its partition's live position. The filters
    /// (`where=`, claims) are the caller's to apply, outside the locks.
    ///
    /// `floors` (by slot, may be shorter) are log starts the live stream
    /// must have reached first: below one, the fan-out is about to jump
    /// there and rebuild the table.
    pub fn capture(&self, sub: &Subscriber, floors: &[i64]) -> Capture {
        let held: Vec<_> = sub.shape.slots.iter().map(|s| s.log.lock()).collect();
        for (slot, inner) in held.iter().enumerate() {
            let floor = floors.get(slot).copied().unwrap_or(0);
            if inner.status != Status::Started || sub.shape.slots[slot].log.live() < floor {
                return Capture::Building;
            }
            match inner.table.as_ref().map(|t| t.status) {
                None => return Capture::NotATable(slot),
                Some(TableStatus::Building) => return Capture::Building,
                Some(TableStatus::TooLarge) => return Capture::TooLarge(slot),
                Some(TableStatus::Ready) => {}
            }
        }
        let mut taken = Vec::new();
        for (slot, inner) in held.iter().enumerate() {
            let Some(table) = inner.table.as_ref() else {
                continue;
            };
            let s = &sub.shape.slots[slot];
            match &s.filter {
                Filter::Whole => taken.extend(table.entries.values().map(|r| (slot, r.clone()))),
                Filter::Keys(keys) => taken.extend(
                    keys.iter()
                        .filter_map(|k| table.entries.get(k))
                        .map(|r| (slot, r.clone())),
                ),
            }
            sub.set_position(slot, s.log.live());
        }
        drop(held);
        self.metrics.snapshots.inc();
        taken.sort_by_key(|(slot, r)| (*slot, r.record.offset));
        Capture::Taken(taken)
    }
}

/// A table's figures for `/v1/stats`.
#[derive(Debug, serde::Serialize)]
pub struct TableSnapshot {
    pub topic: String,
    pub partition: i32,
    pub status: TableStatus,
    pub keys: usize,
    pub bytes: usize,
    /// Offsets read so far, and the end the build aims at (while building).
    pub read_to: i64,
    pub target: i64,
    /// How long the build took (ms), once done.
    pub built_ms: Option<u64>,
}

impl Registry {
    /// Every table on the node.
    pub fn table_stats(&self) -> Vec<TableSnapshot> {
        let logs: Vec<Arc<PartitionLog>> = self
            .partitions
            .iter()
            .map(|e| e.value().clone())
            .filter(|l| l.is_table)
            .collect();
        let mut out = Vec::new();
        for log in logs {
            let inner = log.lock();
            if let Some(t) = inner.table.as_ref() {
                out.push(TableSnapshot {
                    topic: log.topic.to_string(),
                    partition: log.partition,
                    status: t.status,
                    keys: t.entries.len(),
                    bytes: t.bytes,
                    read_to: t.read_to,
                    target: t.target,
                    built_ms: t
                        .took
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                });
            }
        }
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }

    /// Bytes waiting in every client queue of the node.
    pub fn queued_bytes(&self) -> usize {
        self.connections
            .iter()
            .map(|c| c.value().queue.queued_bytes())
            .sum()
    }

    /// Sets the per-topic table gauges, and the queued bytes.
    pub fn report_tables(&self) {
        let queued = i64::try_from(self.queued_bytes()).unwrap_or(i64::MAX);
        self.metrics.queued_bytes.set(queued);
        let mut per_topic: HashMap<String, (usize, usize)> = HashMap::new();
        for t in self.table_stats() {
            let e = per_topic.entry(t.topic).or_default();
            e.0 += t.keys;
            e.1 += t.bytes;
        }
        self.metrics.table_keys.reset();
        self.metrics.table_bytes.reset();
        for (topic, (keys, bytes)) in per_topic {
            let keys = i64::try_from(keys).unwrap_or(i64::MAX);
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            self.metrics
                .table_keys
                .with_label_values(&[&topic])
                .set(keys);
            self.metrics
                .table_bytes
                .with_label_values(&[&topic])
                .set(bytes);
        }
    }
}
