//! One record to every interested queue, on the ingest thread.
//!
//! Under the partition's lock: the record goes into the recent buffer, then
//! to the whole-partition members and the members of its key. An aligned
//! subscriber gets the event built once for its shape (one reference-count
//! increment per connection); one that is still catching up elsewhere gets
//! an event with its own cursor. The live position moves only after every
//! queue has the record.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::partition::{PartitionLog, Status};
use super::Registry;
use crate::queue::{Pushed, Stamp, Wakers};
use crate::sse::{self, Encoded};
use crate::unique_hash::UniqueMap;

/// Scratch space reused across the records of one ingest batch.
#[derive(Default)]
pub struct FanoutBatch {
    /// The event for each subscription shape, for the record being fanned
    /// out; `None` for a shape whose filters refuse it (asked once per
    /// shape, not per connection).
    events: UniqueMap<usize, Option<Bytes>>,
    pub wakers: Wakers,
}

impl Registry {
    /// Fans one record out to every interested subscriber of its partition.
    ///
    /// The partition's live position is published only after the record is
    /// in every queue, and a lagging subscriber's own position moves under its
    /// queue lock: a cursor computed meanwhile on another thread (a replay, a
    /// catch-up reader) can then never claim a record its queue does not hold.
    pub fn fan_out(&self, log: &PartitionLog, record: Arc<Encoded>, batch: &mut FanoutBatch) {
        let mut inner = log.lock();
        let offset = record.record.offset;
        if inner.status != Status::Started || offset < log.live() {
            return; // released meanwhile, or already seen
        }
        let next = offset + 1;
        inner.remember(&record, self.limits);
        if !inner.update_table(&self.tables, &record) {
            self.metrics.table_failures.inc();
            self.tables.changed.notify_waiters();
        }
        let keyed = match record.match_key() {
            Some(k) if !inner.keyed.is_empty() => inner.keyed.get(k).map(|v| v.as_slice()),
            _ => None,
        };
        batch.events.clear();
        let mut delivered = 0u64;
        for member in inner.whole.iter().chain(keyed.unwrap_or_default()) {
            let sub = &member.sub;
            let shape_ptr = Arc::as_ptr(&sub.shape) as usize;
            let event = batch.events.entry(shape_ptr).or_insert_with(|| {
                sub.shape.passes(&record).then(|| {
                    let body = sub.shape.body(&record);
                    sse::event_with_id(&sub.shape.live_cursor_with(log, next), &body)
                })
            });
            let Some(event) = event else {
                continue; // its cursor moves on with the partition's (or by id-only events)
            };
            let state = &sub.slots[member.slot];
            if offset < state.position.load(Ordering::Acquire) {
                continue; // this client's cursor is further on than we are
            }
            let aligned = sub.aligned.load(Ordering::Acquire) || sub.refresh_aligned();
            let pushed = if aligned && sub.conflates {
                let mut queue = sub.connection.queue.lock();
                let merged = queue.merged();
                let pushed = queue.conflate(
                    member.slot,
                    record.match_key(),
                    offset,
                    sub.shape.body(&record),
                    Stamp::of(&record.record),
                    &mut batch.wakers,
                );
                if queue.merged() > merged {
                    self.metrics.conflated.inc();
                }
                pushed
            } else if aligned {
                sub.connection
                    .queue
                    .push(&[event], Stamp::of(&record.record), &mut batch.wakers)
            } else {
                let mut queue = sub.connection.queue.lock();
                state.position.store(next, Ordering::Release);
                sub.push_own(&mut queue, &record, &mut batch.wakers)
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

    /// Moves a live partition forward to `low` after Kafka said its position
    /// is out of range (retention overtook it, or the topic was recreated):
    /// every subscriber gets a `herald.gap` event first.
    pub fn jump(&self, log: &Arc<PartitionLog>, low: i64, wakers: &mut Wakers) {
        let mut inner = log.lock();
        let from = log.live();
        let members: Vec<_> = inner.members().cloned().collect();
        log.live.store(low, Ordering::Release);
        inner.forget(low);
        // The table missed what retention removed: read it again.
        self.begin_table(log, &mut inner);
        for m in members {
            self.gap(&m.sub, m.slot, from, low, wakers);
        }
    }
}
