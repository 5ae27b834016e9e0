//! Requests that go wrong get a clear status and a JSON body; publishing
//! over HTTP; operations endpoints.

mod support;

use std::time::Duration;

use support::*;

fn error_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON error body, got {body:?}: {e}"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "message in {body}"
    );
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_with_json_bodies() {
    let mut c = config();
    c.max_body_bytes = 1000;
    let node = node_with(c).await;
    node.create_topic("t", 2).await.expect("topic");
    let addr = node.local_addr();
    for (path, status, code) in [
        ("/v1/events", 400, "bad_request"),
        ("/v1/events?topic=", 400, "bad_request"),
        ("/v1/events?topic=bad%20name", 400, "bad_request"),
        ("/v1/events?topic=t/", 400, "bad_request"),
        ("/v1/events?topic=t&from=yesterday", 400, "bad_request"),
        ("/v1/events?topic=t&format=xml", 400, "bad_request"),
        ("/v1/events?topic=missing", 404, "unknown_topic"),
        ("/v1/events?topic=t&lastEventId=%21%21", 400, "bad_cursor"),
        ("/v1/nothing", 404, "not_found"),
    ] {
        let (got, body) = request(addr, "GET", path, b"").await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(error_code(&body), code, "{path}");
    }
    let (got, body) = request(addr, "POST", "/v1/topics/t", &[b'x'; 1001]).await;
    assert_eq!(got, 413, "{body}");
    assert_eq!(error_code(&body), "body_too_large");
    let (got, body) = request(addr, "POST", "/v1/topics/no%20way", b"x").await;
    assert_eq!(got, 400, "{body}");
    let (got, body) = request(addr, "DELETE", "/v1/events", b"").await;
    assert_eq!(got, 405, "{body}");
    // A well-formed cursor issued for another subscription is refused, not obeyed.
    let mut other = open(addr, &events_path(&["t"], ""), None).await;
    let p = producer(node.bootstrap_servers());
    produce(&p, "t", Some("k"), b"x").await;
    let id = other
        .next_data(SECS_10)
        .await
        .and_then(|e| e.id)
        .expect("id");
    drop(other);
    let (got, body) = request(
        addr,
        "GET",
        &format!("/v1/events?topic=t/k&lastEventId={id}"),
        b"",
    )
    .await;
    assert_eq!(got, 400, "{body}");
    assert_eq!(error_code(&body), "bad_cursor");
    wait_for("the first stream is gone", SECS_10, || async {
        stats(&node).await["connections"] == 0
    })
    .await;
    // The node is still fine, and nothing leaked: no connection, no partition.
    assert_eq!(stats(&node).await["connections"], 0);
    assert_eq!(metric(&node, "herald_connections").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_round_trip_uses_kafkas_partitioner() {
    let node = node().await;
    node.create_topic("pub", 8).await.expect("topic");
    let addr = node.local_addr();
    let mut s = open(addr, &events_path(&["pub/user-42"], ""), None).await;
    let (status, body) = request(addr, "POST", "/v1/topics/pub?key=user-42", b"hello\nworld").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["topic"], "pub");
    assert_eq!(
        v["partition"].as_i64(),
        Some(herald::partitioner::partition_for_key(b"user-42", 8) as i64),
        "murmur2 placement"
    );
    assert!(v["offset"].as_i64().is_some());
    let e = s.next_data(SECS_10).await.expect("published record");
    assert_eq!(e.data.as_deref(), Some("hello\nworld"));
    // Record headers from Herald-Header-*.
    let resp = http(
        addr,
        "POST",
        "/v1/topics/pub?key=user-42",
        &[("herald-header-event", "greeting")],
        bytes::Bytes::from_static(b"hi"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let e = s.next_data(SECS_10).await.expect("second record");
    assert_eq!(e.event.as_deref(), Some("greeting"));
    // A topic that does not exist yet is created on the embedded Kafka.
    let (status, body) = request(addr, "POST", "/v1/topics/brand-new", b"x").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_stats() {
    let node = node().await;
    node.create_topic("ops", 4).await.expect("topic");
    let addr = node.local_addr();
    assert_eq!(request(addr, "GET", "/healthz", b"").await.0, 200);
    wait_for("ready", SECS_10, || async {
        request(addr, "GET", "/readyz", b"").await.0 == 200
    })
    .await;
    let _s = open(addr, &events_path(&["ops"], ""), None).await;
    let _k = open(addr, &events_path(&["ops/k"], ""), None).await;
    let st = stats(&node).await;
    assert_eq!(st["connections"], 2);
    assert_eq!(st["subscriptions"]["topics"]["ops"], 1);
    assert_eq!(st["subscriptions"]["keys"]["ops/k"], 1);
    assert_eq!(st["kafka"]["bootstrap_servers"], node.bootstrap_servers());
    assert_eq!(assigned(&node).await.len(), 4);
    let (status, page) = request(addr, "GET", "/", b"").await;
    assert_eq!(status, 200);
    assert!(page.contains("EventSource"));
    let p = producer(node.bootstrap_servers());
    produce(&p, "ops", Some("k"), b"x").await;
    wait_for("a delivery is counted", SECS_10, || async {
        metric(&node, "herald_events_delivered_total").await >= 1.0
    })
    .await;
    for name in [
        "herald_connections",
        "herald_subscriptions",
        "herald_assigned_partitions",
        "herald_records_consumed_total",
        "herald_bytes_delivered_total",
        "herald_slow_disconnects_total",
        "herald_delivery_latency_seconds_bucket",
    ] {
        let (_, body) = request(addr, "GET", "/metrics", b"").await;
        assert!(body.contains(name), "{name} in /metrics");
    }
    wait_for("lag reported per assigned partition", SECS_10, || async {
        let (_, body) = request(addr, "GET", "/metrics", b"").await;
        body.lines()
            .filter(|l| l.starts_with("herald_partition_lag_records{"))
            .count()
            == 4
    })
    .await;
    assert_eq!(metric(&node, "herald_connections").await, 2.0);
    wait_for(
        "four partitions assigned by the consumer",
        SECS_10,
        || async { metric(&node, "herald_assigned_partitions").await == 4.0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_unready_and_ends_streams_with_retry() {
    let node = node().await;
    node.create_topic("bye", 1).await.expect("topic");
    let addr = node.local_addr();
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(open(addr, &events_path(&["bye"], ""), None).await);
    }
    let stopping = tokio::spawn(node.shutdown());
    for s in &mut streams {
        let mut saw_retry = false;
        let deadline = tokio::time::Instant::now() + SECS_10;
        while !s.ended && tokio::time::Instant::now() < deadline {
            if let Some(e) = s.next_event(Duration::from_millis(200)).await {
                saw_retry |= e.retry.is_some_and(|r| r >= 2000);
            }
        }
        assert!(s.ended, "stream closed by the drain");
        assert!(saw_retry, "a retry: hint before the end");
    }
    tokio::time::timeout(SECS_10, stopping)
        .await
        .expect("shutdown is bounded")
        .expect("join");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = config();
    c.header_read_timeout = Duration::from_millis(300);
    let node = node_with(c).await;
    let mut slow = tokio::net::TcpStream::connect(node.local_addr())
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(SECS_10, slow.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the header-read timeout closed the connection"
    );
    // Meanwhile a normal client is served.
    assert_eq!(
        request(node.local_addr(), "GET", "/healthz", b"").await.0,
        200
    );
}
