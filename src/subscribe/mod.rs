//! Opening a subscription: from a parsed request to slots joined to the
//! live stream, or waiting for the catch-up readers.
//!
//! - [`request`]: the query string, parsed and bounded
//! - [`plan`]: selectors to slots (a key costs one partition)
//! - this module: each slot's start position, and the joins
//!
//! "Live" is a promise: every record produced after the client saw the
//! response head is delivered. A partition this node does not read yet
//! starts at its high watermark, never at a position some client asked for:
//! the node's one consumer is shared, and what it reads from its start on
//! reaches every live stream. Older positions go through the catch-up
//! readers.

pub mod plan;
pub mod request;
mod snapshot;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rdkafka::error::KafkaError;

pub use crate::registry::Filter;
pub use plan::{plan, Plan};
pub use request::{
    parse_request, valid_topic_name, BadRequest, Selector, SelectorLimits, Start, SubscribeRequest,
};

use crate::catchup::Catchup;
use crate::cursor::{Cursor, CursorError};
use crate::filters::{Check, Filters, View};
use crate::formats::Decoder;
use crate::ingest::Ingest;
use crate::kafka::Kafka;
use crate::queue::{End, Stamp, Wakers};
use crate::registry::{Join, Registry, ShapeSpec, SlotStart, StreamOptions, Subscriber};
use crate::sse;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    #[error("this node evaluates {0} distinct filters and projections already (its limit): use one that other streams use, or try again later")]
    FiltersFull(usize),
    #[error("Last-Event-ID: {0}")]
    BadCursor(#[from] CursorError),
    #[error("since= needs Kafka's offsets-for-times, which the embedded Kafka (librdkafka's mock cluster) does not implement; use a real broker (--brokers) or from=earliest")]
    SinceUnsupported,
    #[error("Kafka did not answer: {0}")]
    Kafka(#[from] KafkaError),
}

/// What opening streams needs, and nothing else.
pub struct Subscriptions {
    pub registry: Arc<Registry>,
    pub kafka: Kafka,
    pub ingest: Arc<Ingest>,
    pub catchup: Arc<Catchup>,
    /// Whether a topic's keys are decoded (a key selector then reads every partition).
    pub decoder: Arc<Decoder>,
    /// Compiled `where=` expressions and `fields=` projections.
    pub filters: Arc<Filters>,
    /// Partitions one stream may read.
    pub max_partitions: usize,
    /// The `retry:` a stream opens with.
    pub retry_ms: u64,
    /// Whether the brokers answer offsets-for-times (the embedded Kafka does not).
    pub since_supported: bool,
}

/// A subscription opened up to its response head, and what remains to do
/// once the head is on its way.
pub struct Opened {
    pub sub: Arc<Subscriber>,
    /// Kafka look-ups and joins that wait for the head (`None`: none left).
    pub rest: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

/// Where the request starts, its cursor decoded against its plan.
enum From {
    Live,
    /// The current state of its table topics, then live.
    Snapshot,
    Earliest,
    Since(i64),
    Cursor(Cursor),
}

/// Where one slot starts, as far as it can be known before the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotBegin {
    /// Joined already.
    Joined,
    /// A live start on a partition this node does not read yet: its high
    /// watermark, read before the head.
    LiveFromHigh,
    /// A cursor position the recent buffer cannot serve: checked against the
    /// log (a gap?) after the head.
    Cursor(i64),
    Earliest,
    Since,
    /// Taking a snapshot first (after the head).
    Snapshot,
}

impl Subscriptions {
    /// Opens a subscription: resolves topics, decodes the cursor, pins every
    /// slot's partition and joins what can be joined without Kafka.
    ///
    /// Kafka is asked as little as possible before the response head, because
    /// a node that dies after taking a request but before answering it makes
    /// a browser's EventSource give up for good (a proxy in front answers
    /// 502). Partition counts come from the node's topic table; resumes,
    /// `from=` and `since=` are resolved after the head. The one look-up that
    /// must come first is a live start on a partition this node does not read
    /// yet: "live" promises every record produced after the client saw the
    /// head, so the start (the high watermark) must be read before the head
    /// goes out. Those are read in one batch. On error nothing stays
    /// registered.
    pub async fn open(
        self: &Arc<Self>,
        request: SubscribeRequest,
        peer: std::net::SocketAddr,
    ) -> Result<Opened, OpenError> {
        let format = request.format;
        let view = self.view(&request)?;
        self.check_tables(&request)?;
        let conflate = (request.conflate || request.max_rate.is_some()).then_some(request.max_rate);
        let user = request.user.clone();
        let (plan, from) = self.plan(request).await?;
        let options = StreamOptions {
            snapshot: matches!(from, From::Snapshot),
            conflate,
            user: user.map(|u| Arc::from(u.as_str())),
        };
        let sub = self.registry.subscribe_with(
            ShapeSpec {
                canonical: plan.canonical,
                fingerprint: plan.fingerprint,
                format,
                slots: plan.slots,
                view,
            },
            peer,
            options,
        );
        let guard = Unsubscribe {
            registry: &self.registry,
            sub: sub.clone(),
            armed: true,
        };
        let mut wakers = Wakers::default();
        sub.connection
            .queue
            .push(&[&sse::retry(self.retry_ms)], Stamp::NONE, &mut wakers);
        let mut begins = begins(&sub, &from);
        let highs = self.cold_highs(&sub, &begins).await?;
        self.join_before_head(&sub, &from, &mut begins, &highs, &mut wakers);
        let sub = guard.keep();
        if begins.iter().all(|b| *b == SlotBegin::Joined) {
            // The start position as an id, before any record: a client cut off
            // before its first record resumes from here, not from "now".
            self.registry.send_cursor(&sub, &mut wakers);
            return Ok(Opened { sub, rest: None });
        }
        let since = match from {
            From::Since(ms) => Some(ms),
            _ => None,
        };
        let (this, waiting) = (self.clone(), sub.clone());
        let rest: Pin<Box<dyn Future<Output = ()> + Send + Sync>> = Box::pin(async move {
            if let Err(e) = this.open_after_head(&waiting, &begins, since).await {
                tracing::warn!(error = %e, "subscribe failed on Kafka; asking the client to retry");
                waiting
                    .connection
                    .queue
                    .end(End::Unavailable, Some(sse::retry_jittered(this.retry_ms)));
            }
        });
        Ok(Opened {
            sub,
            rest: Some(rest),
        })
    }

    /// `snapshot=`, `conflate=` and `max-rate=` need every topic to be a table.
    fn check_tables(&self, request: &SubscribeRequest) -> Result<(), BadRequest> {
        let asked = [
            ("snapshot=true", request.snapshot),
            ("conflate=true", request.conflate),
            ("max-rate=", request.max_rate.is_some()),
        ];
        let Some((what, _)) = asked.iter().find(|(_, on)| *on) else {
            return Ok(());
        };
        match request
            .selectors
            .iter()
            .find(|s| !self.registry.tables().is_table(&s.topic))
        {
            Some(s) => Err(BadRequest(format!(
                "{what} needs a table topic, and `{}` is not one (--table-topics)",
                s.topic
            ))),
            None => Ok(()),
        }
    }

    /// The request's filters (its own `where=`, its token's claims) and
    /// projection, compiled (once per distinct text on the node).
    fn view(&self, request: &SubscribeRequest) -> Result<View, OpenError> {
        let items: Vec<(&str, bool)> = request
            .filter
            .iter()
            .chain(request.claims.iter().map(|(_, t)| t))
            .map(|t| (t.as_str(), false))
            .chain(request.fields.iter().map(|f| (f.as_str(), true)))
            .collect();
        if !self.filters.admits(&items) {
            return Err(OpenError::FiltersFull(self.filters.max_distinct()));
        }
        let mut checks = Vec::new();
        if let Some(text) = &request.filter {
            let expr = self.filters.expr(text).map_err(|e| BadRequest(e.0))?;
            checks.push(Check { topic: None, expr });
        }
        for (topic, text) in &request.claims {
            let expr = self.filters.expr(text).map_err(|e| {
                BadRequest(format!(
                    "the token's herald.where claim for `{topic}`: {}",
                    e.0
                ))
            })?;
            checks.push(Check {
                topic: Some(Arc::from(topic.as_str())),
                expr,
            });
        }
        let projection = match &request.fields {
            Some(text) => Some(self.filters.projection(text).map_err(|e| BadRequest(e.0))?),
            None => None,
        };
        Ok(View { checks, projection })
    }

    /// The request's slots (partition counts from the topic table) and its
    /// start, checked against the limits and decoded against the plan.
    async fn plan(&self, request: SubscribeRequest) -> Result<(Plan, From), OpenError> {
        let mut counts = BTreeMap::new();
        for s in &request.selectors {
            if !counts.contains_key(&s.topic) {
                let n = self
                    .kafka
                    .partition_count(&s.topic)
                    .await?
                    .ok_or_else(|| OpenError::UnknownTopic(s.topic.clone()))?;
                counts.insert(s.topic.clone(), n);
            }
        }
        let plan = plan(&request, &counts, &|t: &str| self.decoder.decodes_keys(t));
        if plan.slots.len() > self.max_partitions {
            return Err(BadRequest(format!(
                "these selectors need {} partitions; a stream may read at most {} (--max-stream-partitions): split them over several streams or subscribe to keys",
                plan.slots.len(),
                self.max_partitions
            ))
            .into());
        }
        let from = match request.start {
            Start::Live if request.snapshot => From::Snapshot,
            Start::Live => From::Live,
            Start::Earliest => From::Earliest,
            Start::Since(_) if !self.since_supported => return Err(OpenError::SinceUnsupported),
            Start::Since(ms) => From::Since(ms),
            Start::Cursor(text) => {
                From::Cursor(Cursor::decode(&text, plan.fingerprint, plan.slots.len())?)
            }
        };
        Ok((plan, from))
    }

    /// The high watermark of every slot that starts live on a partition
    /// this node does not read yet, in one batch, set as those slots'
    /// positions.
    async fn cold_highs(
        &self,
        sub: &Subscriber,
        begins: &[SlotBegin],
    ) -> Result<BTreeMap<usize, i64>, KafkaError> {
        let cold: Vec<usize> = (0..begins.len())
            .filter(|&i| begins[i] == SlotBegin::LiveFromHigh)
            .collect();
        let mut highs = BTreeMap::new();
        if cold.is_empty() {
            return Ok(highs);
        }
        let marks = self
            .kafka
            .watermarks(cold.iter().map(|&i| partition_of(sub, i)).collect())
            .await?;
        for (&slot, w) in cold.iter().zip(marks) {
            sub.set_position(slot, w.high);
            highs.insert(slot, w.high);
        }
        Ok(highs)
    }

    /// Joins every slot whose start is known before the head.
    fn join_before_head(
        &self,
        sub: &Arc<Subscriber>,
        from: &From,
        begins: &mut [SlotBegin],
        highs: &BTreeMap<usize, i64>,
        wakers: &mut Wakers,
    ) {
        for (slot, begin) in begins.iter_mut().enumerate() {
            let at = match (*begin, from) {
                (SlotBegin::LiveFromHigh, _) => {
                    let high = highs.get(&slot).copied().unwrap_or_default();
                    self.start_at_high(sub, slot, high);
                    *begin = SlotBegin::Joined;
                    SlotStart::At(high)
                }
                (SlotBegin::Joined, From::Cursor(c)) => SlotStart::At(c.positions[slot]),
                (SlotBegin::Joined, _) => SlotStart::Live,
                _ => continue,
            };
            self.join(sub, slot, at, wakers);
        }
    }

    /// The slots whose start needs Kafka, once the head has gone out: every
    /// one of them is checked against its partition's watermarks in one batch.
    async fn open_after_head(
        &self,
        sub: &Arc<Subscriber>,
        begins: &[SlotBegin],
        since: Option<i64>,
    ) -> Result<(), KafkaError> {
        if begins.contains(&SlotBegin::Snapshot) {
            return self.snapshot(sub, None).await;
        }
        let waiting: Vec<usize> = (0..begins.len())
            .filter(|&i| begins[i] != SlotBegin::Joined)
            .collect();
        let partitions: Vec<_> = waiting.iter().map(|&i| partition_of(sub, i)).collect();
        let marks = self.kafka.watermarks(partitions.clone()).await?;
        if is_table_stream(sub) {
            let stale: Vec<serde_json::Value> = waiting
                .iter()
                .zip(&marks)
                .filter_map(|(&slot, w)| match begins[slot] {
                    SlotBegin::Cursor(wanted) if wanted < w.low || wanted > w.high => {
                        let log = &sub.shape.slots[slot].log;
                        // What retention removed is no longer state.
                        self.registry.prune_table(log, w.low);
                        Some(serde_json::json!({
                            "topic": &*log.topic,
                            "partition": log.partition,
                            "requested": wanted,
                            "low": w.low,
                            "high": w.high,
                        }))
                    }
                    _ => None,
                })
                .collect();
            if !stale.is_empty() {
                // The state is recoverable: a fresh snapshot, not a gap,
                // taken once the live stream is past the log start too.
                let mut lows = vec![0; begins.len()];
                for (&slot, w) in waiting.iter().zip(&marks) {
                    lows[slot] = w.low;
                }
                return self.snapshot(sub, Some((stale, lows))).await;
            }
        }
        let times = match since {
            Some(ms) => Some(self.kafka.offsets_for_time(partitions, ms).await?),
            None => None,
        };
        let mut wakers = Wakers::default();
        // All positions first, then the joins (see `open`).
        let mut starts = Vec::with_capacity(waiting.len());
        for (n, (&slot, w)) in waiting.iter().zip(marks).enumerate() {
            let at = match begins[slot] {
                SlotBegin::Cursor(wanted) if wanted < w.low || wanted > w.high => {
                    // Retention passed it, or the topic was recreated.
                    self.registry.gap(sub, slot, wanted, w.low, &mut wakers);
                    w.low
                }
                SlotBegin::Cursor(wanted) => wanted,
                SlotBegin::Earliest => w.low,
                SlotBegin::Since => times
                    .as_ref()
                    .and_then(|t| t.get(n).copied())
                    .unwrap_or(w.high),
                SlotBegin::LiveFromHigh => w.high,
                SlotBegin::Joined | SlotBegin::Snapshot => continue,
            };
            sub.set_position(slot, at);
            starts.push((slot, at, w.high));
        }
        for (slot, at, high) in starts {
            self.start_at_high(sub, slot, high);
            self.join(sub, slot, SlotStart::At(at), &mut wakers);
        }
        self.registry.send_cursor(sub, &mut wakers);
        Ok(())
    }

    /// Makes sure the node reads `slot`'s partition, starting it at its high
    /// watermark if nobody reads it yet.
    fn start_at_high(&self, sub: &Subscriber, slot: usize, high: i64) {
        let log = &sub.shape.slots[slot].log;
        if self.registry.start_partition(log, high) {
            self.ingest.assign(log.clone());
        }
    }

    /// Joins a slot whose partition has been started: live at once, or
    /// through the catch-up readers when its position is older than the
    /// recent buffer.
    fn join(&self, sub: &Arc<Subscriber>, slot: usize, at: SlotStart, wakers: &mut Wakers) {
        match self.registry.join(sub, slot, at, wakers) {
            Join::Joined => {}
            Join::NeedsCatchup => self.catchup.enqueue(sub.clone(), slot),
            Join::NeedsStart => {
                // Started by the caller: a partition is never unstarted while pinned.
                tracing::error!(topic = %sub.shape.slots[slot].log.topic, "joined a partition that was not started");
            }
        }
    }
}

/// Where each slot starts, as far as it is known without Kafka. Every
/// slot's position is fixed here, before any slot joins: once one slot
/// delivers, each event's id carries every slot's position, and a resume
/// from it must skip nothing the other slots have not delivered yet.
fn begins(sub: &Subscriber, from: &From) -> Vec<SlotBegin> {
    // A table stream's cursor is checked against the log first: below the
    // log start it re-syncs the whole stream, before any slot delivers.
    let table = is_table_stream(sub);
    (0..sub.shape.slots.len())
        .map(|slot| {
            let log = &sub.shape.slots[slot].log;
            match from {
                From::Snapshot => SlotBegin::Snapshot,
                From::Cursor(c) => {
                    let wanted = c.positions[slot];
                    sub.set_position(slot, wanted);
                    if !table && log.serves_from_memory(wanted) && wanted <= log.live() {
                        SlotBegin::Joined
                    } else {
                        SlotBegin::Cursor(wanted)
                    }
                }
                From::Earliest => SlotBegin::Earliest,
                From::Since(_) => SlotBegin::Since,
                From::Live if log.is_started() => SlotBegin::Joined,
                From::Live => SlotBegin::LiveFromHigh,
            }
        })
        .collect()
}

/// Whether every slot of `sub` reads a table topic.
fn is_table_stream(sub: &Subscriber) -> bool {
    sub.shape.slots.iter().all(|s| s.log.is_table)
}

fn partition_of(sub: &Subscriber, slot: usize) -> (Arc<str>, i32) {
    let log = &sub.shape.slots[slot].log;
    (log.topic.clone(), log.partition)
}

/// Unregisters a half-opened subscription if opening fails.
struct Unsubscribe<'a> {
    registry: &'a Registry,
    sub: Arc<Subscriber>,
    armed: bool,
}

impl Unsubscribe<'_> {
    fn keep(mut self) -> Arc<Subscriber> {
        self.armed = false;
        self.sub.clone()
    }
}

impl Drop for Unsubscribe<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.registry.unsubscribe(&self.sub.connection);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partitioner;
    use crate::registry::Filter;
    use std::collections::BTreeMap;

    fn raw_keys(_: &str) -> bool {
        false
    }

    fn req(q: &str) -> Result<SubscribeRequest, BadRequest> {
        parse_request(Some(q), None, SelectorLimits::default())
    }

    #[test]
    fn selectors_split_on_the_first_slash() {
        let r = req("topic=scores/match/42&topic=news").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.selectors,
            vec![
                Selector {
                    topic: "news".into(),
                    key: None
                },
                Selector {
                    topic: "scores".into(),
                    key: Some("match/42".into())
                },
            ]
        );
        assert_eq!(r.start, Start::Live);
    }

    #[test]
    fn malformed_selectors_are_rejected() {
        for q in [
            "",
            "topic=",
            "topic=a%20b",
            "topic=t/",
            "topic=..",
            "from=now&topic=t",
            "format=xml&topic=t",
        ] {
            assert!(matches!(req(q), Err(BadRequest(_))), "{q}");
        }
    }

    #[test]
    fn header_cursor_wins_over_parameter() {
        let r = parse_request(
            Some("topic=t&lastEventId=param"),
            Some("header"),
            SelectorLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.start, Start::Cursor("header".into()));
        let r = req("topic=t&lastEventId=param").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.start, Start::Cursor("param".into()));
    }

    #[test]
    fn keys_cannot_spell_another_subscription() {
        let counts = BTreeMap::from([("t".to_string(), 2)]);
        let one = req("topic=t/a%0At%232/b").unwrap_or_else(|e| panic!("{e}"));
        let two = req("topic=t/a&topic=t/b").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(
            plan(&one, &counts, &raw_keys).fingerprint,
            plan(&two, &counts, &raw_keys).fingerprint
        );
    }

    #[test]
    fn since_before_1970_is_zero_not_a_kafka_sentinel() {
        assert_eq!(
            req("topic=t&since=1969-12-31T23:59:59.999Z")
                .map(|r| r.start)
                .ok(),
            Some(Start::Since(0))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_query_parses_or_fails_cleanly_and_plans_within_bounds(query in "\\PC{0,200}", n in 1i32..64) {
            if let Ok(r) = parse_request(Some(&query), None, SelectorLimits::default()) {
                proptest::prop_assert!(!r.selectors.is_empty() && r.selectors.len() <= 64);
                let counts: BTreeMap<String, i32> = r.selectors.iter().map(|s| (s.topic.clone(), n)).collect();
                let p = plan(&r, &counts, &raw_keys);
                for (topic, partition, _) in &p.slots {
                    proptest::prop_assert!(counts.contains_key(&**topic), "no slot outside the selectors");
                    proptest::prop_assert!((0..n).contains(partition));
                }
            }
        }
    }

    #[test]
    fn since_accepts_rfc3339_and_epoch_ms() {
        assert_eq!(
            req("topic=t&since=1700000000000").map(|r| r.start).ok(),
            Some(Start::Since(1_700_000_000_000))
        );
        assert_eq!(
            req("topic=t&since=2023-11-14T22:13:20Z")
                .map(|r| r.start)
                .ok(),
            Some(Start::Since(1_700_000_000_000))
        );
        assert!(req("topic=t&since=yesterday").is_err());
    }

    #[test]
    fn keyed_plan_takes_one_partition_per_key_and_whole_topic_wins() {
        let counts = BTreeMap::from([("t".to_string(), 8)]);
        let r = req("topic=t/a&topic=t/b").unwrap_or_else(|e| panic!("{e}"));
        let p = plan(&r, &counts, &raw_keys);
        let pa = partitioner::partition_for_key(b"a", 8);
        let pb = partitioner::partition_for_key(b"b", 8);
        let expected: std::collections::BTreeSet<i32> = [pa, pb].into();
        assert_eq!(
            p.slots
                .iter()
                .map(|s| s.1)
                .collect::<std::collections::BTreeSet<_>>(),
            expected
        );
        let r = req("topic=t/a&topic=t").unwrap_or_else(|e| panic!("{e}"));
        let p2 = plan(&r, &counts, &raw_keys);
        assert_eq!(p2.slots.len(), 8);
        assert!(p2.slots.iter().all(|s| s.2 == Filter::Whole));
        assert_ne!(p.fingerprint, p2.fingerprint);
    }
}
