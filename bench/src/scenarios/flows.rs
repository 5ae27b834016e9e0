//! The scenarios that are one flow of records to clients: `broadcast`
//! (many clients on one key, rising rates), `keyed` and `light` (one client
//! per key, one rate) and `latency` (M clients on a topic or key).
//!
//! Each builds its [`Flow`] from its arguments and leaves the rest to the
//! engine ([`run_flow`], [`Session`]). The decision to know: `keyed` picks
//! its keys so that they fall in only some of the topic's partitions (with
//! herald's own partitioner) and checks that herald assigned exactly those:
//! a keyed subscription must not make a node read the whole topic.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use herald_bench::encoding::Encoding;

use crate::engine::{print_flow, round2, run_flow, Flow, Session};
use crate::{BroadcastArgs, FiltersArgs, KeyedArgs, LatencyArgs};

/// The one key broadcast clients subscribe to.
const HOT_KEY: &str = "hot";

pub async fn broadcast(a: BroadcastArgs) -> anyhow::Result<Value> {
    let mut server = a.server.clone();
    if a.flow.encoding == Encoding::Avro {
        // herald decodes through a registry; nothing else here can.
        let registry = crate::registry::serve()?;
        server.herald_args.extend([
            format!("--schema-registry=http://{}", registry.addr),
            "--value-format=*=avro".to_owned(),
        ]);
    }
    let s = Session::start(&server, &a.run, 1).await?;
    let result = async {
        let rates = if a.rates.is_empty() {
            a.deliveries
                .iter()
                .map(|d| round2(d / a.clients.max(1) as f64))
                .collect()
        } else {
            a.rates.clone()
        };
        let path = s.server.only_key_path(HOT_KEY)?;
        let flow = Flow::shared("broadcast", &a.flow, path, vec![HOT_KEY.into()], a.clients)
            .steps(rates, a.step_seconds)
            .stop_at_p99((!a.no_stop).then_some(a.stop_p99_ms));
        run_flow(&s.server, flow, &a.run).await
    }
    .await;
    s.finish(result, print_flow).await
}

/// Keys k0, k1, ... falling in `needed` of `partitions` partitions (spread
/// evenly); the partitions they fall in.
fn keys_in_partitions(count: usize, partitions: i32, needed: i32) -> (Vec<String>, BTreeSet<i32>) {
    let needed = needed.clamp(1, partitions);
    let stride = (partitions / needed).max(1);
    let wanted: BTreeSet<i32> = (0..needed).map(|i| i * stride).collect();
    let mut keys = Vec::with_capacity(count);
    let mut used = BTreeSet::new();
    let mut i = 0u64;
    while keys.len() < count {
        let k = format!("k{i}");
        let p = herald::partitioner::partition_for_key(k.as_bytes(), partitions);
        if wanted.contains(&p) {
            keys.push(k);
            used.insert(p);
        }
        i += 1;
    }
    (keys, used)
}

/// `keyed`, or with `light` the light load (other defaults, every partition).
pub async fn keyed(a: KeyedArgs, light: bool) -> anyhow::Result<Value> {
    let clients = a.clients.unwrap_or(if light { 1000 } else { 15_000 });
    let rate = a.rate.unwrap_or(if light { 1000.0 } else { 5000.0 });
    let seconds = a.seconds.unwrap_or(8.0);
    let partitions = a.server.partitions;
    let needed = a
        .needed_partitions
        .unwrap_or(if light { partitions } else { partitions / 2 });
    let s = Session::start(&a.server, &a.run, 1).await?;
    let result = async {
        let (keys, used) = keys_in_partitions(clients, partitions, needed);
        let scenario = if light { "light" } else { "keyed" };
        let flow = Flow::per_key(scenario, &a.flow, &s.server, keys)?
            .steps(vec![rate], seconds)
            .expect_partitions(s.server.is_herald().then_some(used));
        let mut result = run_flow(&s.server, flow, &a.run).await?;
        result["partitions"] = json!(partitions);
        anyhow::Ok(result)
    }
    .await;
    s.finish(result, print_flow).await
}

/// `filters`: clients on one topic, each with a `where=` that takes one
/// key's records (`key == "kN"`), F distinct filters over the clients; or,
/// with `--keys-instead`, the same clients on key selectors: the same
/// deliveries without a filter, the baseline.
pub async fn filters(a: FiltersArgs) -> anyhow::Result<Value> {
    let s = Session::start(&a.server, &a.run, 1).await?;
    let result = async {
        if !s.server.is_herald() {
            anyhow::bail!("filters are herald's");
        }
        let f = a.filters.clamp(1, a.clients.max(1));
        let keys: Vec<String> = (0..f).map(|i| format!("k{i}")).collect();
        let base = s.server.path(None)?;
        let paths = (0..a.clients)
            .map(|j| {
                let key = &keys[j % f];
                if a.keys_instead {
                    s.server.path(Some(key))
                } else {
                    let filter = format!("key == \"{key}\"");
                    let q: String = form_urlencoded::byte_serialize(filter.as_bytes()).collect();
                    Ok(format!("{base}&where={q}"))
                }
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let subs = (0..f)
            .map(|i| (a.clients / f + usize::from(i < a.clients % f)) as u64)
            .collect();
        let flow =
            Flow::per_path("filters", &a.flow, paths, keys, subs).steps(vec![a.rate], a.seconds);
        let mut result = run_flow(&s.server, flow, &a.run).await?;
        result["filters"] = json!(if a.keys_instead { 0 } else { f });
        result["distinct_streams"] = json!(f);
        result["keys_instead"] = json!(a.keys_instead);
        anyhow::Ok(result)
    }
    .await;
    s.finish(result, print_flow).await
}

pub async fn latency(a: LatencyArgs) -> anyhow::Result<Value> {
    let s = Session::start(&a.server, &a.run, 1).await?;
    let result = async {
        let (keys, path) = match &a.key {
            Some(k) => (vec![k.clone()], s.server.path(Some(k))?),
            None => (
                (0..a.keys.max(1)).map(|i| format!("k{i}")).collect(),
                s.server.path(None)?,
            ),
        };
        let flow =
            Flow::shared("latency", &a.flow, path, keys, a.clients).steps(vec![a.rate], a.seconds);
        run_flow(&s.server, flow, &a.run).await
    }
    .await;
    s.finish(result, print_flow).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fall_in_the_needed_partitions_only() {
        let (keys, used) = keys_in_partitions(200, 64, 32);
        assert_eq!(keys.len(), 200);
        assert!(used.iter().all(|p| p % 2 == 0), "{used:?}");
        for k in &keys {
            let p = herald::partitioner::partition_for_key(k.as_bytes(), 64);
            assert!(used.contains(&p));
        }
        let (_, all) = keys_in_partitions(2000, 8, 8);
        assert_eq!(all, (0..8).collect());
    }
}
