//! Schemas by id: fetched once, compiled once, kept.
//!
//! Ids are immutable, so a schema once had is good forever. A miss starts
//! one fetch for its id however many records ask meanwhile (they see
//! `Pending`); the registry is never asked on behalf of a record whose
//! schema is here. A registry that does not answer is asked again with a
//! back-off; an answer that cannot change soon (the id is unknown, the
//! schema does not compile) is remembered for a while, so a flood of such
//! records costs no flood of requests.
//!
//! Bounded by a count: past it, the schemas used longest ago are dropped,
//! never one a held record still refers to, nor one used in the last
//! minute (then the cache grows past its bound rather than thrash, and the
//! gauge shows it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::{Condvar, Mutex};

use super::schema_registry::{FetchError, Fetched, SchemaRegistry};
use super::{Kind, Schema};
use crate::metrics::Metrics;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// How long "the registry has no such id" is believed.
const NOT_FOUND_FOR: Duration = Duration::from_secs(10);
/// How long an unusable answer is believed.
const INVALID_FOR: Duration = Duration::from_secs(60);
/// A schema used this recently is in use and is never evicted.
const IN_USE: Duration = Duration::from_secs(60);

enum Slot {
    Fetching,
    Ready {
        schema: Arc<Schema>,
        used: AtomicU64,
    },
    Missing {
        reason: Arc<str>,
        until: Instant,
    },
    Failing {
        reason: Arc<str>,
        retry_at: Instant,
        failures: u32,
    },
}

/// What the cache has for an id.
#[derive(Debug, Clone)]
pub enum Lookup {
    Ready(Arc<Schema>),
    /// Not to be had: the registry said so, or its answer is unusable.
    Missing(Arc<str>),
    /// Being fetched, or waiting to be fetched again; why, if it failed.
    Pending(Arc<str>),
}

pub struct SchemaCache {
    slots: DashMap<u32, Slot>,
    registry: SchemaRegistry,
    runtime: tokio::runtime::Handle,
    capacity: usize,
    metrics: Arc<Metrics>,
    /// Bumped on every fetch that ends; threads waiting for one wait here.
    settled: Mutex<u64>,
    settled_signal: Condvar,
    epoch: Instant,
}

impl SchemaCache {
    pub fn new(
        registry: SchemaRegistry,
        runtime: tokio::runtime::Handle,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> SchemaCache {
        SchemaCache {
            slots: DashMap::new(),
            registry,
            runtime,
            capacity: capacity.max(1),
            metrics,
            settled: Mutex::new(0),
            settled_signal: Condvar::new(),
            epoch: Instant::now(),
        }
    }

    pub fn registry_url(&self) -> &str {
        self.registry.url()
    }

    fn now_secs(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// The schema for `id`, or why not, starting a fetch if one is due.
    pub fn lookup(self: &Arc<Self>, id: u32) -> Lookup {
        let now = Instant::now();
        if let Some(slot) = self.slots.get(&id) {
            match &*slot {
                Slot::Ready { schema, used } => {
                    used.store(self.now_secs(), Ordering::Relaxed);
                    return Lookup::Ready(schema.clone());
                }
                Slot::Missing { reason, until } if now < *until => {
                    return Lookup::Missing(reason.clone())
                }
                Slot::Fetching => return Lookup::Pending(Arc::from("fetching the schema")),
                Slot::Failing {
                    reason, retry_at, ..
                } if now < *retry_at => return Lookup::Pending(reason.clone()),
                _ => {}
            }
        }
        self.start_fetch(id)
    }

    fn start_fetch(self: &Arc<Self>, id: u32) -> Lookup {
        let failures = match self.slots.entry(id) {
            Entry::Occupied(mut e) => match e.get() {
                Slot::Fetching => return Lookup::Pending(Arc::from("fetching the schema")),
                Slot::Ready { schema, .. } => return Lookup::Ready(schema.clone()),
                Slot::Failing { failures, .. } => {
                    let f = *failures;
                    e.insert(Slot::Fetching);
                    f
                }
                Slot::Missing { .. } => {
                    e.insert(Slot::Fetching);
                    0
                }
            },
            Entry::Vacant(v) => {
                v.insert(Slot::Fetching);
                0
            }
        };
        let cache = self.clone();
        self.runtime.spawn(async move {
            let outcome = cache.registry.fetch(id).await;
            cache.settle(id, outcome, failures);
        });
        Lookup::Pending(Arc::from("fetching the schema"))
    }

    fn settle(&self, id: u32, outcome: Result<Fetched, FetchError>, failures: u32) {
        let now = Instant::now();
        let (label, slot) = match outcome.map(|f| Schema::compile(id, f)) {
            Ok(Ok(schema)) => (
                "ok",
                Slot::Ready {
                    schema: Arc::new(schema),
                    used: AtomicU64::new(self.now_secs()),
                },
            ),
            Ok(Err(e)) => (
                "invalid",
                Slot::Missing {
                    reason: Arc::from(format!("schema {id} does not compile: {e}")),
                    until: now + INVALID_FOR,
                },
            ),
            Err(FetchError::NotFound) => (
                "not_found",
                Slot::Missing {
                    reason: Arc::from(format!("schema id {id} is not in the registry")),
                    until: now + NOT_FOUND_FOR,
                },
            ),
            Err(FetchError::Invalid(e)) => (
                "invalid",
                Slot::Missing {
                    reason: Arc::from(format!("schema {id}: {e}")),
                    until: now + INVALID_FOR,
                },
            ),
            Err(FetchError::Unreachable(e)) => {
                let failures = failures.saturating_add(1);
                let pause = FIRST_RETRY
                    .saturating_mul(1 << failures.min(10))
                    .min(MAX_RETRY);
                tracing::warn!(schema_id = id, error = %e, retry_in = ?pause, "schema registry unreachable");
                (
                    "unreachable",
                    Slot::Failing {
                        reason: Arc::from(format!("schema registry unreachable: {e}")),
                        retry_at: now + pause,
                        failures,
                    },
                )
            }
        };
        if let Slot::Missing { reason, .. } = &slot {
            tracing::warn!(schema_id = id, %reason, "schema unusable");
        }
        self.metrics
            .registry_fetches
            .with_label_values(&[label])
            .inc();
        self.slots.insert(id, slot);
        self.forget_expired(now);
        self.evict();
        *self.settled.lock() += 1;
        self.settled_signal.notify_all();
    }

    /// Drops answers past their time once there are more of them than the
    /// cache holds schemas: records with ever new unknown ids must not grow
    /// the map without end.
    fn forget_expired(&self, now: Instant) {
        if self.slots.len() <= self.capacity {
            return;
        }
        self.slots.retain(|_, slot| match slot {
            Slot::Missing { until, .. } => *until > now,
            _ => true,
        });
    }

    fn evict(&self) {
        let ready = || {
            self.slots
                .iter()
                .filter(|s| matches!(s.value(), Slot::Ready { .. }))
                .count()
        };
        let mut count = ready();
        if count > self.capacity {
            let now = self.now_secs();
            let mut idle: Vec<(u64, u32)> = self
                .slots
                .iter()
                .filter_map(|s| match s.value() {
                    Slot::Ready { schema, used } => {
                        let used = used.load(Ordering::Relaxed);
                        let in_use = Arc::strong_count(schema) > 1
                            || now.saturating_sub(used) < IN_USE.as_secs();
                        (!in_use).then_some((used, *s.key()))
                    }
                    _ => None,
                })
                .collect();
            idle.sort_unstable();
            for (_, id) in idle.into_iter().take(count - self.capacity) {
                self.slots.remove(&id);
            }
            count = ready();
        }
        self.metrics
            .schemas_cached
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Waits until some fetch ends, or `timeout`.
    pub fn wait_for_fetch(&self, timeout: Duration) {
        let mut settled = self.settled.lock();
        let seen = *settled;
        let deadline = Instant::now() + timeout;
        while *settled == seen {
            if self
                .settled_signal
                .wait_until(&mut settled, deadline)
                .timed_out()
            {
                return;
            }
        }
    }

    /// Schemas held, by kind (for `/v1/stats`).
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for slot in self.slots.iter() {
            if let Slot::Ready { schema, .. } = slot.value() {
                match schema.kind {
                    Kind::Avro => counts.0 += 1,
                    Kind::Protobuf => counts.1 += 1,
                    Kind::Json => counts.2 += 1,
                }
            }
        }
        counts
    }
}
