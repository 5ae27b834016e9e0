//! Replays for connections that resume from further back than the recent
//! buffer reaches.
//!
//! A small, fixed pool of readers (threads, each with one Kafka consumer)
//! serves every resuming connection on the node. Jobs are grouped by
//! partition and a partition is read by at most one reader at a time, which
//! serves all the connections waiting on it in one pass: a mass reconnect
//! costs at most one extra consumer per partition, bounded by the pool size.
//! A reader delivers records until a connection's position reaches the
//! recent buffer, then hands it to the live fan-out through
//! [`Registry::join`], under the partition's lock, at the exact offset.
//!
//! A replay is paced, never a reason to cut a client off: one that has not
//! drained half its queue leaves the pass and is parked until it has room
//! again, so a client that stops reading costs no Kafka reads at all (the
//! write timeout then ends it like any stalled stream).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::formats::Decoder;
use crate::ingest::MAX_BATCH_BYTES;
use crate::metrics::Metrics;
use crate::queue::{Pushed, Wakers};
use crate::record::Record;
use crate::registry::{
    BuildStep, Join, PartitionLog, Registry, SlotStart, Subscriber, EVENT_OVERHEAD,
};
use crate::sse::Encoded;

const POLL_TIMEOUT: Duration = Duration::from_millis(50);
/// Records one poll batch takes at most (and at most the ingest batch's bytes).
const MAX_BATCH: usize = 512;
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause before another pass for a client deferred as slow; doubles
/// each time it is deferred again, up to [`MAX_BACKOFF`].
const RETRY_SLOW: Duration = Duration::from_millis(10);
/// Pause before retrying a failed pass, doubling with the failures in a row.
const RETRY_FAILED: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often idle readers look at the board again: for parked jobs, and
/// for the stop token (a thread cannot await it).
const BOARD_CHECK: Duration = Duration::from_millis(50);
/// How long a partition's first waiting job waits for others before a pass
/// starts: a mass reconnect arrives over a few milliseconds, and one pass
/// serves everyone who arrived meanwhile.
const GATHER: Duration = Duration::from_millis(25);

struct Job {
    sub: Arc<Subscriber>,
    slot: usize,
    /// Not before this: a gathering window at first, then a back-off after
    /// a deferral or a failed pass.
    not_before: Instant,
    /// Passes in a row that deferred or failed this job.
    setbacks: u32,
}

impl Job {
    fn new(sub: Arc<Subscriber>, slot: usize) -> Job {
        Job {
            sub,
            slot,
            not_before: Instant::now() + GATHER,
            setbacks: 0,
        }
    }

    /// Whether a pass should read for this job now. A job deferred because
    /// its client was not draining waits until its queue has room again.
    fn is_ready(&self, now: Instant) -> bool {
        now >= self.not_before
            && (self.setbacks == 0 || self.sub.connection.queue.has_room_for_replay())
    }

    fn set_back(&mut self, base: Duration, now: Instant) {
        self.setbacks = self.setbacks.saturating_add(1);
        let pause = base
            .saturating_mul(1 << self.setbacks.min(16))
            .min(MAX_BACKOFF);
        self.not_before = now + pause;
    }
}

type PartitionKey = (Arc<str>, i32);

#[derive(Default)]
struct Board {
    pending: HashMap<PartitionKey, Vec<Job>>,
    /// Table partitions to read from their log start, not before a time.
    builds: HashMap<PartitionKey, (Arc<PartitionLog>, Instant)>,
    /// Partitions a reader is reading now.
    busy: HashSet<PartitionKey>,
}

/// What a reader takes from the board.
enum Work {
    Replay(PartitionKey, Vec<Job>),
    Build(PartitionKey, Arc<PartitionLog>),
}

struct Shared {
    board: Mutex<Board>,
    wake: Condvar,
    stop: CancellationToken,
}

/// The pool of catch-up readers.
pub struct Catchup {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Catchup {
    /// Starts `readers` threads; they run until `stop` is cancelled.
    pub fn start(
        readers: usize,
        consumer_config: ClientConfig,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        decoder: Arc<Decoder>,
        event_header: String,
        stop: CancellationToken,
    ) -> std::io::Result<Catchup> {
        let shared = Arc::new(Shared {
            board: Mutex::new(Board::default()),
            wake: Condvar::new(),
            stop,
        });
        let mut threads = Vec::new();
        for n in 0..readers.max(1) {
            let mut config = consumer_config.clone();
            // A table build learns that it has read everything there is.
            config.set("enable.partition.eof", "true");
            if let Some(group) = config.get("group.id").map(|g| format!("{g}-{n}")) {
                config.set("group.id", group);
            }
            let reader = Reader {
                shared: shared.clone(),
                registry: registry.clone(),
                metrics: metrics.clone(),
                config,
                consumer: None,
                decoder: decoder.clone(),
                event_header: event_header.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("herald-catchup-{n}"))
                    .stack_size(crate::formats::DECODER_STACK)
                    .spawn(move || reader.run())?,
            );
        }
        Ok(Catchup {
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// Queues `slot` of `sub` for replay from its current position.
    pub fn enqueue(&self, sub: Arc<Subscriber>, slot: usize) {
        let log = &sub.shape.slots[slot].log;
        let key = (log.topic.clone(), log.partition);
        self.shared
            .board
            .lock()
            .pending
            .entry(key)
            .or_default()
            .push(Job::new(sub, slot));
        self.shared.wake.notify_one();
    }

    /// Queues a table partition to be read from its log start.
    pub fn build(&self, log: Arc<PartitionLog>) {
        let key = (log.topic.clone(), log.partition);
        self.shared
            .board
            .lock()
            .builds
            .insert(key, (log, Instant::now()));
        self.shared.wake.notify_one();
    }

    /// Waits for the readers, once their token is cancelled (blocking: each
    /// consumer's drop waits for librdkafka).
    pub fn join(&self) {
        self.shared.wake.notify_all();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

struct Reader {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    config: ClientConfig,
    consumer: Option<BaseConsumer>,
    decoder: Arc<Decoder>,
    event_header: String,
}

impl Reader {
    fn run(mut self) {
        while let Some(work) = self.next_partition() {
            let (key, mut jobs) = match work {
                Work::Replay(key, jobs) => (key, jobs),
                Work::Build(key, log) => {
                    self.metrics.catchup_readers.inc();
                    let result = self.build_table(&key, &log);
                    self.metrics.catchup_readers.dec();
                    let mut board = self.shared.board.lock();
                    if let Err(e) = result {
                        self.metrics.kafka_errors.inc();
                        tracing::warn!(topic = %key.0, partition = key.1, error = %e, "table build failed; will retry");
                        board
                            .builds
                            .entry(key.clone())
                            .or_insert((log, Instant::now() + RETRY_FAILED));
                    }
                    board.busy.remove(&key);
                    drop(board);
                    self.shared.wake.notify_all();
                    continue;
                }
            };
            self.metrics.catchup_readers.inc();
            let result = self.replay(&key, &mut jobs);
            self.metrics.catchup_readers.dec();
            // Whatever still needs records goes back on the board, after a
            // back-off: a failed read (broker unreachable, leader moving) is
            // retried, never dropped, or its clients would wait forever.
            let now = Instant::now();
            jobs.retain(|job| !job.sub.is_closed());
            let base = match result {
                Ok(()) => RETRY_SLOW,
                Err(e) => {
                    self.metrics.kafka_errors.inc();
                    tracing::warn!(topic = %key.0, partition = key.1, error = %e, "catch-up read failed; will retry");
                    RETRY_FAILED
                }
            };
            for job in &mut jobs {
                job.set_back(base, now);
            }
            let mut board = self.shared.board.lock();
            if !jobs.is_empty() {
                board.pending.entry(key.clone()).or_default().extend(jobs);
            }
            board.busy.remove(&key);
            drop(board);
            self.shared.wake.notify_all();
        }
    }

    /// Waits for a partition that no other reader holds and that has a job
    /// ready to read for; takes its ready jobs. `None` once stopped.
    fn next_partition(&self) -> Option<Work> {
        let mut board = self.shared.board.lock();
        loop {
            if self.shared.stop.is_cancelled() {
                return None;
            }
            let now = Instant::now();
            let Board {
                pending,
                builds,
                busy,
            } = &mut *board;
            let build = builds
                .iter()
                .find(|(k, (_, at))| !busy.contains(*k) && *at <= now)
                .map(|(k, _)| k.clone());
            if let Some(key) = build {
                if let Some((log, _)) = builds.remove(&key) {
                    busy.insert(key.clone());
                    return Some(Work::Build(key, log));
                }
            }
            pending.retain(|_, jobs| {
                jobs.retain(|j| !j.sub.is_closed());
                !jobs.is_empty()
            });
            let free = pending
                .iter()
                .find(|(k, jobs)| !busy.contains(*k) && jobs.iter().any(|j| j.is_ready(now)))
                .map(|(k, _)| k.clone());
            if let Some(key) = free {
                let waiting = pending.remove(&key).unwrap_or_default();
                let (ready, parked): (Vec<Job>, Vec<Job>) =
                    waiting.into_iter().partition(|j| j.is_ready(now));
                if !parked.is_empty() {
                    pending.insert(key.clone(), parked);
                }
                busy.insert(key.clone());
                return Some(Work::Replay(key, ready));
            }
            self.shared.wake.wait_for(&mut board, BOARD_CHECK);
        }
    }

    fn consumer(&mut self) -> Result<&BaseConsumer, KafkaError> {
        if self.consumer.is_none() {
            self.consumer = Some(self.config.create()?);
        }
        self.consumer.as_ref().ok_or(KafkaError::Canceled)
    }

    /// One pass over a partition for `jobs`. On return, `jobs` holds the
    /// connections that still need records from Kafka: ones deferred for
    /// being slow, and all unfinished ones if the pass failed.
    fn replay(&mut self, key: &PartitionKey, jobs: &mut Vec<Job>) -> Result<(), KafkaError> {
        let mut wakers = Wakers::default();
        hand_over(&self.registry, jobs, &mut wakers);
        if jobs.is_empty() {
            return Ok(());
        }
        self.metrics.catchup_reads.inc();
        let from = self.start_position(key, jobs, &mut wakers)?;
        let (registry, metrics, shared) = (
            self.registry.clone(),
            self.metrics.clone(),
            self.shared.clone(),
        );
        let event_header = self.event_header.clone();
        let decoder = self.decoder.clone();
        let (topic, partition) = (key.0.clone(), key.1);
        let consumer = self.consumer()?;
        assign(consumer, &topic, partition, from)?;
        // The offset this pass reads next: a client that arrives meanwhile
        // at or after it rides along instead of waiting for another pass.
        let mut next = from;
        let mut deferred = Vec::new();
        let result = loop {
            if jobs.is_empty() || shared.stop.is_cancelled() {
                break Ok(());
            }
            let polled = poll_batch(
                consumer,
                &topic,
                partition,
                &decoder,
                &event_header,
                &shared.stop,
                &mut |record| {
                    next = record.record.offset.saturating_add(1);
                    deliver(&metrics, jobs, &mut deferred, &record, &mut wakers);
                    true
                },
            );
            match polled {
                Ok(Batch::Read | Batch::End(_)) => {}
                Ok(Batch::Stopped) => break Ok(()),
                Ok(Batch::Restarted(low)) => {
                    // Retention overtook us mid-replay: say so, go on from the log start.
                    for job in jobs.iter() {
                        let p = job.sub.position(job.slot);
                        if p < low {
                            registry.gap(&job.sub, job.slot, p, low, &mut wakers);
                        }
                    }
                    next = low;
                }
                Err(e) => break Err(e),
            }
            wakers.wake_all();
            adopt(&shared, key, next, jobs);
            hand_over(&registry, jobs, &mut wakers);
        };
        unassign(consumer, &topic, partition);
        wakers.wake_all();
        // Clients that were not keeping up get another pass.
        jobs.extend(deferred);
        result
    }

    /// Reads a table partition from its log start up to the table's target
    /// (the live position when it began), then merges it in under the
    /// partition's lock (see `registry::table`).
    fn build_table(
        &mut self,
        key: &PartitionKey,
        log: &Arc<PartitionLog>,
    ) -> Result<(), KafkaError> {
        let (registry, shared, decoder) = (
            self.registry.clone(),
            self.shared.clone(),
            self.decoder.clone(),
        );
        let event_header = self.event_header.clone();
        let (topic, partition) = (key.0.clone(), key.1);
        let consumer = self.consumer()?;
        let (low, _) = consumer.fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT)?;
        let mut build = registry.table_build(log.clone(), low);
        if registry.table_step(&mut build) == BuildStep::Done {
            return Ok(());
        }
        assign(consumer, &topic, partition, low)?;
        let result = loop {
            if shared.stop.is_cancelled() {
                break Ok(());
            }
            let polled = poll_batch(
                consumer,
                &topic,
                partition,
                &decoder,
                &event_header,
                &shared.stop,
                &mut |record| {
                    // False once the table does not fit: the step below says so.
                    registry.table_add(&mut build, &Arc::new(record))
                },
            );
            match polled {
                Ok(Batch::Read) => {}
                Ok(Batch::Stopped) => break Ok(()),
                // Everything there is has been read: offsets up to here that
                // gave no record (transaction markers, compacted away) hold
                // nothing for the table.
                Ok(Batch::End(Some(at))) => build.next = build.next.max(at),
                Ok(Batch::End(None)) => {}
                Ok(Batch::Restarted(low)) => registry.table_restart(&mut build, low),
                Err(e) => break Err(e),
            }
            if registry.table_step(&mut build) == BuildStep::Done {
                break Ok(());
            }
        };
        unassign(consumer, &topic, partition);
        if result.is_err() {
            registry.table_restart(&mut build, low);
        }
        result
    }

    /// The lowest position any job needs, after turning positions below the
    /// log start into explicit gaps.
    fn start_position(
        &mut self,
        key: &PartitionKey,
        jobs: &mut [Job],
        wakers: &mut Wakers,
    ) -> Result<i64, KafkaError> {
        let (low, _high) = self
            .consumer()?
            .fetch_watermarks(&key.0, key.1, WATERMARK_TIMEOUT)?;
        let mut from = i64::MAX;
        for job in jobs.iter() {
            let p = job.sub.position(job.slot);
            if p < low {
                self.registry.gap(&job.sub, job.slot, p, low, wakers);
            }
            from = from.min(job.sub.position(job.slot));
        }
        Ok(from)
    }
}

/// How one poll batch ended.
enum Batch {
    /// Records were read (or none came within the poll timeout).
    Read,
    /// The node is stopping.
    Stopped,
    /// The end of the partition, and the consumer's position there.
    End(Option<i64>),
    /// Retention overtook the read: it goes on from this log start.
    Restarted(i64),
}

/// Polls one batch of the partition `consumer` reads (at most [`MAX_BATCH`]
/// records and about the ingest batch's bytes), decoding each record
/// (waiting, in order, for a schema the registry cannot give yet) and
/// handing it to `each`, which returns false to end the batch early.
fn poll_batch(
    consumer: &BaseConsumer,
    topic: &Arc<str>,
    partition: i32,
    decoder: &Decoder,
    event_header: &str,
    stop: &CancellationToken,
    each: &mut dyn FnMut(Encoded) -> bool,
) -> Result<Batch, KafkaError> {
    let mut timeout = POLL_TIMEOUT;
    let mut bytes = 0;
    for _ in 0..MAX_BATCH {
        if bytes > MAX_BATCH_BYTES {
            break;
        }
        let Some(polled) = consumer.poll(timeout) else {
            break;
        };
        timeout = Duration::ZERO;
        match polled {
            Ok(m) => {
                bytes += m.payload_len();
                let record = Record::from_message(topic.clone(), &m);
                let Some(decoded) = decoder.decode_waiting(&record, stop) else {
                    return Ok(Batch::Stopped);
                };
                if !each(Encoded::decoded(record, event_header, decoded)) {
                    break;
                }
            }
            Err(KafkaError::PartitionEOF(_)) => {
                let at = consumer.position().ok().and_then(|tpl| {
                    match tpl.find_partition(topic, partition).map(|p| p.offset()) {
                        Some(Offset::Offset(o)) => Some(o),
                        _ => None,
                    }
                });
                return Ok(Batch::End(at));
            }
            Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset,
            )) => {
                let (low, _) = consumer.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)?;
                unassign(consumer, topic, partition);
                assign(consumer, topic, partition, low)?;
                return Ok(Batch::Restarted(low));
            }
            Err(e) => {
                tracing::debug!(error = %e, "catch-up poll error");
                break;
            }
        }
    }
    Ok(Batch::Read)
}

/// Moves the jobs waiting on `key` whose position is at or after `next`
/// into a running pass: it reads everything they need from here on.
fn adopt(shared: &Shared, key: &PartitionKey, next: i64, jobs: &mut Vec<Job>) {
    let mut board = shared.board.lock();
    let Some(waiting) = board.pending.get_mut(key) else {
        return;
    };
    let mut i = 0;
    while i < waiting.len() {
        let job = &waiting[i];
        // A new job (no setbacks) need not wait out its gathering window.
        if job.setbacks == 0 && job.sub.position(job.slot) >= next {
            jobs.push(waiting.swap_remove(i));
        } else {
            i += 1;
        }
    }
    if waiting.is_empty() {
        board.pending.remove(key);
    }
}

/// Hands over every job that the buffer can now serve; keeps the rest.
fn hand_over(registry: &Registry, jobs: &mut Vec<Job>, wakers: &mut Wakers) {
    jobs.retain(|job| {
        if job.sub.is_closed() {
            return false;
        }
        let at = SlotStart::At(job.sub.position(job.slot));
        !matches!(registry.join(&job.sub, job.slot, at, wakers), Join::Joined)
    });
}

/// Delivers a replayed record to every job that needs it. A job whose
/// client has not drained half its queue leaves this pass (into `deferred`)
/// instead of being cut off: a replay can wait, Kafka keeps the records.
fn deliver(
    metrics: &Metrics,
    jobs: &mut Vec<Job>,
    deferred: &mut Vec<Job>,
    record: &Encoded,
    wakers: &mut Wakers,
) {
    let offset = record.record.offset;
    let mut i = 0;
    while i < jobs.len() {
        let job = &jobs[i];
        let sub = &job.sub;
        if offset < sub.position(job.slot) {
            i += 1;
            continue;
        }
        let matches = sub.shape.takes(job.slot, record);
        let mut queue = sub.connection.queue.lock();
        if matches && queue.is_filling(sub.shape.body(record).len() + EVENT_OVERHEAD) {
            drop(queue);
            deferred.push(jobs.swap_remove(i));
            continue;
        }
        sub.set_position(job.slot, offset + 1);
        if !matches {
            i += 1;
            continue;
        }
        let keep = match sub.push_own(&mut queue, record, wakers) {
            Pushed::Queued => {
                metrics.events_delivered.inc();
                true
            }
            Pushed::Overflowed => {
                metrics.slow_disconnects.inc();
                false
            }
            Pushed::Ended => false,
        };
        drop(queue);
        if keep {
            i += 1;
        } else {
            jobs.swap_remove(i);
        }
    }
}

fn assign(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.incremental_assign(&tpl)
}

fn unassign(consumer: &BaseConsumer, topic: &str, partition: i32) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    if let Err(e) = consumer.incremental_unassign(&tpl) {
        tracing::debug!(error = %e, "catch-up unassign failed");
    }
}
