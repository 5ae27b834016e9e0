//! Joining a subscriber's slot to its partition's live stream: the
//! hand-over from replay to live.
//!
//! Under the partition's lock, a joining slot is replayed from the recent
//! buffer what lies between its position and the live position, then added
//! to the partition's members; the fan-out, which runs under the same lock,
//! delivers everything after. So a joining subscriber gets every record
//! from its position on exactly once. A position older than the buffer, or
//! a replay larger than the client can take at once, is left to the paced
//! catch-up readers, which call `join` again as they reach the buffer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::partition::{Member, Status};
use super::{Filter, Registry, Subscriber, EVENT_OVERHEAD};
use crate::queue::Wakers;

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
    /// Joined (or the subscriber is gone: nothing more to do).
    Joined,
    /// The partition has no start offset yet: choose one and call
    /// [`Registry::start_partition`].
    NeedsStart,
    /// Older than the recent buffer, or more than the client can take at
    /// once: the catch-up readers serve it from Kafka.
    NeedsCatchup,
}

impl Registry {
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
        let mut inner = log.lock();
        if sub.closed.load(Ordering::Acquire) {
            // Gone meanwhile. Checked under the partition's lock: either
            // `unsubscribe` sees this slot joined, or this sees it closed.
            return Join::Joined;
        }
        if inner.status != Status::Started {
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
                return Join::NeedsCatchup;
            }
            let mut queue = sub.connection.queue.lock();
            let replay_bytes: usize = inner
                .recent
                .iter()
                .filter(|r| r.record.offset >= position && sub.shape.takes(slot, r))
                .map(|r| sub.shape.body(r).len() + EVENT_OVERHEAD)
                .sum();
            if queue.is_filling(replay_bytes) {
                // More than the client can take at once: the paced catch-up serves it.
                state.position.store(position, Ordering::Release);
                return Join::NeedsCatchup;
            }
            self.metrics.replay_buffer_hits.inc();
            for record in inner.recent.iter().filter(|r| r.record.offset >= position) {
                state
                    .position
                    .store(record.record.offset + 1, Ordering::Release);
                if sub.shape.takes(slot, record) {
                    sub.push_own(&mut queue, record, wakers);
                }
            }
            state.position.store(live, Ordering::Release);
        } else {
            state.position.store(position, Ordering::Release);
        }
        state.joined.store(true, Ordering::Release);
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
}
