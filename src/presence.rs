//! Presence: who is connected to what, across the cluster, with nothing
//! shared but Kafka.
//!
//! Every node writes to one compacted topic (`--presence-topic`):
//!
//! - per selector it serves (`T` or `T/KEY`), a record keyed
//!   `s\n<selector>\n<node>` with the number of streams it holds for it
//!   (and, with `--presence-users`, the `sub` of each, and who joined or
//!   left since the last record), at most once a second per selector and
//!   only on change; a selector's records all go to one partition, so its
//!   changes are in order whoever writes them;
//! - a heartbeat keyed `h\n<node>` every `--presence-heartbeat`, with the
//!   node's connections, the partitions it reads and its deliveries a
//!   second.
//!
//! Every node reads the topic as a table topic: the presence view is its
//! tables, without the entries of nodes whose heartbeat is older than the
//! TTL. Any node that sees a node's heartbeat expire writes tombstones for
//! that node's entries (so a SIGKILLed node's counts go, for streams too);
//! a node shutting down cleanly writes its own at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registry::{PartitionLog, Registry};

/// How often the node looks at its streams for changes.
const TICK: Duration = Duration::from_millis(200);
/// A selector's record is written at most this often.
const DEBOUNCE: Duration = Duration::from_secs(1);
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct PresenceConfig {
    pub topic: String,
    pub users: bool,
    pub heartbeat: Duration,
    pub ttl: Duration,
}

/// What one node last wrote for a selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Held {
    streams: usize,
    users: BTreeSet<String>,
}

struct Written {
    held: Held,
    at: Instant,
}

pub struct Presence {
    pub config: PresenceConfig,
    node: String,
    registry: Arc<Registry>,
    producer: FutureProducer,
    metrics: Arc<Metrics>,
    logs: parking_lot::Mutex<Vec<Arc<PartitionLog>>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The key of a selector's record from `node`.
fn selector_key(selector: &str, node: &str) -> String {
    format!("s\n{selector}\n{node}")
}

fn heartbeat_key(node: &str) -> String {
    format!("h\n{node}")
}

/// A selector's records all go to one partition (its changes stay in
/// order, whoever writes them).
pub fn partition_of(what: &str, partitions: i32) -> i32 {
    let n = u32::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(murmur2::murmur2(what.as_bytes(), 0x7072_6573) % n).unwrap_or(0)
}

/// One node's entry for a selector, as read back from the topic.
#[derive(Debug, Clone)]
struct Entry {
    node: String,
    streams: u64,
    users: Vec<String>,
}

/// The presence view, from the topic's tables.
#[derive(Debug, Default)]
struct View {
    /// node → its heartbeat value and record timestamp.
    nodes: BTreeMap<String, Value>,
    /// selector → entries.
    selectors: BTreeMap<String, Vec<Entry>>,
    /// Nodes whose heartbeat is older than the TTL, and their entry keys.
    /// (entry key, its selector): a selector's key may hold a newline, so
    /// the selector comes from the record, never from splitting its key.
    expired: BTreeMap<String, Vec<(String, String)>>,
}

impl Presence {
    pub fn new(
        config: PresenceConfig,
        node: String,
        registry: Arc<Registry>,
        producer: FutureProducer,
        metrics: Arc<Metrics>,
    ) -> Presence {
        Presence {
            config,
            node,
            registry,
            producer,
            metrics,
            logs: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// The presence topic's partitions, pinned and read by this node.
    pub fn set_logs(&self, logs: Vec<Arc<PartitionLog>>) {
        *self.logs.lock() = logs;
    }

    /// Partitions of the presence topic (once known).
    fn partitions(&self) -> i32 {
        i32::try_from(self.logs.lock().len()).unwrap_or(1).max(1)
    }

    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    /// Whether every presence partition's table is ready.
    pub fn is_ready(&self) -> bool {
        let logs = self.logs.lock().clone();
        !logs.is_empty() && logs.iter().all(|l| self.registry.table_is_ready(l))
    }

    fn view(&self) -> View {
        let logs = self.logs.lock().clone();
        let now = now_ms();
        let ttl = i64::try_from(self.config.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut view = View::default();
        let mut heartbeats: HashMap<String, i64> = HashMap::new();
        let mut entries: Vec<(String, String, Value)> = Vec::new();
        for log in &logs {
            for record in self.registry.table_records(log) {
                let Some(key) = record.record.key.as_ref() else {
                    continue;
                };
                let Ok(key) = std::str::from_utf8(key) else {
                    continue;
                };
                let Some(value) = record
                    .record
                    .value
                    .as_ref()
                    .and_then(|v| serde_json::from_slice::<Value>(v).ok())
                else {
                    continue;
                };
                if let Some(node) = key.strip_prefix("h\n") {
                    heartbeats.insert(node.to_owned(), value["at"].as_i64().unwrap_or(0));
                    view.nodes.insert(node.to_owned(), value);
                } else if key.starts_with("s\n") {
                    entries.push((
                        key.to_owned(),
                        value["node"].as_str().unwrap_or("").to_owned(),
                        value,
                    ));
                }
            }
        }
        let alive = |node: &str| {
            heartbeats
                .get(node)
                .is_some_and(|&at| now.saturating_sub(at) <= ttl)
        };
        for (node, at) in &heartbeats {
            if now.saturating_sub(*at) > ttl {
                view.expired.entry(node.clone()).or_default();
                view.nodes.remove(node);
            }
        }
        for (key, node, value) in entries {
            if !alive(&node) {
                // Tombstoned only once the entry itself is older than the
                // TTL: a node that just restarted may have written it before
                // its heartbeat reached this node (another partition).
                let at = value["at"].as_i64().unwrap_or(0);
                if now.saturating_sub(at) > ttl {
                    let selector = value["selector"].as_str().unwrap_or_default().to_owned();
                    view.expired.entry(node).or_default().push((key, selector));
                }
                continue;
            }
            let Some(selector) = value["selector"].as_str() else {
                continue;
            };
            let streams = value["streams"].as_u64().unwrap_or(0);
            if streams == 0 {
                continue;
            }
            let users = value["users"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            view.selectors
                .entry(selector.to_owned())
                .or_default()
                .push(Entry {
                    node,
                    streams,
                    users,
                });
        }
        view
    }

    /// `GET /v1/presence?topic=S`: the cluster-wide count, per node, and
    /// (with `--presence-users`) who.
    pub fn of(&self, selector: &str) -> Value {
        let view = self.view();
        let entries = view.selectors.get(selector).cloned().unwrap_or_default();
        let mut per_node = BTreeMap::new();
        let mut users = BTreeSet::new();
        let mut total = 0u64;
        for e in entries {
            total = total.saturating_add(e.streams);
            per_node.insert(e.node, e.streams);
            users.extend(e.users);
        }
        let mut out = json!({
            "selector": selector,
            "streams": total,
            "nodes": per_node,
            "ready": self.is_ready(),
        });
        if self.config.users {
            out["users"] = json!(users);
        }
        out
    }

    /// `GET /v1/presence`: every selector and node (an operations view).
    pub fn all(&self) -> Value {
        let view = self.view();
        let selectors: BTreeMap<String, Value> = view
            .selectors
            .iter()
            .map(|(s, entries)| {
                let per_node: BTreeMap<&str, u64> = entries
                    .iter()
                    .map(|e| (e.node.as_str(), e.streams))
                    .collect();
                let total: u64 = entries.iter().map(|e| e.streams).sum();
                (s.clone(), json!({"streams": total, "nodes": per_node}))
            })
            .collect();
        json!({
            "nodes": view.nodes,
            "selectors": selectors,
            "ttl_ms": u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX),
            "ready": self.is_ready(),
        })
    }

    /// What this node holds now, by selector (the presence topic's own
    /// streams not counted), from the registry's running counts.
    fn holding(&self) -> HashMap<String, Held> {
        let own = self.config.topic.as_str();
        self.registry
            .held()
            .into_iter()
            .filter(|(s, _, _)| {
                let topic = s.split_once('/').map_or(&**s, |(t, _)| t);
                topic != own
            })
            .map(|(s, streams, users)| {
                let users = if self.config.users {
                    users.iter().map(|u| u.to_string()).collect()
                } else {
                    BTreeSet::new()
                };
                (s.to_string(), Held { streams, users })
            })
            .collect()
    }

    fn send(&self, key: &str, partition: i32, value: Option<&Value>) {
        let payload = value.map(Value::to_string);
        let mut record = FutureRecord::<str, str>::to(&self.config.topic)
            .key(key)
            .partition(partition);
        if let Some(p) = &payload {
            record = record.payload(p);
        }
        match self.producer.send_result(record) {
            Ok(_) => self.metrics.presence_records.inc(),
            Err((e, _)) => tracing::warn!(error = %e, "presence record not sent"),
        }
    }

    /// Writes this node's changes, heartbeats and the tombstones of expired
    /// nodes until `stop` (the node drains: its streams are leaving for
    /// other nodes); then tombstones for everything it wrote, at once.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut written: HashMap<String, Written> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        let mut last_beat: Option<Instant> = None;
        let mut cleaned_self = false;
        // The registry's change count last looked at, and whether a write
        // was put off (debounced) and is still due.
        let mut seen = u64::MAX;
        let mut due = false;
        let mut delivered_before = self.metrics.events_delivered.get();
        let mut delivered_at = Instant::now();
        let mut rate = 0.0f64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            if !self.is_ready() {
                continue;
            }
            if !cleaned_self {
                // Entries an earlier life of this node left behind.
                self.tombstone_node(&self.node, &self.view());
                cleaned_self = true;
            }
            if last_beat.is_none_or(|t| t.elapsed() >= self.config.heartbeat) {
                let delivered = self.metrics.events_delivered.get();
                let dt = delivered_at.elapsed().as_secs_f64();
                if dt > 0.0 {
                    rate = delivered.saturating_sub(delivered_before) as f64 / dt;
                }
                delivered_before = delivered;
                delivered_at = Instant::now();
                self.heartbeat(rate);
                last_beat = Some(Instant::now());
                let view = self.view();
                for node in view.expired.keys() {
                    if *node != self.node {
                        self.tombstone_node(node, &view);
                    }
                }
                // Our own entries, as the topic has them: one another node
                // tombstoned (it took this node for dead, say, just before a
                // restart) is written again.
                for (selector, w) in written.iter_mut() {
                    let there = view.selectors.get(selector).is_some_and(|entries| {
                        entries
                            .iter()
                            .any(|e| e.node == self.node && e.streams == w.held.streams as u64)
                    });
                    if !there && w.held.streams > 0 && w.at.elapsed() >= DEBOUNCE {
                        self.write_selector(selector, &w.held, &w.held);
                        w.at = Instant::now();
                    }
                }
            }
            // Only when a stream came or went, or a write is still due.
            let generation = self.registry.changes();
            if generation == seen && !due {
                continue;
            }
            seen = generation;
            due = false;
            let now = self.holding();
            let mut selectors: BTreeSet<String> = written.keys().cloned().collect();
            selectors.extend(now.keys().cloned());
            for s in selectors {
                let held = now.get(&s).cloned().unwrap_or_default();
                match written.get(&s) {
                    Some(w) if w.held == held => {
                        // Nobody left for a while: the entry goes.
                        if held.streams == 0 {
                            if w.at.elapsed() >= DEBOUNCE {
                                let key = selector_key(&s, &self.node);
                                self.send(&key, partition_of(&s, self.partitions()), None);
                                written.remove(&s);
                            } else {
                                due = true;
                            }
                        }
                        continue;
                    }
                    // Written less than a second ago: next time.
                    Some(w) if w.at.elapsed() < DEBOUNCE => {
                        due = true;
                        continue;
                    }
                    None if held.streams == 0 => continue,
                    _ => {}
                }
                let old = written.get(&s).map(|w| w.held.clone()).unwrap_or_default();
                self.write_selector(&s, &old, &held);
                written.insert(
                    s,
                    Written {
                        held,
                        at: Instant::now(),
                    },
                );
            }
        }
        // A clean stop: this node's entries go at once.
        for s in written.keys() {
            self.send(
                &selector_key(s, &self.node),
                partition_of(s, self.partitions()),
                None,
            );
        }
        self.send(
            &heartbeat_key(&self.node),
            partition_of(&heartbeat_key(&self.node), self.partitions()),
            None,
        );
        let _ = self.producer.flush(SEND_TIMEOUT);
    }

    fn write_selector(&self, selector: &str, old: &Held, new: &Held) {
        let mut value = json!({
            "selector": selector,
            "node": self.node,
            "streams": new.streams,
            "at": now_ms(),
        });
        if self.config.users {
            value["users"] = json!(new.users);
            value["joined"] = json!(new.users.difference(&old.users).collect::<Vec<_>>());
            value["left"] = json!(old.users.difference(&new.users).collect::<Vec<_>>());
        }
        self.send(
            &selector_key(selector, &self.node),
            partition_of(selector, self.partitions()),
            Some(&value),
        );
    }

    fn heartbeat(&self, deliveries_per_s: f64) {
        let partitions: Vec<String> = self
            .registry
            .started_partitions()
            .into_iter()
            .filter(|(topic, _)| **topic != *self.config.topic)
            .map(|(topic, p)| format!("{topic}/{p}"))
            .collect();
        let value = json!({
            "node": self.node,
            "at": now_ms(),
            "ttl_ms": u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX),
            "connections": self.registry.connection_count(),
            "partitions": partitions,
            "deliveries_per_s": (deliveries_per_s * 10.0).round() / 10.0,
        });
        let key = heartbeat_key(&self.node);
        self.send(&key, partition_of(&key, self.partitions()), Some(&value));
    }

    /// Tombstones for the expired entries of `node` in `view` (and its
    /// heartbeat); for this node itself (at start), for all of them.
    fn tombstone_node(&self, node: &str, view: &View) {
        let mut all: Vec<(String, String)> = view.expired.get(node).cloned().unwrap_or_default();
        if node == self.node {
            for (selector, entries) in &view.selectors {
                if entries.iter().any(|e| e.node == node) {
                    all.push((selector_key(selector, node), selector.clone()));
                }
            }
        }
        for (key, selector) in all {
            self.send(&key, partition_of(&selector, self.partitions()), None);
        }
        if node != self.node {
            let key = heartbeat_key(node);
            self.send(&key, partition_of(&key, self.partitions()), None);
        }
    }
}
