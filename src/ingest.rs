//! The node's one Kafka consumer and its assignment.
//!
//! A `BaseConsumer` polled on a dedicated thread (its calls block; a
//! StreamConsumer has had missed-wakeup bugs). The assignment is exactly the
//! set of partitions the registry says someone needs, changed incrementally
//! with an explicit start offset each time, never committed. Each record is
//! copied out of librdkafka at once and fanned out on this thread: the
//! fan-out never blocks (it only fills byte-bounded queues), and connection
//! tasks are woken once per batch.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::formats::{Decoder, HeldPartition, Hold};
use crate::metrics::Metrics;
use crate::record::Record;
use crate::registry::{FanoutBatch, PartitionLog, Registry};
use crate::sse::Encoded;

const POLL_TIMEOUT: Duration = Duration::from_millis(20);
const MAX_BATCH: usize = 2048;
/// Connection tasks are woken once per batch, so a batch must stay well
/// under a connection's queue bound or every client would overflow on a
/// backlog.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(500);
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// Handle to the ingest thread.
pub struct Ingest {
    /// Partitions to start reading, from their live position.
    pending: Arc<Mutex<Vec<Arc<PartitionLog>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Ingest {
    /// Starts the thread; it runs until `stop` is cancelled.
    pub fn start(
        consumer: Arc<BaseConsumer>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        decoder: Arc<Decoder>,
        linger: Duration,
        event_header: String,
        stop: CancellationToken,
    ) -> std::io::Result<Ingest> {
        let pending = Arc::new(Mutex::new(Vec::new()));
        let thread_pending = pending.clone();
        let thread = std::thread::Builder::new()
            .name("herald-ingest".into())
            .stack_size(crate::formats::DECODER_STACK)
            .spawn(move || {
                IngestLoop {
                    consumer,
                    registry,
                    metrics,
                    pending: thread_pending,
                    stop,
                    linger,
                    event_header,
                    decoder,
                    assigned: HashMap::new(),
                    failed: Vec::new(),
                    held: HashMap::new(),
                }
                .run()
            })?;
        Ok(Ingest {
            pending,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks the thread to start reading `log` from its live position.
    pub fn assign(&self, log: Arc<PartitionLog>) {
        self.pending.lock().push(log);
    }

    /// Waits for the thread, once its token is cancelled (blocking: the
    /// consumer's drop waits for librdkafka).
    pub fn join(&self) {
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

struct IngestLoop {
    consumer: Arc<BaseConsumer>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    pending: Arc<Mutex<Vec<Arc<PartitionLog>>>>,
    stop: CancellationToken,
    linger: Duration,
    event_header: String,
    decoder: Arc<Decoder>,
    /// Exactly what the consumer has assigned: topic → partition → log.
    assigned: HashMap<String, HashMap<i32, Arc<PartitionLog>>>,
    /// Assignments that failed, to retry.
    failed: Vec<Arc<PartitionLog>>,
    /// Partitions paused until a schema can be had, with the records read
    /// meanwhile, in order.
    held: HashMap<(Arc<str>, i32), Held>,
}

/// Records a held partition keeps in memory before its consumer pauses it
/// (pausing costs the partition a fetch round trip or more when it
/// resumes, which a schema fetch of a few milliseconds does not need).
const MAX_HELD_BYTES: usize = 4 << 20;

/// A partition waiting for its first record's schema.
struct Held {
    log: Arc<PartitionLog>,
    records: VecDeque<Record>,
    /// Bytes of `records`' keys and values.
    bytes: usize,
    /// Whether the consumer paused it (the records read grew past [`MAX_HELD_BYTES`]).
    paused: bool,
    /// The offset after the last record kept (a paused partition can still
    /// hand over what it had fetched; anything before this is a repeat).
    next: i64,
    hold: Hold,
    since: Instant,
}

/// What a held record costs in memory, near enough.
fn record_bytes(r: &Record) -> usize {
    128 + r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len())
}

/// Pauses (or resumes) fetching `log`'s partition.
fn pause(consumer: &BaseConsumer, log: &PartitionLog, paused: bool) {
    let mut tpl = TopicPartitionList::new();
    let _ = tpl.add_partition(&log.topic, log.partition);
    let result = if paused {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, paused, "pause/resume failed; records read meanwhile are kept in order");
    }
}

impl IngestLoop {
    fn run(mut self) {
        let mut batch = FanoutBatch::default();
        let mut last_housekeeping = Instant::now();
        while !self.stop.is_cancelled() {
            if last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                last_housekeeping = Instant::now();
                self.release_idle();
                self.report_lag();
            }
            self.apply_commands();
            let mut timeout = POLL_TIMEOUT;
            if !self.held.is_empty() && self.release_held(&mut batch) {
                // More released records are ready: wake their connections
                // and come back without waiting on Kafka.
                batch.wakers.wake_all();
                timeout = Duration::ZERO;
            }
            let mut polled = 0;
            let mut bytes = 0;
            // A message borrows its consumer, and ingesting one may change
            // the loop's own state (a hold).
            let consumer = self.consumer.clone();
            while polled < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                let Some(result) = consumer.poll(timeout) else {
                    break;
                };
                timeout = Duration::ZERO;
                polled += 1;
                match result {
                    Ok(message) => {
                        bytes += message.payload_len();
                        self.ingest(&message, &mut batch)
                    }
                    Err(e) => self.on_error(e, &mut batch),
                }
            }
            if polled > 0 {
                self.metrics.records_consumed.inc_by(polled as u64);
            }
            batch.wakers.wake_all();
        }
    }

    fn ingest(&mut self, message: &BorrowedMessage<'_>, batch: &mut FanoutBatch) {
        let Some(log) = self
            .assigned
            .get(message.topic())
            .and_then(|p| p.get(&message.partition()))
        else {
            return; // prefetched before an unassign
        };
        let record = Record::from_message(log.topic.clone(), message);
        if let Some(held) = self.held.get_mut(&(log.topic.clone(), record.partition)) {
            if record.offset >= held.next {
                held.next = record.offset.saturating_add(1);
                held.bytes += record_bytes(&record);
                held.records.push_back(record);
                if held.bytes > MAX_HELD_BYTES && !held.paused {
                    held.paused = true;
                    pause(&self.consumer, &held.log, true);
                }
            }
            return;
        }
        match self.decoder.decode(&record) {
            Ok(decoded) => {
                let encoded = Encoded::decoded(record, &self.event_header, decoded);
                self.registry.fan_out(log, Arc::new(encoded), batch);
            }
            Err(hold) => {
                let log = log.clone();
                self.hold(log, record, hold);
            }
        }
    }

    /// Holds `log`'s partition until `record`'s schema can be had: its
    /// records wait, in order (the consumer pauses the partition if they
    /// grow large); the other partitions go on.
    fn hold(&mut self, log: Arc<PartitionLog>, record: Record, hold: Hold) {
        tracing::warn!(topic = %log.topic, partition = log.partition, offset = record.offset, schema_id = hold.schema_id, reason = %hold.reason, "holding partition until its schema can be had");
        let key = (log.topic.clone(), log.partition);
        self.held.insert(
            key,
            Held {
                log,
                next: record.offset.saturating_add(1),
                bytes: record_bytes(&record),
                paused: false,
                records: VecDeque::from([record]),
                hold,
                since: Instant::now(),
            },
        );
        self.publish_held();
    }

    /// Delivers what held partitions can now decode, in order, at most a
    /// batch's bytes at a time (connections are woken between batches, as
    /// for records read from Kafka), and resumes the partitions that caught
    /// up. Returns whether more is ready to go at once.
    fn release_held(&mut self, batch: &mut FanoutBatch) -> bool {
        let mut held = std::mem::take(&mut self.held);
        let mut changed = false;
        let mut budget = MAX_BATCH_BYTES;
        let mut more = false;
        held.retain(|_, h| {
            while let Some(front) = h.records.front() {
                if budget == 0 {
                    more = true;
                    return true;
                }
                match self.decoder.decode(front) {
                    Ok(decoded) => {
                        let Some(record) = h.records.pop_front() else {
                            break;
                        };
                        let size = record_bytes(&record);
                        h.bytes = h.bytes.saturating_sub(size);
                        budget = budget.saturating_sub(size);
                        let encoded = Encoded::decoded(record, &self.event_header, decoded);
                        self.registry.fan_out(&h.log, Arc::new(encoded), batch);
                        changed = true;
                    }
                    Err(hold) => {
                        if hold.reason != h.hold.reason || hold.schema_id != h.hold.schema_id {
                            changed = true;
                        }
                        h.hold = hold;
                        return true;
                    }
                }
            }
            if h.paused {
                pause(&self.consumer, &h.log, false);
            }
            tracing::info!(topic = %h.log.topic, partition = h.log.partition, held_for = ?h.since.elapsed(), "partition released: schema available");
            changed = true;
            false
        });
        self.held = held;
        if changed {
            self.publish_held();
        }
        more
    }

    /// Drops the hold on a partition leaving the assignment (its records
    /// are read again from Kafka if it is ever needed again).
    fn forget_held(&mut self, topic: &Arc<str>, partition: i32) {
        if let Some(h) = self.held.remove(&(topic.clone(), partition)) {
            if h.paused {
                pause(&self.consumer, &h.log, false);
            }
            self.publish_held();
        }
    }

    fn publish_held(&self) {
        self.metrics
            .held_partitions
            .set(i64::try_from(self.held.len()).unwrap_or(i64::MAX));
        let views = self
            .held
            .values()
            .map(|h| HeldPartition {
                topic: h.log.topic.clone(),
                partition: h.log.partition,
                offset: h.records.front().map_or(h.next, |r| r.offset),
                schema_id: h.hold.schema_id,
                reason: h.hold.reason.clone(),
                since: h.since,
            })
            .collect();
        self.decoder.holds.publish(views);
    }

    fn on_error(&mut self, e: KafkaError, batch: &mut FanoutBatch) {
        self.metrics.kafka_errors.inc();
        // With `auto.offset.reset=error`, librdkafka reports a position
        // retention overtook as AutoOffsetReset (older versions as
        // OffsetOutOfRange).
        if matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset)
        ) {
            self.recover_out_of_range(batch);
        } else {
            tracing::warn!(error = %e, "kafka consumer error");
        }
    }

    /// librdkafka does not say which partition went out of range, so check
    /// every assigned one against its watermarks; those behind the log start
    /// (or beyond the end: a recreated topic) jump to the start with an
    /// explicit gap, and are unassigned and reassigned there.
    fn recover_out_of_range(&mut self, batch: &mut FanoutBatch) {
        let logs: Vec<Arc<PartitionLog>> = self
            .assigned
            .values()
            .flat_map(|p| p.values().cloned())
            .collect();
        let mut in_range = Vec::new();
        let mut jumped = false;
        for log in logs {
            let Ok((low, high)) =
                self.consumer
                    .fetch_watermarks(&log.topic, log.partition, WATERMARK_TIMEOUT)
            else {
                continue;
            };
            let live = log.live();
            if live >= low && live <= high {
                in_range.push(log);
                continue;
            }
            jumped = true;
            tracing::warn!(topic = %log.topic, partition = log.partition, live, low, high, "position out of range: gap");
            self.forget_held(&log.topic, log.partition);
            self.registry.jump(&log, low, &mut batch.wakers);
            self.reassign(log);
        }
        if !jumped {
            // The fetcher failed ahead of what was delivered (its prefetch
            // position went out of range, not the live one), and stopped:
            // fetch every partition again from its live position, which a
            // second failure then finds below the log start.
            for log in in_range {
                self.reassign(log);
            }
        }
    }

    /// Unassigns `log`'s partition; the next commands assign it again at
    /// its live position.
    fn reassign(&mut self, log: Arc<PartitionLog>) {
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition(&log.topic, log.partition);
        let _ = self.consumer.incremental_unassign(&tpl);
        if let Some(p) = self.assigned.get_mut(&*log.topic) {
            p.remove(&log.partition);
        }
        self.failed.push(log);
    }

    fn apply_commands(&mut self) {
        let mut wanted: Vec<Arc<PartitionLog>> = std::mem::take(&mut self.failed);
        wanted.extend(self.pending.lock().drain(..));
        if wanted.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        let mut adding = Vec::new();
        for log in wanted {
            let already = self
                .assigned
                .get(&*log.topic)
                .is_some_and(|p| p.contains_key(&log.partition));
            if already || !log.is_started() {
                continue; // duplicate request, or released before we got to it
            }
            if tpl
                .add_partition_offset(&log.topic, log.partition, Offset::Offset(log.live()))
                .is_ok()
            {
                adding.push(log);
            }
        }
        if adding.is_empty() {
            return;
        }
        match self.consumer.incremental_assign(&tpl) {
            Ok(()) => {
                for log in adding {
                    tracing::debug!(topic = %log.topic, partition = log.partition, offset = log.live(), "assigned");
                    self.assigned
                        .entry(log.topic.to_string())
                        .or_default()
                        .insert(log.partition, log);
                }
            }
            Err(e) => {
                self.metrics.kafka_errors.inc();
                tracing::warn!(error = %e, "assign failed; will retry");
                self.failed = adding;
            }
        }
        self.update_assigned_gauge();
    }

    fn release_idle(&mut self) {
        let released = self.registry.release_idle(self.linger);
        if released.is_empty() {
            return;
        }
        for log in &released {
            self.forget_held(&log.topic, log.partition);
        }
        let mut tpl = TopicPartitionList::new();
        for log in &released {
            let present = self
                .assigned
                .get_mut(&*log.topic)
                .and_then(|p| p.remove(&log.partition))
                .is_some();
            if present {
                let _ = tpl.add_partition(&log.topic, log.partition);
                self.metrics
                    .partition_lag
                    .remove_label_values(&[&*log.topic, &log.partition.to_string()])
                    .ok();
            }
        }
        self.assigned.retain(|_, p| !p.is_empty());
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.incremental_unassign(&tpl) {
                self.metrics.kafka_errors.inc();
                tracing::warn!(error = %e, "unassign failed");
            }
        }
        self.update_assigned_gauge();
    }

    fn update_assigned_gauge(&self) {
        let n: usize = self.assigned.values().map(|p| p.len()).sum();
        self.metrics.assigned_partitions.set(n as i64);
    }

    /// Lag from the high watermarks librdkafka learnt from its last fetches
    /// (a cached read, no request).
    fn report_lag(&self) {
        let rk = self.consumer.client().native_ptr();
        for (topic, partitions) in &self.assigned {
            let Ok(name) = CString::new(topic.as_str()) else {
                continue;
            };
            for (partition, log) in partitions {
                let (mut low, mut high) = (-1i64, -1i64);
                // SAFETY: `rk` is the live handle of a consumer we own; the
                // topic name is a valid C string for the duration of the call;
                // librdkafka writes the two out-parameters and keeps no pointer.
                let err = unsafe {
                    rdkafka::bindings::rd_kafka_get_watermark_offsets(
                        rk,
                        name.as_ptr(),
                        *partition,
                        &mut low,
                        &mut high,
                    )
                };
                if err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                    && high >= 0
                {
                    let lag = (high - log.live()).max(0);
                    self.metrics
                        .partition_lag
                        .with_label_values(&[topic, &partition.to_string()])
                        .set(lag);
                }
            }
        }
    }
}
