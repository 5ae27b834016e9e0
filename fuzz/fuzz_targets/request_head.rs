//! The first bytes of a connection, as the accept loop reads them: the
//! request head parser never panics, hands a stream to its own HTTP/1 path
//! only for a whole `GET /v1/events` head with nothing after it and a target
//! within the limit, and what it hands over goes on through the selector
//! parser and the planner without a panic.
//!
//! Input: raw bytes, exactly as a client may send them. The last byte (if
//! any) also seeds the topics' partition counts in 1..=64.
#![no_main]

use std::collections::BTreeMap;

use herald::h1::{parse_head, Parsed};
use herald::subscribe::{parse_request, plan, SelectorLimits};
use libfuzzer_sys::fuzz_target;

const MAX_TARGET: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let Parsed::Events(parts) = parse_head(data, MAX_TARGET) else {
        return;
    };
    assert_eq!(parts.method, http::Method::GET);
    assert_eq!(parts.uri.path(), "/v1/events");
    let target = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    assert!(target <= MAX_TARGET, "target of {target} bytes passed the limit");
    assert!(
        !parts.headers.contains_key(http::header::UPGRADE),
        "an upgrade is hyper's"
    );
    // The same head, byte for byte, with anything after it is hyper's.
    let mut longer = data.to_vec();
    longer.push(b'G');
    assert!(!matches!(parse_head(&longer, MAX_TARGET), Parsed::Events(_)));

    let last_event_id = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok());
    let Ok(request) = parse_request(parts.uri.query(), last_event_id, SelectorLimits::default())
    else {
        return;
    };
    let seed = u32::from(data.last().copied().unwrap_or(0));
    let counts: BTreeMap<String, i32> = request
        .selectors
        .iter()
        .map(|s| (s.topic.clone(), 1 + ((seed + s.topic.len() as u32) % 64) as i32))
        .collect();
    let p = plan(&request, &counts, &|_: &str| false);
    for (topic, partition, _) in &p.slots {
        assert!((0..counts[&**topic]).contains(partition));
    }
});
