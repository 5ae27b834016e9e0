//! A connection's subscription: its shape, and per slot the next offset it
//! needs and whether it has joined the live stream.
//!
//! A subscriber whose every slot is joined and caught up is *aligned*: from
//! then on its cursor is its shape's live cursor, and the fan-out queues it
//! the event built once for the shape. Until then it gets events with its
//! own cursor, computed under its queue lock so that ids and queue order
//! agree.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::shape::Shape;
use super::StreamOptions;
use crate::cursor::Cursor;
use crate::queue::{ConnectionQueue, Locked, Pushed, Stamp, Wakers};
use crate::sse::{self, Encoded};

pub(super) struct SlotState {
    /// Next offset this subscriber needs. While joined, the live position
    /// may be ahead of it (nothing to deliver in between) but records below
    /// it are skipped (a cursor from a node that was further ahead).
    pub position: AtomicI64,
    pub joined: AtomicBool,
}

pub struct Subscriber {
    pub connection: Arc<Connection>,
    pub shape: Arc<Shape>,
    pub(super) slots: Box<[SlotState]>,
    pub(super) aligned: AtomicBool,
    pub(super) closed: AtomicBool,
    /// Hash of the last id-only cursor sent (see `Registry::send_cursor`).
    pub(super) last_idle_id: AtomicU64,
    /// No id-only events: the stream is taking its snapshot, and until its
    /// `herald.snapshot` mark a reconnect must start a fresh one.
    pub(super) quiet: AtomicBool,
    /// Whether its live records are merged to the newest per key while
    /// queued (its queue then has a conflator).
    pub conflates: bool,
}

/// An open SSE stream.
pub struct Connection {
    pub id: u64,
    pub queue: ConnectionQueue,
    pub peer: SocketAddr,
    pub opened: Instant,
    /// The token's `sub`, if the stream came with one.
    user: Option<Arc<str>>,
    /// Its subscription. Taken when the stream ends: the subscriber holds
    /// the connection too, and the pair would otherwise keep each other
    /// (and their shape, queue and filters) alive forever.
    subscriber: Mutex<Option<Arc<Subscriber>>>,
    /// Closes the transport that carries this stream when hyper serves it
    /// (hyper stops polling a body whose client stalls, so only dropping its
    /// connection ends it). Streams served by `h1` watch the queue instead.
    transport: OnceLock<CancellationToken>,
}

impl Connection {
    pub(super) fn new(
        id: u64,
        queue_bytes: usize,
        peer: SocketAddr,
        user: Option<Arc<str>>,
    ) -> Connection {
        Connection {
            id,
            queue: ConnectionQueue::new(queue_bytes),
            peer,
            opened: Instant::now(),
            user,
            subscriber: Mutex::new(None),
            transport: OnceLock::new(),
        }
    }

    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    pub fn subscriber(&self) -> Option<Arc<Subscriber>> {
        self.subscriber.lock().clone()
    }

    pub(super) fn set_subscriber(&self, sub: Arc<Subscriber>) {
        *self.subscriber.lock() = Some(sub);
    }

    /// Ends the pair's hold on each other (see `subscriber`).
    pub(super) fn take_subscriber(&self) -> Option<Arc<Subscriber>> {
        self.subscriber.lock().take()
    }

    /// Ties this stream to the transport that carries it.
    pub fn close_transport_with(&self, token: CancellationToken) {
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

impl Subscriber {
    pub(super) fn new(
        connection: Arc<Connection>,
        shape: Arc<Shape>,
        options: StreamOptions,
    ) -> Subscriber {
        Subscriber {
            connection,
            slots: shape
                .slots
                .iter()
                .map(|s| SlotState {
                    position: AtomicI64::new(s.log.live()),
                    joined: AtomicBool::new(false),
                })
                .collect(),
            shape,
            aligned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_idle_id: AtomicU64::new(0),
            quiet: AtomicBool::new(options.snapshot),
            conflates: options.conflate.is_some(),
        }
    }

    /// Taking a snapshot: no id-only events until [`Subscriber::end_quiet`].
    pub fn begin_quiet(&self) {
        self.quiet.store(true, Ordering::Release);
    }

    /// The snapshot is delivered (its mark queued): id-only events may flow.
    pub fn end_quiet(&self) {
        self.quiet.store(false, Ordering::Release);
    }

    /// True once every slot is joined and the live stream has reached this
    /// subscriber's position everywhere. Stays true.
    pub(super) fn refresh_aligned(&self) -> bool {
        if self.aligned.load(Ordering::Acquire) {
            return true;
        }
        let aligned = self
            .slots
            .iter()
            .zip(self.shape.slots.iter())
            .all(|(state, slot)| {
                state.joined.load(Ordering::Acquire)
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
                if state.joined.load(Ordering::Acquire) {
                    own.max(slot.log.live())
                } else {
                    own
                }
            });
        Cursor::encode_into(self.shape.fingerprint, positions, &mut out);
        out
    }

    /// Pushes `record` with this subscriber's own cursor, computed under the
    /// queue lock so that the id and the queue order agree.
    pub fn push_own(
        &self,
        queue: &mut Locked<'_>,
        record: &Encoded,
        wakers: &mut Wakers,
    ) -> Pushed {
        let id = sse::id_line(&self.own_cursor());
        queue.push(
            &[&id, &self.shape.body(record)],
            Stamp::of(&record.record),
            wakers,
        )
    }
}
