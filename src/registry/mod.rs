//! Who wants what: partitions, subscription shapes and connections on this
//! node, and the moves between them.
//!
//! The registry is a `dashmap` from (topic, partition) to a [`PartitionLog`].
//! Each log keeps, behind one mutex, the subscribers of the whole partition,
//! the subscribers of each key, and a buffer of recent records. The ingest
//! thread fans a record out *under that mutex* and advances the log's live
//! position there too; a subscriber joins the live stream under the same
//! mutex, after replaying what it lacks from the buffer. That one lock is
//! what makes "no gap, no duplicate" hold at the hand-over.
//!
//! - [`partition`]: a partition's log, members and recent buffer
//! - [`shape`]: shapes, slots and filters shared by equal subscriptions
//! - [`subscriber`]: a connection's subscription and its cursor
//! - [`join`]: joining a slot to the live stream (the hand-over)
//! - [`fanout`]: one record to every interested queue
//! - [`signals`]: id-only events, start positions and gaps
//! - [`stats`]: counts for `/v1/stats`

mod fanout;
mod join;
mod partition;
mod shape;
mod signals;
mod stats;
mod subscriber;
mod table;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use std::collections::HashMap;

use dashmap::DashMap;

pub use fanout::FanoutBatch;
pub use join::{Join, SlotStart};
pub use partition::{PartitionLog, ReplayBufferLimits};
pub use shape::{Filter, Shape, Slot};
pub use table::{BuildStep, Capture, TableStatus, Tables};

/// What a new subscription is: its canonical text (which names its shape),
/// cursor fingerprint, format, slots (topic, partition, key filter) and view.
pub struct ShapeSpec {
    pub canonical: String,
    pub fingerprint: u32,
    pub format: Format,
    pub slots: Vec<(Arc<str>, i32, Filter)>,
    pub view: crate::filters::View,
}
pub use subscriber::{Connection, Subscriber};

/// A selector's streams on this node, and the users among them.
#[derive(Debug, Default)]
struct Held {
    streams: usize,
    users: HashMap<Arc<str>, usize>,
}

/// How one stream (not its shape) wants its records.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Who holds it (the token's `sub`), for presence.
    pub user: Option<Arc<str>>,
    /// Starts with a snapshot: no id-only events until its mark.
    pub snapshot: bool,
    /// Merge queued records to the newest per key; `Some(Some(n))`: and at
    /// most `n` events a second.
    pub conflate: Option<Option<u32>>,
}

use partition::Status;

use crate::metrics::Metrics;
use crate::queue::CursorSource;
use crate::sse::Format;

/// Bytes an event adds to its body at most in a queue: the `id:` line (a
/// cursor of the largest subscription) and framing. Used to size replays
/// against a connection's queue bound before encoding them.
pub const EVENT_OVERHEAD: usize = 64;

pub struct Registry {
    partitions: DashMap<(Arc<str>, i32), Arc<PartitionLog>>,
    shapes: DashMap<String, Weak<Shape>>,
    connections: DashMap<u64, Arc<Connection>>,
    next_connection: AtomicU64,
    /// Bumped whenever a stream comes or goes (presence looks only then).
    changes: AtomicU64,
    /// Streams (and their users) per selector, kept as streams come and go:
    /// presence reads this, never the streams themselves.
    held: parking_lot::Mutex<HashMap<Arc<str>, Held>>,
    limits: ReplayBufferLimits,
    queue_bytes: usize,
    metrics: Arc<Metrics>,
    tables: Tables,
}

impl Registry {
    pub fn new(
        limits: ReplayBufferLimits,
        queue_bytes: usize,
        metrics: Arc<Metrics>,
        tables: Tables,
    ) -> Registry {
        Registry {
            tables,
            partitions: DashMap::new(),
            shapes: DashMap::new(),
            connections: DashMap::new(),
            next_connection: AtomicU64::new(1),
            changes: AtomicU64::new(0),
            held: parking_lot::Mutex::new(HashMap::new()),
            limits,
            queue_bytes,
            metrics,
        }
    }

    /// Counts a stream in (or out of) its selectors.
    fn hold(&self, selectors: &[Arc<str>], user: Option<&Arc<str>>, joins: bool) {
        let mut held = self.held.lock();
        for s in selectors {
            let entry = held.entry(s.clone()).or_default();
            if joins {
                entry.streams += 1;
                if let Some(u) = user {
                    *entry.users.entry(u.clone()).or_default() += 1;
                }
            } else {
                entry.streams = entry.streams.saturating_sub(1);
                if let Some(u) = user {
                    if let Some(n) = entry.users.get_mut(u) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            entry.users.remove(u);
                        }
                    }
                }
                if entry.streams == 0 {
                    held.remove(s);
                }
            }
        }
    }

    /// Streams and users per selector on this node.
    pub fn held(&self) -> Vec<(Arc<str>, usize, Vec<Arc<str>>)> {
        self.held
            .lock()
            .iter()
            .map(|(s, h)| (s.clone(), h.streams, h.users.keys().cloned().collect()))
            .collect()
    }

    /// A count that moves whenever a stream comes or goes.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    pub fn connections(&self) -> Vec<Arc<Connection>> {
        self.connections.iter().map(|c| c.value().clone()).collect()
    }

    /// The log for a partition, pinned so it cannot be released under us.
    fn pin(&self, topic: &Arc<str>, partition: i32) -> Arc<PartitionLog> {
        loop {
            let log = self
                .partitions
                .entry((topic.clone(), partition))
                .or_insert_with(|| {
                    let table = self.tables.is_table(topic);
                    Arc::new(PartitionLog::new(topic.clone(), partition, table))
                })
                .value()
                .clone();
            let mut inner = log.lock();
            if inner.status == Status::Retired {
                continue;
            }
            inner.pins += 1;
            inner.idle_since = None;
            drop(inner);
            return log;
        }
    }

    /// Pins a partition for the node's own use (the presence topic) for as
    /// long as the node runs.
    pub fn pin_forever(&self, topic: &Arc<str>, partition: i32) -> Arc<PartitionLog> {
        self.pin(topic, partition)
    }

    /// Registers a connection subscribed to `slots` (topic, partition,
    /// filter, in cursor order) under the shape named by `canonical`, shared
    /// with every other connection of that shape. Every slot's partition is
    /// pinned for the subscriber's lifetime.
    pub fn subscribe(&self, spec: ShapeSpec, peer: SocketAddr) -> Arc<Subscriber> {
        self.subscribe_with(spec, peer, StreamOptions::default())
    }

    /// [`Registry::subscribe`], with per-stream options.
    pub fn subscribe_with(
        &self,
        spec: ShapeSpec,
        peer: SocketAddr,
        options: StreamOptions,
    ) -> Arc<Subscriber> {
        let user = options.user.clone();
        let logs: Vec<Arc<PartitionLog>> = spec
            .slots
            .iter()
            .map(|(topic, partition, _)| self.pin(topic, *partition))
            .collect();
        let shape = self.shape(spec, &logs);
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection::new(id, self.queue_bytes, peer, user));
        if let Some(rate) = options.conflate {
            connection
                .queue
                .conflate_with(Box::new(LiveCursor(shape.clone())), rate);
        }
        let subscriber = Arc::new(Subscriber::new(connection.clone(), shape, options));
        connection.set_subscriber(subscriber.clone());
        self.hold(
            &subscriber.shape.selectors,
            subscriber.connection.user(),
            true,
        );
        self.connections.insert(id, connection);
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.metrics.connections.inc();
        for topic in subscriber.shape.topics.iter() {
            self.metrics.subscriptions.with_label_values(&[topic]).inc();
        }
        subscriber
    }

    /// The interned shape for `canonical`, or a new one. A shape never
    /// outlives what it points to: its logs are pinned by its subscribers.
    fn shape(&self, spec: ShapeSpec, logs: &[Arc<PartitionLog>]) -> Arc<Shape> {
        let ShapeSpec {
            canonical,
            fingerprint,
            format,
            slots,
            view,
        } = spec;
        if let Some(existing) = self.shapes.get(&canonical).and_then(|w| w.upgrade()) {
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
        let slots: Box<[Slot]> = slots
            .iter()
            .zip(logs)
            .map(|((_, _, filter), log)| Slot {
                log: log.clone(),
                filter: filter.clone(),
            })
            .collect();
        let selectors = shape::selectors_of(&slots);
        let shape = Arc::new(Shape {
            canonical: canonical.clone(),
            fingerprint,
            format,
            slots,
            topics: topics.into(),
            view,
            selectors,
        });
        self.shapes.insert(canonical, Arc::downgrade(&shape));
        shape
    }

    /// Gives an unstarted partition its start offset. Returns true if this
    /// call started it (the caller must then ask the ingest thread to assign
    /// it), false if someone else did first.
    pub fn start_partition(&self, log: &Arc<PartitionLog>, offset: i64) -> bool {
        let mut inner = log.lock();
        if inner.status != Status::Unstarted {
            return false;
        }
        inner.status = Status::Started;
        inner.recent_floor = offset;
        log.live.store(offset, Ordering::Release);
        self.begin_table(log, &mut inner);
        true
    }

    /// Releases partitions nobody has wanted for `linger`. Returns the logs
    /// the ingest consumer must unassign.
    pub fn release_idle(&self, linger: std::time::Duration) -> Vec<Arc<PartitionLog>> {
        let candidates: Vec<Arc<PartitionLog>> =
            self.partitions.iter().map(|e| e.value().clone()).collect();
        let mut released = Vec::new();
        for log in candidates {
            let mut inner = log.lock();
            let idle = inner.pins == 0 && inner.idle_since.is_some_and(|t| t.elapsed() >= linger);
            if !idle {
                continue;
            }
            let was_started = inner.status == Status::Started;
            inner.status = Status::Retired;
            inner.recent.clear();
            if let Some(t) = inner.table.as_mut() {
                if t.status == TableStatus::Building {
                    self.metrics.tables_building.dec();
                }
                t.clear(&self.tables);
            }
            inner.table = None;
            self.partitions
                .remove_if(&(log.topic.clone(), log.partition), |_, v| {
                    Arc::ptr_eq(v, &log)
                });
            drop(inner);
            if was_started {
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
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.metrics.connections.dec();
        let Some(sub) = connection.take_subscriber() else {
            return;
        };
        sub.closed.store(true, Ordering::Release);
        self.hold(&sub.shape.selectors, connection.user(), false);
        for topic in sub.shape.topics.iter() {
            self.metrics.subscriptions.with_label_values(&[topic]).dec();
        }
        for (i, slot) in sub.shape.slots.iter().enumerate() {
            let mut inner = slot.log.lock();
            if sub.slots[i].joined.load(Ordering::Acquire) {
                let mine = |m: &partition::Member| m.slot == i && Arc::ptr_eq(&m.sub, &sub);
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
        let canonical = sub.shape.canonical.clone();
        self.shapes
            .remove_if(&canonical, |_, w| w.strong_count() <= 1);
    }
}

/// A conflated stream's ids: its shape's live cursor, each slot with
/// records still pending at the first of them.
struct LiveCursor(Arc<Shape>);

impl CursorSource for LiveCursor {
    fn cursor(&self, pending: &dyn Fn(usize, i64) -> i64) -> String {
        let mut out = String::new();
        let positions = self
            .0
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| pending(i, s.log.live().max(0)));
        crate::cursor::Cursor::encode_into(self.0.fingerprint, positions, &mut out);
        out
    }
}
