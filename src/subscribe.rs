//! `GET /v1/events`: from a query string to a joined subscription.
//!
//! Selectors name whole topics (`topic=T`) or single keys (`topic=T/KEY`,
//! the first `/` splits: Kafka topic names cannot hold one). They become an
//! ordered list of slots, one per partition needed: a whole topic needs all
//! its partitions, a key only the one Kafka's partitioner puts it in. The
//! start point is live (the default), `from=earliest`, `since=` a time, or a
//! cursor from `Last-Event-ID` / `lastEventId`. Each slot then joins its
//! partition's live stream, straight away or after a replay.
//!
//! "Live" is a promise: a slot whose partition is not yet read by this node
//! starts at the high watermark read now, before the response headers go out,
//! so every record produced after the client saw them is delivered.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::cursor::Cursor;
use crate::error::ApiError;
use crate::queue::Wakers;
use crate::record::Format;
use crate::registry::{push_gap, Filter, Join, SlotStart, Subscriber};
use crate::server::NodeContext;
use crate::{partitioner, sse};

/// Where a new stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Live,
    Earliest,
    /// Milliseconds since the epoch.
    Since(i64),
    Cursor(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selector {
    pub topic: String,
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub selectors: Vec<Selector>,
    pub start: Start,
    pub format: Format,
}

/// Limits on what a request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct SelectorLimits {
    pub max_selectors: usize,
    pub max_key_bytes: usize,
}

impl Default for SelectorLimits {
    fn default() -> Self {
        SelectorLimits {
            max_selectors: 64,
            max_key_bytes: 1024,
        }
    }
}

/// Kafka's rule for topic names.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn parse_time(text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        if ms >= 0 {
            return Ok(ms);
        }
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "since=`{text}` is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor epoch milliseconds"
            ))
        })?;
    // Kafka reads -1 and -2 as "latest" and "earliest": a time before 1970 is 0.
    Ok(((t.unix_timestamp_nanos() / 1_000_000) as i64).max(0))
}

/// Parses the query string. `last_event_id` (the header) wins over the
/// `lastEventId` parameter.
pub fn parse_request(
    query: Option<&str>,
    last_event_id: Option<&str>,
    limits: SelectorLimits,
) -> Result<SubscribeRequest, ApiError> {
    let mut selectors = Vec::new();
    let mut from = None;
    let mut since = None;
    let mut cursor_param = None;
    let mut format = Format::Plain;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "topic" => {
                let (topic, key) = match value.split_once('/') {
                    Some((t, k)) => (t, Some(k)),
                    None => (&*value, None),
                };
                if !valid_topic_name(topic) {
                    return Err(ApiError::BadRequest(format!(
                        "selector `{value}`: `{topic}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
                    )));
                }
                if let Some(k) = key {
                    if k.is_empty() {
                        return Err(ApiError::BadRequest(format!(
                            "selector `{value}` has an empty key; use `topic={topic}` for the whole topic"
                        )));
                    }
                    if k.len() > limits.max_key_bytes {
                        return Err(ApiError::BadRequest(format!(
                            "selector key is {} bytes; the limit is {}",
                            k.len(),
                            limits.max_key_bytes
                        )));
                    }
                }
                selectors.push(Selector {
                    topic: topic.to_owned(),
                    key: key.map(str::to_owned),
                });
            }
            "from" => match &*value {
                "earliest" => from = Some(Start::Earliest),
                "latest" | "live" => from = Some(Start::Live),
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "from=`{other}` is not understood; use from=earliest (or leave it out for live)"
                    )))
                }
            },
            "since" => since = Some(Start::Since(parse_time(&value)?)),
            "lastEventId" => cursor_param = Some(value.into_owned()),
            "format" => {
                format = match &*value {
                    "envelope" => Format::Envelope,
                    "plain" | "value" => Format::Plain,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "format=`{other}` is not understood; use format=envelope or leave it out"
                        )))
                    }
                }
            }
            _ => {} // cache busters and polyfill parameters
        }
    }
    if selectors.is_empty() {
        return Err(ApiError::BadRequest(
            "no selector: add topic=<topic> or topic=<topic>/<key>".into(),
        ));
    }
    selectors.sort();
    selectors.dedup();
    if selectors.len() > limits.max_selectors {
        return Err(ApiError::BadRequest(format!(
            "{} selectors; the limit is {}",
            selectors.len(),
            limits.max_selectors
        )));
    }
    let cursor = last_event_id
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .or(cursor_param.filter(|c| !c.trim().is_empty()));
    let start = match cursor {
        Some(c) => Start::Cursor(c),
        None => since.or(from).unwrap_or(Start::Live),
    };
    Ok(SubscribeRequest {
        selectors,
        start,
        format,
    })
}

/// The slots of a subscription and the text that names it.
pub struct Plan {
    pub key: String,
    pub fingerprint: u32,
    pub slots: Vec<(Arc<str>, i32, Filter)>,
}

/// Turns selectors into slots, given each topic's partition count.
pub fn plan(request: &SubscribeRequest, partition_counts: &BTreeMap<String, i32>) -> Plan {
    let mut per_partition: BTreeMap<(String, i32), Option<Vec<Bytes>>> = BTreeMap::new();
    let mut key = String::from(match request.format {
        Format::Plain => "plain",
        Format::Envelope => "envelope",
    });
    for s in &request.selectors {
        let n = partition_counts.get(&s.topic).copied().unwrap_or(1);
        // Length-prefixed, so that no key can spell another subscription.
        key.push_str(&format!("\n{}:{}#{n}", s.topic.len(), s.topic));
        match &s.key {
            None => {
                for p in 0..n {
                    per_partition.insert((s.topic.clone(), p), None);
                }
            }
            Some(k) => {
                key.push_str(&format!("/{}:{k}", k.len()));
                let p = partitioner::partition_for_key(k.as_bytes(), n);
                match per_partition
                    .entry((s.topic.clone(), p))
                    .or_insert(Some(Vec::new()))
                {
                    None => {} // the whole partition is wanted anyway
                    Some(keys) => keys.push(Bytes::from(k.clone().into_bytes())),
                }
            }
        }
    }
    let mut topics: BTreeMap<String, Arc<str>> = BTreeMap::new();
    let slots = per_partition
        .into_iter()
        .map(|((topic, p), keys)| {
            let name = topics
                .entry(topic.clone())
                .or_insert_with(|| Arc::from(topic.as_str()))
                .clone();
            (name, p, keys.map_or(Filter::Whole, Filter::Keys))
        })
        .collect();
    let fingerprint = murmur2::murmur2(key.as_bytes(), 0x6865_7261);
    Plan {
        key,
        fingerprint,
        slots,
    }
}

/// A subscription opened up to its response head, and what remains to do
/// once the head is on its way.
pub struct Opened {
    pub sub: Arc<Subscriber>,
    /// Kafka look-ups and joins that wait for the head (`None`: none left).
    pub rest: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>>,
}

/// Where one slot starts, as far as it can be known before the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotBegin {
    /// Joined already.
    Joined,
    /// A live start on a partition this node does not read yet: its high
    /// watermark, read before the head (see [`open`]).
    LiveFromHigh,
    /// A cursor position the recent buffer cannot serve: checked against the
    /// log (a gap?) after the head.
    Cursor(i64),
    Earliest,
    Since,
}

/// Opens a subscription: resolves topics, decodes the cursor, pins every
/// slot's partition and joins what can be joined without Kafka.
///
/// Kafka is asked as little as possible before the response head, because
/// a node that dies after taking a request but before answering it makes a
/// browser's EventSource give up for good (a proxy in front answers 502).
/// Partition counts come from the node's topic table; resumes, `from=` and
/// `since=` are resolved after the head. The one look-up that must come
/// first is a live start on a partition this node does not read yet:
/// "live" promises every record produced after the client saw the head, so
/// the start (the high watermark) must be read before the head goes out.
/// Those are read in one batch. On error nothing stays registered.
pub async fn open(
    node: &Arc<NodeContext>,
    request: SubscribeRequest,
    peer: std::net::SocketAddr,
) -> Result<Opened, ApiError> {
    let mut counts = BTreeMap::new();
    for s in &request.selectors {
        if counts.contains_key(&s.topic) {
            continue;
        }
        match node.kafka.partition_count(&s.topic).await {
            Ok(Some(n)) => {
                counts.insert(s.topic.clone(), n);
            }
            Ok(None) => return Err(ApiError::UnknownTopic(s.topic.clone())),
            Err(e) => return Err(ApiError::Kafka(e.to_string())),
        }
    }
    let plan = plan(&request, &counts);
    if plan.slots.len() > node.config.max_stream_partitions {
        return Err(ApiError::BadRequest(format!(
            "these selectors need {} partitions; a stream may read at most {} (--max-stream-partitions): split them over several streams or subscribe to keys",
            plan.slots.len(),
            node.config.max_stream_partitions
        )));
    }
    let cursor = match &request.start {
        Start::Cursor(text) => Some(
            Cursor::decode(text, plan.fingerprint, plan.slots.len())
                .map_err(|e| ApiError::BadCursor(format!("Last-Event-ID: {e}")))?,
        ),
        _ => None,
    };
    if matches!(request.start, Start::Since(_)) && node.embedded.is_some() {
        return Err(ApiError::Unsupported(
            "since= needs Kafka's offsets-for-times, which the embedded Kafka (librdkafka's mock cluster) does not implement; use a real broker (--brokers) or from=earliest".into(),
        ));
    }
    let sub = node
        .registry
        .subscribe(plan.key, plan.fingerprint, request.format, plan.slots, peer);
    let guard = Unsubscribe {
        node,
        sub: Some(sub.clone()),
    };
    let mut wakers = Wakers::default();
    sub.connection
        .queue
        .push(&[&sse::retry(node.config.retry_ms)], None, &mut wakers);
    // Every slot's position is fixed before any slot joins: once one slot
    // delivers, each event's id carries every slot's position, and a resume
    // from it must skip nothing the other slots have not delivered yet.
    let begins: Vec<SlotBegin> = (0..sub.shape.slots.len())
        .map(|slot| {
            let log = &sub.shape.slots[slot].log;
            match (&request.start, &cursor) {
                (Start::Cursor(_), Some(c)) => {
                    let wanted = c.positions[slot];
                    sub.set_position(slot, wanted);
                    if log.serves_from_memory(wanted) && wanted <= log.live() {
                        SlotBegin::Joined
                    } else {
                        SlotBegin::Cursor(wanted)
                    }
                }
                (Start::Earliest, _) => SlotBegin::Earliest,
                (Start::Since(_), _) => SlotBegin::Since,
                (Start::Live | Start::Cursor(_), _) if log.is_assigned() => SlotBegin::Joined,
                (Start::Live | Start::Cursor(_), _) => SlotBegin::LiveFromHigh,
            }
        })
        .collect();
    let cold: Vec<usize> = (0..begins.len())
        .filter(|&i| begins[i] == SlotBegin::LiveFromHigh)
        .collect();
    let mut highs = BTreeMap::new();
    if !cold.is_empty() {
        let marks = node
            .kafka
            .watermarks(cold.iter().map(|&i| partition_of(&sub, i)).collect())
            .await
            .map_err(|e| ApiError::Kafka(e.to_string()))?;
        for (&slot, w) in cold.iter().zip(marks) {
            sub.set_position(slot, w.high);
            highs.insert(slot, w.high);
        }
    }
    let mut begins = begins;
    for (slot, begin) in begins.iter_mut().enumerate() {
        let at = match (*begin, &cursor) {
            (SlotBegin::LiveFromHigh, _) => {
                let high = highs.get(&slot).copied().unwrap_or_default();
                start_at_high(node, &sub, slot, high);
                *begin = SlotBegin::Joined;
                SlotStart::At(high)
            }
            (SlotBegin::Joined, Some(c)) => SlotStart::At(c.positions[slot]),
            (SlotBegin::Joined, None) => SlotStart::Live,
            _ => continue,
        };
        join(node, &sub, slot, at, &mut wakers);
    }
    let sub = guard.keep();
    if begins.iter().all(|b| *b == SlotBegin::Joined) {
        // The start position as an id, before any record: a client cut off
        // before its first record resumes from here, not from "now".
        node.registry.send_cursor(&sub, &mut wakers);
        return Ok(Opened { sub, rest: None });
    }
    let since = match request.start {
        Start::Since(ms) => Some(ms),
        _ => None,
    };
    let rest = {
        let (node, sub) = (node.clone(), sub.clone());
        Box::pin(async move {
            if let Err(e) = open_after_head(&node, &sub, &begins, since).await {
                tracing::warn!(error = %e, "subscribe failed on Kafka; asking the client to retry");
                let jitter =
                    rand::Rng::gen_range(&mut rand::thread_rng(), 0..=node.config.retry_ms.max(1));
                sub.connection.queue.end(
                    crate::queue::End::Unavailable,
                    Some(sse::retry(node.config.retry_ms + jitter)),
                );
            }
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>
    };
    Ok(Opened {
        sub,
        rest: Some(rest),
    })
}

/// The slots whose start needs Kafka, once the head has gone out: every one
/// of them is checked against its partition's watermarks in one batch.
async fn open_after_head(
    node: &NodeContext,
    sub: &Arc<Subscriber>,
    begins: &[SlotBegin],
    since: Option<i64>,
) -> Result<(), ApiError> {
    let waiting: Vec<usize> = (0..begins.len())
        .filter(|&i| begins[i] != SlotBegin::Joined)
        .collect();
    let partitions: Vec<(Arc<str>, i32)> = waiting.iter().map(|&i| partition_of(sub, i)).collect();
    let marks = node
        .kafka
        .watermarks(partitions.clone())
        .await
        .map_err(|e| ApiError::Kafka(e.to_string()))?;
    let times = match since {
        Some(ms) => Some(
            node.kafka
                .offsets_for_time(partitions, ms)
                .await
                .map_err(|e| ApiError::Kafka(e.to_string()))?,
        ),
        None => None,
    };
    let mut wakers = Wakers::default();
    // All positions first, then the joins (see `open`).
    let mut starts = Vec::with_capacity(waiting.len());
    for (n, (&slot, w)) in waiting.iter().zip(marks).enumerate() {
        let at = match begins[slot] {
            SlotBegin::Cursor(wanted) if wanted < w.low || wanted > w.high => {
                // Retention passed it, or the topic was recreated.
                node.registry.metrics.gaps.inc();
                push_gap(sub, slot, wanted, w.low, &mut wakers);
                w.low
            }
            SlotBegin::Cursor(wanted) => wanted,
            SlotBegin::Earliest => w.low,
            SlotBegin::Since => times
                .as_ref()
                .and_then(|t| t.get(n).copied())
                .unwrap_or(w.high),
            SlotBegin::LiveFromHigh => w.high,
            SlotBegin::Joined => continue,
        };
        sub.set_position(slot, at);
        starts.push((slot, at, w.high));
    }
    for (slot, at, high) in starts {
        start_at_high(node, sub, slot, high);
        join(node, sub, slot, SlotStart::At(at), &mut wakers);
    }
    node.registry.send_cursor(sub, &mut wakers);
    Ok(())
}

fn partition_of(sub: &Subscriber, slot: usize) -> (Arc<str>, i32) {
    let log = &sub.shape.slots[slot].log;
    (log.topic.clone(), log.partition)
}

/// Makes sure the node reads `slot`'s partition. A partition it does not
/// read yet starts at its high watermark, never at an older position a
/// client asked for: the node's one consumer is shared, and what it reads
/// from its start on reaches every live stream. Older positions are served
/// by the catch-up readers.
fn start_at_high(node: &NodeContext, sub: &Subscriber, slot: usize, high: i64) {
    let log = &sub.shape.slots[slot].log;
    if node.registry.start_partition(log, high) {
        node.ingest.assign(log.clone());
    }
}

/// Joins a slot whose partition has been started: live at once, or through
/// the catch-up readers when its position is older than the recent buffer.
fn join(
    node: &NodeContext,
    sub: &Arc<Subscriber>,
    slot: usize,
    at: SlotStart,
    wakers: &mut Wakers,
) {
    match node.registry.join(sub, slot, at, wakers) {
        Join::Joined => {}
        Join::NeedsCatchup(_) => node.catchup.enqueue(sub.clone(), slot),
        Join::NeedsStart => {
            // Started by the caller: a partition is never unstarted while pinned.
            tracing::error!(topic = %sub.shape.slots[slot].log.topic, "joined a partition that was not started");
        }
    }
}

/// Unregisters a half-opened subscription if opening fails.
struct Unsubscribe<'a> {
    node: &'a NodeContext,
    sub: Option<Arc<Subscriber>>,
}

impl Unsubscribe<'_> {
    fn keep(mut self) -> Arc<Subscriber> {
        self.sub.take().expect("kept once")
    }
}

impl Drop for Unsubscribe<'_> {
    fn drop(&mut self) {
        if let Some(sub) = self.sub.take() {
            self.node.registry.unsubscribe(&sub.connection);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(q: &str) -> Result<SubscribeRequest, ApiError> {
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
            assert!(matches!(req(q), Err(ApiError::BadRequest(_))), "{q}");
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
            plan(&one, &counts).fingerprint,
            plan(&two, &counts).fingerprint
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
                let p = plan(&r, &counts);
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
        let p = plan(&r, &counts);
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
        let p2 = plan(&r, &counts);
        assert_eq!(p2.slots.len(), 8);
        assert!(p2.slots.iter().all(|s| s.2 == Filter::Whole));
        assert_ne!(p.fingerprint, p2.fingerprint);
    }
}
