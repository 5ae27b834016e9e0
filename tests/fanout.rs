//! Live fan-out: whole topics, keys, several selectors, shared keys,
//! formats, event types, headers and heartbeats, against the embedded Kafka
//! over real sockets.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_topic_stream_delivers_every_record_in_partition_order() {
    let node = node().await;
    node.create_topic("orders", 8).await.expect("topic");
    let mut s = open(node.local_addr(), &events_path(&["orders"], ""), None).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["cache-control"], "no-cache");
    assert_eq!(s.headers["x-accel-buffering"], "no");
    let first = s.next_event(SECS_10).await.expect("preamble");
    assert_eq!(first.retry, Some(2000), "stream starts with retry:");

    let p = producer(node.bootstrap_servers());
    let mut sent = Vec::new();
    for i in 0..200 {
        let key = format!("k{}", i % 17);
        let (partition, offset) =
            produce(&p, "orders", Some(&key), format!("v{i}").as_bytes()).await;
        sent.push((partition, offset, format!("v{i}")));
    }
    let got = s.take(200, SECS_10).await;
    let mut ids = std::collections::HashSet::new();
    for e in &got {
        assert!(ids.insert(e.id.clone().expect("id")), "ids are unique");
    }
    // Per partition, the order of arrival is the order of production.
    for partition in 0..8 {
        let expected: Vec<&str> = sent
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, _, v)| v.as_str())
            .collect();
        let arrived: Vec<&str> = got
            .iter()
            .filter_map(|e| e.data.as_deref())
            .filter(|v| expected.contains(v))
            .collect();
        assert_eq!(arrived, expected, "partition {partition} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_subscription_gets_exactly_its_key_in_order() {
    let node = node().await;
    node.create_topic("scores", 8).await.expect("topic");
    let mut s = open(
        node.local_addr(),
        &events_path(&["scores/match-7"], ""),
        None,
    )
    .await;
    assert_eq!(s.status, 200);
    let p = producer(node.bootstrap_servers());
    let mut expected = Vec::new();
    for i in 0..300 {
        let key = format!("match-{}", i % 10);
        let value = format!("{key}:{i}");
        produce(&p, "scores", Some(&key), value.as_bytes()).await;
        if key == "match-7" {
            expected.push(value);
        }
    }
    produce(&p, "scores", Some("match-7"), b"last").await;
    expected.push("last".into());
    let got: Vec<String> = s
        .take(expected.len(), SECS_10)
        .await
        .into_iter()
        .filter_map(|e| e.data)
        .collect();
    assert_eq!(got, expected);
    // Nothing else arrives: other keys share the partition but not the
    // stream. Another key of that partition, then a sentinel on this key.
    let partition = herald::partitioner::partition_for_key(b"match-7", 8);
    let other = (0..)
        .map(|i| format!("other-{i}"))
        .find(|k| herald::partitioner::partition_for_key(k.as_bytes(), 8) == partition)
        .unwrap_or_default();
    produce(&p, "scores", Some(&other), b"not-for-you").await;
    produce(&p, "scores", Some("match-7"), b"sentinel").await;
    expect_only(&mut s, &["sentinel".to_string()], "a record of another key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_selectors_on_one_connection() {
    let node = node().await;
    node.create_topic("a", 4).await.expect("topic");
    node.create_topic("b", 4).await.expect("topic");
    let mut s = open(node.local_addr(), &events_path(&["a", "b/x"], ""), None).await;
    assert_eq!(s.status, 200, "{}", s.body);
    let p = producer(node.bootstrap_servers());
    produce(&p, "a", Some("q"), b"a1").await;
    produce(&p, "b", Some("y"), b"b-other").await;
    produce(&p, "b", Some("x"), b"b1").await;
    produce(&p, "a", None, b"a2").await;
    let mut got: Vec<String> = s
        .take(3, SECS_10)
        .await
        .into_iter()
        .filter_map(|e| e.data)
        .collect();
    got.sort();
    assert_eq!(got, vec!["a1", "a2", "b1"]);
    produce(&p, "b", Some("y"), b"b-other-2").await;
    let mut sentinels = produce_sentinels(&p, "a", 4, "a").await;
    produce(&p, "b", Some("x"), b"sentinel:b").await;
    sentinels.push("sentinel:b".into());
    expect_only(&mut s, &sentinels, "a record of b outside b/x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_on_one_key_both_get_every_record() {
    let node = node().await;
    node.create_topic("hot", 8).await.expect("topic");
    let path = events_path(&["hot/k"], "");
    let mut s1 = open(node.local_addr(), &path, None).await;
    let mut s2 = open(node.local_addr(), &path, None).await;
    let p = producer(node.bootstrap_servers());
    for i in 0..50 {
        produce(&p, "hot", Some("k"), format!("{i}").as_bytes()).await;
    }
    let a = s1.take(50, SECS_10).await;
    let b = s2.take(50, SECS_10).await;
    let expected: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(
        a.iter().filter_map(|e| e.data.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(a, b, "same records, same ids (one shared encoding)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stream_delivers_records_produced_right_after_the_headers() {
    // The partition is not assigned when the client connects: the node must
    // start it at the high watermark read before answering, not wherever the
    // first fetch happens to begin.
    let node = node().await;
    node.create_topic("fresh", 4).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    for i in 0..20 {
        produce(&p, "fresh", Some("k"), format!("old{i}").as_bytes()).await;
    }
    let mut s = open(node.local_addr(), &events_path(&["fresh/k"], ""), None).await;
    produce(&p, "fresh", Some("k"), b"new").await;
    let e = s
        .next_data(SECS_10)
        .await
        .expect("the record produced after the headers");
    assert_eq!(
        e.data.as_deref(),
        Some("new"),
        "old records are not replayed, new ones are not lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_earliest_replays_the_topic_then_goes_live() {
    let node = node().await;
    node.create_topic("hist", 4).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    for i in 0..30 {
        produce(&p, "hist", Some("k"), format!("{i}").as_bytes()).await;
    }
    // One live subscriber first, so the partition is already assigned at the end.
    let _live = open(node.local_addr(), &events_path(&["hist/k"], ""), None).await;
    let mut s = open(
        node.local_addr(),
        &events_path(&["hist/k"], "from=earliest"),
        None,
    )
    .await;
    produce(&p, "hist", Some("k"), b"30").await;
    let got: Vec<String> = s
        .take(31, SECS_10)
        .await
        .into_iter()
        .filter_map(|e| e.data)
        .collect();
    let expected: Vec<String> = (0..31).map(|i| i.to_string()).collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_format_and_event_type_header() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let node = node().await;
    node.create_topic("env", 2).await.expect("topic");
    let mut plain = open(node.local_addr(), &events_path(&["env"], ""), None).await;
    let mut env = open(
        node.local_addr(),
        &events_path(&["env"], "format=envelope"),
        None,
    )
    .await;
    let p = producer(node.bootstrap_servers());
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "event",
            value: Some("score"),
        })
        .insert(Header {
            key: "trace",
            value: Some(&b"\xff\x00"[..]),
        });
    let d = p
        .send(
            FutureRecord::to("env")
                .key("k1")
                .payload("v1")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    // A producer cannot raise herald's own signals.
    let spoof = OwnedHeaders::new().insert(Header {
        key: "event",
        value: Some("herald.gap"),
    });
    p.send(
        FutureRecord::to("env")
            .key("k1")
            .payload("v2")
            .headers(spoof),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|(e, _)| panic!("{e}"));

    let e = plain.next_data(SECS_10).await.expect("plain event");
    assert_eq!(e.event.as_deref(), Some("score"));
    assert_eq!(e.data.as_deref(), Some("v1"));
    let e2 = plain.next_data(SECS_10).await.expect("second");
    assert_eq!(e2.event, None, "herald.* from a producer is dropped");

    let e = env.next_data(SECS_10).await.expect("envelope event");
    assert_eq!(e.event.as_deref(), Some("score"));
    let v: serde_json::Value =
        serde_json::from_str(e.data.as_deref().unwrap_or_default()).expect("json");
    assert_eq!(v["topic"], "env");
    assert_eq!(v["partition"], d.partition);
    assert_eq!(v["offset"], d.offset);
    assert_eq!(v["key"], "k1");
    assert_eq!(v["value"], "v1");
    assert_eq!(v["headers"]["event"], "score");
    assert_eq!(v["headers"]["trace"]["base64"], "/wA=");
    assert!(v["timestamp"]
        .as_i64()
        .is_some_and(|t| t > 1_600_000_000_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_idle_streams_alive() {
    let mut c = config();
    c.heartbeat = Duration::from_millis(100);
    let node = node_with(c).await;
    node.create_topic("quiet", 1).await.expect("topic");
    let mut s = open(node.local_addr(), &events_path(&["quiet"], ""), None).await;
    let deadline = tokio::time::Instant::now() + SECS_10;
    while s.comments < 3 && tokio::time::Instant::now() < deadline {
        let _ = s.next_event(Duration::from_millis(100)).await;
    }
    assert!(
        s.comments >= 3,
        "three heartbeat comments, got {}",
        s.comments
    );
    assert!(!s.ended);
}
