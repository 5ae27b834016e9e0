//! From selectors to slots: one slot per partition a subscription needs,
//! in the order its cursor lists them.
//!
//! A whole topic needs all its partitions; a key only the one Kafka's
//! partitioner puts it in, so a thousand keyed streams over a topic cost
//! the node only the partitions those keys live in. The subscription's
//! canonical text (length-prefixed, so that no key can spell another
//! subscription) names its shape, and its hash is the fingerprint its
//! cursors carry.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::request::SubscribeRequest;
use crate::partitioner;
use crate::registry::Filter;

/// The slots of a subscription and the text that names it.
pub struct Plan {
    pub canonical: String,
    pub fingerprint: u32,
    pub slots: Vec<(Arc<str>, i32, Filter)>,
}

/// Seed of the fingerprint hash ("hera").
const FINGERPRINT_SEED: u32 = 0x6865_7261;

/// Turns selectors into slots, given each topic's partition count and
/// whether its keys are decoded: a decoded key is named by its canonical
/// text, not the bytes Kafka's partitioner hashed, so it is looked for in
/// every partition.
pub fn plan(
    request: &SubscribeRequest,
    partition_counts: &BTreeMap<String, i32>,
    decodes_keys: &dyn Fn(&str) -> bool,
) -> Plan {
    let mut per_partition: BTreeMap<(String, i32), Option<Vec<Bytes>>> = BTreeMap::new();
    let mut canonical = String::from(request.format.name());
    for s in &request.selectors {
        let n = partition_counts.get(&s.topic).copied().unwrap_or(1);
        canonical.push_str(&format!("\n{}:{}#{n}", s.topic.len(), s.topic));
        match &s.key {
            None => {
                for p in 0..n {
                    per_partition.insert((s.topic.clone(), p), None);
                }
            }
            Some(k) => {
                let decoded = decodes_keys(&s.topic);
                let k = if decoded {
                    crate::formats::canonical_selector_key(k)
                } else {
                    k.clone()
                };
                canonical.push_str(&format!("/{}:{k}", k.len()));
                let partitions = if decoded {
                    canonical.push_str("~decoded");
                    0..n
                } else {
                    let p = partitioner::partition_for_key(k.as_bytes(), n);
                    p..p + 1
                };
                for p in partitions {
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
    // What the view keeps is part of the subscription: a cursor resumes
    // only the filter (and the claim) that issued it.
    for (name, text) in [("where", &request.filter), ("fields", &request.fields)] {
        if let Some(t) = text {
            canonical.push_str(&format!("\n{name}:{}:{t}", t.len()));
        }
    }
    for (topic, text) in &request.claims {
        canonical.push_str(&format!(
            "\nclaim:{}:{topic}:{}:{text}",
            topic.len(),
            text.len()
        ));
    }
    let fingerprint = murmur2::murmur2(canonical.as_bytes(), FINGERPRINT_SEED);
    Plan {
        canonical,
        fingerprint,
        slots,
    }
}
