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

/// Opens a subscription: resolves topics, decodes the cursor, joins every
/// slot. On error nothing stays registered.
pub async fn open(
    node: &NodeContext,
    request: SubscribeRequest,
    peer: std::net::SocketAddr,
) -> Result<Arc<Subscriber>, ApiError> {
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
    if let Some(c) = &cursor {
        for (slot, &p) in c.positions.iter().enumerate() {
            sub.set_position(slot, p);
        }
    }
    let since_offsets = match request.start {
        Start::Since(ms) => Some(
            node.kafka
                .offsets_for_time(&sub, ms)
                .await
                .map_err(|e| ApiError::Kafka(e.to_string()))?,
        ),
        _ => None,
    };
    for slot in 0..sub.shape.slots.len() {
        let log = sub.shape.slots[slot].log.clone();
        let start = match (&request.start, &cursor, &since_offsets) {
            (Start::Cursor(_), Some(c), _) => {
                let wanted = c.positions[slot];
                if log.serves_from_memory(wanted) && wanted <= log.live() {
                    SlotStart::At(wanted)
                } else {
                    let w = node
                        .kafka
                        .watermarks(&log.topic, log.partition)
                        .await
                        .map_err(|e| ApiError::Kafka(e.to_string()))?;
                    if wanted < w.low || wanted > w.high {
                        // Retention passed it, or the topic was recreated.
                        node.registry.metrics.gaps.inc();
                        push_gap(&sub, slot, wanted, w.low, &mut wakers);
                        SlotStart::At(w.low)
                    } else {
                        SlotStart::At(wanted)
                    }
                }
            }
            (Start::Earliest, _, _) => {
                let w = node
                    .kafka
                    .watermarks(&log.topic, log.partition)
                    .await
                    .map_err(|e| ApiError::Kafka(e.to_string()))?;
                SlotStart::At(w.low)
            }
            (Start::Since(_), _, Some(offsets)) => SlotStart::At(offsets[slot]),
            _ => SlotStart::Live,
        };
        loop {
            match node.registry.join(&sub, slot, start, &mut wakers) {
                Join::Joined => break,
                Join::NeedsCatchup(_) => {
                    node.catchup.enqueue(sub.clone(), slot);
                    break;
                }
                Join::NeedsStart => {
                    let offset = match start {
                        SlotStart::At(p) => p,
                        SlotStart::Live => {
                            node.kafka
                                .watermarks(&log.topic, log.partition)
                                .await
                                .map_err(|e| ApiError::Kafka(e.to_string()))?
                                .high
                        }
                    };
                    if node.registry.start_partition(&log, offset) {
                        node.ingest.assign(log.clone());
                    }
                }
            }
        }
    }
    // The start position as an id, before any record: a client cut off
    // before its first record resumes from here, not from "now".
    node.registry.send_cursor(&sub, &mut wakers);
    Ok(guard.keep())
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
