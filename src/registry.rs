//! Who wants what: partitions, subscriptions and connections on this node.
//!
//! The registry is a `dashmap` from (topic, partition) to a [`PartitionLog`].
//! Each log keeps, behind one mutex, the subscribers of the whole partition,
//! the subscribers of each key, and a buffer of recent records. The ingest
//! thread fans a record out *under that mutex* and advances the log's live
//! position there too; a subscriber joins the live stream under the same
//! mutex, after replaying what it lacks from the buffer. That one lock is
//! what makes "no gap, no duplicate" hold at the hand-over.
//!
//! Subscriptions with identical selectors share one [`Shape`]: their cursors
//! are equal whenever they are caught up, so the fan-out encodes one `id:`
//! line per shape and record, not one per connection.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::cursor::Cursor;
use crate::metrics::Metrics;
use crate::queue::{ConnectionQueue, Locked, Pushed, Wakers};
use crate::record::{Format, Record};
use crate::sse;

/// A live position not known yet (partition not assigned).
pub const UNKNOWN: i64 = -1;

/// Limits of the per-partition recent-records buffer.
#[derive(Debug, Clone, Copy)]
pub struct ReplayBufferLimits {
    pub bytes: usize,
    pub records: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Pinned by subscribers but no start offset chosen yet.
    Unassigned,
    /// The ingest consumer reads it from `live` on.
    Assigned,
    /// Released: removed from the registry; whoever still holds it looks again.
    Retired,
}

/// One topic-partition as this node follows it.
pub struct PartitionLog {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The next offset the fan-out will see. Written only under `inner`'s lock.
    live: AtomicI64,
    inner: Mutex<LogInner>,
}

struct LogInner {
    status: Status,
    /// Subscribers that hold this partition in their shape (attached or not).
    pins: usize,
    idle_since: Option<Instant>,
    whole: Vec<Member>,
    keyed: HashMap<Bytes, Vec<Member>>,
    recent: VecDeque<Arc<Record>>,
    recent_bytes: usize,
    /// The buffer holds every record from this offset up to `live`.
    recent_floor: i64,
}

#[derive(Clone)]
struct Member {
    sub: Arc<Subscriber>,
    slot: usize,
}

/// What a slot of a subscription takes from its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Whole,
    Keys(Vec<Bytes>),
}

impl Filter {
    pub fn matches(&self, key: Option<&Bytes>) -> bool {
        match self {
            Filter::Whole => true,
            Filter::Keys(keys) => key.is_some_and(|k| keys.contains(k)),
        }
    }
}

pub struct Slot {
    pub log: Arc<PartitionLog>,
    pub filter: Filter,
}

/// The partitions and filters of a subscription, shared by every connection
/// with the same selectors and format.
pub struct Shape {
    pub key: String,
    pub fingerprint: u32,
    pub format: Format,
    pub slots: Box<[Slot]>,
    /// Topics this shape reads (for per-topic counts).
    pub topics: Box<[Arc<str>]>,
}

impl Shape {
    /// The cursor of a caught-up subscriber: every slot at its live position.
    pub fn live_cursor(&self) -> String {
        let mut out = String::new();
        Cursor::encode_into(
            self.fingerprint,
            self.slots.iter().map(|s| s.log.live().max(0)),
            &mut out,
        );
        out
    }

    /// The same, with `log` at `next` (the fan-out's view while it is
    /// delivering the record before `next`, not yet published).
    fn live_cursor_with(&self, log: &PartitionLog, next: i64) -> String {
        let mut out = String::new();
        let positions = self.slots.iter().map(|s| {
            if std::ptr::eq(Arc::as_ptr(&s.log), log) {
                next
            } else {
                s.log.live().max(0)
            }
        });
        Cursor::encode_into(self.fingerprint, positions, &mut out);
        out
    }
}

struct SlotState {
    /// Next offset this subscriber needs. While attached, the live position
    /// may be ahead of it (nothing to deliver in between) but records below it
    /// are skipped (a cursor from a node that was further ahead).
    position: AtomicI64,
    attached: AtomicBool,
}

/// One connection's subscription.
pub struct Subscriber {
    pub connection: Arc<Connection>,
    pub shape: Arc<Shape>,
    slots: Box<[SlotState]>,
    aligned: AtomicBool,
    closed: AtomicBool,
    /// Hash of the last id-only cursor sent (see [`Registry::advance_idle_cursors`]).
    last_idle_id: AtomicU64,
}

/// An open SSE stream.
pub struct Connection {
    pub id: u64,
    pub queue: ConnectionQueue,
    pub peer: SocketAddr,
    pub opened: Instant,
    subscriber: OnceLock<Arc<Subscriber>>,
    /// Closes the transport that carries this stream when hyper serves it
    /// (hyper stops polling a body whose client stalls, so only dropping its
    /// connection ends it). Streams served by `h1` watch the queue instead.
    transport: OnceLock<tokio_util::sync::CancellationToken>,
}

impl Connection {
    pub fn subscriber(&self) -> Option<&Arc<Subscriber>> {
        self.subscriber.get()
    }

    /// Ties this stream to the transport that carries it.
    pub fn close_transport_with(&self, token: tokio_util::sync::CancellationToken) {
        let _ = self.transport.set(token);
    }

    /// Ends a stalled stream now: its queue is dropped, its writer abandons
    /// the write in progress, and its transport is closed. Returns false if
    /// it was killed before.
    pub fn kill(&self) -> bool {
        let killed = self.queue.kill();
        if let Some(token) = self.transport.get() {
            token.cancel();
        }
        killed
    }
}

impl PartitionLog {
    pub fn live(&self) -> i64 {
        self.live.load(Ordering::Acquire)
    }

    pub fn is_assigned(&self) -> bool {
        self.inner.lock().status == Status::Assigned
    }

    /// Whether a subscriber at `position` could join without reading Kafka.
    pub fn serves_from_memory(&self, position: i64) -> bool {
        let inner = self.inner.lock();
        inner.status == Status::Assigned && position >= inner.recent_floor
    }

    fn remember(&self, inner: &mut LogInner, record: &Arc<Record>, limits: ReplayBufferLimits) {
        inner.recent_bytes += record.weight();
        inner.recent.push_back(record.clone());
        while inner.recent.len() > limits.records || inner.recent_bytes > limits.bytes {
            let Some(old) = inner.recent.pop_front() else {
                break;
            };
            inner.recent_bytes -= old.weight();
            inner.recent_floor = old.offset + 1;
        }
    }
}

/// How a slot should start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotStart {
    /// From the live position, whatever it is when the slot joins.
    Live,
    /// From this offset.
    At(i64),
}

/// The outcome of trying to join a slot to its partition's live stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    Joined,
    /// The partition has no start offset yet: choose one and call [`Registry::start_partition`].
    NeedsStart,
    /// Older than the recent buffer: read from Kafka, from this offset.
    NeedsCatchup(i64),
}

/// Counts for `/v1/stats`.
#[derive(Debug, Default, serde::Serialize)]
pub struct Snapshot {
    pub topics: HashMap<String, usize>,
    pub keys: HashMap<String, usize>,
    pub partitions: Vec<PartitionSnapshot>,
}

#[derive(Debug, serde::Serialize)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: i32,
    pub assigned: bool,
    pub live_offset: i64,
    pub subscribers: usize,
    pub buffered_records: usize,
}

pub struct Registry {
    partitions: DashMap<(Arc<str>, i32), Arc<PartitionLog>>,
    shapes: DashMap<String, Weak<Shape>>,
    connections: DashMap<u64, Arc<Connection>>,
    next_connection: AtomicU64,
    limits: ReplayBufferLimits,
    queue_bytes: usize,
    pub metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(limits: ReplayBufferLimits, queue_bytes: usize, metrics: Arc<Metrics>) -> Registry {
        Registry {
            partitions: DashMap::new(),
            shapes: DashMap::new(),
            connections: DashMap::new(),
            next_connection: AtomicU64::new(1),
            limits,
            queue_bytes,
            metrics,
        }
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    pub fn connections(&self) -> Vec<Arc<Connection>> {
        self.connections.iter().map(|c| c.value().clone()).collect()
    }

    /// The log of an assigned partition, for the ingest thread.
    pub fn log(&self, topic: &str, partition: i32) -> Option<Arc<PartitionLog>> {
        self.partitions
            .get(&(Arc::from(topic), partition))
            .map(|l| l.value().clone())
    }

    /// The log for a partition, pinned so it cannot be released under us.
    fn pin(&self, topic: &Arc<str>, partition: i32) -> Arc<PartitionLog> {
        loop {
            let log = self
                .partitions
                .entry((topic.clone(), partition))
                .or_insert_with(|| {
                    Arc::new(PartitionLog {
                        topic: topic.clone(),
                        partition,
                        live: AtomicI64::new(UNKNOWN),
                        inner: Mutex::new(LogInner {
                            status: Status::Unassigned,
                            pins: 0,
                            idle_since: None,
                            whole: Vec::new(),
                            keyed: HashMap::new(),
                            recent: VecDeque::new(),
                            recent_bytes: 0,
                            recent_floor: i64::MAX,
                        }),
                    })
                })
                .value()
                .clone();
            let mut inner = log.inner.lock();
            if inner.status == Status::Retired {
                continue;
            }
            inner.pins += 1;
            inner.idle_since = None;
            drop(inner);
            return log;
        }
    }

    /// Builds (or reuses) the shape for a canonical subscription. `slots` is
    /// the ordered list of (topic, partition, filter); `fingerprint` names it
    /// in cursors. Every slot's partition is pinned for the returned
    /// subscriber's lifetime.
    pub fn subscribe(
        &self,
        key: String,
        fingerprint: u32,
        format: Format,
        slots: Vec<(Arc<str>, i32, Filter)>,
        peer: SocketAddr,
    ) -> Arc<Subscriber> {
        let logs: Vec<Arc<PartitionLog>> = slots
            .iter()
            .map(|(topic, partition, _)| self.pin(topic, *partition))
            .collect();
        let shape = self.shape(key, fingerprint, format, &slots, &logs);
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            id,
            queue: ConnectionQueue::new(self.queue_bytes),
            peer,
            opened: Instant::now(),
            subscriber: OnceLock::new(),
            transport: OnceLock::new(),
        });
        let subscriber = Arc::new(Subscriber {
            connection: connection.clone(),
            slots: shape
                .slots
                .iter()
                .map(|s| SlotState {
                    position: AtomicI64::new(s.log.live()),
                    attached: AtomicBool::new(false),
                })
                .collect(),
            shape,
            aligned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_idle_id: AtomicU64::new(0),
        });
        let _ = connection.subscriber.set(subscriber.clone());
        self.connections.insert(id, connection);
        self.metrics.connections.inc();
        for topic in subscriber.shape.topics.iter() {
            self.metrics.subscriptions.with_label_values(&[topic]).inc();
        }
        subscriber
    }

    /// The interned shape for `key`, or a new one. A shape never outlives
    /// what it points to: its logs are pinned by the subscribers holding it.
    fn shape(
        &self,
        key: String,
        fingerprint: u32,
        format: Format,
        slots: &[(Arc<str>, i32, Filter)],
        logs: &[Arc<PartitionLog>],
    ) -> Arc<Shape> {
        if let Some(existing) = self.shapes.get(&key).and_then(|w| w.upgrade()) {
            let same_logs = existing
                .slots
                .iter()
                .zip(logs)
                .all(|(s, l)| Arc::ptr_eq(&s.log, l));
            if same_logs {
                return existing;
            }
        }
        let mut topics: Vec<Arc<str>> = slots.iter().map(|s| s.0.clone()).collect();
        topics.dedup();
        let shape = Arc::new(Shape {
            key: key.clone(),
            fingerprint,
            format,
            slots: slots
                .iter()
                .zip(logs)
                .map(|((_, _, filter), log)| Slot {
                    log: log.clone(),
                    filter: filter.clone(),
                })
                .collect(),
            topics: topics.into(),
        });
        self.shapes.insert(key, Arc::downgrade(&shape));
        shape
    }

    /// Gives an unassigned partition its start offset. Returns true if this
    /// call started it (the caller must then ask the ingest thread to assign
    /// it), false if someone else did first.
    pub fn start_partition(&self, log: &PartitionLog, offset: i64) -> bool {
        let mut inner = log.inner.lock();
        if inner.status != Status::Unassigned {
            return false;
        }
        inner.status = Status::Assigned;
        inner.recent_floor = offset;
        log.live.store(offset, Ordering::Release);
        true
    }

    /// Joins `slot` of `sub` to its partition's live stream, replaying from
    /// the recent buffer what lies between the subscriber's position and the
    /// live position.
    pub fn join(
        &self,
        sub: &Arc<Subscriber>,
        slot: usize,
        start: SlotStart,
        wakers: &mut Wakers,
    ) -> Join {
        let shape_slot = &sub.shape.slots[slot];
        let log = &shape_slot.log;
        let state = &sub.slots[slot];
        let mut inner = log.inner.lock();
        if sub.closed.load(Ordering::Acquire) {
            // Gone meanwhile. Checked under the partition's lock: either
            // `unsubscribe` sees this slot attached, or this sees it closed.
            return Join::Joined;
        }
        if inner.status != Status::Assigned {
            return Join::NeedsStart;
        }
        let live = log.live();
        let position = match start {
            SlotStart::Live => live,
            SlotStart::At(p) => p,
        };
        if position < live {
            if position < inner.recent_floor {
                state.position.store(position, Ordering::Release);
                return Join::NeedsCatchup(position);
            }
            let mut queue = sub.connection.queue.lock();
            let replay_bytes: usize = inner
                .recent
                .iter()
                .filter(|r| r.offset >= position && shape_slot.filter.matches(r.key.as_ref()))
                .map(|r| r.body(sub.shape.format).len() + 64)
                .sum();
            if queue.is_filling(replay_bytes) {
                // More than the client can take at once: the paced catch-up serves it.
                state.position.store(position, Ordering::Release);
                return Join::NeedsCatchup(position);
            }
            self.metrics.replay_buffer_hits.inc();
            for record in inner.recent.iter().filter(|r| r.offset >= position) {
                state.position.store(record.offset + 1, Ordering::Release);
                if shape_slot.filter.matches(record.key.as_ref()) {
                    push_own(sub, &mut queue, record, wakers);
                }
            }
            state.position.store(live, Ordering::Release);
        } else {
            state.position.store(position, Ordering::Release);
        }
        state.attached.store(true, Ordering::Release);
        let member = Member {
            sub: sub.clone(),
            slot,
        };
        match &shape_slot.filter {
            Filter::Whole => inner.whole.push(member),
            Filter::Keys(keys) => {
                for k in keys {
                    inner
                        .keyed
                        .entry(k.clone())
                        .or_default()
                        .push(member.clone());
                }
            }
        }
        drop(inner);
        sub.refresh_aligned();
        Join::Joined
    }

    /// Fans one record out to every interested subscriber of its partition.
    ///
    /// The partition's live position is published only after the record is
    /// in every queue, and a lagging subscriber's own position moves under its
    /// queue lock: a cursor computed meanwhile on another thread (a replay, a
    /// catch-up reader) can then never claim a record its queue does not hold.
    pub fn fan_out(&self, log: &PartitionLog, record: Arc<Record>, batch: &mut FanoutBatch) {
        let mut inner = log.inner.lock();
        if inner.status != Status::Assigned || record.offset < log.live() {
            return; // released meanwhile, or already seen
        }
        let next = record.offset + 1;
        log.remember(&mut inner, &record, self.limits);
        let keyed = match &record.key {
            Some(k) if !inner.keyed.is_empty() => inner.keyed.get(k).map(|v| v.as_slice()),
            _ => None,
        };
        batch.events.clear();
        let mut delivered = 0u64;
        for member in inner.whole.iter().chain(keyed.unwrap_or_default()) {
            let sub = &member.sub;
            let state = &sub.slots[member.slot];
            if record.offset < state.position.load(Ordering::Acquire) {
                continue; // this client's cursor is further on than we are
            }
            let body = record.body(sub.shape.format);
            let pushed = if sub.aligned.load(Ordering::Acquire) || sub.refresh_aligned() {
                // The whole event (id line and body) is built once per shape:
                // every connection of the shape queues the same buffer, one
                // reference-count increment each.
                let shape_ptr = Arc::as_ptr(&sub.shape) as usize;
                let event = batch.events.entry(shape_ptr).or_insert_with(|| {
                    sse::event_with_id(&sub.shape.live_cursor_with(log, next), body)
                });
                sub.connection
                    .queue
                    .push(&[event], record.timestamp, &mut batch.wakers)
            } else {
                let mut queue = sub.connection.queue.lock();
                state.position.store(next, Ordering::Release);
                push_own(sub, &mut queue, &record, &mut batch.wakers)
            };
            match pushed {
                Pushed::Queued => delivered += 1,
                Pushed::Overflowed => self.metrics.slow_disconnects.inc(),
                Pushed::Ended => {}
            }
        }
        log.live.store(next, Ordering::Release);
        self.metrics.events_delivered.inc_by(delivered);
    }

    /// Sends id-only events to keyed subscriptions whose cursor moved past
    /// records that did not match them, so that a resume after a quiet spell
    /// does not rescan the partition. Each slot's partition is locked (in
    /// slot order, the only place that holds several) so that the id agrees
    /// with what the fan-out has queued. Returns how many were sent.
    pub fn advance_idle_cursors(
        &self,
        connections: &[Arc<Connection>],
        wakers: &mut Wakers,
    ) -> usize {
        let mut sent = 0;
        for connection in connections {
            let Some(sub) = connection.subscriber() else {
                continue;
            };
            let keyed = sub
                .shape
                .slots
                .iter()
                .any(|s| matches!(s.filter, Filter::Keys(_)));
            if !keyed || connection.queue.queued_bytes() > 0 {
                continue;
            }
            if self.send_cursor(sub, wakers) {
                sent += 1;
            }
        }
        sent
    }

    /// Queues an id-only event carrying `sub`'s cursor, unless that cursor
    /// was the last one sent this way. Sent when a stream opens, too: a
    /// client that loses its connection before its first record then still
    /// resumes from where it started, not from "now".
    pub fn send_cursor(&self, sub: &Subscriber, wakers: &mut Wakers) -> bool {
        let _held: Vec<_> = sub.shape.slots.iter().map(|s| s.log.inner.lock()).collect();
        let mut queue = sub.connection.queue.lock();
        let cursor = if sub.aligned.load(Ordering::Acquire) {
            sub.shape.live_cursor()
        } else {
            sub.own_cursor()
        };
        let hash = u64::from(murmur2::murmur2(cursor.as_bytes(), 1)) | 1 << 32;
        if sub.last_idle_id.swap(hash, Ordering::AcqRel) == hash {
            return false;
        }
        let id = sse::id_line(&cursor);
        let end = Bytes::from_static(sse::ID_ONLY_BODY);
        queue.push(&[&id, &end], None, wakers) == Pushed::Queued
    }

    /// Moves a live partition forward to `low` after Kafka said its position
    /// is out of range (retention overtook it, or the topic was recreated):
    /// every subscriber gets a `herald.gap` event first.
    pub fn jump(&self, log: &PartitionLog, low: i64, wakers: &mut Wakers) {
        let mut inner = log.inner.lock();
        let from = log.live();
        let members: Vec<Member> = inner
            .whole
            .iter()
            .chain(inner.keyed.values().flatten())
            .cloned()
            .collect();
        log.live.store(low, Ordering::Release);
        inner.recent.clear();
        inner.recent_bytes = 0;
        inner.recent_floor = low;
        for m in members {
            self.metrics.gaps.inc();
            push_gap(&m.sub, m.slot, from, low, wakers);
        }
    }

    /// Releases partitions nobody has wanted for `linger`. Returns the logs
    /// the ingest consumer must unassign.
    pub fn release_idle(&self, linger: std::time::Duration) -> Vec<Arc<PartitionLog>> {
        let candidates: Vec<Arc<PartitionLog>> =
            self.partitions.iter().map(|e| e.value().clone()).collect();
        let mut released = Vec::new();
        for log in candidates {
            let mut inner = log.inner.lock();
            let idle = inner.pins == 0 && inner.idle_since.is_some_and(|t| t.elapsed() >= linger);
            if !idle {
                continue;
            }
            let was_assigned = inner.status == Status::Assigned;
            inner.status = Status::Retired;
            inner.recent.clear();
            self.partitions
                .remove_if(&(log.topic.clone(), log.partition), |_, v| {
                    Arc::ptr_eq(v, &log)
                });
            drop(inner);
            if was_assigned {
                released.push(log);
            }
        }
        released
    }

    /// Forgets a connection: leaves every partition it joined, unpins them.
    pub fn unsubscribe(&self, connection: &Connection) {
        if self.connections.remove(&connection.id).is_none() {
            return;
        }
        self.metrics.connections.dec();
        let Some(sub) = connection.subscriber() else {
            return;
        };
        sub.closed.store(true, Ordering::Release);
        for topic in sub.shape.topics.iter() {
            self.metrics.subscriptions.with_label_values(&[topic]).dec();
        }
        for (i, slot) in sub.shape.slots.iter().enumerate() {
            let mut inner = slot.log.inner.lock();
            if sub.slots[i].attached.load(Ordering::Acquire) {
                let mine = |m: &Member| m.slot == i && Arc::ptr_eq(&m.sub, sub);
                match &slot.filter {
                    Filter::Whole => {
                        if let Some(at) = inner.whole.iter().position(mine) {
                            inner.whole.swap_remove(at);
                        }
                    }
                    Filter::Keys(keys) => {
                        for k in keys {
                            if let Some(list) = inner.keyed.get_mut(k) {
                                if let Some(at) = list.iter().position(mine) {
                                    list.swap_remove(at);
                                }
                                if list.is_empty() {
                                    inner.keyed.remove(k);
                                }
                            }
                        }
                    }
                }
            }
            inner.pins = inner.pins.saturating_sub(1);
            if inner.pins == 0 {
                inner.idle_since = Some(Instant::now());
            }
        }
        if sub.shape.slots.is_empty() {
            return;
        }
        // Drop the interned shape entry once its last subscriber is gone.
        let key = sub.shape.key.clone();
        self.shapes.remove_if(&key, |_, w| w.strong_count() <= 1);
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
            let inner = log.inner.lock();
            let keyed: usize = inner.keyed.values().map(Vec::len).sum();
            snap.partitions.push(PartitionSnapshot {
                topic: log.topic.to_string(),
                partition: log.partition,
                assigned: inner.status == Status::Assigned,
                live_offset: log.live(),
                subscribers: inner.whole.len() + keyed,
                buffered_records: inner.recent.len(),
            });
        }
        snap.partitions
            .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        snap
    }
}

/// Hashes a shape's address (looked up once per subscriber and record in
/// the fan-out, where SipHash showed up at 3.7 % of a broadcast's profile):
/// addresses are unique, a multiply spreads them over the table.
#[derive(Default)]
pub struct ShapeHasher(u64);

impl Hasher for ShapeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Scratch space reused across the records of one ingest batch.
#[derive(Default)]
pub struct FanoutBatch {
    /// The event for each subscription shape, for the record being fanned out.
    events: HashMap<usize, Bytes, BuildHasherDefault<ShapeHasher>>,
    pub wakers: Wakers,
}

impl Subscriber {
    /// True once every slot is joined and the live stream has reached this
    /// subscriber's position everywhere: from then on its cursor is its
    /// shape's live cursor. Stays true.
    fn refresh_aligned(&self) -> bool {
        if self.aligned.load(Ordering::Acquire) {
            return true;
        }
        let aligned = self
            .slots
            .iter()
            .zip(self.shape.slots.iter())
            .all(|(state, slot)| {
                state.attached.load(Ordering::Acquire)
                    && slot.log.live() >= state.position.load(Ordering::Acquire)
            });
        if aligned {
            self.aligned.store(true, Ordering::Release);
        }
        aligned
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.connection.queue.ended().is_some()
    }

    pub fn position(&self, slot: usize) -> i64 {
        self.slots[slot].position.load(Ordering::Acquire)
    }

    pub fn set_position(&self, slot: usize, position: i64) {
        self.slots[slot].position.store(position, Ordering::Release);
    }

    /// This subscriber's own cursor: joined slots at least at their live
    /// position, the others where this subscriber has got to.
    pub fn own_cursor(&self) -> String {
        let mut out = String::new();
        let positions = self
            .slots
            .iter()
            .zip(self.shape.slots.iter())
            .map(|(state, slot)| {
                let own = state.position.load(Ordering::Acquire);
                if state.attached.load(Ordering::Acquire) {
                    own.max(slot.log.live())
                } else {
                    own
                }
            });
        Cursor::encode_into(self.shape.fingerprint, positions, &mut out);
        out
    }
}

/// Pushes `record` with this subscriber's own cursor, computed under the
/// queue lock so that the id and the queue order agree.
pub fn push_own(
    sub: &Subscriber,
    queue: &mut Locked<'_>,
    record: &Record,
    wakers: &mut Wakers,
) -> Pushed {
    let id = sse::id_line(&sub.own_cursor());
    queue.push(
        &[&id, record.body(sub.shape.format)],
        record.timestamp,
        wakers,
    )
}

/// Tells the subscriber that `slot` jumps from `requested` to `resumed`
/// (retention removed what it asked for, or the topic was recreated), and
/// moves its position there. The event's id already carries the new position.
pub fn push_gap(sub: &Subscriber, slot: usize, requested: i64, resumed: i64, wakers: &mut Wakers) {
    let log = &sub.shape.slots[slot].log;
    let mut queue = sub.connection.queue.lock();
    sub.set_position(slot, resumed);
    let id = sse::id_line(&sub.own_cursor());
    let body = sse::signal_body(
        "gap",
        &serde_json::json!({
            "topic": &*log.topic,
            "partition": log.partition,
            "requested": requested,
            "resumed": resumed,
        }),
    );
    queue.push(&[&id, &body], None, wakers);
}
