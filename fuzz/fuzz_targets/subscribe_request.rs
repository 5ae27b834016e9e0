//! `GET /v1/events` from query string to slots: `parse_request` never panics
//! and accepts only well-formed, bounded selectors; `plan` puts every slot
//! in a partition that exists, covers exactly what the selectors ask for, and
//! is deterministic (the fingerprint a cursor is checked against); the
//! cursor the request carries decodes against that plan without panicking.
//!
//! Input: `query 0xFF last-event-id 0xFF seed`, each part optional (0xFF
//! never occurs in UTF-8, so the seeds are readable text). The seed and the
//! topic name give each topic a partition count in 1..=64.
#![no_main]

use std::collections::BTreeMap;

use herald::cursor::Cursor;
use herald::partitioner::partition_for_key;
use herald::subscribe::{
    parse_request, plan, valid_topic_name, Filter, SelectorLimits, Start, SubscribeRequest,
};
use libfuzzer_sys::fuzz_target;

fn partition_count(seed: &[u8], topic: &str) -> i32 {
    // FNV-1a over seed and topic: stable, and different topics differ.
    let mut h: u32 = 0x811c_9dc5;
    for &b in seed.iter().chain(topic.as_bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    1 + (h % 64) as i32
}

fn check_request(request: &SubscribeRequest, limits: SelectorLimits) {
    let selectors = &request.selectors;
    assert!(!selectors.is_empty());
    assert!(selectors.len() <= limits.max_selectors);
    assert!(
        selectors.windows(2).all(|w| w[0] < w[1]),
        "selectors not sorted and unique: {selectors:?}"
    );
    for s in selectors {
        assert!(valid_topic_name(&s.topic), "{s:?}");
        if let Some(k) = &s.key {
            assert!(!k.is_empty() && k.len() <= limits.max_key_bytes, "{s:?}");
        }
    }
    if let Start::Cursor(text) = &request.start {
        assert!(!text.trim().is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff);
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let last_event_id = parts.next().map(String::from_utf8_lossy);
    let seed = parts.next().unwrap_or_default();
    let query = (!query.is_empty()).then_some(&*query);

    let limits = SelectorLimits::default();
    let Ok(request) = parse_request(query, last_event_id.as_deref(), limits) else {
        return;
    };
    check_request(&request, limits);

    let counts: BTreeMap<String, i32> = request
        .selectors
        .iter()
        .map(|s| (s.topic.clone(), partition_count(seed, &s.topic)))
        .collect();
    let p = plan(&request, &counts, &|_: &str| false);

    // Every slot is a partition that exists, each at most once, in order.
    for (topic, partition, filter) in &p.slots {
        let n = counts[&**topic];
        assert!(
            (0..n).contains(partition),
            "slot {topic}/{partition} outside 0..{n}"
        );
        if let Filter::Keys(keys) = filter {
            assert!(!keys.is_empty());
            for k in keys {
                assert_eq!(partition_for_key(k, n), *partition);
            }
        }
    }
    assert!(
        p.slots
            .windows(2)
            .all(|w| (&*w[0].0, w[0].1) < (&*w[1].0, w[1].1)),
        "slots not sorted and unique"
    );
    // Every selector is served, and nothing else is.
    let wanted: usize = counts.values().map(|&n| n as usize).sum();
    assert!(p.slots.len() <= wanted);
    for s in &request.selectors {
        let n = counts[&s.topic];
        let slot = |partition: i32| {
            p.slots
                .iter()
                .find(|(t, q, _)| **t == *s.topic && *q == partition)
        };
        match &s.key {
            None => {
                for partition in 0..n {
                    let found = slot(partition).expect("whole topic misses a partition");
                    assert!(found.2 == Filter::Whole);
                }
            }
            Some(k) => {
                let found = slot(partition_for_key(k.as_bytes(), n)).expect("key has no slot");
                match &found.2 {
                    Filter::Whole => {}
                    Filter::Keys(keys) => assert!(keys.iter().any(|x| x == k.as_bytes())),
                }
            }
        }
    }
    for (topic, _, _) in &p.slots {
        assert!(request.selectors.iter().any(|s| s.topic == **topic));
    }
    // The fingerprint is a function of the request and the partition counts.
    let again = plan(&request, &counts, &|_: &str| false);
    assert_eq!((&again.canonical, again.fingerprint), (&p.canonical, p.fingerprint));

    // The cursor the client sent, against this plan.
    if let Start::Cursor(text) = &request.start {
        if let Ok(c) = Cursor::decode(text, p.fingerprint, p.slots.len()) {
            assert_eq!(c.positions.len(), p.slots.len());
            assert!(c.positions.iter().all(|&x| x >= 0));
        }
    }
    // A cursor minted for this plan is accepted by it.
    let minted = Cursor {
        fingerprint: p.fingerprint,
        positions: (0..p.slots.len() as i64).collect(),
    };
    let text = minted.encode();
    if text.len() <= herald::cursor::MAX_TEXT_LEN {
        assert_eq!(
            Cursor::decode(&text, p.fingerprint, p.slots.len()),
            Ok(minted)
        );
    }
});
