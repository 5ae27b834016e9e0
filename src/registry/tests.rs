//! The hand-over invariant, where it lives: whatever the interleaving of
//! joins, fan-outs, catch-up steps and socket writes, a subscriber receives
//! every record from its start position on exactly once, in order, and
//! every id it was given names exactly what it had received by then.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::cursor::Cursor;
use crate::queue::{Pushed, Wakers};
use crate::record::Record;
use crate::sse::read::{EventReader, Read};
use crate::sse::Encoded;

const TOPIC: &str = "t";
/// Small, so that joins often fall behind the buffer and need the catch-up path.
const BUFFER_RECORDS: usize = 6;

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

fn record(offset: i64, key: &'static str) -> Arc<Encoded> {
    let r = Record {
        topic: Arc::from(TOPIC),
        partition: 0,
        offset,
        timestamp: None,
        key: Some(Bytes::from_static(key.as_bytes())),
        value: Some(Bytes::from(format!("{offset}"))),
        headers: Vec::new(),
        consumed: std::time::Instant::now(),
    };
    Arc::new(Encoded::new(r, "event"))
}

/// One subscriber under test, and what its client has read.
struct Client {
    sub: Arc<Subscriber>,
    keyed: bool,
    start: i64,
    catching_up: bool,
    reader: EventReader,
    /// Offsets received, in order.
    received: Vec<i64>,
    /// Each id received, with how many records had arrived by then.
    ids: Vec<(String, usize)>,
}

struct World {
    registry: Registry,
    log: Arc<PartitionLog>,
    /// Every record produced (what Kafka holds).
    history: Vec<Arc<Encoded>>,
    clients: Vec<Client>,
    batch: FanoutBatch,
}

#[derive(Debug, Clone)]
enum Op {
    /// A record with key `a` (true) or `b` is produced and fanned out.
    Produce(bool),
    /// A client joins, keyed on `a` or whole, at `back` records behind live
    /// (0: live).
    Join { keyed: bool, back: u8 },
    /// The catch-up reader delivers one record to a client, then tries the
    /// hand-over.
    CatchUp(u8),
    /// A client's socket writes what is queued.
    Write(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(Op::Produce),
        1 => (any::<bool>(), 0u8..16).prop_map(|(keyed, back)| Op::Join { keyed, back }),
        3 => any::<u8>().prop_map(Op::CatchUp),
        2 => any::<u8>().prop_map(Op::Write),
    ]
}

impl World {
    fn new() -> World {
        let registry = Registry::new(
            ReplayBufferLimits {
                bytes: 1 << 20,
                records: BUFFER_RECORDS,
            },
            1 << 20,
            Arc::new(crate::metrics::Metrics::new()),
            super::Tables::none(),
        );
        // A first subscriber pins and starts the partition; it stays.
        let first = registry.subscribe(
            ShapeSpec {
                canonical: "whole".into(),
                fingerprint: 1,
                format: crate::sse::Format::Plain,
                slots: vec![(Arc::from(TOPIC), 0, Filter::Whole)],
                view: Default::default(),
            },
            peer(),
        );
        let log = first.shape.slots[0].log.clone();
        assert!(registry.start_partition(&log, 0));
        let mut world = World {
            registry,
            log,
            history: Vec::new(),
            clients: Vec::new(),
            batch: FanoutBatch::default(),
        };
        world.join_client(first, false, 0);
        world
    }

    fn live(&self) -> i64 {
        self.log.live()
    }

    fn subscribe(&self, keyed: bool) -> Arc<Subscriber> {
        let (canonical, fingerprint, filter) = if keyed {
            ("keyed-a", 2, Filter::Keys(vec![Bytes::from_static(b"a")]))
        } else {
            ("whole", 1, Filter::Whole)
        };
        self.registry.subscribe(
            ShapeSpec {
                canonical: canonical.into(),
                fingerprint,
                format: crate::sse::Format::Plain,
                slots: vec![(Arc::from(TOPIC), 0, filter)],
                view: Default::default(),
            },
            peer(),
        )
    }

    fn join_client(&mut self, sub: Arc<Subscriber>, keyed: bool, start: i64) {
        let mut wakers = Wakers::default();
        sub.set_position(0, start);
        let joined = self
            .registry
            .join(&sub, 0, SlotStart::At(start), &mut wakers);
        assert_ne!(joined, Join::NeedsStart);
        self.clients.push(Client {
            sub,
            keyed,
            start,
            catching_up: joined == Join::NeedsCatchup,
            reader: EventReader::default(),
            received: Vec::new(),
            ids: Vec::new(),
        });
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Produce(a) => {
                let r = record(self.live(), if a { "a" } else { "b" });
                self.history.push(r.clone());
                self.registry.fan_out(&self.log, r, &mut self.batch);
                self.batch.wakers.wake_all();
            }
            Op::Join { keyed, back } => {
                let start = (self.live() - i64::from(back)).max(0);
                let sub = self.subscribe(keyed);
                self.join_client(sub, keyed, start);
            }
            Op::CatchUp(i) => {
                let n = self.clients.len();
                let c = &mut self.clients[usize::from(i) % n];
                if !c.catching_up {
                    return;
                }
                // What `catchup::deliver` and `hand_over` do, one record at a time.
                let position = c.sub.position(0);
                let mut wakers = Wakers::default();
                if let Some(r) = self.history.get(position as usize) {
                    let mut queue = c.sub.connection.queue.lock();
                    c.sub.set_position(0, position + 1);
                    if c.sub.shape.slots[0].filter.matches(r.record.key.as_ref()) {
                        assert_eq!(c.sub.push_own(&mut queue, r, &mut wakers), Pushed::Queued);
                    }
                }
                let at = SlotStart::At(c.sub.position(0));
                c.catching_up =
                    self.registry.join(&c.sub, 0, at, &mut wakers) == Join::NeedsCatchup;
            }
            Op::Write(i) => {
                let n = self.clients.len();
                write(&mut self.clients[usize::from(i) % n]);
            }
        }
    }

    /// Every client catches up and writes all that is queued. A client
    /// that cannot reach the live stream within one step per record
    /// produced is a broken hand-over.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for i in 0..self.clients.len() {
            let mut steps = 0;
            while self.clients[i].catching_up {
                prop_assert!(
                    steps <= self.history.len() + 1,
                    "client {} never reaches the live stream",
                    i
                );
                self.apply(&Op::CatchUp(i as u8));
                steps += 1;
            }
        }
        for c in &mut self.clients {
            write(c);
        }
        Ok(())
    }
}

/// The client's socket takes everything queued; the client reads it.
fn write(c: &mut Client) {
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(Some(drained)) = c.sub.connection.queue.poll_drain(&mut cx) {
        for read in c.reader.feed(&drained.bytes) {
            let Read::Event(e) = read else { continue };
            if let Some(d) = &e.data {
                c.received.push(d.parse().unwrap_or(-1));
            }
            if let Some(id) = e.id {
                c.ids.push((id, c.received.len()));
            }
        }
    }
}

fn expected(history: &[Arc<Encoded>], from: i64, keyed: bool) -> Vec<i64> {
    history
        .iter()
        .filter(|r| r.record.offset >= from)
        .filter(|r| !keyed || r.record.key.as_deref() == Some(b"a".as_slice()))
        .map(|r| r.record.offset)
        .collect()
}

fn check(world: &World) -> Result<(), TestCaseError> {
    let fingerprints: BTreeMap<bool, u32> = [(false, 1), (true, 2)].into();
    for (n, c) in world.clients.iter().enumerate() {
        let want = expected(&world.history, c.start, c.keyed);
        prop_assert_eq!(
            &c.received,
            &want,
            "client {} (keyed {}, from {}): every record once, in order",
            n,
            c.keyed,
            c.start
        );
        // Resuming from any id it was given delivers exactly the rest.
        for (id, had) in &c.ids {
            let cursor = Cursor::decode(id, fingerprints[&c.keyed], 1);
            prop_assert!(
                cursor.is_ok(),
                "client {}: id {} is a cursor of its own subscription",
                n,
                id
            );
            let position = cursor.map(|c| c.positions[0]).unwrap_or_default();
            let rest = expected(&world.history, position, c.keyed);
            prop_assert_eq!(
                &rest[..],
                &c.received[*had..],
                "client {}: a resume from id {} (offset {})",
                n,
                id,
                position
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_joining_subscriber_gets_no_gap_and_no_duplicate(ops in proptest::collection::vec(op(), 1..120)) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op);
        }
        // Records produced after everyone caught up reach everyone too.
        world.settle()?;
        for a in [true, false, true] {
            world.apply(&Op::Produce(a));
        }
        world.settle()?;
        check(&world)?;
    }
}

#[test]
fn a_join_older_than_the_buffer_waits_for_the_catch_up_readers() {
    let mut world = World::new();
    for _ in 0..20 {
        world.apply(&Op::Produce(true));
    }
    let sub = world.subscribe(false);
    let mut wakers = Wakers::default();
    assert_eq!(
        world.registry.join(&sub, 0, SlotStart::At(2), &mut wakers),
        Join::NeedsCatchup
    );
    assert_eq!(sub.position(0), 2, "it keeps its position for the reader");
    let recent = world.live() - BUFFER_RECORDS as i64;
    assert_eq!(
        world
            .registry
            .join(&sub, 0, SlotStart::At(recent), &mut wakers),
        Join::Joined
    );
}

#[test]
fn a_subscriber_gone_before_its_join_is_not_joined() {
    let world = World::new();
    let sub = world.subscribe(false);
    world.registry.unsubscribe(&sub.connection);
    let mut wakers = Wakers::default();
    assert_eq!(
        world.registry.join(&sub, 0, SlotStart::Live, &mut wakers),
        Join::Joined
    );
    assert_eq!(
        world.log.lock().member_count(),
        1,
        "only the first subscriber is a member"
    );
}

#[test]
fn a_closed_stream_frees_its_connection_subscriber_and_shape() {
    let world = World::new();
    // Keyed: a shape of its own (the world's first client has the whole one).
    let sub = world.subscribe(true);
    let mut wakers = Wakers::default();
    world.registry.join(&sub, 0, SlotStart::Live, &mut wakers);
    let (sub_weak, connection_weak, shape_weak) = (
        Arc::downgrade(&sub),
        Arc::downgrade(&sub.connection),
        Arc::downgrade(&sub.shape),
    );
    let connection = sub.connection.clone();
    drop(sub);
    world.registry.unsubscribe(&connection);
    drop(connection);
    assert!(sub_weak.upgrade().is_none(), "the subscriber is freed");
    assert!(
        connection_weak.upgrade().is_none(),
        "the connection is freed"
    );
    assert!(shape_weak.upgrade().is_none(), "the shape is freed");
}
