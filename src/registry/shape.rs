//! Subscription shapes: the partitions and filters of a subscription,
//! shared by every connection with the same selectors and format.
//!
//! Connections of one shape have equal cursors whenever they are caught up,
//! so the fan-out builds one event (id line and body) per shape and record,
//! and each connection of the shape queues that one buffer.

use std::sync::Arc;

use bytes::Bytes;

use super::partition::PartitionLog;
use crate::cursor::Cursor;
use crate::filters::View;
use crate::sse::{Encoded, Format};

/// What a slot of a subscription takes from its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Whole,
    /// Records with one of these Kafka record keys.
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

/// One partition of a shape and what it takes from it.
pub struct Slot {
    pub log: Arc<PartitionLog>,
    pub filter: Filter,
}

pub struct Shape {
    /// The subscription's canonical text (selectors, partition counts and
    /// format, length-prefixed): equal for equal subscriptions.
    pub canonical: String,
    /// Names the shape in cursors.
    pub fingerprint: u32,
    pub format: Format,
    pub slots: Box<[Slot]>,
    /// Topics this shape reads (for per-topic counts).
    pub topics: Box<[Arc<str>]>,
    /// Its filters (`where=`, a token's claim) and projection (`fields=`).
    pub view: View,
    /// The selectors it reads (`T`, `T/KEY`), once each, for presence.
    pub selectors: Box<[Arc<str>]>,
}

/// The selectors `slots` read: each whole topic once, and each key.
pub(super) fn selectors_of(slots: &[Slot]) -> Box<[Arc<str>]> {
    let mut out: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for slot in slots {
        match &slot.filter {
            Filter::Whole => {
                out.insert(slot.log.topic.to_string());
            }
            Filter::Keys(keys) => {
                for k in keys {
                    out.insert(format!("{}/{}", slot.log.topic, String::from_utf8_lossy(k)));
                }
            }
        }
    }
    out.into_iter().map(Arc::from).collect()
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
    pub(super) fn live_cursor_with(&self, log: &PartitionLog, next: i64) -> String {
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

    /// Whether some records of its partitions are not for it (keys,
    /// filters): its cursor then moves through id-only events too.
    pub fn is_selective(&self) -> bool {
        !self.view.checks.is_empty()
            || self
                .slots
                .iter()
                .any(|s| matches!(s.filter, Filter::Keys(_)))
    }

    /// Whether `record` passes this shape's filters (its key is the
    /// slot's business).
    pub fn passes(&self, record: &Encoded) -> bool {
        self.view.checks.iter().all(|c| {
            c.topic
                .as_ref()
                .is_some_and(|t| **t != *record.record.topic)
                || record.passes(&c.expr)
        })
    }

    /// Whether `slot` takes `record`: its key, and the filters.
    pub fn takes(&self, slot: usize, record: &Encoded) -> bool {
        self.slots[slot].filter.matches(record.match_key()) && self.passes(record)
    }

    /// `record`'s body for this shape: its format, its projection.
    pub fn body(&self, record: &Encoded) -> Bytes {
        record.body_with(self.format, self.view.projection.as_deref())
    }
}
