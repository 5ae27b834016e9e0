//! Conflation: a queue that keeps only the newest pending record per key.
//!
//! A conflating stream's live records wait here, not as frames: a record
//! with a key that is already pending replaces it, so a client that falls
//! behind gets the current value of each key instead of the backlog. The
//! frames, with their ids, are made when the writer takes them, in offset
//! order per partition.
//!
//! The ids stay exact. After writing a record at offset `o` of a partition,
//! the id puts that partition at the first offset still pending there (or,
//! with nothing pending, at the live position, and never below `o + 1`).
//! Every record below that position was either written or replaced by a
//! newer record of its key that is itself written or still pending at or
//! above it; a resume from the id therefore misses no key's latest value,
//! and repeats nothing written.
//!
//! With a rate (`max-rate=N`) the writer takes at most N records a second;
//! the rest keep merging.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::Stamp;

/// Writes a conflated stream's ids: its cursor, given for each slot the
/// position to use instead of the live one (`pending(slot, live)`).
pub trait CursorSource: Send + Sync {
    fn cursor(&self, pending: &dyn Fn(usize, i64) -> i64) -> String;
}

struct Entry {
    key: Option<Bytes>,
    body: Bytes,
    stamp: Stamp,
}

#[derive(Default)]
struct SlotPending {
    by_offset: BTreeMap<i64, Entry>,
    by_key: HashMap<Bytes, i64>,
    /// One past the last offset written from this slot.
    written: i64,
}

/// A token bucket: `rate` events a second, bursts up to `rate`.
struct Rate {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Rate {
    fn new(n: u32) -> Rate {
        let per_second = f64::from(n.max(1));
        Rate {
            per_second,
            tokens: per_second,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_second).min(self.per_second);
        self.at = now;
    }

    /// When the next token is there.
    fn next_token(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.per_second)
    }
}

pub struct Conflator {
    source: Box<dyn CursorSource>,
    slots: Vec<SlotPending>,
    bytes: usize,
    pending: usize,
    /// Slot to take from first next time (round robin).
    turn: usize,
    rate: Option<Rate>,
    /// Records replaced by a newer one of their key before being written.
    pub merged: u64,
}

impl std::fmt::Debug for Conflator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conflator")
            .field("pending", &self.pending)
            .field("bytes", &self.bytes)
            .field("merged", &self.merged)
            .finish()
    }
}

impl Conflator {
    pub fn new(source: Box<dyn CursorSource>, rate: Option<u32>) -> Conflator {
        Conflator {
            source,
            slots: Vec::new(),
            bytes: 0,
            pending: 0,
            turn: 0,
            rate: rate.map(Rate::new),
            merged: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Adds a record; one pending with the same key (in this slot) is replaced.
    pub fn add(
        &mut self,
        slot: usize,
        key: Option<&Bytes>,
        offset: i64,
        body: Bytes,
        stamp: Stamp,
    ) {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, SlotPending::default);
        }
        let s = &mut self.slots[slot];
        if let Some(k) = key {
            if let Some(old) = s.by_key.insert(k.clone(), offset) {
                if let Some(e) = s.by_offset.remove(&old) {
                    self.bytes = self.bytes.saturating_sub(e.body.len());
                    self.pending = self.pending.saturating_sub(1);
                    self.merged = self.merged.saturating_add(1);
                }
            }
        }
        self.bytes += body.len();
        self.pending += 1;
        s.by_offset.insert(
            offset,
            Entry {
                key: key.cloned(),
                body,
                stamp,
            },
        );
    }

    /// How many records the writer may take now (all of them without a rate).
    pub fn budget(&mut self, now: Instant) -> usize {
        match &mut self.rate {
            None => usize::MAX,
            Some(r) => {
                r.refill(now);
                r.tokens.floor().max(0.0) as usize
            }
        }
    }

    /// When a throttled writer should come back for more.
    pub fn throttled_until(&self) -> Option<Instant> {
        match &self.rate {
            Some(r) if self.pending > 0 && r.tokens < 1.0 => Some(r.next_token()),
            _ => None,
        }
    }

    /// Writes up to `max` pending records as events, oldest first within
    /// each slot, taking slots in turn. Returns how many, and the stamp of
    /// the first.
    pub fn render(&mut self, max: usize, out: &mut BytesMut) -> (usize, Option<Stamp>) {
        let mut n = 0;
        let mut oldest = None;
        let slots = self.slots.len();
        while n < max && self.pending > 0 && slots > 0 {
            let slot = self.turn % slots;
            self.turn = self.turn.wrapping_add(1);
            let Some((offset, entry)) = self.slots[slot].by_offset.pop_first() else {
                continue;
            };
            let s = &mut self.slots[slot];
            if let Some(k) = &entry.key {
                if s.by_key.get(k) == Some(&offset) {
                    s.by_key.remove(k);
                }
            }
            s.written = s.written.max(offset.saturating_add(1));
            self.pending -= 1;
            self.bytes = self.bytes.saturating_sub(entry.body.len());
            let states = &self.slots;
            let cursor = self.source.cursor(&|i, live| match states.get(i) {
                Some(s) => match s.by_offset.first_key_value() {
                    Some((&first, _)) => first,
                    None => live.max(s.written),
                },
                None => live,
            });
            out.put_slice(&crate::sse::id_line(&cursor));
            out.put_slice(&entry.body);
            oldest = oldest.or(Some(entry.stamp));
            n += 1;
        }
        if let Some(r) = &mut self.rate {
            r.tokens = (r.tokens - n as f64).max(0.0);
        }
        (n, oldest)
    }

    /// Drops everything pending.
    pub fn clear(&mut self) {
        for s in &mut self.slots {
            s.by_offset.clear();
            s.by_key.clear();
        }
        self.bytes = 0;
        self.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Positions(Vec<i64>);

    impl CursorSource for Positions {
        fn cursor(&self, pending: &dyn Fn(usize, i64) -> i64) -> String {
            (0..self.0.len())
                .map(|i| pending(i, self.0[i]).to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    }

    fn ids(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .filter_map(|l| l.strip_prefix("id: ").map(str::to_owned))
            .collect()
    }

    #[test]
    fn keeps_the_newest_per_key_and_ids_never_skip_a_pending_key() {
        // Live is at 10 in both slots.
        let mut c = Conflator::new(Box::new(Positions(vec![10, 10])), None);
        let k = |s: &str| Bytes::from(s.to_owned());
        c.add(
            0,
            Some(&k("a")),
            5,
            Bytes::from_static(b"data: a5\n\n"),
            Stamp::NONE,
        );
        c.add(
            0,
            Some(&k("b")),
            6,
            Bytes::from_static(b"data: b6\n\n"),
            Stamp::NONE,
        );
        c.add(
            0,
            Some(&k("a")),
            8,
            Bytes::from_static(b"data: a8\n\n"),
            Stamp::NONE,
        );
        c.add(
            1,
            Some(&k("c")),
            3,
            Bytes::from_static(b"data: c3\n\n"),
            Stamp::NONE,
        );
        assert_eq!(c.merged, 1);
        let mut out = BytesMut::new();
        assert_eq!(c.render(usize::MAX, &mut out).0, 3);
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(!text.contains("a5"), "{text}");
        // b6 first (slot 0 then slot 1 in turn): slot 0 then waits at a8.
        assert_eq!(ids(&out), vec!["8,3", "8,10", "10,10"]);
        assert!(c.is_empty());
    }

    #[test]
    fn a_rate_limits_what_the_writer_takes() {
        let mut c = Conflator::new(Box::new(Positions(vec![100])), Some(2));
        for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
            let k = Bytes::from(key.to_string());
            c.add(
                0,
                Some(&k),
                i as i64,
                Bytes::from_static(b"data: x\n\n"),
                Stamp::NONE,
            );
        }
        let now = Instant::now();
        let budget = c.budget(now);
        assert_eq!(budget, 2);
        let mut out = BytesMut::new();
        assert_eq!(c.render(budget, &mut out).0, 2);
        assert_eq!(ids(&out), vec!["1", "2"]);
        assert_eq!(c.budget(now), 0);
        assert!(c.throttled_until().is_some());
    }
}
