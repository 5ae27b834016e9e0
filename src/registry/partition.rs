//! One topic-partition as this node follows it: its live position, its
//! members (whole-partition and per-key), and the buffer of recent records
//! that serves most resumes without Kafka.
//!
//! Everything but the live position sits behind one mutex, the partition's
//! lock. The fan-out, a join and an unsubscribe each take it, which is what
//! makes the hand-over between replay and live exact (see [`super::join`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};

use super::table::Table;
use super::Subscriber;
use crate::sse::Encoded;

/// A live position not known yet (the partition has no start offset).
const UNKNOWN: i64 = -1;

/// Limits of the per-partition recent-records buffer.
#[derive(Debug, Clone, Copy)]
pub struct ReplayBufferLimits {
    pub bytes: usize,
    pub records: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// Pinned by subscribers, but no start offset chosen yet.
    Unstarted,
    /// Has a start offset; the ingest consumer reads it from `live` on
    /// (once it has applied the assignment).
    Started,
    /// Released: removed from the registry; whoever still holds it looks again.
    Retired,
}

/// One topic-partition as this node follows it.
pub struct PartitionLog {
    pub topic: Arc<str>,
    pub partition: i32,
    /// Whether its topic is a table topic (it then keeps a table once started).
    pub is_table: bool,
    /// The next offset the fan-out will see. Written only under the lock.
    pub(super) live: AtomicI64,
    pub(super) inner: Mutex<LogInner>,
}

pub(super) struct LogInner {
    pub status: Status,
    /// Subscribers that hold this partition in their shape (joined or not).
    pub pins: usize,
    pub idle_since: Option<Instant>,
    pub whole: Vec<Member>,
    /// Members by the record key they want.
    pub keyed: HashMap<Bytes, Vec<Member>>,
    pub recent: VecDeque<Arc<Encoded>>,
    pub recent_bytes: usize,
    /// The buffer holds every record from this offset up to `live`.
    pub recent_floor: i64,
    /// Key → latest record, on a table topic once started.
    pub table: Option<Table>,
}

/// A subscriber's slot joined to this partition.
#[derive(Clone)]
pub(super) struct Member {
    pub sub: Arc<Subscriber>,
    pub slot: usize,
}

impl PartitionLog {
    pub(super) fn new(topic: Arc<str>, partition: i32, is_table: bool) -> PartitionLog {
        PartitionLog {
            topic,
            partition,
            is_table,
            live: AtomicI64::new(UNKNOWN),
            inner: Mutex::new(LogInner {
                status: Status::Unstarted,
                pins: 0,
                idle_since: None,
                whole: Vec::new(),
                keyed: HashMap::new(),
                recent: VecDeque::new(),
                recent_bytes: 0,
                recent_floor: i64::MAX,
                table: None,
            }),
        }
    }

    pub fn live(&self) -> i64 {
        self.live.load(Ordering::Acquire)
    }

    /// Whether the partition has a start offset.
    pub fn is_started(&self) -> bool {
        self.inner.lock().status == Status::Started
    }

    /// Whether a subscriber at `position` could join without reading Kafka.
    pub fn serves_from_memory(&self, position: i64) -> bool {
        let inner = self.inner.lock();
        inner.status == Status::Started && position >= inner.recent_floor
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner.lock()
    }
}

impl LogInner {
    /// Adds a record to the recent buffer, evicting the oldest past its limits.
    pub fn remember(&mut self, record: &Arc<Encoded>, limits: ReplayBufferLimits) {
        self.recent_bytes += record.weight();
        self.recent.push_back(record.clone());
        while self.recent.len() > limits.records || self.recent_bytes > limits.bytes {
            let Some(old) = self.recent.pop_front() else {
                break;
            };
            self.recent_bytes -= old.weight();
            self.recent_floor = old.record.offset + 1;
        }
    }

    /// Forgets the recent buffer: it now starts at `floor`.
    pub fn forget(&mut self, floor: i64) {
        self.recent.clear();
        self.recent_bytes = 0;
        self.recent_floor = floor;
    }

    /// Every member, once per slot joined.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.whole.iter().chain(self.keyed.values().flatten())
    }

    /// Members in the order they joined: `whole` first, then by key.
    pub fn member_count(&self) -> usize {
        self.whole.len() + self.keyed.values().map(Vec::len).sum::<usize>()
    }
}
