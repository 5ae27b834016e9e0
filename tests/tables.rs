//! Table topics: snapshot-then-live, conflation, re-sync instead of a gap,
//! and the limits, against the embedded Kafka, Tansu, and two nodes behind
//! HAProxy. Every client's view is compared with a reference reader of the
//! log (a plain rdkafka consumer), record for record.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::*;

const SECS_30: Duration = Duration::from_secs(30);

/// One record as a client or the reference reader saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    partition: i32,
    offset: i64,
    key: String,
    value: Option<String>,
}

/// What one table stream showed its client.
#[derive(Debug, Default)]
struct View {
    resynced: bool,
    snapshot: Vec<Rec>,
    /// The mark's `keys` and id.
    keys: usize,
    mark: String,
    live: Vec<Rec>,
}

impl View {
    /// The state after the snapshot and every live change.
    fn state(&self) -> BTreeMap<String, String> {
        let mut s: BTreeMap<String, String> = self
            .snapshot
            .iter()
            .filter_map(|r| Some((r.key.clone(), r.value.clone()?)))
            .collect();
        apply(&mut s, &self.live);
        s
    }
}

fn apply(state: &mut BTreeMap<String, String>, records: &[Rec]) {
    for r in records {
        match &r.value {
            Some(v) => state.insert(r.key.clone(), v.clone()),
            None => state.remove(&r.key),
        };
    }
}

fn rec_of(data: &str) -> Rec {
    let v: serde_json::Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
    Rec {
        partition: v["partition"].as_i64().unwrap_or(-1) as i32,
        offset: v["offset"].as_i64().unwrap_or(-1),
        key: v["key"].as_str().unwrap_or_default().to_owned(),
        value: v["value"].as_str().map(str::to_owned),
    }
}

/// A cursor's positions, one per slot (partition order for a whole topic).
fn positions(cursor: &str, slots: usize) -> Vec<i64> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .expect("cursor is base64");
    let fp = u32::from_le_bytes(raw[1..5].try_into().expect("fingerprint"));
    herald::cursor::Cursor::decode(cursor, fp, slots)
        .expect("cursor decodes")
        .positions
}

/// Reads a table stream: an optional `herald.resync`, the snapshot up to
/// `herald.snapshot`, then live records until one with value `until`
/// arrived on every partition in `sentinels` (or `live_max` records).
async fn read_view(s: &mut Stream, sentinels: &[String], live_max: usize) -> View {
    let mut view = read_snapshot(s).await;
    read_live(s, &mut view, sentinels, live_max).await;
    view
}

/// The first part of [`read_view`]: up to the mark.
async fn read_snapshot(s: &mut Stream) -> View {
    let mut view = View::default();
    loop {
        let e = s
            .next_data(SECS_30)
            .await
            .expect("snapshot events, then the mark");
        match e.event.as_deref() {
            Some("herald.resync") => {
                assert!(e.id.is_none(), "a resync carries no id");
                assert!(view.snapshot.is_empty(), "resync comes first");
                view.resynced = true;
            }
            Some("herald.snapshot") => {
                let v: serde_json::Value =
                    serde_json::from_str(e.data.as_deref().unwrap_or_default()).expect("json");
                view.keys = v["keys"].as_u64().unwrap_or(u64::MAX) as usize;
                view.mark = e.id.expect("the mark carries the first id");
                break;
            }
            None => {
                assert!(e.id.is_none(), "snapshot records carry no id: {e:?}");
                view.snapshot
                    .push(rec_of(e.data.as_deref().unwrap_or_default()));
            }
            other => panic!("unexpected {other:?} in a snapshot"),
        }
    }
    view
}

/// The rest of [`read_view`]: live records until the sentinels.
async fn read_live(s: &mut Stream, view: &mut View, sentinels: &[String], live_max: usize) {
    // A sentinel produced before the stream opened may be in the snapshot.
    let mut waiting: std::collections::HashSet<&str> = sentinels
        .iter()
        .map(String::as_str)
        .filter(|s| !view.snapshot.iter().any(|r| r.value.as_deref() == Some(*s)))
        .collect();
    while !waiting.is_empty() && view.live.len() < live_max {
        let e = s.next_data(SECS_30).await.unwrap_or_else(|| {
            panic!(
                "live records until the sentinels {waiting:?} (had {})",
                view.live.len()
            )
        });
        assert!(e.id.is_some(), "live records carry ids");
        assert_eq!(e.event, None, "only records after the mark: {e:?}");
        let r = rec_of(e.data.as_deref().unwrap_or_default());
        if let Some(v) = &r.value {
            waiting.remove(v.as_str());
        }
        view.live.push(r);
    }
}

/// Every record of `topic` from the log start to the end, per partition.
fn reference(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Vec<Rec>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reference")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut highs = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        highs.insert(p, high);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out: BTreeMap<i32, Vec<Rec>> = (0..partitions).map(|p| (p, Vec::new())).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let done = |out: &BTreeMap<i32, Vec<Rec>>| {
        (0..partitions).all(|p| {
            let high = highs[&p];
            out[&p].last().map_or(high == 0, |r| r.offset + 1 >= high)
        })
    };
    while !done(&out) {
        assert!(
            std::time::Instant::now() < deadline,
            "reference reader timed out"
        );
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.expect("reference read");
        out.entry(m.partition()).or_default().push(Rec {
            partition: m.partition(),
            offset: m.offset(),
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
        });
    }
    out
}

/// The table at `positions` (every record below them, per partition).
fn state_at(log: &BTreeMap<i32, Vec<Rec>>, positions: &[i64]) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for (p, records) in log {
        let below: Vec<Rec> = records
            .iter()
            .filter(|r| r.offset < positions[*p as usize] && !r.key.is_empty())
            .cloned()
            .collect();
        apply(&mut state, &below);
    }
    state
}

/// The keyed records at or after `positions`, per partition, in order.
fn after(log: &BTreeMap<i32, Vec<Rec>>, positions: &[i64]) -> BTreeMap<i32, Vec<Rec>> {
    log.iter()
        .map(|(p, records)| {
            (
                *p,
                records
                    .iter()
                    .filter(|r| r.offset >= positions[*p as usize])
                    .cloned()
                    .collect(),
            )
        })
        .collect()
}

fn by_partition(records: &[Rec]) -> BTreeMap<i32, Vec<Rec>> {
    let mut out: BTreeMap<i32, Vec<Rec>> = BTreeMap::new();
    for r in records {
        out.entry(r.partition).or_default().push(r.clone());
    }
    out
}

/// Checks one client's view against the log: the snapshot is the state at
/// the mark's positions, and the live records are exactly the log from
/// there on (nothing lost, nothing repeated, in order), up to what it read.
fn check_view(name: &str, view: &View, log: &BTreeMap<i32, Vec<Rec>>, partitions: i32) {
    let at = positions(&view.mark, partitions as usize);
    let expected = state_at(log, &at);
    let got: BTreeMap<String, String> = view
        .snapshot
        .iter()
        .filter_map(|r| Some((r.key.clone(), r.value.clone()?)))
        .collect();
    assert_eq!(
        got.len(),
        view.snapshot.len(),
        "{name}: one record per key, no tombstones"
    );
    assert_eq!(
        view.keys,
        view.snapshot.len(),
        "{name}: the mark counts the keys"
    );
    assert_eq!(
        got, expected,
        "{name}: the snapshot is the state at the mark {at:?}"
    );
    for r in &view.snapshot {
        assert!(
            r.offset < at[r.partition as usize],
            "{name}: snapshot record after the mark"
        );
    }
    let live = by_partition(&view.live);
    let wanted = after(log, &at);
    for (p, records) in &live {
        let want = &wanted[p][..records.len().min(wanted[p].len())];
        assert_eq!(
            &records[..],
            want,
            "{name}: partition {p} live from {} is the log from there, exactly",
            at[*p as usize]
        );
    }
}

async fn tombstone(p: &FutureProducer, topic: &str, key: &str) {
    p.send(
        FutureRecord::<str, [u8]>::to(topic).key(key),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|(e, _)| panic!("tombstone: {e}"));
}

/// Produces `rounds` updates over `keys` keys (every seventh a tombstone),
/// values `v<n>`, as fast as the producer goes.
async fn churn(p: &FutureProducer, topic: &str, keys: usize, rounds: usize, start: usize) {
    let mut futures = Vec::new();
    for n in start..start + rounds {
        let key = format!("k{}", n % keys);
        let value = format!("v{n}");
        let record = if n % 7 == 3 {
            FutureRecord::<str, str>::to(topic).key(&key)
        } else {
            FutureRecord::<str, str>::to(topic)
                .key(&key)
                .payload(&value)
        };
        futures.push(p.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
        if futures.len() >= 500 {
            for f in futures.drain(..) {
                let _ = f.await.expect("delivered");
            }
        }
    }
    for f in futures {
        let _ = f.await.expect("delivered");
    }
}

fn table_config(topics: &str) -> Config {
    let mut c = config();
    c.table_topics = vec![topics.to_owned()];
    c
}

/// Clients that take snapshots while keys are updated and deleted at a high
/// rate: every snapshot is the log's state at its mark, and the live stream
/// continues from exactly there.
async fn snapshots_under_churn(bootstrap: &str, addr: std::net::SocketAddr, topic: &str) {
    let partitions = 4;
    let p = producer(bootstrap);
    churn(&p, topic, 300, 3000, 0).await;
    let path = events_path(&[topic], "snapshot=true&format=envelope");
    // Clients open while the churn goes on: the first one's tables are
    // built meanwhile (the build must not run ahead of the live stream),
    // and the others each snapshot at another moment.
    // The churn goes on until every client has opened (at least six rounds).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let p = p.clone();
        let topic = topic.to_owned();
        let done = done.clone();
        tokio::spawn(async move {
            let mut round = 1;
            while round <= 6 || !done.load(std::sync::atomic::Ordering::Acquire) {
                churn(&p, &topic, 300, 300, round * 10_000).await;
                round += 1;
            }
        })
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let produced = || {
        (0..partitions)
            .map(|p| {
                tokio::task::block_in_place(|| {
                    consumer.fetch_watermarks(topic, p, Duration::from_secs(5))
                })
                .map(|w| w.1)
                .unwrap_or(0)
            })
            .sum::<i64>()
    };
    let mut first = open(addr, &path, None).await;
    let mut first_view = read_snapshot(&mut first).await;
    // The first client also drops its stream mid-churn, after a few hundred
    // live records, and resumes with its last id: its view must stay exact
    // across the resume.
    read_live(&mut first, &mut first_view, &["never".to_owned()], 300).await;
    let resume_at = first.last_id.clone().expect("an id to resume from");
    drop(first);
    let first = open(addr, &path, Some(&resume_at)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let mut clients = vec![first];
    for _ in 0..5 {
        clients.push(open(addr, &path, None).await);
        // The next client snapshots a few hundred records later.
        let now = produced();
        wait_for("the churn to move on", SECS_30, || {
            let moved = produced() >= now + 300;
            async move { moved }
        })
        .await;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    writer.await.expect("churn");
    let sentinels = produce_keyed_sentinels(&p, topic, partitions, "end").await;
    let mut views = Vec::new();
    let mut first_view = Some(first_view);
    for (i, s) in clients.iter_mut().enumerate() {
        let v = match first_view.take() {
            Some(mut v) => {
                read_live(s, &mut v, &sentinels, usize::MAX).await;
                v
            }
            None => read_view(s, &sentinels, usize::MAX).await,
        };
        assert!(!v.resynced, "client {i}");
        views.push(v);
    }
    let log = reference(bootstrap, topic, partitions);
    let final_state = state_at(&log, &[i64::MAX; 4]);
    let mut marks = std::collections::BTreeSet::new();
    for (i, v) in views.iter().enumerate() {
        check_view(&format!("client {i}"), v, &log, partitions);
        assert_eq!(
            v.state(),
            final_state,
            "client {i}: the end state is the log's"
        );
        marks.insert(v.mark.clone());
    }
    assert!(
        marks.len() > 1,
        "the clients snapshotted at different offsets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_then_live_equals_the_log_under_churn_on_the_embedded_kafka() {
    let node = node_with(table_config("prices")).await;
    node.create_topic("prices", 4).await.expect("topic");
    snapshots_under_churn(node.bootstrap_servers(), node.local_addr(), "prices").await;
    let stats = stats(&node).await;
    let tables = stats["tables"]["partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(tables.len(), 4, "{stats}");
    for t in &tables {
        assert_eq!(t["status"], "ready", "{t}");
        assert!(t["keys"].as_u64().unwrap_or(0) > 0, "{t}");
        assert!(t["bytes"].as_u64().unwrap_or(0) > 0, "{t}");
    }
    assert!(metric(&node, "herald_table_keys").await > 250.0);
    assert!(metric(&node, "herald_snapshots_total").await >= 6.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_then_live_equals_the_log_on_tansu() {
    let tansu = Tansu::start().await;
    tansu.create_topic("quotes", 4).await;
    let mut c = table_config("quotes");
    c.brokers = Some(tansu.bootstrap.clone());
    let node = node_with(c).await;
    snapshots_under_churn(&tansu.bootstrap, node.local_addr(), "quotes").await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_a_filter_and_a_resume_after_the_mark() {
    let node = node_with(table_config("book")).await;
    node.create_topic("book", 4).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("b", "5")] {
        let value = format!("{{\"n\":{v}}}");
        produce(&p, "book", Some(k), value.as_bytes()).await;
    }
    tombstone(&p, "book", "c").await;
    // One key: its latest record, the mark, then its changes.
    let mut one = open(
        node.local_addr(),
        &events_path(&["book/a"], "snapshot=true"),
        None,
    )
    .await;
    let e = one.next_data(SECS_10).await.expect("a's latest");
    assert_eq!(
        (e.data.as_deref(), e.id.as_deref()),
        (Some("{\"n\":3}"), None)
    );
    let mark = one.next_data(SECS_10).await.expect("mark");
    assert_eq!(mark.event.as_deref(), Some("herald.snapshot"));
    assert_eq!(mark.data.as_deref(), Some("{\"keys\":1}"));
    // A deleted key is not in the snapshot; a filter applies to it.
    let mut filtered = open(
        node.local_addr(),
        &events_path(&["book"], "snapshot=true&where=value.n%20%3E%202"),
        None,
    )
    .await;
    let mut seen = Vec::new();
    loop {
        let e = filtered.next_data(SECS_10).await.expect("snapshot");
        if e.event.as_deref() == Some("herald.snapshot") {
            assert_eq!(e.data.as_deref(), Some("{\"keys\":2}"));
            break;
        }
        seen.push(e.data.unwrap_or_default());
    }
    seen.sort();
    assert_eq!(seen, vec!["{\"n\":3}", "{\"n\":5}"]);
    // Changes after the mark, then a resume from the mark's id repeats
    // nothing and takes no snapshot again.
    produce(&p, "book", Some("a"), b"{\"n\":6}").await;
    let e = one.next_data(SECS_10).await.expect("live change");
    assert_eq!(e.data.as_deref(), Some("{\"n\":6}"));
    let mark_id = mark.id.clone().expect("id");
    drop(one);
    produce(&p, "book", Some("a"), b"{\"n\":7}").await;
    let mut again = open(
        node.local_addr(),
        &events_path(&["book/a"], "snapshot=true"),
        Some(&mark_id),
    )
    .await;
    let got: Vec<String> = again
        .take(2, SECS_10)
        .await
        .into_iter()
        .map(|e| e.data.unwrap_or_default())
        .collect();
    assert_eq!(
        got,
        vec!["{\"n\":6}", "{\"n\":7}"],
        "resumed at the mark, exactly"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn table_parameters_are_refused_on_other_topics_and_hostile_values() {
    let node = node_with(table_config("tab*")).await;
    node.create_topic("table1", 1).await.expect("topic");
    node.create_topic("plain", 1).await.expect("topic");
    for (q, needle) in [
        ("topic=plain&snapshot=true", "not one"),
        ("topic=table1&topic=plain&conflate=true", "not one"),
        ("topic=plain&max-rate=5", "not one"),
        ("topic=table1&snapshot=maybe", "snapshot="),
        ("topic=table1&max-rate=0", "max-rate"),
        ("topic=table1&max-rate=99999999999", "max-rate"),
        ("topic=table1&max-rate=-1", "max-rate"),
        ("topic=table1&snapshot=true&from=earliest", "leave out"),
        ("topic=table1&snapshot=true&since=0", "leave out"),
    ] {
        let s = open(node.local_addr(), &format!("/v1/events?{q}"), None).await;
        assert_eq!(s.status, 400, "{q}: {}", s.body);
        assert!(s.body.contains(needle), "{q}: {}", s.body);
        assert!(s.body.contains("\"error\""), "{q}: {}", s.body);
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_past_the_budget_fails_out_loud_and_others_go_on() {
    let mut c = table_config("big*");
    c.table_max_bytes = 64 * 1024;
    let node = node_with(c).await;
    node.create_topic("big", 1).await.expect("topic");
    node.create_topic("big-small", 1).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    let value = vec![b'x'; 1000];
    for i in 0..200 {
        produce(&p, "big", Some(&format!("k{i}")), &value).await;
    }
    produce(&p, "big-small", Some("k"), b"fits").await;
    let mut s = open(
        node.local_addr(),
        &events_path(&["big"], "snapshot=true"),
        None,
    )
    .await;
    let e = s.next_data(SECS_30).await.expect("a failure event");
    assert_eq!(e.event.as_deref(), Some("herald.snapshot_failed"), "{e:?}");
    let v: serde_json::Value =
        serde_json::from_str(e.data.as_deref().unwrap_or_default()).expect("json");
    assert_eq!(v["reason"], "table_too_large");
    assert_eq!(v["limit_bytes"], 64 * 1024);
    assert!(
        s.until_end(SECS_10).await,
        "and the stream ends (the client retries later)"
    );
    assert!(metric(&node, "herald_table_failures_total").await >= 1.0);
    // Another table on the node still serves.
    let mut ok = open(
        node.local_addr(),
        &events_path(&["big-small"], "snapshot=true"),
        None,
    )
    .await;
    let e = ok.next_data(SECS_10).await.expect("record");
    assert_eq!(e.data.as_deref(), Some("fits"));
    let stats = stats(&node).await;
    let statuses: Vec<String> = stats["tables"]["partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            format!(
                "{}={}",
                t["topic"].as_str().unwrap_or(""),
                t["status"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        statuses.contains(&"big=too_large".to_owned()),
        "{statuses:?}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cursor_below_the_log_start_resyncs_with_a_fresh_snapshot() {
    let node = node_with(table_config("compacted")).await;
    node.create_topic("compacted", 1).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    produce(&p, "compacted", Some("early"), b"first").await;
    let path = events_path(&["compacted"], "snapshot=true&format=envelope");
    let mut s = open(node.local_addr(), &path, None).await;
    let v = read_view(&mut s, &[], 0).await;
    assert_eq!(v.snapshot.len(), 1);
    let cursor = v.mark.clone();
    drop(s);
    // The mock keeps about 5 MiB per partition: push the start past the cursor,
    // with a few keys written over and over (the state stays small).
    let big = "x".repeat(64 * 1024);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", node.bootstrap_servers())
        .create()
        .expect("consumer");
    let mut low = 0;
    for round in 0..400 {
        let mut batch = Vec::new();
        for i in 0..16 {
            let key = format!("k{}", (round * 16 + i) % 10);
            batch.push(
                p.send_result(FutureRecord::to("compacted").key(&key).payload(&big))
                    .map_err(|(e, _)| e)
                    .expect("enqueue"),
            );
        }
        for f in batch {
            let _ = f.await.expect("delivered");
        }
        low = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks("compacted", 0, Duration::from_secs(5))
        })
        .expect("watermarks")
        .0;
        if low > 200 {
            break;
        }
    }
    assert!(
        low > 200,
        "retention moved the log start (low watermark {low})"
    );
    for i in 0..10 {
        produce(
            &p,
            "compacted",
            Some(&format!("k{i}")),
            format!("final{i}").as_bytes(),
        )
        .await;
    }
    let sentinels = produce_keyed_sentinels(&p, "compacted", 1, "resync").await;
    let mut s = open(node.local_addr(), &path, Some(&cursor)).await;
    assert_eq!(s.status, 200, "{}", s.body);
    let v = read_view(&mut s, &sentinels, usize::MAX).await;
    assert!(v.resynced, "herald.resync, not herald.gap");
    let log = reference(node.bootstrap_servers(), "compacted", 1);
    check_view("resynced", &v, &log, 1);
    let state = v.state();
    for i in 0..10 {
        assert_eq!(
            state.get(&format!("k{i}")).map(String::as_str),
            Some(format!("final{i}").as_str())
        );
    }
    assert!(
        !state.contains_key("early"),
        "the record retention removed is gone"
    );
    assert_eq!(metric(&node, "herald_gaps_total").await, 0.0, "no gap");
    assert!(metric(&node, "herald_resyncs_total").await >= 1.0);
    node.shutdown().await;
}

/// Reads a raw SSE connection's bytes as events until `until` appears.
async fn read_raw_until(
    stream: &mut tokio::net::TcpStream,
    until: &str,
) -> Vec<herald::sse::read::Event> {
    use tokio::io::AsyncReadExt;
    let mut parser = Parser::default();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut head_done = false;
    let mut pending = Vec::new();
    let deadline = tokio::time::Instant::now() + SECS_30;
    loop {
        let Ok(n) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await else {
            panic!(
                "the stream went quiet after {} events, the last {:?}",
                events.len(),
                events.last().map(|e: &herald::sse::read::Event| (
                    &e.id,
                    e.data
                        .as_deref()
                        .map(|d| d.chars().take(80).collect::<String>())
                ))
            );
        };
        let n = n.expect("read");
        assert!(n > 0, "the stream ended early");
        let mut chunk = &buf[..n];
        if !head_done {
            pending.extend_from_slice(chunk);
            let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            head_done = true;
            let rest = pending[at + 4..].to_vec();
            for item in parser.feed(&rest) {
                if let Item::Event(e) = item {
                    events.push(e);
                }
            }
            chunk = &[];
        }
        for item in parser.feed(chunk) {
            if let Item::Event(e) = item {
                events.push(e);
            }
        }
        if events
            .iter()
            .any(|e| e.data.as_deref().is_some_and(|d| d.contains(until)))
        {
            return events;
        }
    }
}

const TICKS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_conflating_reader_gets_the_latest_of_each_key_not_the_backlog() {
    let mut c = table_config("ticks");
    c.write_timeout = Duration::from_secs(60);
    // Room for the normal reader to take the 10 MB burst on a busy machine;
    // the conflating one never holds more than its 20 keys.
    c.queue_bytes = 16 << 20;
    let node = node_with(c).await;
    node.create_topic("ticks", 1).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    // HTTP/1.0: no chunk framing, the body is the event stream itself.
    let mut slow = stalled_client(
        node.local_addr(),
        &events_path(&["ticks"], "conflate=true&format=envelope"),
        "HTTP/1.0",
        b"",
    )
    .await;
    let mut normal = open(
        node.local_addr(),
        &events_path(&["ticks"], "format=envelope"),
        None,
    )
    .await;
    wait_for("both streams", SECS_10, || async {
        connections(&node).await == 2
    })
    .await;
    // The normal reader reads as the records come.
    let normal = tokio::spawn(async move { normal.take(TICKS + 1, SECS_30).await });
    // 10,000 updates of 20 keys, 1 kB each: 10 MB, ten times the queue bound
    // (and more than the sockets' buffers hold), while the slow reader
    // reads nothing.
    let pad = "p".repeat(1000);
    let mut futures = Vec::new();
    for n in 0..TICKS {
        let key = format!("k{}", n % 20);
        let value = format!("{n}:{pad}");
        futures.push(
            p.send_result(FutureRecord::to("ticks").key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
        if futures.len() >= 500 {
            for f in futures.drain(..) {
                let _ = f.await.expect("delivered");
            }
            // The mock keeps about 5 MiB of the partition: on a busy machine
            // the node's consumer must not fall that far behind (retention
            // would overtake it, and a table stream then re-syncs).
            let sent = (n + 1) as f64;
            wait_for("the node to keep up with the producer", SECS_30, || async {
                metric(&node, "herald_records_consumed_total").await >= sent - 1000.0
            })
            .await;
        }
    }
    for f in futures {
        let _ = f.await.expect("delivered");
    }
    let last: Vec<String> = (TICKS - 20..TICKS).map(|n| format!("{n}:{pad}")).collect();
    let sentinel = produce_keyed_sentinels(&p, "ticks", 1, "stall").await;
    // The normal reader sees every change.
    let all = normal.await.expect("normal reader");
    assert_eq!(all.len(), TICKS + 1);
    // The stalled reader, once it reads again, is still connected and gets
    // each key's latest value, and far fewer than 2,000 records.
    let events = read_raw_until(&mut slow, &sentinel[0]).await;
    let records: Vec<Rec> = events
        .iter()
        .filter(|e| e.data.as_deref().is_some_and(|d| d.starts_with('{')))
        .map(|e| rec_of(e.data.as_deref().unwrap_or_default()))
        .collect();
    let values: Vec<String> = records.iter().filter_map(|r| r.value.clone()).collect();
    for v in &last {
        assert!(values.contains(v), "the latest value of every key arrives");
    }
    assert!(
        records.len() < TICKS * 8 / 10,
        "no backlog: {} records of {TICKS}",
        records.len()
    );
    // Per key in order, and ids that resume exactly: from the id of any
    // record, a normal stream misses no later latest value.
    let mut latest_offset: HashMap<String, i64> = HashMap::new();
    for r in &records {
        if let Some(prev) = latest_offset.insert(r.key.clone(), r.offset) {
            assert!(prev < r.offset, "per key in order");
        }
    }
    assert!(metric(&node, "herald_conflated_records_total").await > (TICKS / 5) as f64);
    assert_eq!(
        metric(&node, "herald_slow_disconnects_total").await,
        0.0,
        "no one was cut off"
    );
    let mid = events
        .iter()
        .filter(|e| e.id.is_some() && e.data.as_deref().is_some_and(|d| d.starts_with('{')))
        .nth(records.len() * 9 / 10) // above the log start (the mock keeps ~5 MiB)
        .and_then(|e| e.id.clone())
        .expect("an id mid-stream");
    let at = positions(&mid, 1)[0];
    let mut resumed = open(
        node.local_addr(),
        &events_path(&["ticks"], "format=envelope"),
        Some(&mid),
    )
    .await;
    let replay: Vec<Rec> = {
        let mut out = Vec::new();
        loop {
            let e = resumed.next_data(SECS_10).await.expect("replay");
            assert_eq!(e.event, None, "records only: {e:?}");
            let r = rec_of(e.data.as_deref().unwrap_or_default());
            let done = r.value.as_deref() == Some(sentinel[0].as_str());
            out.push(r);
            if done {
                break;
            }
        }
        out
    };
    assert_eq!(
        replay.first().map(|r| r.offset),
        Some(at),
        "resumes at the id's position"
    );
    // What the conflated stream sent after that id, each key's last value,
    // is what the resumed stream ends with.
    let mut from_conflated: BTreeMap<String, String> = BTreeMap::new();
    apply(&mut from_conflated, &records);
    let mut from_resume: BTreeMap<String, String> = BTreeMap::new();
    apply(&mut from_resume, &replay);
    for (k, v) in &from_resume {
        assert_eq!(from_conflated.get(k), Some(v), "{k}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_rate_merges_a_hot_topic_to_its_latest_values() {
    let node = node_with(table_config("hot")).await;
    node.create_topic("hot", 2).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    let mut limited = open(
        node.local_addr(),
        &events_path(&["hot"], "max-rate=5&format=envelope"),
        None,
    )
    .await;
    let mut every = open(
        node.local_addr(),
        &events_path(&["hot"], "format=envelope"),
        None,
    )
    .await;
    wait_for("both streams", SECS_10, || async {
        connections(&node).await == 2
    })
    .await;
    let started = std::time::Instant::now();
    churn(&p, "hot", 10, 3000, 0).await;
    let sentinels = produce_keyed_sentinels(&p, "hot", 2, "rate").await;
    let mut got = Vec::new();
    let mut waiting: std::collections::HashSet<String> = sentinels.iter().cloned().collect();
    while !waiting.is_empty() {
        let e = limited
            .next_data(SECS_30)
            .await
            .expect("rate-limited records");
        let r = rec_of(e.data.as_deref().unwrap_or_default());
        if let Some(v) = &r.value {
            waiting.remove(v);
        }
        got.push(r);
    }
    let took = started.elapsed().as_secs_f64();
    // At most 5 a second (plus the first burst of 5), and the final state.
    assert!(
        (got.len() as f64) <= 5.0 * took + 6.0,
        "{} records in {took:.1}s",
        got.len()
    );
    let everything = every.take(3002, SECS_30).await;
    let mut expected = BTreeMap::new();
    apply(
        &mut expected,
        &everything
            .iter()
            .map(|e| rec_of(e.data.as_deref().unwrap_or_default()))
            .collect::<Vec<_>>(),
    );
    let mut state = BTreeMap::new();
    apply(&mut state, &got);
    assert_eq!(
        state, expected,
        "the rate-limited stream ends at the same state"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_on_one_node_resumes_on_another_behind_haproxy() {
    let kafka = MockKafka::start();
    kafka.create_topic("board", 4);
    let args = ["--table-topics", "board"];
    let mut a = NodeProcess::start(&kafka.bootstrap, "a", &args).await;
    let mut b = NodeProcess::start(&kafka.bootstrap, "b", &args).await;
    let proxy = Haproxy::start(&[a.addr, b.addr]).await;
    let p = producer(&kafka.bootstrap);
    churn(&p, "board", 50, 500, 0).await;
    let path = events_path(&["board"], "snapshot=true&format=envelope");
    let mut s = open(proxy.addr, &path, None).await;
    let first = read_view(&mut s, &[], 0).await;
    let on_a = a.connections().await == 1;
    // Kill the node that served it (whichever HAProxy picked), mid-stream.
    churn(&p, "board", 50, 300, 1000).await;
    let mut before_kill = Vec::new();
    while before_kill.len() < 100 {
        let e = s.next_data(SECS_10).await.expect("live");
        before_kill.push(rec_of(e.data.as_deref().unwrap_or_default()));
    }
    let last_id = s.last_id.clone().expect("id");
    drop(s);
    if on_a {
        a.kill().await;
    } else {
        b.kill().await;
    }
    churn(&p, "board", 50, 300, 2000).await;
    let sentinels = produce_keyed_sentinels(&p, "board", 4, "ha").await;
    let mut again = open(proxy.addr, &path, Some(&last_id)).await;
    let mut rest = Vec::new();
    let mut waiting: std::collections::HashSet<String> = sentinels.iter().cloned().collect();
    while !waiting.is_empty() {
        let e = again
            .next_data(SECS_30)
            .await
            .expect("resumed on the other node");
        assert_ne!(
            e.event.as_deref(),
            Some("herald.snapshot"),
            "a resume, not a new snapshot"
        );
        let r = rec_of(e.data.as_deref().unwrap_or_default());
        if let Some(v) = &r.value {
            waiting.remove(v);
        }
        rest.push(r);
    }
    let log = reference(&kafka.bootstrap, "board", 4);
    let view = View {
        resynced: false,
        keys: first.snapshot.len(),
        snapshot: first.snapshot.clone(),
        mark: first.mark.clone(),
        live: before_kill.into_iter().chain(rest).collect(),
    };
    check_view("across nodes", &view, &log, 4);
    assert_eq!(
        view.state(),
        state_at(&log, &[i64::MAX; 4]),
        "consistent at the end"
    );
    drop((a, b, proxy));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_price_board_example_shows_the_state_then_changes_in_chromium() {
    let node = node_with(table_config("prices")).await;
    node.create_topic("prices", 4).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    let mut expected = BTreeMap::new();
    for (i, sym) in ["ACME", "BOLT", "CRUX", "DYNA", "EPIC"].iter().enumerate() {
        for step in 0..3 {
            let value = format!("{{\"price\":{}}}", 100 + i * 10 + step);
            produce(&p, "prices", Some(sym), value.as_bytes()).await;
            expected.insert(sym.to_string(), value);
        }
    }
    tombstone(&p, "prices", "CRUX").await;
    expected.remove("CRUX");
    let expected = serde_json::to_string(&expected).expect("json");
    let base = format!("http://{}", node.local_addr());
    browser_script("price-board.mjs", &[&base, "prices", &expected]).await;
    node.shutdown().await;
}
