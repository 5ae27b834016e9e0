//! Events that carry herald's own news rather than a record: id-only
//! events that move a cursor (a stream's start position, and keyed streams
//! moving past records of other keys) and `herald.gap`.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{Connection, Registry, Subscriber};
use crate::queue::{Pushed, Stamp, Wakers};
use crate::sse;

impl Registry {
    /// Sends id-only events to keyed subscriptions whose cursor moved past
    /// records that did not match them, so that a resume after a quiet spell
    /// does not rescan the partition. Returns how many were sent.
    pub fn advance_idle_cursors(
        &self,
        connections: &[std::sync::Arc<Connection>],
        wakers: &mut Wakers,
    ) -> usize {
        let mut sent = 0;
        for connection in connections {
            let Some(sub) = connection.subscriber() else {
                continue;
            };
            if !sub.shape.is_selective() || connection.queue.queued_bytes() > 0 {
                continue;
            }
            if self.send_cursor(&sub, wakers) {
                sent += 1;
            }
        }
        sent
    }

    /// Queues an id-only event carrying `sub`'s cursor, unless that cursor
    /// was the last one sent this way. Sent when a stream opens, too: a
    /// client that loses its connection before its first record then still
    /// resumes from where it started, not from "now". Each slot's partition
    /// is locked (in slot order, the only place that holds several) so that
    /// the id agrees with what the fan-out has queued.
    pub fn send_cursor(&self, sub: &Subscriber, wakers: &mut Wakers) -> bool {
        if sub.quiet.load(Ordering::Acquire) {
            // Taking a snapshot: a reconnect must take a fresh one, so no id yet.
            return false;
        }
        let _held: Vec<_> = sub.shape.slots.iter().map(|s| s.log.lock()).collect();
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
        queue.push(&[&id, &end], Stamp::NONE, wakers) == Pushed::Queued
    }

    /// Tells the subscriber that `slot` jumps from `requested` to `resumed`
    /// (retention removed what it asked for, or the topic was recreated), and
    /// moves its position there. The event's id already carries the new
    /// position. Never silent: counted in `herald_gaps_total`.
    pub fn gap(
        &self,
        sub: &Subscriber,
        slot: usize,
        requested: i64,
        resumed: i64,
        wakers: &mut Wakers,
    ) {
        let log = &sub.shape.slots[slot].log;
        if log.is_table {
            // A table's state is recoverable: the client comes back with its
            // cursor, and opening that stream re-syncs it with a snapshot.
            self.metrics.resyncs.inc();
            sub.set_position(slot, resumed);
            sub.connection.queue.end(
                crate::queue::End::Unavailable,
                Some(sse::retry_jittered(1000)),
            );
            return;
        }
        self.metrics.gaps.inc();
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
        queue.push(&[&id, &body], Stamp::NONE, wakers);
    }
}
