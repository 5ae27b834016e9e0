//! The per-connection queue between fan-out and the socket.
//!
//! Bounded in bytes: a client that falls behind by more than the bound is
//! cut off (its queued frames are dropped, the stream ends) and comes back
//! with its last event id, replaying from Kafka. Kafka is the buffer, node
//! memory is not. Producers (the ingest thread, catch-up readers) never
//! block and never wake the connection task per frame: they collect wakers
//! and wake once per batch.
//!
//! The queue also knows whether its writer is stuck: it records when the
//! writer took frames and clears that when the writer comes back for more
//! (its write finished). A writer that holds frames longer than the write
//! timeout is a stalled client, and [`ConnectionQueue::kill`] ends it at
//! once, whatever the socket is doing.

mod conflate;

pub use conflate::{Conflator, CursorSource};

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, MutexGuard};

/// When a queued record was made and taken from Kafka: for the latency
/// figures of the write that sends it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stamp {
    /// Kafka's timestamp (ms since the epoch).
    pub kafka_ms: Option<i64>,
    /// When this node consumed it.
    pub consumed: Option<Instant>,
}

impl Stamp {
    /// No record (herald's own signals).
    pub const NONE: Stamp = Stamp {
        kafka_ms: None,
        consumed: None,
    };

    pub fn of(record: &crate::record::Record) -> Stamp {
        Stamp {
            kafka_ms: record.timestamp,
            consumed: Some(record.consumed),
        }
    }
}

/// Why a stream ended on the server's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client fell more than the queue bound behind.
    Slow,
    /// The node is draining or shutting down.
    Drain,
    /// The client's credentials ran out.
    Expired,
    /// A write to the client made no progress for the write timeout.
    Stalled,
    /// Kafka could not be reached to start the stream; the client retries.
    Unavailable,
}

#[derive(Debug)]
pub struct ConnectionQueue {
    inner: Mutex<Inner>,
    limit: usize,
}

#[derive(Debug, Default)]
struct Inner {
    chunks: Vec<Bytes>,
    bytes: usize,
    /// The oldest record queued since the last write.
    oldest: Option<Stamp>,
    waker: Option<Waker>,
    end: Option<End>,
    /// When the writer took the frames it is still writing (None: it came back).
    taken_at: Option<Instant>,
    /// The writer must stop now, mid-write if need be: the client stalled.
    killed: bool,
    /// A conflating stream's pending records (see [`conflate`]).
    conflator: Option<Box<Conflator>>,
}

impl Inner {
    /// Bytes held: frames and pending records.
    fn held(&self) -> usize {
        self.bytes + self.conflator.as_ref().map_or(0, |c| c.bytes())
    }

    /// Turns every pending record into frames (before a frame that must
    /// follow them, or the stream's end).
    fn flush_pending(&mut self) {
        self.render_pending(usize::MAX);
    }

    /// Turns up to `max` pending records into one frame.
    fn render_pending(&mut self, max: usize) {
        let Some(c) = self.conflator.as_mut() else {
            return;
        };
        if c.is_empty() || max == 0 {
            return;
        }
        let mut out = BytesMut::new();
        let (_, oldest) = c.render(max, &mut out);
        self.bytes += out.len();
        self.chunks.push(out.freeze());
        if self.oldest.is_none() {
            self.oldest = oldest;
        }
    }

    fn overflow(&mut self, wakers: &mut Wakers) -> Pushed {
        self.chunks = Vec::new();
        self.bytes = 0;
        if let Some(c) = self.conflator.as_mut() {
            c.clear();
        }
        self.end = Some(End::Slow);
        if let Some(w) = self.waker.take() {
            wakers.0.push(w);
        }
        Pushed::Overflowed
    }
}

/// Frames taken from the queue for one socket write.
pub struct Drained {
    pub bytes: Bytes,
    pub oldest_record_ms: Option<i64>,
    /// When the node consumed the oldest record in it.
    pub oldest_consumed: Option<Instant>,
}

/// Wakers collected while filling queues; woken once the batch is done.
#[derive(Default)]
pub struct Wakers(Vec<Waker>);

impl Wakers {
    pub fn wake_all(&mut self) {
        for w in self.0.drain(..) {
            w.wake();
        }
    }
}

impl Drop for Wakers {
    fn drop(&mut self) {
        self.wake_all();
    }
}

/// What happened to a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// This push took the queue over its bound: the connection is now ending.
    Overflowed,
    /// The stream had already ended; nothing was queued.
    Ended,
}

/// The queue, locked: lets a producer compute what to push (a per-connection
/// cursor, say) atomically with pushing it.
pub struct Locked<'a> {
    guard: MutexGuard<'a, Inner>,
    limit: usize,
}

impl Locked<'_> {
    /// Whether `more` bytes would take the queue past half its bound: a
    /// producer that can wait (a catch-up reader) should let it drain first.
    pub fn is_filling(&self, more: usize) -> bool {
        self.guard.held() + more > self.limit / 2
    }

    /// Bytes held: frames and pending records.
    pub fn held(&self) -> usize {
        self.guard.held()
    }

    /// Records this conflating queue has merged away so far.
    pub fn merged(&self) -> u64 {
        self.guard.conflator.as_ref().map_or(0, |c| c.merged)
    }

    /// Queues a conflating stream's record: a pending record of the same key
    /// and slot is replaced (see [`conflate`]).
    pub fn conflate(
        &mut self,
        slot: usize,
        key: Option<&Bytes>,
        offset: i64,
        body: Bytes,
        stamp: Stamp,
        wakers: &mut Wakers,
    ) -> Pushed {
        let inner = &mut *self.guard;
        if inner.end.is_some() {
            return Pushed::Ended;
        }
        let Some(c) = inner.conflator.as_mut() else {
            return Pushed::Ended;
        };
        c.add(slot, key, offset, body, stamp);
        if inner.held() > self.limit {
            return inner.overflow(wakers);
        }
        if let Some(w) = inner.waker.take() {
            wakers.0.push(w);
        }
        Pushed::Queued
    }

    /// Queues one frame made of `parts`.
    pub fn push(&mut self, parts: &[&Bytes], stamp: Stamp, wakers: &mut Wakers) -> Pushed {
        let inner = &mut *self.guard;
        if inner.end.is_some() {
            return Pushed::Ended;
        }
        inner.flush_pending();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if inner.bytes + len > self.limit {
            return inner.overflow(wakers);
        }
        inner.chunks.extend(parts.iter().map(|p| (*p).clone()));
        inner.bytes += len;
        if inner.oldest.is_none() && (stamp.kafka_ms.is_some() || stamp.consumed.is_some()) {
            inner.oldest = Some(stamp);
        }
        if let Some(w) = inner.waker.take() {
            wakers.0.push(w);
        }
        Pushed::Queued
    }
}

impl ConnectionQueue {
    pub fn new(limit: usize) -> ConnectionQueue {
        ConnectionQueue {
            inner: Mutex::new(Inner::default()),
            limit,
        }
    }

    /// Makes this a conflating stream's queue.
    pub fn conflate_with(&self, source: Box<dyn CursorSource>, rate: Option<u32>) {
        self.inner.lock().conflator = Some(Box::new(Conflator::new(source, rate)));
    }

    /// Records a conflating queue merged away (0 for any other).
    pub fn merged(&self) -> u64 {
        self.inner.lock().conflator.as_ref().map_or(0, |c| c.merged)
    }

    /// When a rate-limited writer may take its next record, if it must wait.
    pub fn throttled_until(&self) -> Option<Instant> {
        self.inner
            .lock()
            .conflator
            .as_ref()
            .and_then(|c| c.throttled_until())
    }

    pub fn lock(&self) -> Locked<'_> {
        Locked {
            guard: self.inner.lock(),
            limit: self.limit,
        }
    }

    pub fn push(&self, parts: &[&Bytes], stamp: Stamp, wakers: &mut Wakers) -> Pushed {
        self.lock().push(parts, stamp, wakers)
    }

    /// Ends the stream after what is queued plus `last` (e.g. a `retry:` hint).
    /// The first end wins.
    pub fn end(&self, why: End, last: Option<Bytes>) {
        let waker = {
            let mut inner = self.inner.lock();
            if inner.end.is_some() {
                return;
            }
            if why == End::Expired {
                // Nothing more after the credentials ran out, not even what is queued:
                // the client resumes from its last id with a fresh token.
                inner.chunks.clear();
                inner.bytes = 0;
                if let Some(c) = inner.conflator.as_mut() {
                    c.clear();
                }
            } else {
                inner.flush_pending();
            }
            if let Some(last) = last {
                inner.bytes += last.len();
                inner.chunks.push(last);
            }
            inner.end = Some(why);
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub fn ended(&self) -> Option<End> {
        self.inner.lock().end
    }

    /// Whether a paced replay may fill this queue again: its writer has
    /// drained it to a quarter of the bound.
    pub fn has_room_for_replay(&self) -> bool {
        self.inner.lock().held() <= self.limit / 4
    }

    pub fn queued_bytes(&self) -> usize {
        self.inner.lock().held()
    }

    /// Whether the writer has been holding frames it took for longer than
    /// `timeout` (its socket write is not finishing).
    pub fn is_stalled(&self, now: Instant, timeout: Duration) -> bool {
        self.inner
            .lock()
            .taken_at
            .is_some_and(|t| now.saturating_duration_since(t) > timeout)
    }

    /// Ends the stream now, dropping what is queued, and tells the writer to
    /// abandon its write. Returns false if it was killed already.
    pub fn kill(&self) -> bool {
        let waker = {
            let mut inner = self.inner.lock();
            if inner.killed {
                return false;
            }
            inner.killed = true;
            inner.chunks = Vec::new();
            inner.bytes = 0;
            if let Some(c) = inner.conflator.as_mut() {
                c.clear();
            }
            inner.end.get_or_insert(End::Stalled);
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Ready once the stream was killed; parks the caller's waker otherwise.
    /// The writer polls it beside each socket write.
    pub fn poll_killed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.lock();
        if inner.killed {
            return Poll::Ready(());
        }
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes everything queued as one buffer (one socket write), or parks the
    /// caller's waker. `Ready(None)` once the stream has ended and is empty.
    pub fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<Option<Drained>> {
        let mut inner = self.inner.lock();
        // The writer is back: whatever it took before is written.
        inner.taken_at = None;
        if inner.killed {
            return Poll::Ready(None);
        }
        let budget = inner
            .conflator
            .as_mut()
            .map_or(0, |c| c.budget(Instant::now()));
        inner.render_pending(budget);
        if !inner.chunks.is_empty() {
            let bytes = if inner.chunks.len() == 1 {
                inner.chunks.pop().unwrap_or_default()
            } else {
                let mut buf = BytesMut::with_capacity(inner.bytes);
                for c in inner.chunks.drain(..) {
                    buf.extend_from_slice(&c);
                }
                buf.freeze()
            };
            // Give back a large chunk vector: idle connections should stay small.
            if inner.chunks.capacity() > 64 {
                inner.chunks = Vec::new();
            }
            inner.bytes = 0;
            inner.taken_at = Some(Instant::now());
            return Poll::Ready(Some(Drained {
                bytes,
                oldest_record_ms: inner.oldest.and_then(|s| s.kafka_ms),
                oldest_consumed: inner.oldest.take().and_then(|s| s.consumed),
            }));
        }
        if inner.end.is_some() {
            // The writer's last words (a chunked body's end) are a write too.
            inner.taken_at = Some(Instant::now());
            return Poll::Ready(None);
        }
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn drain(q: &ConnectionQueue) -> Poll<Option<Drained>> {
        let mut cx = Context::from_waker(Waker::noop());
        q.poll_drain(&mut cx)
    }

    #[test]
    fn coalesces_everything_queued_into_one_write() {
        let q = ConnectionQueue::new(1024);
        let mut w = Wakers::default();
        let a = Bytes::from_static(b"id: 1\n");
        let b = Bytes::from_static(b"data: x\n\n");
        assert_eq!(
            q.push(
                &[&a, &b],
                Stamp {
                    kafka_ms: Some(5),
                    consumed: None
                },
                &mut w
            ),
            Pushed::Queued
        );
        assert_eq!(
            q.push(
                &[&a, &b],
                Stamp {
                    kafka_ms: Some(9),
                    consumed: None
                },
                &mut w
            ),
            Pushed::Queued
        );
        match drain(&q) {
            Poll::Ready(Some(d)) => {
                assert_eq!(&d.bytes[..], b"id: 1\ndata: x\n\nid: 1\ndata: x\n\n");
                assert_eq!(d.oldest_record_ms, Some(5));
            }
            _ => panic!("expected a write"),
        }
        assert!(drain(&q).is_pending());
    }

    #[test]
    fn a_client_past_its_bound_is_cut_off_and_loses_its_backlog() {
        let q = ConnectionQueue::new(10);
        let mut w = Wakers::default();
        let f = Bytes::from_static(b"123456");
        assert_eq!(q.push(&[&f], Stamp::NONE, &mut w), Pushed::Queued);
        assert_eq!(q.push(&[&f], Stamp::NONE, &mut w), Pushed::Overflowed);
        assert_eq!(q.push(&[&f], Stamp::NONE, &mut w), Pushed::Ended);
        assert_eq!(q.ended(), Some(End::Slow));
        assert!(matches!(drain(&q), Poll::Ready(None)));
    }

    #[test]
    fn a_writer_holding_frames_past_the_timeout_is_stalled_until_it_comes_back() {
        let q = ConnectionQueue::new(100);
        let mut w = Wakers::default();
        q.push(&[&Bytes::from_static(b"x")], Stamp::NONE, &mut w);
        let now = Instant::now();
        assert!(!q.is_stalled(now, Duration::ZERO), "nothing taken yet");
        assert!(matches!(drain(&q), Poll::Ready(Some(_))));
        let later = now + Duration::from_secs(10);
        assert!(q.is_stalled(later, Duration::from_secs(5)));
        assert!(drain(&q).is_pending(), "the writer came back");
        assert!(!q.is_stalled(later, Duration::from_secs(5)));
    }

    #[test]
    fn a_killed_stream_drops_its_frames_and_ends_at_once() {
        let q = ConnectionQueue::new(100);
        let mut w = Wakers::default();
        q.push(&[&Bytes::from_static(b"x")], Stamp::NONE, &mut w);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(q.poll_killed(&mut cx).is_pending());
        assert!(q.kill());
        assert!(!q.kill(), "killed once");
        assert!(q.poll_killed(&mut cx).is_ready());
        assert_eq!(q.ended(), Some(End::Stalled));
        assert!(matches!(drain(&q), Poll::Ready(None)));
        assert_eq!(
            q.push(&[&Bytes::from_static(b"y")], Stamp::NONE, &mut w),
            Pushed::Ended
        );
    }

    #[test]
    fn drain_end_sends_the_last_words_first() {
        let q = ConnectionQueue::new(100);
        q.end(End::Drain, Some(Bytes::from_static(b"retry: 5\n\n")));
        assert!(matches!(drain(&q), Poll::Ready(Some(d)) if &d.bytes[..] == b"retry: 5\n\n"));
        assert!(matches!(drain(&q), Poll::Ready(None)));
    }
}
